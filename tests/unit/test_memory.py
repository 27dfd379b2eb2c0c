"""A fixed mmap threshold returns freed request-sized buffers to the OS, and releasing the
free heap returns what the heap kept (glibc)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from services.common.memory import (
    default_mmap_threshold_mib,
    release_free_heap,
    set_mmap_threshold,
)

ROOT = Path(__file__).resolve().parents[2]
# 60 buffers of 5 MiB (a request's tensors) are freed while the last one lives on; a 16 MiB
# block freed first has raised glibc's dynamic threshold above 5 MiB, as served traffic does.
PROGRAM = """
import sys
import numpy as np
from services.common.memory import resident_kib, set_mmap_threshold

def rss_mib():
    return resident_kib() // 1024

if sys.argv[1] != "0":
    assert set_mmap_threshold(int(sys.argv[1]))
np.ones(16 << 18, np.float32)
before = rss_mib()
buffers = [np.ones(5 << 18, np.float32) for _ in range(60)]
last = buffers[-1]
del buffers
print(rss_mib() - before)
"""


# 2000 heap blocks of 64 KiB (under any mmap threshold) are freed while the last one lives on
# above them: glibc cannot shrink the heap from its top, so only a release returns them.
HOLES = """
import sys
import numpy as np
from services.common.memory import release_free_heap, resident_kib

def rss_mib():
    return resident_kib() // 1024

before = rss_mib()
blocks = [np.ones(16 << 10, np.float32) for _ in range(2000)]
last = blocks[-1]
del blocks
kept = rss_mib() - before
assert release_free_heap()
print(kept, rss_mib() - before)
"""


def _run(program: str, *args: str) -> list[int]:
    run = subprocess.run(
        [sys.executable, "-c", program, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [int(value) for value in run.stdout.split()]


def _rss_growth_mib(threshold: int) -> int:
    return _run(PROGRAM, str(threshold))[-1]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_freed_buffers_leave_rss_with_the_fixed_threshold_and_stay_without_it():
    assert _rss_growth_mib(0) > 200  # glibc's default: the freed 295 MiB stay resident
    assert _rss_growth_mib(4 << 20) < 30  # mmapped, returned on free (the live 5 MiB stay)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_releasing_the_free_heap_returns_what_the_heap_top_pinned():
    kept, released = _run(HOLES)
    assert kept > 100  # 125 MiB freed, still resident
    assert released < 20


# Large GEMMs on two threads leave MKL's packing buffers pooled for the next one (about
# 10 MiB here; their size follows the CPU's kernels); to malloc they are live, so only
# handing the pool back to MKL returns them.
MKL_POOL = """
import torch
from services.common.memory import mkl_buffer_bytes, release_free_heap

torch.set_num_threads(2)
conv = torch.nn.Conv2d(320, 320, 3, padding=1)
with torch.no_grad(), torch.backends.mkldnn.flags(enabled=False):  # im2col + SGEMM
    for side in (16, 32, 64):
        conv(torch.randn(2, 320, side, side))
pooled = mkl_buffer_bytes()
assert release_free_heap()
print(pooled, mkl_buffer_bytes())
"""


def test_releasing_the_free_heap_returns_mkls_pooled_gemm_buffers():
    import torch

    if not torch.backends.mkl.is_available():
        pytest.skip("torch without MKL")
    pooled, released = _run(MKL_POOL)
    assert pooled > 1 << 20
    assert released == 0


def test_release_is_a_no_op_answering_false_without_glibc(monkeypatch):
    from services.common import memory

    monkeypatch.setattr(memory, "_glibc", lambda: None)
    assert release_free_heap() is False
    assert set_mmap_threshold(4 << 20) is False


def test_zero_keeps_the_default_and_above_32_mib_is_refused():
    assert set_mmap_threshold(0) is False
    with pytest.raises(ValueError, match="32 MiB"):
        set_mmap_threshold(64 << 20)


def test_the_setting_is_range_checked():
    from services.common.config import ServerConfig

    with pytest.raises(ValueError, match="mmap_threshold_mib"):
        ServerConfig(service="sampler", mmap_threshold_mib=33)


def test_the_default_is_fixed_on_cuda_and_glibcs_own_on_cpu():
    assert default_mmap_threshold_mib("cuda:1") == 4.0
    assert default_mmap_threshold_mib("cpu") == 0.0
    import torch

    assert default_mmap_threshold_mib("auto") == (4.0 if torch.cuda.is_available() else 0.0)
