"""TensorIR kernels for the ternary integer contract (ir/semantics.py), built with TVM's TE/TIR APIs.

Every kernel consumes the packed layouts of `ir/packing.py` directly (plus the unpacked `t2` int8
[N, K] form) and produces the exact int32 accumulators of `semantics.ternary_matmul_i32`.

Kernels (all with a symbolic token count M, K and N static):

  quantize        x f32 [M, K] -> x_q int8 [M, Kp] (zero-padded to Kp >= K), a_scale f32 [M, 1]
  dot  (CPU)      acc[m, n] = sum_k x_q[m, k] * w(n, k): each weight row decoded once from the
                  packed bytes into an int8 scratch row (L1), reused by every token; the K
                  reduction runs as 32 int32 vector lanes in registers (rfactor), then lane sums
  dot16 (CPU)     the same with 64 int16 lanes (exact while K <= 16320: a lane sums <= 255
                  products of magnitude <= 128), about 2x faster for prefill
  vnni (CPU, i2)  x86 AVX-512 VNNI only (target_has_vnni): the packed 2-bit codes c = w + 1 go
                  straight into `vpdpbusd` (acc = sum c*x - sum x) against activations permuted once
                  per token inside the kernel; register tiles over (tokens, rows), rows parallel
  lut  (CPU)      T-MAC style table lookup (tl2, tl1): per group of g activations (g = 3 for tl2,
                  2 for tl1) a table of all signed sums is precomputed once per token; each packed
                  weight index reads the table (tl2 applies the sign bit to the looked-up sum)
  gemv (CUDA)     one warp-group per output row block, packed bytes decoded in registers (decode)
  gemm (CUDA)     tiled over tokens x outputs (prefill)

`w_expr(fmt, parts, n, k)` is the single place a packed byte is decoded inside TIR.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping

import numpy as np

import tvm
from tvm import te, tirx

from ...ir import packing, semantics
from .target import tvm_target

SUPPORTED_FORMATS = ("t2", "i2", "tl1", "tl2", "tq1")
LUT_FORMATS = ("tl2", "tl1")
KPAD = 32  # x_q is padded with zeros to a multiple of this (vector width of the dot reduction)


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def padded_k(k: int) -> int:
    return _ceil(k, KPAD) * KPAD


def part_names(fmt: str) -> list[str]:
    """Names (canonical order) of the packed arrays of `fmt`, as TernaryLinear/TernaryMatMul take them."""
    if fmt == "t2":
        return ["w"]
    return list(packing.pack(np.zeros((1, 3), np.int8), fmt).keys())


def part_shapes(fmt: str, n: int, k: int) -> list[tuple[int, int]]:
    if fmt == "t2":
        return [(n, k)]
    return [(n, b) for b in packing._row_bytes(k, fmt).values()]


def part_dtypes(fmt: str) -> list[str]:
    return ["int8"] if fmt == "t2" else ["uint8"] * len(part_names(fmt))


# ------------------------------------------------------------------------------------------------
# Decoding one weight inside TIR
# ------------------------------------------------------------------------------------------------
def _i32(v):
    return tirx.Cast("int32", v)


def _tl2_digit_consts() -> list[int]:
    """C[r]: 2-bit fields (digit + 1) of balanced-ternary digit r of every TL2 index 0..13."""
    digs = packing.tl2_digits(np.arange(14))  # [14, 3]
    consts = []
    for r in range(3):
        c = 0
        for i in range(14):
            c |= int(digs[i, r] + 1) << (2 * i)
        consts.append(c)
    return consts


_TL2_C = _tl2_digit_consts()


def w_expr(fmt: str, parts, n, k):
    """int32 PrimExpr: the ternary weight w[n, k] decoded from the packed buffers `parts` (te tensors).

    Written with floordiv/floormod (k >= 0) so TVM's arithmetic simplifies them once k is split
    into (block, lane) loops.
    """
    fd, fm = tirx.floordiv, tirx.floormod
    if fmt == "t2":
        return _i32(parts[0][n, k])
    if fmt == "i2":
        byte = _i32(parts[0][n, fd(k, 128) * 32 + fm(k, 32)])
        shift = 6 - 2 * fd(fm(k, 128), 32)
        return ((byte >> shift) & 3) - 1
    if fmt == "tl1":
        byte = _i32(parts[0][n, fd(k, 4)])
        idx = (byte >> (fd(fm(k, 4), 2) * 4)) & 15
        return tirx.Select(fm(k, 2) == 0, fd(idx, 3), fm(idx, 3)) - 1
    if fmt == "tl2":
        t = fd(k, 3)
        r = fm(k, 3)
        idx = (_i32(parts[0][n, fd(t, 2)]) >> (fm(t, 2) * 4)) & 15
        sign = (_i32(parts[1][n, fd(t, 8)]) >> fm(t, 8)) & 1
        c = tirx.Select(r == 0, tirx.const(_TL2_C[0], "int32"),
                        tirx.Select(r == 1, tirx.const(_TL2_C[1], "int32"), tirx.const(_TL2_C[2], "int32")))
        d = ((c >> (idx * 2)) & 3) - 1
        return (d ^ (0 - sign)) + sign  # sign ? -d : d
    if fmt == "tq1":
        m = fm(k, 5)
        byte = _i32(parts[0][n, fd(k, 5)])
        p3 = tirx.Select(m == 0, 1, tirx.Select(m == 1, 3, tirx.Select(m == 2, 9, tirx.Select(m == 3, 27, 81))))
        return ((((byte * p3) & 255) * 3) >> 8) - 1
    raise ValueError(f"no TIR decoder for ternary format {fmt!r}; supported: {', '.join(SUPPORTED_FORMATS)}")


def _capacity(fmt: str, k: int) -> int:
    """How many weights per row the packed arrays of `fmt` hold (padding included)."""
    if fmt == "t2":
        return k
    if fmt == "i2":
        return _ceil(k, 128) * 128
    if fmt == "tl1":
        return _ceil(k, 4) * 4
    if fmt == "tl2":
        t = _ceil(k, 3)
        return 3 * min(2 * _ceil(t, 2), 8 * _ceil(t, 8))
    return _ceil(k, 5) * 5


def decoded_te(fmt: str, parts, n: int, k: int, kp: int):
    """int8 [N, Kp] weights decoded from the packed parts (0 beyond K)."""
    cap = _capacity(fmt, k)

    def f(j, kk):
        if cap >= kp:  # every k < Kp is a valid packed position; its padding decodes to 0
            return tirx.Cast("int8", w_expr(fmt, parts, j, kk))
        return tirx.Select(kk < k, tirx.Cast("int8", w_expr(fmt, parts, j, tirx.min(kk, k - 1))),
                           tirx.const(0, "int8"))

    return te.compute((n, kp), f, name="wdec")


def _placeholders(fmt: str, n: int, k: int):
    return [te.placeholder(s, dt, name=f"w_{nm}") for s, dt, nm in
            zip(part_shapes(fmt, n, k), part_dtypes(fmt), part_names(fmt))]


# ------------------------------------------------------------------------------------------------
# Activation quantization (per-token absmax, round half to even; semantics.quantize_act)
# ------------------------------------------------------------------------------------------------
def quantize_te(x: te.Tensor, k: int, kp: int, eps: float):
    """x f32 [M, K] -> (x_q int8 [M, kp] zero-padded, a_scale f32 [M, 1])."""
    m = x.shape[0]
    rk = te.reduce_axis((0, k), name="rk")
    amax = te.compute((m,), lambda i: te.max(te.abs(x[i, rk]), axis=rk), name="amax")
    a_scale = te.compute((m, 1), lambda i, _: tirx.const(semantics.ACT_QMAX, "float32")
                         / te.max(amax[i], tirx.const(eps, "float32")), name="a_scale")

    def q(i, j):
        v = tirx.nearbyint(x[i, tirx.min(j, k - 1)] * a_scale[i, 0])
        v = te.min(te.max(v, tirx.const(semantics.ACT_QMIN, "float32")), tirx.const(semantics.ACT_QMAX, "float32"))
        return tirx.Select(j < k, tirx.Cast("int8", v), tirx.const(0, "int8"))

    x_q = te.compute((m, kp), q, name="x_q")
    return x_q, a_scale


def quantize_func(k: int, eps: float = semantics.ACT_EPS, target_kind="cpu") -> tirx.PrimFunc:
    m = tirx.Var("m", "int64")
    x = te.placeholder((m, k), "float32", name="x")
    x_q, a_scale = quantize_te(x, k, padded_k(k), eps)
    func = te.create_prim_func([x, x_q, a_scale]).with_attr("global_symbol", f"ternc_quantize_k{k}")
    if tvm_target(target_kind).gpu:
        func = _cuda_schedule_quantize(func)
    return func.with_attr("op_pattern", 8).with_attr("tirx.is_scheduled", True)


# ------------------------------------------------------------------------------------------------
# CPU kernels
# ------------------------------------------------------------------------------------------------
def dot_te(fmt: str, k: int, n: int):
    m = tirx.Var("m", "int64")
    kp = padded_k(k)
    xq = te.placeholder((m, kp), "int8", name="x_q")
    parts = _placeholders(fmt, n, k)
    wdec = decoded_te(fmt, parts, n, k, kp)
    rk = te.reduce_axis((0, kp), name="rk")
    acc = te.compute((m, n), lambda i, j: te.sum(_i32(xq[i, rk]) * _i32(wdec[j, rk]), axis=rk), name="acc")
    return [xq, *parts, acc]


_DECODE_SPLIT = {  # decode-loop split per format, so k // 3, k % 5, ... simplify to loop variables
    "tl2": [None, 8, 3],  # 8 triples share one sign byte (and 4 nibble bytes)
    "tq1": [None, 5],  # 5 trits per byte
    "tl1": [None, 4],  # 4 weights (2 pairs) per byte
}


def _cpu_schedule_dot(func: tirx.PrimFunc, n: int, kp: int, fmt: str = "i2") -> tirx.PrimFunc:
    """Rows of W outermost (parallel); each row is decoded once into a [Kp] int8 scratch (in cache)
    and reused by every token; per (token, row) the K reduction runs as KPAD int32 vector lanes in
    a local (register) accumulator (rfactor), then the lanes are summed."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    blk = sch.get_sblock("acc")
    i, j, k = sch.get_loops(blk)
    ko, ki = sch.split(k, [kp // KPAD, KPAD])
    rf = sch.rfactor(ki, 2)  # lane partial sums acc_rf[i, j, lane]; `acc` then sums the lanes
    ri, rj, rko, rki = sch.get_loops(rf)
    sch.reorder(rj, ri)
    sch.vectorize(rki)
    sch.parallel(rj)
    sch.reverse_compute_at(blk, ri)
    sch.set_scope(rf, 0, "local")
    dec = sch.get_sblock("wdec")
    sch.compute_at(dec, rj)
    dl = sch.get_loops(dec)
    if fmt in _DECODE_SPLIT:
        inner = sch.split(dl[-1], _DECODE_SPLIT[fmt])[1:]
        for lp in inner:
            sch.unroll(lp)
    else:  # t2, i2: byte and shift are affine in (block, lane): vectorize the lanes
        _, dki = sch.split(dl[-1], [kp // KPAD, KPAD])
        sch.vectorize(dki)
    return sch.mod["main"]


DOT16_LANES = 64
DOT16_MAX_K = 255 * DOT16_LANES  # per-lane int16 sums stay exact: |sum| <= 128 * 255 < 32768


def dot16_te(fmt: str, k: int, n: int):
    """Like `dot`, but each of 64 lanes accumulates x * w in int16 (exact while K <= DOT16_MAX_K:
    a lane sums at most 255 products of magnitude <= 128); lanes are summed in int32 at the end."""
    if padded_k(k) > DOT16_MAX_K:
        raise ValueError(f"dot16 needs K <= {DOT16_MAX_K}, got {k}")
    m = tirx.Var("m", "int64")
    kp = _ceil(k, DOT16_LANES) * DOT16_LANES
    xq = te.placeholder((m, padded_k(k)), "int8", name="x_q")
    parts = _placeholders(fmt, n, k)
    wdec = decoded_te(fmt, parts, n, k, kp)
    ro = te.reduce_axis((0, kp // DOT16_LANES), name="ro")

    def xv(i, kk):
        if kp == padded_k(k):
            return tirx.Cast("int16", xq[i, kk])
        return tirx.Select(kk < padded_k(k), tirx.Cast("int16", xq[i, tirx.min(kk, padded_k(k) - 1)]),
                           tirx.const(0, "int16"))

    part = te.compute((m, n, DOT16_LANES), lambda i, j, l: te.sum(
        xv(i, ro * DOT16_LANES + l) * tirx.Cast("int16", wdec[j, ro * DOT16_LANES + l]), axis=ro), name="part")
    rl = te.reduce_axis((0, DOT16_LANES), name="rl")
    acc = te.compute((m, n), lambda i, j: te.sum(tirx.Cast("int32", part[i, j, rl]), axis=rl), name="acc")
    return [xq, *parts, acc]


def _cpu_schedule_dot16(func: tirx.PrimFunc, n: int, kp: int, fmt: str) -> tirx.PrimFunc:
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    blk = sch.get_sblock("acc")
    part = sch.get_sblock("part")
    i, j = sch.get_loops(blk)[:2]
    sch.reorder(j, i)
    sch.parallel(j)
    sch.compute_at(part, i)
    sch.set_scope(part, 0, "local")
    pl = sch.get_loops(part)  # j, i, l, ro (ro is gone when K fits one lane block)
    if len(pl) == 4:
        sch.reorder(pl[3], pl[2])
    sch.vectorize(pl[2])
    dec = sch.get_sblock("wdec")
    sch.compute_at(dec, j)
    dl = sch.get_loops(dec)
    if fmt in _DECODE_SPLIT:
        for lp in sch.split(dl[-1], _DECODE_SPLIT[fmt])[1:]:
            sch.unroll(lp)
    else:
        _, dki = sch.split(dl[-1], [None, KPAD])
        sch.vectorize(dki)
    return sch.mod["main"]


def lut_te(fmt: str, k: int, n: int):
    """T-MAC style: per token and activation group a table of all signed sums; weights index it."""
    if fmt not in LUT_FORMATS:
        raise ValueError(f"the LUT kernel supports {LUT_FORMATS}, not {fmt!r}")
    m = tirx.Var("m", "int64")
    kp = padded_k(k)
    xq = te.placeholder((m, kp), "int8", name="x_q")
    parts = _placeholders(fmt, n, k)
    if fmt == "tl2":
        entries = 14
        groups = _ceil(k, 3)

        def xg(i, t, r):  # activation r of group t (0 beyond K: x_q padded only to kp)
            kk = t * 3 + r
            return tirx.Select(kk < k, _i32(xq[i, tirx.min(kk, kp - 1)]), 0)

        def table(i, t, e):
            val = tirx.const(0, "int32")
            # T[e] = sum_r digit(e, r) * a_r, digits as constants selected by e
            for r in range(3):
                c = tirx.const(_TL2_C[r], "int32")
                d = ((c >> (e * 2)) & 3) - 1
                val = val + d * xg(i, t, r)
            return val

        lut = te.compute((m, groups, entries), table, name="lut")
        rt = te.reduce_axis((0, groups), name="rt")

        def body(i, j):
            idx = (_i32(parts[0][j, rt >> 1]) >> ((rt & 1) * 4)) & 15
            s = (_i32(parts[1][j, rt >> 3]) >> (rt & 7)) & 1
            v = lut[i, rt, idx]
            return te.sum((v ^ (0 - s)) + s, axis=rt)  # conditional negate: s ? -v : v

        acc = te.compute((m, n), body, name="acc")
    else:  # tl1: pairs, 9 entries T[e] = (e//3 - 1) * a0 + (e%3 - 1) * a1
        groups = _ceil(k, 2)

        def xg(i, t, r):
            kk = t * 2 + r
            return tirx.Select(kk < k, _i32(xq[i, tirx.min(kk, kp - 1)]), 0)

        lut = te.compute((m, groups, 9), lambda i, t, e: (tirx.truncdiv(e, 3) - 1) * xg(i, t, 0)
                         + (tirx.truncmod(e, 3) - 1) * xg(i, t, 1), name="lut")
        rt = te.reduce_axis((0, groups), name="rt")

        def body(i, j):
            idx = (_i32(parts[0][j, rt >> 1]) >> ((rt & 1) * 4)) & 15
            return te.sum(lut[i, rt, idx], axis=rt)

        acc = te.compute((m, n), body, name="acc")
    return [xq, *parts, acc]


def _cpu_schedule_lut(func: tirx.PrimFunc, n: int) -> tirx.PrimFunc:
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    lut = sch.get_sblock("lut")
    li, lt, le = sch.get_loops(lut)
    sch.unroll(le)
    blk = sch.get_sblock("acc")
    i, j, t = sch.get_loops(blk)
    sch.reorder(j, i)  # weight rows outermost (parallel), tokens inside: packed rows stay in cache
    sch.parallel(j)
    return sch.mod["main"]


FLOAT_LANES = 16


@lru_cache(maxsize=None)
def dense_func(k: int, n: int, dtype: str = "float32", wdtype: str | None = None) -> tirx.PrimFunc:
    """Float Linear for CPU: y[M, N] = x[M, K] @ w[N, K]^T (torch layout, no transpose), rows of w
    outermost (parallel), K reduced in FLOAT_LANES vector lanes kept in registers (rfactor: the
    summation order differs from a sequential dot product, by float rounding only). `wdtype`
    (e.g. float16 tied embeddings) is widened to `dtype` in registers."""
    from tvm import s_tir

    wdtype = wdtype or dtype
    m = tirx.Var("m", "int64")
    kp = _ceil(k, FLOAT_LANES) * FLOAT_LANES
    x = te.placeholder((m, k), dtype, name="x")
    w = te.placeholder((n, k), wdtype, name="w")
    rk = te.reduce_axis((0, kp), name="rk")
    zero = tirx.const(0, dtype)

    def wv(j, kk):
        return w[j, kk] if wdtype == dtype else tirx.Cast(dtype, w[j, kk])

    def term(i, j):
        if kp == k:
            return x[i, rk] * wv(j, rk)
        kk = tirx.min(rk, k - 1)
        return tirx.Select(rk < k, x[i, kk] * wv(j, kk), zero)

    y = te.compute((m, n), lambda i, j: te.sum(term(i, j), axis=rk), name="y")
    sch = s_tir.Schedule(te.create_prim_func([x, w, y]))
    blk = sch.get_sblock("y")
    i, j, kl = sch.get_loops(blk)
    _, ki = sch.split(kl, [kp // FLOAT_LANES, FLOAT_LANES])
    rf = sch.rfactor(ki, 2)
    ri, rj, _, rki = sch.get_loops(rf)
    sch.reorder(rj, ri)
    sch.vectorize(rki)
    sch.parallel(rj)
    sch.reverse_compute_at(blk, ri)
    sch.set_scope(rf, 0, "local")
    return (sch.mod["main"].with_attr("global_symbol", f"ternc_dense_k{k}_n{n}_{wdtype}").with_attr("op_pattern", 8)
            .with_attr("tirx.is_scheduled", True))


def gqa_scores_te(hq: int, hkv: int, d: int, sq, name: str):
    """(q [b, hq, sq, d], k [b, hkv, sk, d], s [b, hq, sq, sk]) with s[b, h, i, j] = q[b, h, i] .
    k[b, h // (hq/hkv), j]: GQA without repeating K. The one definition the CPU and CUDA attention
    kernels schedule."""
    b, sk = tirx.Var("b", "int64"), tirx.Var("sk", "int64")
    q = te.placeholder((b, hq, sq, d), "float32", name="q")
    k = te.placeholder((b, hkv, sk, d), "float32", name="k")
    rd = te.reduce_axis((0, d), name="rd")
    g = hq // hkv
    return q, k, te.compute((b, hq, sq, sk), lambda bb, h, i, j: te.sum(q[bb, h, i, rd] * k[bb, h // g, j, rd], axis=rd),
                            name=name)


def gqa_pv_te(hq: int, hkv: int, d: int, sq):
    """(p [b, hq, sq, sk], v [b, hkv, sk, d], o [b, hq, sq, d]) with o[b, h, i] = sum_j p[b, h, i, j] *
    v[b, h // (hq/hkv), j]: GQA without repeating V (CPU and CUDA kernels schedule this)."""
    b, sk = tirx.Var("b", "int64"), tirx.Var("sk", "int64")
    p = te.placeholder((b, hq, sq, sk), "float32", name="p")
    v = te.placeholder((b, hkv, sk, d), "float32", name="v")
    rj = te.reduce_axis((0, sk), name="rj")
    g = hq // hkv
    return p, v, te.compute((b, hq, sq, d), lambda bb, h, i, e: te.sum(p[bb, h, i, rj] * v[bb, h // g, rj, e], axis=rj),
                            name="pv")


@lru_cache(maxsize=None)
def attention_scores_func(hq: int, hkv: int, d: int, scale: float, causal: bool) -> tirx.PrimFunc:
    """CPU: s[b, h, i, j] = scale * q[b, h, i, :] . k[b, h // (hq/hkv), j, :], -inf where key j is
    after query i's absolute position (bottom-right causal). GQA without repeating K; the head dim
    is reduced in vector lanes (rfactor); heads x queries run in parallel."""
    from tvm import s_tir

    q, kk, dot = gqa_scores_te(hq, hkv, d, tirx.Var("sq", "int64"), "dot")
    b, _, sq, sk = dot.shape
    sc = tirx.const(scale, "float32")
    ninf = tirx.const(float("-inf"), "float32")
    if causal:
        s = te.compute((b, hq, sq, sk), lambda bb, h, i, j: tirx.Select(j <= i + (sk - sq), dot[bb, h, i, j] * sc, ninf),
                       name="scores")
    else:
        s = te.compute((b, hq, sq, sk), lambda bb, h, i, j: dot[bb, h, i, j] * sc, name="scores")
    sch = s_tir.Schedule(te.create_prim_func([q, kk, s]))
    blk = sch.get_sblock("dot")
    lanes = 16 if d % 16 == 0 else (8 if d % 8 == 0 else 0)
    if lanes:
        ld = sch.get_loops(blk)[-1]
        _, ldi = sch.split(ld, [d // lanes, lanes])
        rf = sch.rfactor(ldi, 4)
        rl = sch.get_loops(rf)  # b, h, i, j, do, di
        sch.vectorize(rl[-1])
        sch.set_scope(rf, 0, "local")
        sch.reverse_compute_at(blk, rl[3])
        sch.parallel(sch.fuse(rl[1], rl[2]))
    else:
        lb, lh, li = sch.get_loops(blk)[:3]
        sch.parallel(sch.fuse(lh, li))
    ob = sch.get_loops(sch.get_sblock("scores"))
    sch.parallel(sch.fuse(ob[1], ob[2]))
    return (sch.mod["main"].with_attr("global_symbol", f"ternc_attn_scores_h{hq}_{hkv}_d{d}").with_attr("op_pattern", 8)
            .with_attr("tirx.is_scheduled", True))


@lru_cache(maxsize=None)
def attention_pv_func(hq: int, hkv: int, d: int) -> tirx.PrimFunc:
    """CPU: o[b, h, i, :] = sum_j p[b, h, i, j] * v[b, h // (hq/hkv), j, :] (GQA without repeating V),
    accumulated over j into a vectorized head-dim row; heads x queries in parallel."""
    from tvm import s_tir

    p, v, o = gqa_pv_te(hq, hkv, d, tirx.Var("sq", "int64"))
    sch = s_tir.Schedule(te.create_prim_func([p, v, o]))
    blk = sch.get_sblock("pv")
    lb, lh, li, le, lj = sch.get_loops(blk)
    sch.reorder(lj, le)
    sch.parallel(sch.fuse(lh, li))
    init = sch.decompose_reduction(blk, lj)
    sch.vectorize(sch.get_loops(init)[-1])  # (the update's contiguous e-loop: LLVM vectorizes it)
    return (sch.mod["main"].with_attr("global_symbol", f"ternc_attn_pv_h{hq}_{hkv}_d{d}").with_attr("op_pattern", 8)
            .with_attr("tirx.is_scheduled", True))


@lru_cache(maxsize=None)
def kv_append_func(h: int, d: int, dtype: str = "float32") -> tirx.PrimFunc:
    """CPU: out = concat([past, new], axis=2) for KV caches [b, h, *, d]; heads in parallel, rows
    copied with branch-free-per-row loops (the default concat lowering was ~8 ns/element)."""
    from tvm import s_tir

    b, p, s = (tirx.Var(nm, "int64") for nm in ("b", "p", "s"))
    past = te.placeholder((b, h, p, d), dtype, name="past")
    new = te.placeholder((b, h, s, d), dtype, name="new")
    out = te.compute((b, h, p + s, d), lambda bb, hh, j, e: tirx.if_then_else(
        j < p, past[bb, hh, j, e], new[bb, hh, j - p, e]), name="kv")
    sch = s_tir.Schedule(te.create_prim_func([past, new, out]))
    lb, lh, lj, le = sch.get_loops(sch.get_sblock("kv"))
    sch.parallel(lh)
    return (sch.mod["main"].with_attr("global_symbol", f"ternc_kv_append_h{h}_d{d}").with_attr("op_pattern", 8)
            .with_attr("tirx.is_scheduled", True))


# ------------------------------------------------------------------------------------------------
# CUDA kernels
# ------------------------------------------------------------------------------------------------
def _cuda_schedule_quantize(func):
    """One thread block per token for the absmax (32 threads, cross-thread max reduction), then
    flat elementwise kernels for the scale and the int8 codes."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    amax = sch.get_sblock("amax")
    i, k = sch.get_loops(amax)
    ko, ki = sch.split(k, [None, 32])
    sch.reorder(ki, ko)
    sch.bind(i, "blockIdx.x")
    sch.bind(ki, "threadIdx.x")
    for name, width in (("a_scale", 32), ("x_q", 256)):
        blk = sch.get_sblock(name)
        f = sch.fuse(*sch.get_loops(blk))
        bo, bi = sch.split(f, [None, width])
        sch.bind(bo, "blockIdx.x")
        sch.bind(bi, "threadIdx.x")
    return sch.mod["main"]


def _cuda_schedule_gemv(func, n: int, kp: int):
    """Decode (few tokens): 4 output rows per thread block (threadIdx.y); 32 lanes (threadIdx.x)
    split K, each decoding its packed bytes in registers; TVM's cross-thread reduction (warp
    shuffles) sums the lanes."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    sch.compute_inline(sch.get_sblock("wdec"))
    blk = sch.get_sblock("acc")
    i, j, k = sch.get_loops(blk)
    ij = sch.fuse(i, j)
    bx, ty = sch.split(ij, [None, 4])
    ko, ki = sch.split(k, [kp // KPAD, KPAD])
    sch.reorder(ki, ko)
    sch.bind(bx, "blockIdx.x")
    sch.bind(ty, "threadIdx.y")
    sch.bind(ki, "threadIdx.x")
    return sch.mod["main"]


def _cuda_schedule_gemm(func, n: int, kp: int):
    """Prefill: 8 tokens x 32 outputs per thread block, one thread per output, weights decoded in
    registers inside the K loop."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    sch.compute_inline(sch.get_sblock("wdec"))
    blk = sch.get_sblock("acc")
    i, j, k = sch.get_loops(blk)
    io, ii = sch.split(i, [None, 8])
    jo, ji = sch.split(j, [None, 32])
    sch.reorder(io, jo, ii, ji, k)
    sch.bind(io, "blockIdx.y")
    sch.bind(jo, "blockIdx.x")
    sch.bind(ii, "threadIdx.y")
    sch.bind(ji, "threadIdx.x")
    return sch.mod["main"]


def dp4a_pack_func(k: int, row_tile: int = 1) -> tirx.PrimFunc:
    """CUDA helper for the dp4a GEMV (cuda_ternary.py): x_q int8 [M, padded_k(K)] -> group-major
    int32 activation words X [M', 4, Kp128/16] (zero beyond K) and S[M'] = sum_k x_q (the code
    offset), M' = M rounded up to `row_tile` (padding rows are zero: the prefill GEMM's token tiles)."""
    from tvm import s_tir

    m = tirx.Var("m", "int64")
    mp = m if row_tile == 1 else tirx.floordiv(m + (row_tile - 1), row_tile) * row_tile
    kp = padded_k(k)
    k128 = _ceil(k, 128) * 128
    kw = k128 // 16
    xq = te.placeholder((m, kp), "int8", name="x_q")

    def byte(i, kk):
        ok = kk < kp if row_tile == 1 else tirx.all(kk < kp, i < m)
        return tirx.Select(ok, tirx.Cast("int32", xq[tirx.min(i, m - 1), tirx.min(kk, kp - 1)]) & 255, 0)

    def word(i, g, w):
        base = (w // 8) * 128 + g * 32 + (w % 8) * 4
        return byte(i, base) | (byte(i, base + 1) << 8) | (byte(i, base + 2) << 16) | (byte(i, base + 3) << 24)

    xw = te.compute((mp, 4, kw), word, name="xw")
    rk = te.reduce_axis((0, kp), name="rk")
    ssum = te.compute((mp,), lambda i: te.sum(tirx.Select(i < m, tirx.Cast("int32", xq[tirx.min(i, m - 1), rk]), 0),
                                              axis=rk), name="ssum")
    sch = s_tir.Schedule(te.create_prim_func([xq, xw, ssum]))
    wb = sch.get_sblock("xw")
    f = sch.fuse(*sch.get_loops(wb))
    bo, bi = sch.split(f, [None, 128])
    sch.bind(bo, "blockIdx.x")
    sch.bind(bi, "threadIdx.x")
    sb = sch.get_sblock("ssum")
    si, sk = sch.get_loops(sb)
    sch.bind(si, "blockIdx.x")
    _, ski = sch.split(sk, [None, 32])
    sch.bind(ski, "threadIdx.x")
    return (sch.mod["main"].with_attr("global_symbol", f"ternc_dp4a_pack_k{k}_t{row_tile}").with_attr("op_pattern", 8)
            .with_attr("tirx.is_scheduled", True))


def _schedule_of(tensors: list, block: str):
    from tvm import s_tir

    sch = s_tir.Schedule(te.create_prim_func(tensors))
    return sch, sch.get_sblock(block)


def gqa_decode_scores_func(hq: int, hkv: int, d: int) -> tirx.PrimFunc:
    """CUDA decode attention scores for one query token: s[b, h, 0, j] = q[b, h, 0] . k[b, h // g, j]
    (GQA by indexing, no repeated K). A thread per (head, key) reduces the head dim in order (no
    cross-thread reduction; K rows are re-read from L1/L2 by the heads of a group). The caller
    pre-scales q."""
    q, k, s = gqa_scores_te(hq, hkv, d, 1, "scores")
    sch, blk = _schedule_of([q, k, s], "scores")
    lb, lh, li, lj, lr = sch.get_loops(blk)
    f = sch.fuse(lb, lh, li, lj)
    fo, fi = sch.split(f, [None, 128])
    sch.bind(fo, "blockIdx.x")
    sch.bind(fi, "threadIdx.x")
    _, ri = sch.split(lr, [None, 4])
    sch.unroll(ri)
    return (sch.mod["main"].with_attr("global_symbol", f"ternc_gqa_scores_h{hq}_{hkv}_d{d}").with_attr("op_pattern", 8)
            .with_attr("tirx.is_scheduled", True))


def gqa_decode_pv_func(hq: int, hkv: int, d: int) -> tirx.PrimFunc:
    """CUDA decode attention output for one query token: out[b, h, 0, e] = sum_j p[b, h, 0, j] *
    v[b, h // g, j, e]. A block per head, a thread per output element e (coalesced rows of V), keys
    summed in order by each thread."""
    p, v, o = gqa_pv_te(hq, hkv, d, 1)
    sch, blk = _schedule_of([p, v, o], "pv")
    lb, lh, li, le, lr = sch.get_loops(blk)
    sch.bind(sch.fuse(lb, lh, li), "blockIdx.x")
    sch.bind(le, "threadIdx.x")
    acc = sch.cache_write(blk, 0, "local")
    sch.reverse_compute_at(acc, le)
    return (sch.mod["main"].with_attr("global_symbol", f"ternc_gqa_pv_h{hq}_{hkv}_d{d}").with_attr("op_pattern", 8)
            .with_attr("tirx.is_scheduled", True))


GEMM_TOKEN_TILE = 32  # cuda_ternary.build_gemm's default tile_m


def dp4a_gemm_func(k: int, n: int) -> tirx.PrimFunc:
    """The tiled dp4a W2A8 GEMM of cuda_ternary.py for prefill: token tiles of GEMM_TOKEN_TILE, the
    tile count a scalar parameter: (W, X, S, tiles, Y); X, S, Y have tiles * GEMM_TOKEN_TILE rows."""
    from .cuda_ternary import build_gemm

    return (build_gemm(n, k, tile_m=GEMM_TOKEN_TILE).with_attr("global_symbol", f"ternc_tmm_dp4a_gemm_i2_k{k}_n{n}")
            .with_attr("op_pattern", 8).with_attr("tirx.is_scheduled", True))


def dp4a_gemv_func(k: int, n: int) -> tirx.PrimFunc:
    """The dp4a W2A8 GEMV of cuda_ternary.py (i2 weights as int32 words), with a symbolic M."""
    from .cuda_ternary import build_gemv

    m = tirx.Var("m", "int64")
    return (build_gemv(n, k, m).with_attr("global_symbol", f"ternc_tmm_dp4a_i2_k{k}_n{n}")
            .with_attr("op_pattern", 8).with_attr("tirx.is_scheduled", True))


# ------------------------------------------------------------------------------------------------
# CPU kernel: AVX-512 VNNI on packed i2 codes (x86 with avx512vnni only)
# ------------------------------------------------------------------------------------------------
VNNI_FEATURES = ("avx512vnni", "avx512bw", "avx512vl")
VNNI_TILES = {"decode": (1, 4), "prefill": (4, 2)}  # (tokens MT, rows NT) per register tile


def _vnni_func(k: int, n: int) -> tirx.PrimFunc:
    """i2 codes fed to `vpdpbusd` without decoding them to int8 in memory (llama.cpp TQ2_0 / bitnet.cpp
    I2_S style). With code c = w + 1 in {0, 1, 2}: acc = sum_k c_k x_k - sum_k x_k. One 64-byte load
    of a row's codes holds two 128-weight i2 blocks; `(bytes >> (6 - 2g)) & 3` (g < 4) are 64 unsigned
    codes, and one `vpdpbusd` (u8 x s8 -> 4-way int32 dot) accumulates them against 64 activations.

    Same signature as the `dot` kernel (x_q int8 [M, padded_k(K)], codes uint8 [N, 32 ceil(K/128)],
    acc int32 [M, N]). Phase 1 (once per token, inside the kernel): x_q permuted into a workspace
    (block pair p, group g -> x[256p + 32g + j], x[256p + 128 + 32g + j], j < 32; zeros beyond
    padded_k(K)) and its row sum. Phase 2: rows in tiles of NT (parallel), tokens in tiles of MT, one
    int32x16 register accumulator per (row, token), K innermost. Decode (M == 1) and prefill tiles
    (VNNI_TILES) are chosen at run time. Ragged edges: a row count of 128-blocks that is odd ends with
    one 32-byte block (256-bit `vpdpbusd`, AVX512VL); row/token indices are clamped at N-1 / M-1 (the
    last tile recomputes a row or token) and only in-range results are stored. Exact: |lane sums|
    stay far below 2^31 (<= 2 * 128 * K / 16)."""
    from tvm.script import tirx as T

    kp = padded_k(k)  # x_q row length (zero beyond K)
    kb = _ceil(k, 128) * 32  # code bytes per row
    nblk = kb // 32
    P = nblk // 2  # full 64-byte chunks (two 128-weight blocks)
    tail = nblk % 2  # one more 32-byte block
    k256 = _ceil(k, 256) * 256
    vp512, vp256 = "llvm.x86.avx512.vpdpbusd.512", "llvm.x86.avx512.vpdpbusd.256"
    (mt1, nt1), (mt2, nt2) = VNNI_TILES["decode"], VNNI_TILES["prefill"]

    @T.macro(hygienic=False)
    def tiles(mt, nt, n, P, tail, vp512, vp256):
        for jo in T.parallel((n + nt - 1) // nt):
            acc = T.decl_buffer((nt * mt * 16,), "int32", scope="local")
            red = T.decl_buffer((1,), "int32", scope="local")
            for io in range((m + mt - 1) // mt):
                for a in T.serial(nt * mt):
                    acc[T.ramp(a * 16, 1, 16)] = T.broadcast(T.int32(0), 16)
                for p in range(P):
                    for jn in T.unroll(nt):
                        for g in T.unroll(4):
                            for ii in T.unroll(mt):
                                acc[T.ramp((jn * mt + ii) * 16, 1, 16)] = T.call_llvm_pure_intrin(
                                    "int32x16", vp512, acc[T.ramp((jn * mt + ii) * 16, 1, 16)],
                                    T.bitwise_and(
                                        T.shift_right(w[T.min(jo * nt + jn, n - 1), T.ramp(p * 64, 1, 64)],
                                                      T.broadcast(T.uint8(6 - 2 * g), 64)),
                                        T.broadcast(T.uint8(3), 64)),
                                    xp[T.min(io * mt + ii, m - 1), T.ramp(p * 256 + g * 64, 1, 64)])
                for t in range(tail):
                    for jn in T.unroll(nt):
                        for g in T.unroll(4):
                            for ii in T.unroll(mt):
                                acc[T.ramp((jn * mt + ii) * 16, 1, 8)] = T.call_llvm_pure_intrin(
                                    "int32x8", vp256, acc[T.ramp((jn * mt + ii) * 16, 1, 8)],
                                    T.bitwise_and(
                                        T.shift_right(w[T.min(jo * nt + jn, n - 1), T.ramp(P * 64 + t, 1, 32)],
                                                      T.broadcast(T.uint8(6 - 2 * g), 32)),
                                        T.broadcast(T.uint8(3), 32)),
                                    xp[T.min(io * mt + ii, m - 1), T.ramp(P * 256 + g * 64 + t, 1, 32)])
                for jn, ii in T.grid(nt, mt):
                    if io * mt + ii < m and jo * nt + jn < n:
                        red[0] = 0
                        for l in T.unroll(16):
                            red[0] = red[0] + acc[(jn * mt + ii) * 16 + l]
                        out[io * mt + ii, jo * nt + jn] = red[0] - xs[io * mt + ii]

    @T.prim_func(s_tir=True)
    def vnni(var_x: T.handle, w: T.Buffer((n, kb), "uint8"), var_out: T.handle):
        T.func_attr({"tir.noalias": True})
        m = T.int64()
        x = T.match_buffer(var_x, (m, kp), "int8")
        out = T.match_buffer(var_out, (m, n), "int32")
        with T.sblock("root"):
            xp = T.alloc_buffer((m, k256), "int8")
            xs = T.alloc_buffer((m,), "int32")
            for i in range(m):
                for p, g, h in T.grid(k256 // 256, 4, 2):
                    for j in T.vectorized(32):
                        xp[i, p * 256 + g * 64 + h * 32 + j] = T.if_then_else(
                            p * 256 + h * 128 + g * 32 < kp,
                            x[i, T.min(p * 256 + h * 128 + g * 32, kp - 32) + j], T.int8(0))
                s = T.decl_buffer((1,), "int32", scope="local")
                s[0] = 0
                for kk in range(kp):
                    s[0] = s[0] + T.Cast("int32", x[i, kk])
                xs[i] = s[0]
            if m == 1:
                tiles(mt1, nt1, n, P, tail, vp512, vp256)
            else:
                tiles(mt2, nt2, n, P, tail, vp512, vp256)

    return vnni


def target_has_vnni(target) -> bool:
    """Whether an LLVM target (its mtriple/mcpu/mattr) has AVX-512 VNNI (+BW, VL); None (generic
    `llvm`), aarch64 or CUDA: no."""
    if target is None:
        return False
    if isinstance(target, str):
        target = tvm.target.Target(target)
    if target.kind.name != "llvm":
        return False
    triple = str(target.attrs.get("mtriple", "") or "")
    if triple and not triple.startswith(("x86_64", "i686", "i386")):
        return False
    from tvm.target import codegen

    try:
        return bool(codegen.llvm_cpu_has_features(list(VNNI_FEATURES), target))
    except Exception:  # noqa: BLE001 - an LLVM without the x86 backend
        return False


def target_runs_here(target) -> bool:
    """Whether code built for `target` can run on this machine (measuring kernels executes them):
    no mtriple or this host's, no mcpu or this host's CPU (LLVM's name), and every +feature of mattr
    present on the host."""
    if target is None:
        return True
    if isinstance(target, str):
        target = tvm.target.Target(target)
    if target.kind.name != "llvm":
        return False
    from tvm.target import codegen

    triple = str(target.attrs.get("mtriple", "") or "")
    if triple and triple.split("-")[0] != str(codegen.llvm_get_system_triple()).split("-")[0]:
        return False
    host = str(codegen.llvm_get_system_cpu())
    mcpu = str(target.attrs.get("mcpu", "") or "")
    if mcpu and mcpu != host:
        return False
    feats = [str(a)[1:] for a in (target.attrs.get("mattr", None) or []) if str(a).startswith("+")]
    if feats:
        try:
            return bool(codegen.llvm_cpu_has_features(feats, tvm.target.Target({"kind": "llvm", "mcpu": host})))
        except Exception:  # noqa: BLE001
            return False
    return True


# ------------------------------------------------------------------------------------------------
# Public constructors
# ------------------------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def matmul_func(fmt: str, k: int, n: int, kind: str) -> tirx.PrimFunc:
    """Scheduled PrimFunc (x_q int8 [M, Kp], *packed parts, acc int32 [M, N]) for one weight shape."""
    if fmt not in SUPPORTED_FORMATS:
        raise ValueError(f"ternary format {fmt!r} has no TVM kernel; supported: {', '.join(SUPPORTED_FORMATS)}")
    kp = padded_k(k)
    if kind == "dot":
        func = _cpu_schedule_dot(te.create_prim_func(dot_te(fmt, k, n)), n, kp, fmt)
    elif kind == "dot16":
        func = _cpu_schedule_dot16(te.create_prim_func(dot16_te(fmt, k, n)), n, kp, fmt)
    elif kind == "lut":
        func = _cpu_schedule_lut(te.create_prim_func(lut_te(fmt, k, n)), n)
    elif kind == "vnni":
        if fmt != "i2":
            raise ValueError(f"the vnni kernel supports i2, not {fmt!r}")
        func = _vnni_func(k, n)
    elif kind == "gemv":
        func = _cuda_schedule_gemv(te.create_prim_func(dot_te(fmt, k, n)), n, kp)
    elif kind == "gemm":
        func = _cuda_schedule_gemm(te.create_prim_func(dot_te(fmt, k, n)), n, kp)
    else:
        raise ValueError(f"unknown ternary kernel kind {kind!r}")
    # op_pattern 8 = kOpaque: FuseOps must not fuse neighbours into a hand-scheduled kernel
    # (and tirx.is_scheduled: dlight's default GPU schedules must leave it alone)
    return (func.with_attr("global_symbol", f"ternc_tmm_{kind}_{fmt}_k{k}_n{n}").with_attr("op_pattern", 8)
            .with_attr("tirx.is_scheduled", True))


def available_kinds(fmt: str, target_kind, k: int | None = None, target=None) -> list[str]:
    """Kernel kinds for a format: CPU `dot` (int32 lanes), `dot16` (int16 lanes, K <= DOT16_MAX_K),
    `lut` (tl2/tl1), `vnni` (i2, only when the LLVM `target` has AVX-512 VNNI: target_has_vnni);
    CUDA `gemv`/`gemm`."""
    if tvm_target(target_kind).gpu:
        return ["gemv", "gemm"]
    kinds = ["dot"]
    if k is None or padded_k(k) <= DOT16_MAX_K:
        kinds.append("dot16")
    if fmt in LUT_FORMATS:
        kinds.append("lut")
    if fmt == "i2" and target_has_vnni(target):
        kinds.append("vnni")
    return kinds


# ------------------------------------------------------------------------------------------------
# Standalone build/run (tests, measured kernel choice)
# ------------------------------------------------------------------------------------------------
@dataclass
class KernelTiming:
    kind: str
    seconds: float


def build_standalone(fmt: str, k: int, n: int, kind: str, target="llvm"):
    return tvm.compile(tvm.IRModule({"main": matmul_func(fmt, k, n, kind)}), target=target)


def run_standalone(lib, x_q: np.ndarray, parts: list[np.ndarray], n: int, dev=None) -> np.ndarray:
    """Run a compiled matmul kernel on int8 x_q [M, K] (padded here) and numpy packed parts."""
    dev = dev or tvm.cpu()
    m, k = x_q.shape
    xp = np.zeros((m, padded_k(k)), np.int8)
    xp[:, :k] = x_q
    out = tvm.runtime.empty((m, n), "int32", dev)
    args = [tvm.runtime.tensor(xp, dev)] + [tvm.runtime.tensor(np.ascontiguousarray(p), dev) for p in parts]
    lib["main"](*args, out)
    return out.numpy()


_MEASURED: dict = {}


def measure_kinds(fmt: str, k: int, n: int, m: int, kinds=None, repeat: int = 5, seed: int = 0,
                  target=None) -> list[KernelTiming]:
    """Compile each available CPU kernel for (fmt, K, N) and time it on M tokens (best of `repeat`).
    Runs the kernels here: `target` must be runnable on this host (target_runs_here)."""
    if not target_runs_here(target):
        raise RuntimeError(f"cannot measure kernels built for {target} on this host "
                           f"(CPU {tvm.target.codegen.llvm_get_system_cpu()})")
    rng = np.random.default_rng(seed)
    w = rng.integers(-1, 2, size=(n, k)).astype(np.int8)
    parts = [w] if fmt == "t2" else list(packing.pack(w, fmt).values())
    kinds = kinds or available_kinds(fmt, "cpu", k, target)
    dev = tvm.cpu()
    xp = np.zeros((m, padded_k(k)), np.int8)
    xp[:, :k] = rng.integers(-128, 128, size=(m, k))
    args = [tvm.runtime.tensor(xp, dev)] + [tvm.runtime.tensor(np.ascontiguousarray(p), dev) for p in parts]
    out = tvm.runtime.empty((m, n), "int32", dev)
    ref = semantics.ternary_matmul_i32(xp[:, :k], w)
    res = []
    for kind in kinds:
        f = build_standalone(fmt, k, n, kind, target=target or "llvm")["main"]
        f(*args, out)  # warm up, and never pick a kernel that is not exact
        if not np.array_equal(out.numpy(), ref):
            raise RuntimeError(f"ternary kernel {kind}/{fmt} K={k} N={n} is not bit-exact")
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            f(*args, out)
            best = min(best, time.perf_counter() - t0)
        res.append(KernelTiming(kind, best))
    return res


def static_kind(kinds: list[str]) -> str:
    """The unmeasured default among available CPU kinds: `vnni` where the target has it (i2), else `dot`."""
    return "vnni" if "vnni" in kinds else kinds[0]


def choose_kind(fmt: str, k: int, n: int, m: int, target_kind="cpu", policy="auto",
                log: list | None = None, target=None) -> str:
    """The kernel for one weight shape and token count: `policy` names it ("dot", "dot16", "lut",
    "vnni"; a kind the format/target lacks falls back to "dot"), or "auto" measures the CPU
    candidates on this machine (cached per shape; a kernel that is not bit-exact is refused), or is
    a mapping {(format, k, n, m): kind} of fixed choices (a previous build's, `ternc compile
    --kernels`; shapes it lacks are chosen as by "auto").
    CUDA: i2 takes the dp4a kernels (GEMV for one token, tiled GEMM otherwise); other formats a
    plain GEMV for one token (decode), GEMM otherwise. A target that cannot run here (another mcpu
    or mtriple, e.g. aarch64, or host-missing mattr features) is not measured: `static_kind`.
    `log` receives one entry per shape: {format, k, n, m, chosen} plus `timings_us` when measured."""
    tt = tvm_target(target_kind)
    kinds = available_kinds(fmt, tt, k, target)
    if isinstance(policy, Mapping):
        fixed = policy.get((fmt, int(k), int(n), int(m)))
        if fixed is not None and fixed not in kinds + (["dp4a"] if tt.gpu and fmt == "i2" else []):
            raise ValueError(f"fixed kernel choice {fixed!r} for {fmt} K={k} N={n} M={m} is not available on "
                             f"target {tt.name} (available: {', '.join(kinds)})")
        policy = fixed or "auto"
    kind = _choose_kind(fmt, k, n, m, tt, policy, kinds, target, log)
    if log is not None and not any((e["format"], e["k"], e["n"], e["m"]) == (fmt, k, n, m) for e in log):
        log.append({"format": fmt, "k": k, "n": n, "m": m, "chosen": kind})
    return kind


def _choose_kind(fmt, k, n, m, tt, policy, kinds, target, log) -> str:
    if tt.gpu:
        if fmt == "i2" and policy in ("auto", "dp4a"):
            return "dp4a"  # GEMV for one token, tiled GEMM otherwise (lower._tmatmul_dp4a)
        return "gemv" if m == 1 else "gemm"
    if policy != "auto":
        return policy if policy in kinds else kinds[0]
    if tt.static_kind is not None:
        return tt.static_kind if tt.static_kind in kinds else kinds[0]
    if len(kinds) == 1 or not tt.measures_kernels:
        return kinds[0]
    if not target_runs_here(target):  # its kernels may not run on this CPU (SIGILL): do not measure
        return static_kind(kinds)
    key = (fmt, k, n, m, str(target))
    if key not in _MEASURED:
        timings = measure_kinds(fmt, k, n, m, kinds, target=target)
        best = min(timings, key=lambda t: t.seconds)
        _MEASURED[key] = {"format": fmt, "k": k, "n": n, "m": m,
                          "timings_us": {t.kind: round(t.seconds * 1e6, 2) for t in timings}, "chosen": best.kind}
    if log is not None and _MEASURED[key] not in log:
        log.append(_MEASURED[key])
    return _MEASURED[key]["chosen"]
