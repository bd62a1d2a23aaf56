"""scripts/gpu_check.sh on a machine without a GPU: it says so and exits 0 (the GPU table itself needs a GPU)."""
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _has_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None and subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


@pytest.mark.skipif(_has_gpu(), reason="a GPU is here: the script would run the whole check")
def test_gpu_check_without_a_gpu_says_so_and_exits_0():
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "no NVIDIA GPU on this machine" in done.stdout
