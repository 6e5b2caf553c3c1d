"""backends/tvm/build.py: the library is the same bytes from build to build."""

from __future__ import annotations

import pytest

tvm = pytest.importorskip("tvm")

from tvm.script import tirx as T  # noqa: E402

from ternc.backends.tvm.build import _sorted_shape_func  # noqa: E402


def _stores(f) -> list[int]:
    return [int(st.indices[0].value) for st in f.body.seq]


def test_shape_function_stores_are_ordered_by_slot():
    """VMShapeLower emits independent stores in a per-build order (an unordered_map hashed by
    addresses); they come out sorted by slot, so LLVM sees the same function every build."""

    @T.prim_func(s_tir=True)
    def shape_func(H: T.Buffer((T.int64(6),), "int64")):
        T.func_attr({"tirx.is_host_func": True})
        H[T.int64(4)] = T.int64(8) * H[T.int64(0)]
        H[T.int64(2)] = H[T.int64(1)] + H[T.int64(0)]
        H[T.int64(5)] = T.int64(4) * (H[T.int64(1)] + H[T.int64(0)])
        H[T.int64(3)] = T.int64(2) * H[T.int64(0)]

    assert _stores(_sorted_shape_func(shape_func)) == [2, 3, 4, 5]


def test_dependent_stores_keep_their_order():
    @T.prim_func(s_tir=True)
    def shape_func(H: T.Buffer((T.int64(6),), "int64")):
        T.func_attr({"tirx.is_host_func": True})
        H[T.int64(4)] = T.int64(8) * H[T.int64(0)]
        H[T.int64(2)] = H[T.int64(4)] + H[T.int64(0)]

    assert _stores(_sorted_shape_func(shape_func)) == [4, 2]
