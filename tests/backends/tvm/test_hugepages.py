"""Weights in one huge-page arena (backends/tvm/hugepages.py): zero-copy TVM tensors with the
weights' bytes, page-aligned, advised MADV_HUGEPAGE; copies elsewhere."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from ternc.backends.tvm import hugepages as hp  # noqa: E402


def _arrays():
    rng = np.random.default_rng(0)
    return {"w.codes": rng.integers(0, 255, size=(300, 96), dtype=np.uint8),
            "w.scale": np.array(0.02, np.float32),
            "embed": rng.standard_normal((77, 33)).astype(np.float16)}


@pytest.mark.parametrize("huge", [True, False])
def test_place_weights_keeps_bytes(huge):
    if huge and not hp.huge_pages_supported():
        pytest.skip("no transparent huge pages here")
    arrays = _arrays()
    got = hp.place_weights(arrays, tvm.cpu(), huge_pages=huge)
    for name, a in arrays.items():
        t = got[name]
        assert tuple(t.shape) == a.shape and str(t.dtype) == str(a.dtype)
        np.testing.assert_array_equal(t.numpy(), a)


def test_arena_views_are_page_aligned_and_huge():
    if not hp.huge_pages_supported():
        pytest.skip("no transparent huge pages here")
    arena = hp.HugePageArena(8 * hp.HUGE_PAGE)
    assert arena.buffer.ctypes.data % hp.HUGE_PAGE == 0
    views = [arena.array((1000 + i, 7), np.int8) for i in range(3)]
    assert all(v.ctypes.data % hp.TENSOR_ALIGN == 0 for v in views)
    before = hp.anon_huge_kb()
    arena.buffer[:] = 1  # first touch: the kernel backs the advised range with 2 MB pages
    after = hp.anon_huge_kb()
    assert before is not None and after is not None and after >= before  # (THP may be short of pages)
    with pytest.raises(MemoryError):
        arena.array((9 * hp.HUGE_PAGE,), np.uint8)
