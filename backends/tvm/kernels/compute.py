"""TE definitions (what is computed) shared by the CPU and CUDA schedules: activation
quantization (per-token absmax, round half to even; semantics.quantize_act), the ternary dot
products over packed weights, the T-MAC LUT product, and GQA attention products."""

from __future__ import annotations

from tvm import te, tirx

from ....ir import semantics
from .common import TL1, TL2, ceil_div, i32, padded_k
from .decode import TL2_DIGIT_CONSTS, decoded_te, placeholders


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


def dot_te(fmt: str, k: int, n: int):
    m = tirx.Var("m", "int64")
    kp = padded_k(k)
    xq = te.placeholder((m, kp), "int8", name="x_q")
    parts = placeholders(fmt, n, k)
    wdec = decoded_te(fmt, parts, n, k, kp)
    rk = te.reduce_axis((0, kp), name="rk")
    acc = te.compute((m, n), lambda i, j: te.sum(i32(xq[i, rk]) * i32(wdec[j, rk]), axis=rk), name="acc")
    return [xq, *parts, acc]


DOT16_LANES = 64


DOT16_MAX_K = 255 * DOT16_LANES  # per-lane int16 sums stay exact: |sum| <= 128 * 255 < 32768


def dot16_te(fmt: str, k: int, n: int):
    """Like `dot`, but each of 64 lanes accumulates x * w in int16 (exact while K <= DOT16_MAX_K:
    a lane sums at most 255 products of magnitude <= 128); lanes are summed in int32 at the end."""
    if padded_k(k) > DOT16_MAX_K:
        raise ValueError(f"dot16 needs K <= {DOT16_MAX_K}, got {k}")
    m = tirx.Var("m", "int64")
    kp = ceil_div(k, DOT16_LANES) * DOT16_LANES
    xq = te.placeholder((m, padded_k(k)), "int8", name="x_q")
    parts = placeholders(fmt, n, k)
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


LUT_FORMATS = (TL2.name, TL1.name)  # the LUT kernel's tables: TL2 triples (sign bit), TL1 pairs


def lut_te(fmt: str, k: int, n: int):
    """T-MAC style: per token and activation group a table of all signed sums; weights index it."""
    if fmt not in LUT_FORMATS:
        raise ValueError(f"the LUT kernel supports {LUT_FORMATS}, not {fmt!r}")
    m = tirx.Var("m", "int64")
    kp = padded_k(k)
    xq = te.placeholder((m, kp), "int8", name="x_q")
    parts = placeholders(fmt, n, k)
    if fmt == TL2.name:
        entries = TL2.entries
        groups = TL2.groups(k)

        def xg(i, t, r):  # activation r of group t (0 beyond K: x_q padded only to kp)
            kk = t * TL2.group + r
            return tirx.Select(kk < k, i32(xq[i, tirx.min(kk, kp - 1)]), 0)

        def table(i, t, e):
            val = tirx.const(0, "int32")
            # T[e] = sum_r digit(e, r) * a_r, digits as constants selected by e
            for r in range(3):
                c = tirx.const(TL2_DIGIT_CONSTS[r], "int32")
                d = ((c >> (e * 2)) & 3) - 1
                val = val + d * xg(i, t, r)
            return val

        lut = te.compute((m, groups, entries), table, name="lut")
        rt = te.reduce_axis((0, groups), name="rt")

        def body(i, j):
            idx = (i32(parts[0][j, rt >> 1]) >> ((rt & 1) * 4)) & 15
            s = (i32(parts[1][j, rt >> 3]) >> (rt & 7)) & 1
            v = lut[i, rt, idx]
            return te.sum((v ^ (0 - s)) + s, axis=rt)  # conditional negate: s ? -v : v

        acc = te.compute((m, n), body, name="acc")
    else:  # tl1: pairs, 9 entries T[e] = (e//3 - 1) * a0 + (e%3 - 1) * a1
        groups = TL1.groups(k)

        def xg(i, t, r):
            kk = t * TL1.group + r
            return tirx.Select(kk < k, i32(xq[i, tirx.min(kk, kp - 1)]), 0)

        lut = te.compute((m, groups, 9), lambda i, t, e: (tirx.truncdiv(e, 3) - 1) * xg(i, t, 0)
                         + (tirx.truncmod(e, 3) - 1) * xg(i, t, 1), name="lut")
        rt = te.reduce_axis((0, groups), name="rt")

        def body(i, j):
            idx = (i32(parts[0][j, rt >> 1]) >> ((rt & 1) * 4)) & 15
            return te.sum(lut[i, rt, idx], axis=rt)

        acc = te.compute((m, n), body, name="acc")
    return [xq, *parts, acc]


def gqa_scores_te(hq: int, hkv: int, d: int, sq, name: str, capacity: bool = False):
    """(q [b, hq, sq, d], k [b, hkv, sk, d], s [b, hq, sq, sk]) with s[b, h, i, j] = q[b, h, i] .
    k[b, h // (hq/hkv), j]: GQA without repeating K. The one definition the CPU and CUDA attention
    kernels schedule. capacity: k is a preallocated cache [b, hkv, cap, d] of which the first sk
    rows are valid (sk, from the output's shape, must be <= cap)."""
    b, sk = tirx.Var("b", "int64"), tirx.Var("sk", "int64")
    q = te.placeholder((b, hq, sq, d), "float32", name="q")
    k = te.placeholder((b, hkv, tirx.Var("cap", "int64") if capacity else sk, d), "float32", name="k")
    rd = te.reduce_axis((0, d), name="rd")
    g = hq // hkv
    return q, k, te.compute((b, hq, sq, sk), lambda bb, h, i, j: te.sum(q[bb, h, i, rd] * k[bb, h // g, j, rd], axis=rd),
                            name=name)


def gqa_pv_te(hq: int, hkv: int, d: int, sq, capacity: bool = False):
    """(p [b, hq, sq, sk], v [b, hkv, sk, d], o [b, hq, sq, d]) with o[b, h, i] = sum_j p[b, h, i, j] *
    v[b, h // (hq/hkv), j]: GQA without repeating V (CPU and CUDA kernels schedule this).
    capacity: v is a preallocated cache [b, hkv, cap, d], its first sk rows valid."""
    b, sk = tirx.Var("b", "int64"), tirx.Var("sk", "int64")
    p = te.placeholder((b, hq, sq, sk), "float32", name="p")
    v = te.placeholder((b, hkv, tirx.Var("cap", "int64") if capacity else sk, d), "float32", name="v")
    rj = te.reduce_axis((0, sk), name="rj")
    g = hq // hkv
    return p, v, te.compute((b, hq, sq, d), lambda bb, h, i, e: te.sum(p[bb, h, i, rj] * v[bb, h // g, rj, e], axis=rj),
                            name="pv")
