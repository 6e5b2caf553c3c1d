"""CPU kernel: AVX-512 VNNI on packed i2 codes (x86 with avx512vnni only), and the target probe."""

from __future__ import annotations

import tvm
from tvm import tirx

from .common import I2, ceil_div, padded_k


VNNI_FORMAT = I2  # vpdpbusd reads the i2 codes as unsigned bytes


VNNI_FEATURES = ("avx512vnni", "avx512bw", "avx512vl")


VNNI_TILES = {"decode": (1, 4), "prefill": (4, 2)}  # (tokens MT, rows NT) per register tile


def vnni_func(k: int, n: int) -> tirx.PrimFunc:
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
    (kb,) = VNNI_FORMAT.row_bytes(k).values()  # code bytes per row
    nblk = VNNI_FORMAT.blocks(k)
    P = nblk // 2  # full 64-byte chunks (two 128-weight blocks)
    tail = nblk % 2  # one more 32-byte block
    k256 = ceil_div(k, 256) * 256
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
