"""CUDA W2A8 ternary GEMV / GEMM kernels built with TVM TensorIR (TE + s_tir.Schedule).

Weights use ternc's `i2` layout (ir/packing.py): per output row, 128-weight blocks of 32 bytes;
byte j of a block holds weights 32g + j (g = 0..3) in bits 7-2g..6-2g as codes w + 1 in {0, 1, 2}.
Read as little-endian uint32 words, word j (0..7) of block b carries, for group g,

    codes_g = (word >> (6 - 2g)) & 0x03030303      # four codes, one per byte
    for activations x[128b + 32g + 4j .. +3]       # int8, four per int32 word

so each (word, group) pair is one `dp4a(codes_g, xword)`. Codes are w + 1, hence

    acc[n] = sum_k x[k] * w[n, k] = sum dp4a(codes, x) - sum_k x[k]

which is exact int32 (the integer contract of ir/semantics.py). Decode (one token) is a GEMV with a
warp-wide cross-thread reduction; prefill runs the same kernel over M tokens (blockIdx.y).
"""

from __future__ import annotations

import numpy as np

from ....ir.packing import I2


def pack_activations(x_q: np.ndarray) -> np.ndarray:
    """int8 [M, K] -> group-major int32 words [M, 4, Kp/16] (K padded to a multiple of 128).

    Word [m, g, w] holds x[m, 128*(w//8) + 32*g + 4*(w%8) .. +3]: the activations that meet weight
    group g of weight word w, so a warp's reads of one group are contiguous (no bank conflicts).
    """
    x_q = np.asarray(x_q, np.int8)
    m, k = x_q.shape
    kp = I2.capacity(k)
    padded = np.zeros((m, kp), np.int8)
    padded[:, :k] = x_q
    words = padded.view(np.int32).reshape(m, I2.blocks(k), I2.groups, I2.lanes // 4)  # [m, block, g, j]
    return np.ascontiguousarray(words.transpose(0, 2, 1, 3).reshape(m, I2.groups, I2.words_per_row(k)))


def weight_words(packed_i2: np.ndarray) -> np.ndarray:
    """The i2 part (uint8 [N, bytes]) viewed as little-endian 32-bit words [N, bytes/4] (int32)."""
    b = np.ascontiguousarray(packed_i2, np.uint8)
    return b.view(np.int32)


def _dp4a_compute(n: int, k: int, m):
    """The contract both kernels schedule: Y[m, n] = sum_(w, g) dp4a(codes_g(W[n, w]), X[m, g, w]) - S[m]
    over int32 weight words W [N, Kp/16] and group-major activation words X [M, 4, Kp/16].
    Returns (W, X, S, Y, words per row); the reduction block is named "acc"."""
    from tvm import te, tirx

    kw = I2.words_per_row(k)  # 32-bit words per weight row
    W = te.placeholder((n, kw), "int32", name="W")
    X = te.placeholder((m, 4, kw), "int32", name="X")
    S = te.placeholder((m,), "int32", name="S")
    rw = te.reduce_axis((0, kw), name="rw")
    rg = te.reduce_axis((0, 4), name="rg")

    def term(mi, ni, w, g):
        # int32 words: the masked bits never come from the sign-extended top, so >> is safe.
        codes = tirx.bitwise_and(tirx.shift_right(W[ni, w], (6 - 2 * g).astype("int32")),
                                 tirx.const(0x03030303, "int32"))
        return tirx.call_pure_extern("int32", "__dp4a", codes, X[mi, g, w], tirx.const(0, "int32"))

    acc = te.compute((m, n), lambda mi, ni: te.sum(term(mi, ni, rw, rg), axis=[rw, rg]), name="acc")
    Y = te.compute((m, n), lambda mi, ni: acc[mi, ni] - S[mi], name="Y")
    return W, X, S, Y, kw


def build_gemv(n: int, k: int, m: int = 1, rows_per_block: int = 4, threads: int = 32, vec: int = 4,
               x_stage: str = "shared"):
    """A prim_func `ternary_gemv(W i32[N, Kp/16], X i32[M, 4, Kp/16], S i32[M], Y i32[M, N])`.

    S[m] = sum_k x_q[m, k] (the code offset). Schedule: one warp per output row (rows_per_block
    warps per block), 16-byte weight loads into registers, the activation row staged once per block
    in shared memory and read back as 16-byte vectors (x_stage="shared"), or read as 16-byte vectors
    straight from global memory through L1 (x_stage="global": no block-wide barrier before the
    weight loads), warp-shuffle reduction. Tokens (M) map to
    blockIdx.y.
    """
    import tvm
    from tvm import te

    W, X, S, Y, _kw = _dp4a_compute(n, k, m)
    sch = tvm.s_tir.Schedule(te.create_prim_func([W, X, S, Y]))
    blk = sch.get_sblock("acc")
    mi, ni, w, g = sch.get_loops(blk)
    no, nr = sch.split(ni, [None, rows_per_block])
    wo, wt, wv = sch.split(w, [None, threads, vec])
    sch.reorder(mi, no, nr, wt, wo, wv, g)
    if x_stage == "shared":
        x_shared = sch.cache_read(blk, 1, "shared")
        sch.compute_at(x_shared, no)
    w_reg = sch.cache_read(blk, 0, "local")
    sch.compute_at(w_reg, wo)
    sch.vectorize(sch.get_loops(w_reg)[-1])
    x_reg = sch.cache_read(blk, 1, "local")
    sch.compute_at(x_reg, wo)
    sch.vectorize(sch.get_loops(x_reg)[-1])
    sch.bind(mi, "blockIdx.y")
    sch.bind(no, "blockIdx.x")
    sch.bind(nr, "threadIdx.y")
    sch.bind(wt, "threadIdx.x")  # cross-thread (warp) reduction over the row's words
    for loop in (g, wv, wo):
        sch.unroll(loop)
    if x_stage == "shared":
        fetch = sch.fuse(*sch.get_loops(x_shared)[2:])
        _, fy, fx = sch.split(fetch, [None, rows_per_block, threads])
        sch.bind(fy, "threadIdx.y")
        sch.bind(fx, "threadIdx.x")
    sch.reverse_compute_at(sch.get_sblock("Y"), nr)
    sch.set_scope(blk, 0, "local")
    return sch.mod["main"].with_attr("global_symbol", "ternary_gemv")


def build_gemm(n: int, k: int, m=None, tile_m: int = 32, tile_n: int = 64, threads_m: int = 8,
               threads_n: int = 16, k_chunk: int = 16):
    """Prefill: the same dp4a contract as build_gemv for many tokens, tiled so each weight word is
    read from global memory once per `tile_m` tokens (the GEMV re-reads all weights per token).

    Block tile [tile_m tokens x tile_n rows]; per K chunk of `k_chunk` words the block stages its
    weight words [tile_n, k_chunk] and activation words [tile_m, 4, k_chunk] in shared memory
    (cooperative 16-byte loads); each thread accumulates a register tile of
    (tile_m / threads_m) x (tile_n / threads_n) int32 sums over the chunk's (word, group) dp4a
    products, then writes acc - S. No cross-thread reduction. m=None: the token count is
    `mb * tile_m` with `mb` a scalar parameter before Y (callers pad tokens to whole tiles).
    """
    import tvm
    from tvm import te, tirx

    mb = None
    if m is None:  # symbolic: `mb` token tiles (a scalar parameter), so every tile is whole
        mb = tirx.Var("mb", "int64")
        m = mb * tile_m
    W, X, S, Y, kw = _dp4a_compute(n, k, m)
    k_chunk = min(k_chunk, kw)
    sch = tvm.s_tir.Schedule(te.create_prim_func([W, X, S] + ([mb] if mb is not None else []) + [Y]))
    blk = sch.get_sblock("acc")
    mi, ni, w, g = sch.get_loops(blk)
    mr_n, nr_n = tile_m // threads_m, tile_n // threads_n
    mo, mt, mr = sch.split(mi, [None, threads_m, mr_n])
    no, nt, nr = sch.split(ni, [None, threads_n, nr_n])
    wo, wi = sch.split(w, [None, k_chunk])
    sch.reorder(mo, no, mt, nt, wo, wi, g, mr, nr)
    sch.bind(mo, "blockIdx.y")
    sch.bind(no, "blockIdx.x")
    sch.bind(mt, "threadIdx.y")
    sch.bind(nt, "threadIdx.x")
    nthreads = threads_m * threads_n
    for idx in (0, 1):  # weight words, activation words -> shared, per K chunk
        sh = sch.cache_read(blk, idx, "shared")
        sch.compute_at(sh, wo)
        fused = sch.fuse(*sch.get_loops(sh)[-(2 if idx == 0 else 3):])
        _, fy, fx = sch.split(fused, [None, threads_m, threads_n])
        sch.bind(fy, "threadIdx.y")
        sch.bind(fx, "threadIdx.x")
        # weights K-major in shared memory, rows permuted so that the threads of a warp (thread nt
        # owns rows nt*nr_n .. +nr_n-1) read consecutive words of one K step: no bank conflicts
        if idx == 0:  # (activations: a warp reads 2 token rows of one word, a 2-way conflict at most)
            c_nr = tirx.const(nr_n, "int32")
            sch.transform_layout(sh, ("write", 0), tirx.IndexMap.from_func(
                lambda r, c: (c, tirx.floormod(r, c_nr), tirx.floordiv(r, c_nr)), index_dtype="int32"))
    acc_local = sch.cache_write(blk, 0, "local")
    sch.reverse_compute_at(acc_local, nt)
    sch.reverse_compute_inline(sch.get_sblock("Y"))
    sch.decompose_reduction(blk, wo)
    for loop in (g, mr, nr):
        sch.unroll(loop)
    assert nthreads <= 1024
    return sch.mod["main"].with_attr("global_symbol", "ternary_gemm")


def cuda_target(arch: str = "sm_90"):
    import tvm

    return tvm.target.Target({"kind": "cuda", "arch": arch}, host="llvm")


def compile_gemv(n: int, k: int, m: int = 1, arch: str = "sm_90", **kw):
    import tvm

    f = build_gemv(n, k, m, **kw)
    return tvm.compile(tvm.IRModule({"ternary_gemv": f}), target=cuda_target(arch))


def compile_gemm(n: int, k: int, m=None, arch: str = "sm_90", **kw):
    """The prefill GEMM under the symbol `ternary_gemv`: (W, X, S, mb, Y) with the tile count `mb`
    when m is None, else the GEMV's (W, X, S, Y)."""
    import tvm

    f = build_gemm(n, k, m, **kw).with_attr("global_symbol", "ternary_gemv")
    return tvm.compile(tvm.IRModule({"ternary_gemv": f}), target=cuda_target(arch))


def reference(w_t: np.ndarray, x_q: np.ndarray) -> np.ndarray:
    from ....ir.semantics import ternary_matmul_i32

    return ternary_matmul_i32(np.asarray(x_q, np.int8), w_t)
