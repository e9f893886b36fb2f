"""wmoe.precision.autocast: the one autocast of every pass, off for float32."""

import pytest
import torch

from wmoe.precision import autocast


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_autocast_runs_in_the_given_precision_and_is_off_for_float32(dtype):
    x = torch.randn(4, 4)
    with autocast(torch.device("cpu"), dtype):
        assert torch.is_autocast_enabled("cpu") == (dtype != torch.float32)
        assert (x @ x).dtype == dtype
    with autocast("cpu", dtype):  # a device name works too
        assert (x @ x).dtype == dtype
    assert not torch.is_autocast_enabled("cpu")
