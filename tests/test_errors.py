"""One family of errors and one dtype vocabulary."""

import ast
from pathlib import Path

import pytest
import torch

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
