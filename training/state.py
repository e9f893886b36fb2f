"""Training state you can trust: saved atomically, no pickle, resumable bit for bit.

A state is a folder `checkpoints/step-NNNNNNNN/` holding `state.safetensors` (head parameters, Adam
moments, every process's RNG states) and `state.json` (epoch, step, position in the epoch, the
optimiser's hyper-parameters, the recipe's fingerprint). It is written into a temporary folder and
renamed into place (one atomic step), so a kill or a full disk never leaves a half-written state
that looks complete; the older states are deleted only after the new one is in place.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from wmoe.errors import WMoEError

TENSORS, META = "state.safetensors", "state.json"
FORMAT = 1
STATE_NAME = re.compile(r"^step-(\d{8})$")
log = logging.getLogger("wmoe.training")


class StateSaveError(WMoEError, OSError):
    """The training state could not be written; the previous good state is still on disk."""


def capture_rng(device: torch.device) -> dict[str, torch.Tensor]:
    """This process's RNG states (torch, CUDA, numpy, python) as tensors."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    out = {
        "rng.torch": torch.get_rng_state(),
        "rng.numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "rng.numpy_pos": torch.tensor([np_state[2], np_state[3]], dtype=torch.int64),
        "rng.numpy_gauss": torch.tensor([np_state[4]], dtype=torch.float64),
        "rng.python": torch.tensor(py_state[1], dtype=torch.int64),
        "rng.python_gauss": torch.tensor(
            [math.nan if py_state[2] is None else py_state[2]], dtype=torch.float64
        ),
    }
    if device.type == "cuda":
        out["rng.cuda"] = torch.cuda.get_rng_state(device)
    return out


def restore_rng(states: dict[str, torch.Tensor], device: torch.device):
    torch.set_rng_state(states["rng.torch"].to(torch.uint8).cpu())
    pos, has_gauss = (int(v) for v in states["rng.numpy_pos"])
    np.random.set_state(
        (
            "MT19937",
            states["rng.numpy_keys"].numpy().astype(np.uint32),
            pos,
            has_gauss,
            float(states["rng.numpy_gauss"][0]),
        )
    )
    gauss = float(states["rng.python_gauss"][0])
    random.setstate((3, tuple(int(v) for v in states["rng.python"]), None if math.isnan(gauss) else gauss))
    if device.type == "cuda" and "rng.cuda" in states:
        torch.cuda.set_rng_state(states["rng.cuda"].to(torch.uint8).cpu(), device)


def optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """The optimiser's state split into tensors (for safetensors) and plain values (for JSON)."""
    sd = opt.state_dict()
    tensors, plain = {}, {}
    for idx, st in sd["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{idx}.{key}"] = value.detach().cpu()
            else:
                plain.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "plain": plain}


def load_optimizer_state(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict):
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for idx, values in meta["plain"].items():
        state.setdefault(int(idx), {}).update(values)
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in meta["param_groups"]]
    opt.load_state_dict({"state": state, "param_groups": groups})


def save_state(
    folder: str | Path, step: int, tensors: dict[str, torch.Tensor], meta: dict, keep: int = 2
) -> Path:
    """Write state `step` atomically into `folder`, then delete all but the newest `keep` states."""
    folder = Path(folder)
    final = folder / f"step-{step:08d}"
    tmp = folder / f".step-{step:08d}.tmp-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / TENSORS))
        with open(tmp / META, "w") as f:
            json.dump({"format": FORMAT, "step": step, **meta}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        _fsync(tmp / TENSORS)
        if final.exists():  # a stale state of the same step, left behind when an older one was resumed
            shutil.rmtree(final)
        os.replace(tmp, final)
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        previous = [p.name for p in list_states(folder)]
        kept = f"the previous state {previous[-1]} is kept" if previous else "no earlier state exists"
        raise StateSaveError(
            f"could not save the training state of step {step} to {final} ({e}); {kept}"
        ) from e
    for old in list_states(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_states(folder: str | Path) -> list[Path]:
    """Complete states (renamed into place), oldest first; temporary folders are never listed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and STATE_NAME.match(p.name))


def load_latest(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict, Path] | None:
    """The newest readable state (tensors, meta, path), else an older one; None when there is none."""
    for path in reversed(list_states(folder)):
        try:
            meta = json.loads((path / META).read_text())
            tensors = load_file(str(path / TENSORS))
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, this version reads {FORMAT}")
            return tensors, meta, path
        except Exception as e:  # unreadable for any reason: warn and try the previous one
            log.warning("skipping unreadable training state %s (%s)", path, e)
    return None


def _fsync(path: Path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
