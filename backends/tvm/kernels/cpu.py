"""CPU (LLVM) schedules: the ternary dot/dot16/LUT kernels, the float dense kernel, attention
and KV-append kernels."""

from __future__ import annotations

from functools import lru_cache

from tvm import te, tirx

from .common import KPAD, ceil_div, scheduled
from .compute import gqa_pv_te, gqa_scores_te
from .decode import decoder


def schedule_dot(func: tirx.PrimFunc, n: int, kp: int, fmt: str = "i2") -> tirx.PrimFunc:
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
    split = decoder(fmt).decode_split
    if split is not None:
        inner = sch.split(dl[-1], list(split))[1:]
        for lp in inner:
            sch.unroll(lp)
    else:  # t2, i2: byte and shift are affine in (block, lane): vectorize the lanes
        _, dki = sch.split(dl[-1], [kp // KPAD, KPAD])
        sch.vectorize(dki)
    return sch.mod["main"]


def schedule_dot16(func: tirx.PrimFunc, n: int, kp: int, fmt: str) -> tirx.PrimFunc:
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
    split = decoder(fmt).decode_split
    if split is not None:
        for lp in sch.split(dl[-1], list(split))[1:]:
            sch.unroll(lp)
    else:
        _, dki = sch.split(dl[-1], [None, KPAD])
        sch.vectorize(dki)
    return sch.mod["main"]


def schedule_lut(func: tirx.PrimFunc, n: int) -> tirx.PrimFunc:
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
    kp = ceil_div(k, FLOAT_LANES) * FLOAT_LANES
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
    return scheduled(sch.mod["main"], f"ternc_dense_k{k}_n{n}_{wdtype}")


@lru_cache(maxsize=None)
def attention_scores_func(hq: int, hkv: int, d: int, scale: float, causal: bool,
                          capacity: bool = False) -> tirx.PrimFunc:
    """CPU: s[b, h, i, j] = scale * q[b, h, i, :] . k[b, h // (hq/hkv), j, :], -inf where key j is
    after query i's absolute position (bottom-right causal). GQA without repeating K; the head dim
    is reduced in vector lanes (rfactor); heads x queries run in parallel. capacity: k is a
    preallocated cache (compute.gqa_scores_te), the key count comes from s's shape."""
    from tvm import s_tir

    q, kk, dot = gqa_scores_te(hq, hkv, d, tirx.Var("sq", "int64"), "dot", capacity)
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
    return scheduled(sch.mod["main"], f"ternc_attn_scores_h{hq}_{hkv}_d{d}{'_cap' if capacity else ''}")


@lru_cache(maxsize=None)
def attention_pv_func(hq: int, hkv: int, d: int, capacity: bool = False) -> tirx.PrimFunc:
    """CPU: o[b, h, i, :] = sum_j p[b, h, i, j] * v[b, h // (hq/hkv), j, :] (GQA without repeating V),
    accumulated over j into a vectorized head-dim row; heads x queries in parallel. capacity: v is
    a preallocated cache, the value count comes from p's shape."""
    from tvm import s_tir

    p, v, o = gqa_pv_te(hq, hkv, d, tirx.Var("sq", "int64"), capacity)
    sch = s_tir.Schedule(te.create_prim_func([p, v, o]))
    blk = sch.get_sblock("pv")
    lb, lh, li, le, lj = sch.get_loops(blk)
    sch.reorder(lj, le)
    sch.parallel(sch.fuse(lh, li))
    init = sch.decompose_reduction(blk, lj)
    sch.vectorize(sch.get_loops(init)[-1])  # (the update's contiguous e-loop: LLVM vectorizes it)
    return scheduled(sch.mod["main"], f"ternc_attn_pv_h{hq}_{hkv}_d{d}{'_cap' if capacity else ''}")


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
    return scheduled(sch.mod["main"], f"ternc_kv_append_h{h}_d{d}")


@lru_cache(maxsize=None)
def kv_write_func(h: int, d: int, dtype: str = "float32") -> tirx.PrimFunc:
    """CPU, in place (Relax call_tir_inplace on argument 0): cache[b, h, past + t, :] = new[b, h, t, :]
    for a preallocated KV cache [b, h, cap, d] (the caller keeps past + s <= cap); one thread.
    Replaces kv_append's copy of the whole cache per decode step by a write of the new rows."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def kv_write(var_cache: T.handle, var_new: T.handle, past: T.int64):
        T.func_attr({"tir.noalias": True})
        b, cap, s = T.int64(), T.int64(), T.int64()
        cache = T.match_buffer(var_cache, (b, h, cap, d), dtype)
        new = T.match_buffer(var_new, (b, h, s, d), dtype)
        with T.sblock("root"):
            for hh in T.serial(h):  # a few KB per token: a parallel launch would cost more than the copy
                for bb, t in T.grid(b, s):
                    for e in T.vectorized(d):
                        cache[bb, hh, past + t, e] = new[bb, hh, t, e]

    return scheduled(kv_write, f"ternc_kv_write_h{h}_d{d}_{dtype}")
