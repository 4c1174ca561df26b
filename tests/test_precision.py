"""Reduced-precision inverse FFTs: refused where unsupported, accurate where run."""

from dataclasses import replace

import pytest
import torch

from twodtm.errors import DeviceError
from twodtm.programs.benchmark import random_rotations, run_search, synthetic_inputs
from twodtm.search.options import check_precision


def test_fp16_is_refused_on_the_cpu_and_for_odd_sizes():
    check_precision("fp32", torch.device("cpu"), (100, 90))
    with pytest.raises(DeviceError, match="CUDA"):
        check_precision("fp16", torch.device("cpu"), (128, 128))
    with pytest.raises(DeviceError, match="fp32 or fp16"):
        check_precision("bf16", torch.device("cpu"), (128, 128))
    if torch.cuda.is_available():
        with pytest.raises(DeviceError, match="power-of-two"):
            check_precision("fp16", torch.device("cuda"), (96, 128))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 FFTs need CUDA")
def test_fp16_zscores_match_fp32_on_cuda():
    inputs = synthetic_inputs((128, 128), 32, 3, 1, torch.device("cuda"), 0)
    rotations = random_rotations(6, 0)
    full = run_search(inputs, rotations, 3, (128, 128))
    half = run_search(replace(inputs, precision="fp16"), rotations, 3, (128, 128))
    error = (half.zscore() - full.zscore()).abs().max().item()
    print(f"max |z(fp16) - z(fp32)| = {error:.4f}")
    assert error < 0.05
    assert torch.equal(
        half.best_index == full.best_index, half.best_index == full.best_index
    )
