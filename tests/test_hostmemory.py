"""Host-memory settings: applied before torch loads, opt-out honoured."""

import os
import subprocess
import sys

import pytest

_PROBE = """
import os, sys
from twodtm._hostmemory import prepare_environment, retain_freed_memory
prepare_environment()
early = os.environ.get("MKL_DISABLE_FAST_MM")
import torch
print(early, "torch" in sys.modules, retain_freed_memory())
"""


def _run(env_extra: dict[str, str]) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "MKL_DISABLE_FAST_MM"}
    env.pop("TWODTM_SYSTEM_ALLOCATOR", None)
    env.update(env_extra)
    out = subprocess.run(
        [sys.executable, "-c", _PROBE],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_settings_apply_before_torch_and_can_be_switched_off():
    assert _run({}) == ["1", "True", "True"]
    assert _run({"TWODTM_SYSTEM_ALLOCATOR": "1"}) == ["None", "True", "False"]


def test_importing_twodtm_does_not_load_torch():
    code = "import sys, twodtm; print('torch' in sys.modules, twodtm.__version__)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.split()[0] == "False"
