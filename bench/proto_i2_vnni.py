"""Prototype: a fast x86 (AVX-512 VNNI) TensorIR kernel for the i2 ternary matmul, for the TVM backend.

NOT part of the backend (backends/tvm is owned elsewhere): a measured proposal. Same contract as
`backends/tvm/kernels.py` "dot": x_q int8 [M, K] and the i2 codes uint8 [N, K/4] (ir/packing.py) ->
exact int32 acc [M, N] = x_q @ w_t.T.

Idea (what llama.cpp TQ2_0 / bitnet.cpp I2_S do, written in TIR): never decode weights to int8 in
memory. With code c = w + 1 in {0, 1, 2}:  acc = sum_k c_k x_k - sum_k x_k.  One 64-byte load of
i2 codes holds 256 weights (two 128-weight I2 blocks); for g = 0..3, `(bytes >> (6 - 2g)) & 3` are
64 unsigned codes, and ONE `vpdpbusd` (u8 x s8 -> 4-way int32 dot) accumulates them against 64
activations. For this the activations are permuted once per token (`xperm`: block pair p, group g ->
64 contiguous bytes x[256p + 32g + j], x[256p + 128 + 32g + j], j < 32) and their row sum taken.
Per 256 weights: 1 load + 4 x (shift, and, vpdpbusd, activation load) -- no multiplies, no int32
weight vectors, no rfactor scratch.

Schedule: rows N in tiles of `NT` (parallel over tiles, TVM thread pool), tokens in tiles of `MT`;
for each (row, token) pair one int32x16 accumulator in registers; codes decoded once per row and
reused by all MT tokens (prefill); K loop innermost. Horizontal sum at the end. Decode uses
MT=1/NT=4, prefill MT=4/NT=2. (A 16-row-interleaved layout that drops the permutation and the
horizontal sums was also tried: no gain, the decode GEMV is at the memory-bandwidth limit.)

Note: LLVM 22's `llvm.x86.avx512.vpdpbusd.512` takes <64 x i8> operands; TVM's own
`dot_16x4_vnni` tensor intrinsic (tvm.s_tir.tensor_intrin.x86) still passes <16 x i32> and fails
LLVM verification with this TVM build.

Also here, for `cpu_vs_llamacpp.py --proto`-style whole-model runs (`compile_proto`): a vectorized,
parallel LM head (f32 x f16 weights) and a fused causal attention kernel (online softmax, heads in
parallel), patched into the lowering at compile time.

    python bench/proto_i2_vnni.py            # exactness + timing vs backends/tvm dot/dot16 at BitNet-large shapes
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np


def make_kernels(k: int, n: int, mt: int = 4, nt: int = 2):
    """(perm_func, gemm_func) PrimFuncs for K, N static, M symbolic."""
    import tvm
    from tvm.script import tirx as T

    assert k % 256 == 0, "prototype: K multiple of 256 (pad x and codes otherwise)"
    assert n % nt == 0
    kb = k // 4  # code bytes per row
    P = k // 256  # 64-byte chunks per row
    vpdpbusd = "llvm.x86.avx512.vpdpbusd.512"

    @T.prim_func(s_tir=True)
    def perm(var_x: T.handle, var_xp: T.handle, var_xs: T.handle):
        T.func_attr({"tir.noalias": True})
        m = T.int64()
        x = T.match_buffer(var_x, (m, k), "int8")
        xp = T.match_buffer(var_xp, (m, k), "int8")
        xs = T.match_buffer(var_xs, (m,), "int32")
        with T.sblock("root"):
            for i in range(m):
                for p, g, h, j in T.grid(P, 4, 2, 32):
                    xp[i, p * 256 + g * 64 + h * 32 + j] = x[i, p * 256 + h * 128 + g * 32 + j]
                s = T.decl_buffer((1,), "int32", scope="local")
                s[0] = 0
                for kk in range(k):
                    s[0] = s[0] + T.Cast("int32", x[i, kk])
                xs[i] = s[0]

    @T.prim_func(s_tir=True)
    def gemm(var_xp: T.handle, var_xs: T.handle, w: T.Buffer((n, kb), "uint8"), var_out: T.handle):
        T.func_attr({"tir.noalias": True})
        m = T.int64()
        xp = T.match_buffer(var_xp, (m, k), "int8")
        xs = T.match_buffer(var_xs, (m,), "int32")
        out = T.match_buffer(var_out, (m, n), "int32")
        with T.sblock("root"):
            for jo in T.parallel(n // nt):
                acc = T.decl_buffer((nt * mt * 16,), "int32", scope="local")
                red = T.decl_buffer((1,), "int32", scope="local")
                for io in range((m + mt - 1) // mt):
                    for a in T.serial(nt * mt):
                        acc[T.ramp(a * 16, 1, 16)] = T.broadcast(T.int32(0), 16)
                    for p in range(P):
                        for jn in T.unroll(nt):
                            for g in T.unroll(4):
                                for ii in T.unroll(mt):
                                    if io * mt + ii < m:
                                        acc[T.ramp((jn * mt + ii) * 16, 1, 16)] = T.call_llvm_pure_intrin(
                                            "int32x16", vpdpbusd,
                                            acc[T.ramp((jn * mt + ii) * 16, 1, 16)],
                                            T.bitwise_and(
                                                T.shift_right(w[jo * nt + jn, T.ramp(p * 64, 1, 64)],
                                                              T.broadcast(T.uint8(6 - 2 * g), 64)),
                                                T.broadcast(T.uint8(3), 64)),
                                            xp[io * mt + ii, T.ramp(p * 256 + g * 64, 1, 64)])
                    for jn, ii in T.grid(nt, mt):
                        if io * mt + ii < m:
                            red[0] = 0
                            for l in T.unroll(16):
                                red[0] = red[0] + acc[(jn * mt + ii) * 16 + l]
                            out[io * mt + ii, jo * nt + jn] = red[0] - xs[io * mt + ii]

    return perm, gemm


def build(k: int, n: int, mt: int = 4, nt: int = 2, target=None):
    import tvm

    from ternc.backends.tvm.build import make_target

    perm, gemm = make_kernels(k, n, mt, nt)
    tgt = target or make_target("cpu")
    mod = tvm.IRModule({"perm": perm, "gemm": gemm})
    return tvm.compile(mod, target=tgt)


def run(lib, x_q: np.ndarray, codes: np.ndarray, n: int, dev=None, reps: int = 0):
    import tvm

    dev = dev or tvm.cpu()
    m, k = x_q.shape
    x = tvm.runtime.tensor(np.ascontiguousarray(x_q), dev)
    xp = tvm.runtime.empty((m, k), "int8", dev)
    xs = tvm.runtime.empty((m,), "int32", dev)
    w = tvm.runtime.tensor(np.ascontiguousarray(codes), dev)
    out = tvm.runtime.empty((m, n), "int32", dev)
    fp, fg = lib["perm"], lib["gemm"]
    fp(x, xp, xs)
    fg(xp, xs, w, out)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fp(x, xp, xs)
        fg(xp, xs, w, out)
        times.append(time.perf_counter() - t0)
    return out.numpy(), times


def main():
    os.environ.setdefault("TVM_NUM_THREADS", "2")
    from ternc.backends.tvm import kernels as K
    from ternc.backends.tvm.build import make_target
    from ternc.ir import packing, semantics

    tgt = make_target("cpu")  # this host's CPU for both (measure_kinds' default "llvm" is generic x86-64)
    rng = np.random.default_rng(0)
    shapes = [(1536, 1536), (1536, 4096), (4096, 1536)]
    only_proto = "--proto-only" in sys.argv
    print("| M | K | N | backend best of dot/dot16 ms | proto ms | proto GMAC/s | speedup |")
    print("|---|---|---|---|---|---|---|")
    for m in (1, 128):
        for k, n in shapes:
            w = (rng.integers(0, 3, size=(n, k)) - 1).astype(np.int8)
            codes = packing.pack(w, "i2")["codes"]
            x = rng.integers(-127, 128, size=(m, k)).astype(np.int8)
            ref = semantics.ternary_matmul_i32(x, w)
            lib = build(k, n, mt=1 if m == 1 else 4, nt=4 if m == 1 else 2, target=tgt)
            got, ts = run(lib, x, codes, n, reps=7)
            assert np.array_equal(got, ref), "prototype kernel is not exact"
            tp = float(np.median(ts))
            tb = None
            if not only_proto:
                tb = min(t.seconds for t in K.measure_kinds("i2", k, n, m, ["dot", "dot16"], repeat=3, target=tgt))
            sp = f"{tb / tp:.1f}x" if tb else "-"
            print(f"| {m} | {k} | {n} | {tb * 1e3 if tb else float('nan'):.2f} | {tp * 1e3:.3f} | "
                  f"{m * k * n / tp / 1e9:.1f} | {sp} |", flush=True)


if __name__ == "__main__":
    main()


# ------------------------------------------------------------------------------------------------
# Whole-model prototype: the backend's lowering with the i2 matmul and the LM head swapped for the
# kernels here, and dlight's CPU rules for the remaining unscheduled TIR. Monkeypatches the lowering
# while compiling (backends/ is not edited); used by `cpu_vs_llamacpp.py --proto`.
# ------------------------------------------------------------------------------------------------
def make_linear_f16w(k: int, n: int, nt: int = 2):
    """y f32 [M, N] = x f32 [M, K] @ w[N, K].T, w f16 or f32: parallel over row tiles, f32x16 FMAs."""
    from tvm.script import tirx as T

    assert k % 16 == 0 and n % nt == 0

    def build(wdt: str):
        @T.prim_func(s_tir=True)
        def linear(var_x: T.handle, w: T.Buffer((n, k), wdt), var_y: T.handle):
            T.func_attr({"tir.noalias": True, "tirx.is_scheduled": True})
            m = T.int64()
            x = T.match_buffer(var_x, (m, k), "float32")
            y = T.match_buffer(var_y, (m, n), "float32")
            with T.sblock("root"):
                for jo in T.parallel(n // nt):
                    acc = T.decl_buffer((nt * 16,), "float32", scope="local")
                    red = T.decl_buffer((1,), "float32", scope="local")
                    for i in range(m):
                        for a in T.serial(nt):
                            acc[T.ramp(a * 16, 1, 16)] = T.broadcast(T.float32(0), 16)
                        for kk in range(k // 16):
                            for jn in T.unroll(nt):
                                acc[T.ramp(jn * 16, 1, 16)] = acc[T.ramp(jn * 16, 1, 16)] + x[i, T.ramp(kk * 16, 1, 16)] \
                                    * T.Cast("float32x16", w[jo * nt + jn, T.ramp(kk * 16, 1, 16)])
                        for jn in range(nt):
                            red[0] = T.float32(0)
                            for l in T.unroll(16):
                                red[0] = red[0] + acc[jn * 16 + l]
                            y[i, jo * nt + jn] = red[0]
        return linear

    return build


def make_attention(h: int, d: int, scale: float):
    """Causal (bottom-right aligned) attention, f32, no GQA: out[0, h, i] = softmax(q k^T * scale) v.

    One pass per query row with an online softmax (running max / denominator, the accumulator rescaled
    when the max grows): no [sq, sk] score matrix, no separate mask/softmax/matmul kernels. Heads in
    parallel; the head dim in f32x16 vectors."""
    from tvm.script import tirx as T

    assert d % 16 == 0
    dv = d // 16

    @T.prim_func(s_tir=True)
    def attn(var_q: T.handle, var_k: T.handle, var_v: T.handle, var_o: T.handle):
        T.func_attr({"tir.noalias": True, "tirx.is_scheduled": True})
        sq = T.int64()
        sk = T.int64()
        q = T.match_buffer(var_q, (1, h, sq, d), "float32")
        k = T.match_buffer(var_k, (1, h, sk, d), "float32")
        v = T.match_buffer(var_v, (1, h, sk, d), "float32")
        o = T.match_buffer(var_o, (1, h, sq, d), "float32")
        with T.sblock("root"):
            for hh in T.parallel(h):
                acc = T.decl_buffer((d,), "float32", scope="local")
                dot = T.decl_buffer((16,), "float32", scope="local")
                st = T.decl_buffer((4,), "float32", scope="local")  # max, denominator, score, rescale
                for i in range(sq):
                    for c in T.unroll(dv):
                        acc[T.ramp(c * 16, 1, 16)] = T.broadcast(T.float32(0), 16)
                    st[0] = T.float32(-3.0e38)
                    st[1] = T.float32(0)
                    for j in range(i + sk - sq + 1):
                        dot[T.ramp(0, 1, 16)] = q[0, hh, i, T.ramp(0, 1, 16)] * k[0, hh, j, T.ramp(0, 1, 16)]
                        for c in T.unroll(dv - 1):
                            dot[T.ramp(0, 1, 16)] = dot[T.ramp(0, 1, 16)] + q[0, hh, i, T.ramp((c + 1) * 16, 1, 16)] \
                                * k[0, hh, j, T.ramp((c + 1) * 16, 1, 16)]
                        st[2] = T.float32(0)
                        for l in T.unroll(16):
                            st[2] = st[2] + dot[l]
                        st[2] = st[2] * T.float32(scale)
                        if st[2] > st[0]:
                            st[3] = T.exp(st[0] - st[2])
                            st[1] = st[1] * st[3]
                            for c in T.unroll(dv):
                                acc[T.ramp(c * 16, 1, 16)] = acc[T.ramp(c * 16, 1, 16)] * T.broadcast(st[3], 16)
                            st[0] = st[2]
                        st[2] = T.exp(st[2] - st[0])
                        st[1] = st[1] + st[2]
                        for c in T.unroll(dv):
                            acc[T.ramp(c * 16, 1, 16)] = acc[T.ramp(c * 16, 1, 16)] \
                                + T.broadcast(st[2], 16) * v[0, hh, j, T.ramp(c * 16, 1, 16)]
                    for c in T.unroll(dv):
                        o[0, hh, i, T.ramp(c * 16, 1, 16)] = acc[T.ramp(c * 16, 1, 16)] / T.broadcast(st[1], 16)

    return attn


def _mark(f, name):
    # op_pattern 8 = kOpaque: AnnotateTIROpPattern and FuseOps leave the hand-written kernels alone
    return f.with_attr("tirx.is_scheduled", True).with_attr("global_symbol", name).with_attr("op_pattern", 8)


class _Patched:
    """Context manager: the TVM lowering with the prototype kernels (restored on exit)."""

    def __enter__(self):
        from tvm import relax

        from ternc.backends.tvm import lower
        from ternc.ir.ops import Op

        self.lower = lower
        self.orig_tmm = lower._tmatmul
        self.orig_linear = lower.IMPLS[Op.Linear]
        orig_tmm, orig_linear = self.orig_tmm, self.orig_linear

        def tmm(L, node, xq_padded, parts, fmt, k, n):
            if fmt != "i2" or k % 256 or L.target_kind != "cpu":
                return orig_tmm(L, node, xq_padded, parts, fmt, k, n)
            decode = L.tokens_hint == 1
            mt, nt = (1, 4) if decode else (4, 2)
            key = ("proto_i2", k, n, mt, nt)
            if key not in L.kernel_cache:
                perm, gemm = make_kernels(k, n, mt, nt)
                names = f"proto_i2_perm_k{k}_n{n}_{mt}{nt}", f"proto_i2_vnni_k{k}_n{n}_{mt}{nt}"
                L.kernel_cache[key] = (L.bb.add_func(_mark(perm, names[0]), names[0]),
                                       L.bb.add_func(_mark(gemm, names[1]), names[1]))
            gp, gg = L.kernel_cache[key]
            m = L.shape_of(xq_padded)[0]
            if L.shape_of(xq_padded)[1] != k:
                xq_padded = L.emit(relax.op.strided_slice(xq_padded, [1], [0], [k]))
            pr = L.emit(relax.call_tir(gp, [xq_padded], [relax.TensorType([m, k], "int8"),
                                                          relax.TensorType([m], "int32")]))
            xp, xs = L.emit(relax.TupleGetItem(pr, 0)), L.emit(relax.TupleGetItem(pr, 1))
            return L.emit(relax.call_tir(gg, [xp, xs, L.tensor(parts[0])], relax.TensorType([m, n], "int32")))

        def linear(L, node, args):
            x, w = L.tensor(args[0]), L.tensor(args[1])
            ws, xs = L.shape_of(w), L.shape_of(x)
            wdt = L.dtype_of(w)
            if (len(args) > 2 and args[2] is not None) or L.dtype_of(x) != "float32" or \
                    wdt not in ("float16", "float32") or not all(isinstance(d, int) for d in ws) or ws[1] % 16:
                return orig_linear(L, node, args)
            n, k = ws
            nt = 2 if n % 2 == 0 else 1
            key = ("proto_linear", k, n, wdt)
            if key not in L.kernel_cache:
                name = f"proto_linear_k{k}_n{n}_{wdt}"
                L.kernel_cache[key] = L.bb.add_func(_mark(make_linear_f16w(k, n, nt)(wdt), name), name)
            lead = xs[:-1]
            m = 1
            for d in lead:
                m = m * d
            x2 = L.emit(relax.op.reshape(x, [lower._simplify(m), k]))
            y = L.emit(relax.call_tir(L.kernel_cache[key], [x2, w], relax.TensorType([lower._simplify(m), n], "float32")))
            return relax.op.reshape(y, [*lead, n])

        self.orig_attn = lower.IMPLS[Op.Attention]
        orig_attn = self.orig_attn

        def attention(L, node, args):
            q, k, v = (L.tensor(a) for a in args[:3])
            qs, ks = L.shape_of(q), L.shape_of(k)
            if (not node.attr("causal") or L.dtype_of(q) != "float32" or qs[1] != ks[1] or not isinstance(qs[1], int)
                    or not isinstance(qs[3], int) or qs[3] % 16 or qs[0] != 1):
                return orig_attn(L, node, args)
            past_k = args[3] if len(args) > 3 else None
            past_v = args[4] if len(args) > 4 else None
            if past_k is not None and not L.is_empty_const(past_k):
                k = L.emit(relax.op.concat([L.tensor(past_k), k], axis=2))
            if past_v is not None and not L.is_empty_const(past_v):
                v = L.emit(relax.op.concat([L.tensor(past_v), v], axis=2))
            h, d = qs[1], qs[3]
            scale = float(node.attr("scale"))
            key = ("proto_attn", h, d, scale)
            if key not in L.kernel_cache:
                name = f"proto_attention_h{h}_d{d}"
                L.kernel_cache[key] = L.bb.add_func(_mark(make_attention(h, d, scale), name), name)
            out = L.emit(relax.call_tir(L.kernel_cache[key], [q, k, v], relax.TensorType(qs, "float32")))
            return [out, k, v] if len(node.outputs) == 3 else [out]

        lower._tmatmul = tmm
        lower.IMPLS[Op.Linear] = linear
        lower.IMPLS[Op.Attention] = attention
        return self

    def __exit__(self, *exc):
        from ternc.ir.ops import Op

        self.lower._tmatmul = self.orig_tmm
        self.lower.IMPLS[Op.Linear] = self.orig_linear
        self.lower.IMPLS[Op.Attention] = self.orig_attn


def cpu_pipeline(target, dlight: bool = True):
    """The default Relax CPU pipeline, optionally plus dlight's CPU GEMV/Reduction rules after fusion.

    Off by default: with static shapes (decode with seq = 1) dl.cpu.Reduction's schedule made the
    1536-element rms_norm ~1000x slower (0.4 s per decode step); unscheduled it costs ~2 us."""
    import tvm
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cp
    from tvm.s_tir import dlight as dl

    @tvm.transform.module_pass(opt_level=0)
    def _pipeline(mod, _ctx):
        with target:
            extra = [dl.ApplyDefaultSchedule(dl.cpu.GEMV(), dl.cpu.Reduction())] if dlight else []
            seq = tvm.transform.Sequential(cp.library_dispatch_passes(target) + cp.legalize_passes(target) + extra
                                           + cp.dataflow_lower_passes(target) + cp.finalize_passes(target))
            return seq(mod)

    return _pipeline


def compile_proto(module, kernel_policy: str = "auto", dlight: bool = False, mcpu: str | None = None):
    """Like backends.tvm.build.compile_module(module, "cpu") with the prototype kernels patched in."""
    import tvm

    from ternc.backends.tvm.build import Built, make_target
    from ternc.backends.tvm.lower import lower_module

    tgt = make_target("cpu", mcpu)
    with _Patched():
        # the measured kernel choice ("auto") runs kernels here: only valid for this host's CPU
        lowered = lower_module(module, None, "cpu", kernel_policy if mcpu is None else "dot", target=tgt)
    ex = tvm.compile(lowered.mod, tgt, relax_pipeline=cpu_pipeline(tgt, dlight))
    return Built("cpu", tgt, ex, lowered)
