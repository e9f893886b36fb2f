"""One family of errors and one dtype vocabulary."""

import ast
import builtins
import importlib
import pkgutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wmoe.errors import EXIT_ERROR, EXIT_OK, EXIT_PUBLISH_FAILED, EXIT_SKIPPED, WMoEError


def test_every_library_error_is_a_wmoe_error():
    from wmoe.checkpoint import CheckpointError
    from wmoe.config import ConfigError
    from wmoe.hub import WeightsNotFoundError
    from wmoe.precision import PrecisionError
    from wmoe.preprocess import ImageError

    for cls in (CheckpointError, ConfigError, WeightsNotFoundError, ImageError, PrecisionError):
        assert issubclass(cls, WMoEError), cls
    assert issubclass(ConfigError, ValueError) and issubclass(WeightsNotFoundError, FileNotFoundError)


def test_exit_codes_are_distinct():
    assert len({EXIT_OK, EXIT_SKIPPED, EXIT_ERROR, EXIT_PUBLISH_FAILED}) == 4 and EXIT_OK == 0


def test_dtype_vocabulary():
    from wmoe.precision import DTYPES, PrecisionError, dtype_name, resolve_dtype

    assert resolve_dtype(None) is torch.float32
    assert (
        resolve_dtype("bf16") is resolve_dtype("bfloat16") is resolve_dtype(torch.bfloat16) is torch.bfloat16
    )
    assert [dtype_name(d) for d in DTYPES.values()] == list(DTYPES)
    for bad in ("fp8", "half", torch.int8):
        with pytest.raises(PrecisionError, match="fp32"):
            resolve_dtype(bad)


def test_public_api_is_explicit_and_resolves():
    import wmoe

    assert set(wmoe.__all__) == set(wmoe._EXPORTS) | {"__version__"}
    tree = ast.parse(Path(wmoe.__file__).read_text())  # what type checkers see: the TYPE_CHECKING imports
    typed = {
        a.asname or a.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level == 1
        for a in node.names
    }
    assert typed == set(wmoe._EXPORTS), typed ^ set(wmoe._EXPORTS)
    for name in wmoe.__all__:
        assert getattr(wmoe, name) is not None, name
    assert wmoe.__version__.count(".") == 2


ROOT = Path(__file__).resolve().parents[1]
BUILTIN_ERRORS = {
    name for name, obj in vars(builtins).items() if isinstance(obj, type) and issubclass(obj, Exception)
}
# Exceptions (not SystemExit: the exit protocol). (file, enclosing function, builtin exception) -> why a builtin is right there; anything else is a WMoEError
ALLOWED_BUILTIN_RAISES = {
    ("wmoe/__init__.py", "__getattr__", "AttributeError"): "a module's __getattr__ protocol",
    (
        "training/feature_cache.py",
        "FeatureCache._read",
        "ValueError",
    ): "caught there: a damaged entry is recomputed",
    (
        "training/feature_cache.py",
        "_metadata",
        "ValueError",
    ): "caught by FeatureCache._read (a damaged entry)",
    ("training/state.py", "load_latest", "ValueError"): "caught there: an unreadable state is skipped",
    ("training/registry.py", "Registry.register.deco", "ValueError"): "a name registered twice is a code bug",
    ("training/prepare_data.py", "_validate", "AssertionError"): "checks the loaders' own output (a bug)",
}


def builtin_raises(path: Path) -> list[tuple[str, str, str, int]]:
    """(file, enclosing function, exception, line) of every `raise X(...)` or `raise X` of a builtin X."""
    found = []

    def visit(node: ast.AST, scope: list[str]):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit(child, scope + [child.name])
                continue
            if isinstance(child, ast.Raise) and child.exc is not None:
                exc = child.exc.func if isinstance(child.exc, ast.Call) else child.exc
                if isinstance(exc, ast.Name) and exc.id in BUILTIN_ERRORS:  # `raise e` (a re-raise) is not
                    found.append((path.relative_to(ROOT).as_posix(), ".".join(scope), exc.id, child.lineno))
            visit(child, scope)

    visit(ast.parse(path.read_text()), [])
    return found


def test_every_error_raised_on_purpose_is_a_wmoe_error():
    """A scan of wmoe/ and training/: a builtin exception raised on purpose escapes `except WMoEError`
    (and the commands' exit code 2); each exception class defined there is a WMoEError."""
    raises = [
        r
        for pkg in ("wmoe", "training")
        for f in sorted((ROOT / pkg).rglob("*.py"))
        for r in builtin_raises(f)
    ]
    assert len(raises) >= len(ALLOWED_BUILTIN_RAISES)  # the scan sees the allowed ones
    assert {r[:3] for r in raises} >= set(ALLOWED_BUILTIN_RAISES), (
        "an allowed raise is gone: drop it from the list"
    )
    bad = [
        f"{f}:{line} raise {exc} (in {scope})"
        for f, scope, exc, line in raises
        if (f, scope, exc) not in ALLOWED_BUILTIN_RAISES
    ]
    assert not bad, (
        "raise a wmoe.errors.WMoEError subclass (keep ValueError as a second base):\n" + "\n".join(bad)
    )
    for pkg in ("wmoe", "training"):
        for info in pkgutil.iter_modules([str(ROOT / pkg)]):
            if info.name == "__main__":  # runs the command line when imported
                continue
            module = importlib.import_module(f"{pkg}.{info.name}")
            for name, obj in vars(module).items():
                if (
                    isinstance(obj, type)
                    and issubclass(obj, BaseException)
                    and obj.__module__ == module.__name__
                ):
                    assert issubclass(obj, WMoEError), f"{module.__name__}.{name} is not a WMoEError"


def test_the_scan_finds_a_plain_value_error(tmp_path):
    bad = ROOT / "wmoe" / "_scan_probe.py"  # never imported: parsed only
    code = "def f(x):\n    if x:\n        raise ValueError('no')\n    try:\n        g()\n    except KeyError as e:\n        raise e\n"
    try:
        bad.write_text(code)
        assert builtin_raises(bad) == [("wmoe/_scan_probe.py", "f", "ValueError", 3)]
    finally:
        bad.unlink()


def test_bad_arguments_are_wmoe_errors_and_value_errors():
    from wmoe.errors import ArgumentError
    from wmoe.metrics import image_auroc
    from wmoe.references import MAX_REFERENCES, load_references
    from wmoe.routing import routing_by_class

    assert issubclass(ArgumentError, WMoEError) and issubclass(ArgumentError, ValueError)
    with pytest.raises(ArgumentError, match="shapes differ"):
        image_auroc(np.array([0, 1]), np.array([0.5]))
    with pytest.raises(ArgumentError):
        routing_by_class(np.ones((2, 3)), ["a"])
    with pytest.raises(
        WMoEError, match=f"too many reference images \\(5\\): at most {MAX_REFERENCES} are allowed"
    ):
        load_references([Image.new("RGB", (8, 8))] * (MAX_REFERENCES + 1))
