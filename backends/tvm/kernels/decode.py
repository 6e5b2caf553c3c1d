"""Decoding one packed weight inside TIR: the per-format part of the generic kernels.

`TIR_DECODERS` is the list of formats the TVM backend supports; `w_expr(fmt, parts, n, k)` is the
single place a packed byte is decoded inside TIR, with the geometry of ir/packing.py's format objects."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import te, tirx

from ....ir import packing
from .common import I2, TL1, TL2, i32


def _tl2_digit_consts() -> list[int]:
    """C[r]: 2-bit fields (digit + 1) of balanced-ternary digit r of every TL2 index 0..13."""
    digs = packing.tl2_digits(np.arange(TL2.entries))  # [14, 3]
    consts = []
    for r in range(TL2.group):
        c = 0
        for i in range(TL2.entries):
            c |= int(digs[i, r] + 1) << (2 * i)
        consts.append(c)
    return consts


TL2_DIGIT_CONSTS = _tl2_digit_consts()


# Written with floordiv/floormod (k >= 0) so TVM's arithmetic simplifies them once k is split
# into (block, lane) loops. Geometry comes from the format objects of ir/packing.py.
_fd, _fm = tirx.floordiv, tirx.floormod


def _w_t2(parts, n, k):
    return i32(parts[0][n, k])


def _w_i2(parts, n, k):
    byte = i32(parts[0][n, _fd(k, I2.block) * I2.lanes + _fm(k, I2.lanes)])
    shift = 6 - 2 * _fd(_fm(k, I2.block), I2.lanes)
    return ((byte >> shift) & 3) - 1


def _w_tl1(parts, n, k):
    byte = i32(parts[0][n, _fd(k, TL1.weights_per_byte)])
    idx = (byte >> (_fd(_fm(k, TL1.weights_per_byte), TL1.group) * 4)) & 15
    return tirx.Select(_fm(k, TL1.group) == 0, _fd(idx, 3), _fm(idx, 3)) - 1


def _w_tl2(parts, n, k):
    t = _fd(k, TL2.group)
    r = _fm(k, TL2.group)
    idx = (i32(parts[0][n, _fd(t, TL2.indices_per_byte)]) >> (_fm(t, TL2.indices_per_byte) * 4)) & 15
    sign = (i32(parts[1][n, _fd(t, TL2.signs_per_byte)]) >> _fm(t, TL2.signs_per_byte)) & 1
    c0, c1, c2 = (tirx.const(c, "int32") for c in TL2_DIGIT_CONSTS)
    c = tirx.Select(r == 0, c0, tirx.Select(r == 1, c1, c2))
    d = ((c >> (idx * 2)) & 3) - 1
    return (d ^ (0 - sign)) + sign  # sign ? -d : d


def _w_tq1(parts, n, k):
    m = _fm(k, packing.TQ1.weights_per_byte)
    byte = i32(parts[0][n, _fd(k, packing.TQ1.weights_per_byte)])
    p3 = tirx.Select(m == 0, 1, tirx.Select(m == 1, 3, tirx.Select(m == 2, 9, tirx.Select(m == 3, 27, 81))))
    return ((((byte * p3) & 255) * 3) >> 8) - 1


@dataclass(frozen=True)
class TirDecoder:
    """How the generic kernels (dot, dot16, CUDA gemv/gemm) read one packed format inside TIR.

    expr(parts, n, k) -> int32 weight w[n, k]; decode_split: the CPU decode loop's split (so
    k // 3, k % 5, ... simplify to loop variables), None to vectorize KPAD lanes instead."""

    expr: object
    decode_split: tuple | None = None


# The formats the generic kernels support: a format joins the TVM backend by adding its decoder here.
TIR_DECODERS: dict[str, TirDecoder] = {
    packing.T2.name: TirDecoder(_w_t2),
    I2.name: TirDecoder(_w_i2),
    TL1.name: TirDecoder(_w_tl1, (None, TL1.weights_per_byte)),  # 4 weights (2 pairs) per byte
    TL2.name: TirDecoder(_w_tl2, (None, TL2.signs_per_byte, TL2.group)),  # 8 triples share a sign byte
    packing.TQ1.name: TirDecoder(_w_tq1, (None, packing.TQ1.weights_per_byte)),  # 5 trits per byte
}


SUPPORTED_FORMATS = tuple(TIR_DECODERS)  # the built-in ones (tests parametrize over these)


def decoder(fmt: str) -> TirDecoder:
    try:
        return TIR_DECODERS[fmt]
    except KeyError:
        raise ValueError(f"ternary format {fmt!r} has no TVM kernel; supported: {', '.join(TIR_DECODERS)}") \
            from None


def w_expr(fmt: str, parts, n, k):
    """int32 PrimExpr: the ternary weight w[n, k] decoded from the packed buffers `parts` (te tensors)."""
    return decoder(fmt).expr(parts, n, k)


def decoded_te(fmt: str, parts, n: int, k: int, kp: int):
    """int8 [N, Kp] weights decoded from the packed parts (0 beyond K)."""
    cap = packing.get_format(fmt).capacity(k)

    def f(j, kk):
        if cap >= kp:  # every k < Kp is a valid packed position; its padding decodes to 0
            return tirx.Cast("int8", w_expr(fmt, parts, j, kk))
        return tirx.Select(kk < k, tirx.Cast("int8", w_expr(fmt, parts, j, tirx.min(kk, k - 1))),
                           tirx.const(0, "int8"))

    return te.compute((n, kp), f, name="wdec")


def placeholders(fmt: str, n: int, k: int):
    layout = packing.get_format(fmt)
    return [te.placeholder(s, p.dtype, name=f"w_{p.name}") for s, p in zip(layout.part_shapes(n, k), layout.parts)]
