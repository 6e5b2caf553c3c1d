"""Shared by the kernel modules: K padding, int32 casts, and the one attribute chain every
hand-scheduled kernel carries."""

from __future__ import annotations

from tvm import tirx

from ....ir import packing

I2, TL1, TL2 = packing.I2, packing.TL1, packing.TL2
KPAD = 32  # x_q is padded with zeros to a multiple of this (vector width of the dot reduction)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def padded_k(k: int) -> int:
    return ceil_div(k, KPAD) * KPAD


def i32(v):
    return tirx.Cast("int32", v)


def scheduled(func: tirx.PrimFunc, symbol: str | None = None) -> tirx.PrimFunc:
    """A hand-scheduled kernel as the lowering adds it: its global symbol, op_pattern 8 = kOpaque
    (FuseOps must not fuse neighbours into it) and tirx.is_scheduled (dlight's default GPU
    schedules must leave it alone)."""
    if symbol is not None:
        func = func.with_attr("global_symbol", symbol)
    return func.with_attr("op_pattern", 8).with_attr("tirx.is_scheduled", True)
