"""Heap settings of a serving process: large buffers go back to the OS when freed.

Every request carries megabytes of tensors (a MedSAM prior alone is 4 MiB) that are parsed,
copied and freed on many threads. glibc raises its mmap threshold to the largest block freed
so far (up to 32 MiB), so after the first few requests these buffers come from the heap, and
the heap's free holes keep the process's RSS climbing under load: the `make soak` load test
measured +11..+23% in 60 s, without any leak. A fixed threshold of a few MiB keeps
request-sized buffers on mmap (returned on free): RSS stays flat under the same load.

On CPU the model's own activations of that size are then mmapped and page-faulted on every
step too (`python -m benchmarks.heap`: 1.10x the sampling time), so the default is the fixed
threshold only where the model runs on CUDA and the host heap holds little but requests.

Free heap pages below the top of the heap glibc does not give back by itself:
`release_free_heap` (malloc_trim) returns them, which the sampler does once it has been idle
for a moment after work (2-3 ms; 11-22 MiB returned after a few hundred fuzz requests).

MKL (PyTorch's CPU BLAS) keeps its own pool on top of malloc: every thread that runs an SGEMM
keeps that GEMM's packing buffers for the next one, grown to the largest GEMM it has seen, and
never gives them back. To malloc they are live, so no trim returns them: a sampler fed many
clip sizes (fuzzing: 1-64 frames, latents up to 64x64) grew 42 -> 141 MiB of them in steps,
each new largest request one step. `release_free_heap` hands that pool back first
(`mkl_free_buffers`, only buffers no GEMM is using), so the next GEMM allocates afresh.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)
CUDA_DEFAULT_MIB = 4.0
MAX_THRESHOLD_MIB = 32  # glibc caps the mmap threshold here (HEAP_MAX / 2 on 64-bit)


def default_mmap_threshold_mib(device: str) -> float:
    """4 MiB where the models run on CUDA (`device` "cuda..." or "auto" with a GPU), else 0."""
    if device.startswith("cuda"):
        return CUDA_DEFAULT_MIB
    if device == "auto":  # services.models.runtime.resolve_device's rule (a layer above)
        import torch

        return CUDA_DEFAULT_MIB if torch.cuda.is_available() else 0.0
    return 0.0


def set_mmap_threshold(threshold_bytes: int) -> bool:
    """Allocations of at least `threshold_bytes` are mmapped (fixed, not glibc's dynamic
    threshold). Returns False, changing nothing, where the C library is not glibc or the
    threshold is 0 (keep the default)."""
    if threshold_bytes <= 0:
        return False
    if threshold_bytes > MAX_THRESHOLD_MIB * 2**20:
        raise ValueError(
            f"mmap threshold {threshold_bytes} B is above glibc's {MAX_THRESHOLD_MIB} MiB maximum"
        )
    mallopt = getattr(_glibc(), "mallopt", None)
    if mallopt is None:
        logger.debug("no glibc mallopt: the heap keeps its default mmap threshold")
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, ctypes.c_int(threshold_bytes)))


def release_free_heap() -> bool:
    """Give the heap's free pages back to the OS (glibc `malloc_trim(0)`, every arena), not
    only those at its top. Takes milliseconds; call it when idle. False where not glibc."""
    release_mkl_buffers()  # first: what MKL gives back is then free heap to trim
    trim = getattr(_glibc(), "malloc_trim", None)
    if trim is None:
        return False
    trim(ctypes.c_size_t(0))
    return True


def release_mkl_buffers() -> bool:
    """Give MKL's pool of unused GEMM buffers (every thread's) back to malloc. False, doing
    nothing, where torch is not loaded or was built without MKL."""
    free = getattr(_mkl(), "mkl_serv_free_buffers", None)
    if free is None:
        return False
    free()
    return True


def mkl_buffer_bytes() -> int:
    """Bytes MKL's memory manager holds now (in use or pooled); 0 without MKL."""
    stat = getattr(_mkl(), "mkl_serv_mem_stat", None)
    if stat is None:
        return 0
    stat.restype = ctypes.c_int64
    buffers = ctypes.c_int(0)
    return int(stat(ctypes.byref(buffers)))


def _mkl() -> ctypes.CDLL | None:
    """The loaded library that carries PyTorch's (statically linked) MKL, if torch is loaded:
    a process that never imported torch has no MKL buffers to release."""
    torch = sys.modules.get("torch")
    if torch is None or not getattr(torch, "__file__", None):
        return None
    return _torch_cpu(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so")


@functools.cache
def _torch_cpu(path: Path) -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(str(path))  # already loaded by torch: this opens the same copy
    except OSError:
        return None


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def resident_kib(pid: int | str = "self") -> int:
    """The current resident set (VmRSS) of process `pid`, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")
