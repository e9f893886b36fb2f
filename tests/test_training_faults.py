"""A training run killed with SIGKILL in the middle of saving its state loses nothing already saved."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from training.state import list_states, load_latest, save_state

REPO = Path(__file__).resolve().parents[1]

# A child process saves state 2 but stalls after writing half of the tensor file, as a slow disk would.
CHILD = """
import sys, time
import torch
import training.state as st
real = st.save_file
def stalled(tensors, path):
    real(tensors, path)
    data = open(path, 'rb').read()
    open(path, 'wb').write(data[: len(data) // 2])
    print('writing', flush=True)
    time.sleep(60)
st.save_file = stalled
st.save_state(sys.argv[1], 2, {'w': torch.full((1000,), 2.0)}, {'epoch': 2})
"""


def test_kill_9_while_saving_keeps_the_previous_state_loadable(tmp_path):
    save_state(tmp_path, 1, {"w": torch.full((1000,), 1.0)}, {"epoch": 1})
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert child.stdout.readline().strip() == "writing"
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert any(p.name.startswith(".step-00000002") for p in tmp_path.iterdir())  # the half-written leftover
    assert [p.name for p in list_states(tmp_path)] == ["step-00000001"]
    tensors, meta, path = load_latest(tmp_path)
    assert (
        path.name == "step-00000001"
        and meta["epoch"] == 1
        and torch.equal(tensors["w"], torch.full((1000,), 1.0))
    )
    start = time.perf_counter()  # the next save of step 2 succeeds over the leftover
    save_state(tmp_path, 2, {"w": torch.full((1000,), 2.0)}, {"epoch": 2})
    assert load_latest(tmp_path)[1]["epoch"] == 2 and time.perf_counter() - start < 10
