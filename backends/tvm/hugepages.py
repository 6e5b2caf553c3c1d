"""Weights in transparent huge pages on CPU devices.

Decode reads every weight byte once per token, so it runs at the host's read bandwidth, and with
4 KB pages that bandwidth is lower (TLB misses on a ~270 MB working set; measured here 19.5-24.9 GB/s
with 4 KB pages vs 34.7-35.3 GB/s with 2 MB pages, 2 threads). TVM's CPU allocator cannot be asked
for huge pages, so `place_weights` puts all weights in one anonymous mapping, 2 MB-aligned and
`madvise(MADV_HUGEPAGE)`d before it is first touched (the kernel then backs it with 2 MB pages where
THP is `always` or `madvise`), and hands TVM zero-copy views of it through DLPack. Elsewhere (no
Linux THP, another device, an RPC session) the weights are copied to the device as before.
"""

from __future__ import annotations

import mmap
import os
from typing import Mapping

import numpy as np

HUGE_PAGE = 2 << 20
TENSOR_ALIGN = 4096  # every weight starts on a page (TVM assumes >= 64-byte aligned data)


def huge_pages_supported() -> bool:
    """Linux with transparent huge pages not disabled, and Python's mmap.madvise(MADV_HUGEPAGE)."""
    if not hasattr(mmap, "MADV_HUGEPAGE") or os.environ.get("TERNC_NO_HUGEPAGES"):
        return False
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[never]" not in f.read()
    except OSError:
        return False


class HugePageArena:
    """One anonymous mapping, 2 MB-aligned, advised MADV_HUGEPAGE; `array(shape, dtype)` hands out
    page-aligned numpy views of it. The arena (and its mapping) lives as long as any view does."""

    def __init__(self, nbytes: int, huge: bool = True):
        """huge=False: the same arena advised MADV_NOHUGEPAGE (4 KB pages; for comparisons)."""
        self.size = max(int(nbytes), 1)
        self._map = mmap.mmap(-1, self.size + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        raw = np.frombuffer(self._map, dtype=np.uint8)
        start = (-raw.ctypes.data) % HUGE_PAGE
        # advise before the first touch: the page faults then allocate 2 MB pages directly
        advice = mmap.MADV_HUGEPAGE if huge else getattr(mmap, "MADV_NOHUGEPAGE", None)
        if advice is not None:
            self._map.madvise(advice, start - start % mmap.PAGESIZE, self.size + start % mmap.PAGESIZE)
        self.buffer = raw[start:start + self.size]
        self.used = 0

    def array(self, shape, dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        off = -(-self.used // TENSOR_ALIGN) * TENSOR_ALIGN
        if off + n > self.size:
            raise MemoryError(f"huge-page arena of {self.size} bytes cannot hold {n} more at {off}")
        self.used = off + n
        return self.buffer[off:off + n].view(dtype).reshape(shape)


def arena_bytes(arrays) -> int:
    return sum(-(-np.asarray(a).nbytes // TENSOR_ALIGN) * TENSOR_ALIGN for a in arrays)


def place_weights(arrays: Mapping[str, np.ndarray], device, huge_pages: bool | None = None) -> dict:
    """{name: tvm Tensor on `device`}: on a local CPU with THP, zero-copy views of one huge-page
    arena (see the module doc); otherwise `tvm.runtime.tensor` copies."""
    import tvm

    try:  # a local CPU device (RPC devices carry a session mask: another type number)
        local_cpu = int(device.dlpack_device_type()) == int(tvm.cpu().dlpack_device_type())
    except (AttributeError, TypeError, ValueError):
        local_cpu = False
    if huge_pages is None:
        huge_pages = local_cpu and huge_pages_supported()
    if not (huge_pages and local_cpu) or not arrays:
        return {n: tvm.runtime.tensor(_contiguous(a), device) for n, a in arrays.items()}
    arena = HugePageArena(arena_bytes(arrays.values()))
    out = {}
    for name, a in arrays.items():
        a = np.asarray(a)
        view = arena.array(a.shape, a.dtype)
        view[...] = a
        try:
            out[name] = tvm.runtime.from_dlpack(view)
        except Exception:  # noqa: BLE001 - a dtype DLPack does not carry (e.g. numpy's bfloat16 stand-in)
            out[name] = tvm.runtime.tensor(_contiguous(a), device)
    return out


def _contiguous(a) -> np.ndarray:
    a = np.asarray(a)
    return np.ascontiguousarray(a).reshape(a.shape)  # (ascontiguousarray makes 0-d arrays 1-d)


def anon_huge_kb() -> int | None:
    """This process's AnonHugePages (kB), from /proc/self/smaps_rollup; None where unavailable."""
    try:
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                if line.startswith("AnonHugePages:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None
