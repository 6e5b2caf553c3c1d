"""CUDA schedules: quantization, the generic GEMV/GEMM over packed weights, the dp4a W2A8
kernels on i2 (cuda_ternary.py) and decode-time GQA attention."""

from __future__ import annotations

from tvm import te, tirx

from .common import KPAD, I2, padded_k, scheduled
from .compute import gqa_scores_te


DP4A_FORMAT = I2  # dp4a reads the i2 codes as int32 words (cuda_ternary.py)


def schedule_quantize(func):
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


def schedule_gemv(func, n: int, kp: int):
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


def schedule_gemm(func, n: int, kp: int):
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
    kw = DP4A_FORMAT.words_per_row(k)
    words_per_block = DP4A_FORMAT.lanes // 4
    xq = te.placeholder((m, kp), "int8", name="x_q")

    def byte(i, kk):
        ok = kk < kp if row_tile == 1 else tirx.all(kk < kp, i < m)
        return tirx.Select(ok, tirx.Cast("int32", xq[tirx.min(i, m - 1), tirx.min(kk, kp - 1)]) & 255, 0)

    def word(i, g, w):
        base = (w // words_per_block) * DP4A_FORMAT.block + g * DP4A_FORMAT.lanes + (w % words_per_block) * 4
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
    return scheduled(sch.mod["main"], f"ternc_dp4a_pack_k{k}_t{row_tile}")


def _schedule_of(tensors: list, block: str):
    from tvm import s_tir

    sch = s_tir.Schedule(te.create_prim_func(tensors))
    return sch, sch.get_sblock(block)


def gqa_decode_scores_func(hq: int, hkv: int, d: int) -> tirx.PrimFunc:
    """CUDA decode attention scores for one query token: s[b, h, 0, j] = q[b, h, 0] . k[b, h // g, j]
    (GQA by indexing, no repeated K). A block per key, a warp per query head: the 32 lanes read the
    key row coalesced and a warp shuffle sums the head dim (the heads of a group re-read the row
    from L1). The caller pre-scales q."""
    q, k, s = gqa_scores_te(hq, hkv, d, 1, "scores")
    sch, blk = _schedule_of([q, k, s], "scores")
    lb, lh, li, lj, lr = sch.get_loops(blk)
    ro, rx = sch.split(lr, [None, 32])
    sch.reorder(lb, li, lj, lh, rx, ro)
    sch.bind(sch.fuse(lb, li, lj), "blockIdx.x")  # no predicate: the warp reduction needs whole warps
    sch.bind(lh, "threadIdx.y")
    sch.bind(rx, "threadIdx.x")
    sch.unroll(ro)
    return scheduled(sch.mod["main"], f"ternc_gqa_scores_h{hq}_{hkv}_d{d}")


PV_KEY_SPLIT = 8  # key lanes (threadIdx.y) of the decode PV kernel


def gqa_decode_pv_func(hq: int, hkv: int, d: int, lanes: int = 32, key_split: int = PV_KEY_SPLIT) -> tirx.PrimFunc:
    """CUDA decode attention output for one query token: out[b, h, 0, e] = sum_j p[b, h, 0, j] *
    v[b, h // g, j, e]. A block per (head, `lanes` output elements) -- d / lanes blocks per head (one
    block per head when lanes does not divide d); threadIdx.x is the output element e (coalesced rows
    of V), threadIdx.y one of `key_split` key lanes: lane y sums the keys j = y, y + key_split, ... in
    order (the block reads key_split consecutive V rows at a time), then the lanes' partial sums are
    added across threadIdx.y (TVM's cross-thread reduction through shared memory). Before, each
    thread summed all keys serially (8.6 us a call at 192 keys for 2B4T on the H200)."""
    p, v, o = _gqa_pv_te_i64(hq, hkv, d)
    sch, blk = _schedule_of([p, v, o], "pv")
    lb, lh, li, le, lr = sch.get_loops(blk)
    if d % lanes:  # no predicated tail: its register write-back would land in the next head's row
        lanes = d
    eo, ex = sch.split(le, [None, lanes])
    ro, ry = sch.split(lr, [None, key_split])
    sch.reorder(lb, lh, li, eo, ex, ry, ro)
    sch.bind(sch.fuse(lb, lh, li, eo), "blockIdx.x")
    sch.bind(ex, "threadIdx.x")
    sch.bind(ry, "threadIdx.y")
    return scheduled(sch.mod["main"], f"ternc_gqa_pv_h{hq}_{hkv}_d{d}")


def _gqa_pv_te_i64(hq: int, hkv: int, d: int):
    """compute.gqa_pv_te for one query token with every dim int64: TVM lowers a reduction bound to
    threadIdx.y only when the block's bindings are affine, and fusing the int64 batch with an int32
    head axis inserts a cast that is not (the reduction then stays an unsynchronized += into `pv`)."""
    i64 = lambda x: tirx.IntImm("int64", x)  # noqa: E731
    b, sk = tirx.Var("b", "int64"), tirx.Var("sk", "int64")
    p = te.placeholder((b, i64(hq), i64(1), sk), "float32", name="p")
    v = te.placeholder((b, i64(hkv), sk, i64(d)), "float32", name="v")
    rj = te.reduce_axis((i64(0), sk), name="rj")
    g = i64(hq // hkv)
    return p, v, te.compute((b, i64(hq), i64(1), i64(d)),
                            lambda bb, h, i, e: te.sum(p[bb, h, i, rj] * v[bb, tirx.floordiv(h, g), rj, e], axis=rj),
                            name="pv")


GEMM_TOKEN_TILE = 32  # cuda_ternary.build_gemm's default tile_m


def dp4a_gemm_func(k: int, n: int) -> tirx.PrimFunc:
    """The tiled dp4a W2A8 GEMM of cuda_ternary.py for prefill: token tiles of GEMM_TOKEN_TILE, the
    tile count a scalar parameter: (W, X, S, tiles, Y); X, S, Y have tiles * GEMM_TOKEN_TILE rows."""
    from .cuda_ternary import build_gemm

    return scheduled(build_gemm(n, k, tile_m=GEMM_TOKEN_TILE), f"ternc_tmm_dp4a_gemm_i2_k{k}_n{n}")


def dp4a_gemv_func(k: int, n: int) -> tirx.PrimFunc:
    """The dp4a W2A8 GEMV of cuda_ternary.py (i2 weights as int32 words), with a symbolic M."""
    from .cuda_ternary import build_gemv

    m = tirx.Var("m", "int64")
    return scheduled(build_gemv(n, k, m), f"ternc_tmm_dp4a_i2_k{k}_n{n}")


QUANTIZE_DP4A_THREADS = 512


def quantize_dp4a_te(k: int, eps: float, m=None, norm_eps: float | None = None):
    """TE of the fused decode activation path: x f32 [M, K] -> (xw, ssum, a_scale), with
    a_scale = 127 / max(absmax_k x, eps), codes c = clip(rint(x * a_scale), -128, 127) (the
    `quantize` kernel's math), xw the group-major dp4a words of the codes (dp4a_pack_func's layout,
    zero beyond K) and ssum = sum_k c. With `norm_eps`, x is first RMS-normalized with a weight
    w f32 [K] as TVM's rms_norm computes it (x * rsqrt(sum x^2 / K + norm_eps) * w), so the norm
    runs in the same kernel. Returns (x, [w,] xw, ssum, a_scale)."""
    from ....ir import semantics

    m = tirx.Var("m", "int64") if m is None else m
    kw = DP4A_FORMAT.words_per_row(k)
    words_per_block = DP4A_FORMAT.lanes // 4
    x = te.placeholder((m, k), "float32", name="x")
    inputs = [x]
    if norm_eps is None:
        def value(i, kk):
            return x[i, kk]
    else:
        w = te.placeholder((k,), "float32", name="w")
        inputs.append(w)
        rn = te.reduce_axis((0, k), name="rn")
        sq = te.compute((m,), lambda i: te.sum(x[i, rn] * x[i, rn], axis=rn), name="sumsq")

        def value(i, kk):
            inv = tirx.rsqrt(sq[i] / tirx.const(k, "float32") + tirx.const(norm_eps, "float32"))
            return x[i, kk] * inv * w[kk]
    rk = te.reduce_axis((0, k), name="rk")
    amax = te.compute((m,), lambda i: te.max(te.abs(value(i, rk)), axis=rk), name="amax")

    def scale(i):
        return tirx.const(semantics.ACT_QMAX, "float32") / te.max(amax[i], tirx.const(eps, "float32"))

    a_scale = te.compute((m, 1), lambda i, _: scale(i), name="a_scale")

    def code(i, kk):
        v = tirx.nearbyint(value(i, tirx.min(kk, k - 1)) * scale(i))
        v = te.min(te.max(v, tirx.const(semantics.ACT_QMIN, "float32")), tirx.const(semantics.ACT_QMAX, "float32"))
        return tirx.Select(kk < k, tirx.Cast("int32", v), tirx.const(0, "int32"))

    def word(i, g, w_):
        base = (w_ // words_per_block) * DP4A_FORMAT.block + g * DP4A_FORMAT.lanes + (w_ % words_per_block) * 4
        return ((code(i, base) & 255) | ((code(i, base + 1) & 255) << 8) | ((code(i, base + 2) & 255) << 16)
                | (code(i, base + 3) << 24))

    xw = te.compute((m, 4, kw), word, name="xw")
    rs = te.reduce_axis((0, k), name="rs")
    ssum = te.compute((m,), lambda i: te.sum(code(i, rs), axis=rs), name="ssum")
    return (*inputs, xw, ssum, a_scale)


def quantize_dp4a_func(k: int, eps: float, threads: int = QUANTIZE_DP4A_THREADS,
                       norm_eps: float | None = None) -> tirx.PrimFunc:
    """CUDA decode: one kernel (one thread block per token) for what `quantize` + `dp4a_pack` do in
    five: the absmax as a block-wide reduction into shared memory, then the dp4a activation words
    (each thread quantizes and packs 4 codes per word) and the code sum (a second block reduction),
    and the token's a_scale. (x f32 [M, K]) -> (xw i32 [M, 4, Kw], ssum i32 [M], a_scale f32 [M, 1]);
    bit-identical to quantize_func followed by dp4a_pack_func (same float expression per code).
    norm_eps: (x, w) -> ...: the RMSNorm producing x joins the kernel (its sum of squares is one more
    block reduction first), replacing the norm's own launch."""
    from tvm import s_tir

    tensors = quantize_dp4a_te(k, eps, norm_eps=norm_eps)
    sch = s_tir.Schedule(te.create_prim_func(list(tensors)))
    first = "amax" if norm_eps is None else "sumsq"
    first_b = sch.get_sblock(first)
    i, _ = sch.get_loops(first_b)
    sch.bind(i, "blockIdx.x")
    sch.set_scope(first_b, 0, "shared")
    if norm_eps is not None:
        sch.reverse_compute_at(sch.get_sblock("amax"), i)
        sch.set_scope(sch.get_sblock("amax"), 0, "shared")
    for name in ("xw", "ssum", "a_scale"):
        sch.reverse_compute_at(sch.get_sblock(name), i)
    _, g, w = sch.get_loops(sch.get_sblock("xw"))
    for name in ("sumsq", "amax", "ssum") if norm_eps is not None else ("amax", "ssum"):  # block-wide reductions
        r = sch.get_loops(sch.get_sblock(name))[-1]
        ro, ri = sch.split(r, [None, threads])
        sch.reorder(ri, ro)
        sch.bind(ri, "threadIdx.x")
    _, wi = sch.split(sch.fuse(g, w), [None, threads])
    sch.bind(wi, "threadIdx.x")
    unit = sch.add_unit_loop(sch.get_sblock("a_scale"))
    _, si = sch.split(unit, [None, threads])  # thread 0 writes it
    sch.bind(si, "threadIdx.x")
    name = f"ternc_quantize_dp4a_k{k}" if norm_eps is None else f"ternc_rmsnorm_quantize_dp4a_k{k}"
    return scheduled(sch.mod["main"], name)
