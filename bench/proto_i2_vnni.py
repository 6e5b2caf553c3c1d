"""Whole-model prototype kernels for the CPU benchmark (bench/cpu_vs_llamacpp.py --variants proto).

The AVX-512 VNNI i2 ternary matmul that started here now lives in the backend
(`backends/tvm/kernels/vnni.py`, kernel kind `vnni`, chosen by the per-shape timing). What remains here
are proposals not yet in the backend, patched into the lowering while compiling: a vectorized,
parallel LM head (f32 activations x f16/f32 weights) and a fused causal attention kernel (online
softmax, heads in parallel), plus an optional dlight CPU pipeline.
"""

from __future__ import annotations




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

        from ternc.backends.tvm import lowering as lower
        from ternc.backends.tvm.lowering.common import _simplify
        from ternc.ir.ops import Op

        self.lower = lower
        self.orig_linear = lower.IMPLS[Op.Linear]
        orig_linear = self.orig_linear

        def linear(L, node, args):
            x, w = L.tensor(args[0]), L.tensor(args[1])
            ws, xs = L.shape_of(w), L.shape_of(x)
            wdt = L.dtype_of(w)
            if (len(args) > 2 and args[2] is not None) or L.dtype_of(x) != "float32" or \
                    wdt not in ("float16", "float32") or not all(isinstance(d, int) for d in ws) or ws[1] % 16:
                return orig_linear(L, node, args)
            n, k = ws
            nt = 2 if n % 2 == 0 else 1
            proto = L.kernel("proto_linear", (k, n, wdt),
                             lambda: _mark(make_linear_f16w(k, n, nt)(wdt), f"proto_linear_k{k}_n{n}_{wdt}"))
            lead = xs[:-1]
            m = 1
            for d in lead:
                m = m * d
            x2 = L.emit(relax.op.reshape(x, [_simplify(m), k]))
            y = L.emit(relax.call_tir(proto, [x2, w], relax.TensorType([_simplify(m), n], "float32")))
            return relax.op.reshape(y, [*lead, n])

        self.orig_attn = lower.IMPLS[Op.Attention]
        orig_attn = self.orig_attn

        def attention(L, node, args):
            q, k, v = (L.tensor(a) for a in args[:3])
            qs, ks = L.shape_of(q), L.shape_of(k)
            if (not node.attr("causal") or L.dtype_of(q) != "float32" or qs[1] != ks[1] or not isinstance(qs[1], int)
                    or not isinstance(qs[3], int) or qs[3] % 16 or qs[0] != 1
                    or getattr(args[3] if len(args) > 3 else None, "kv_cache", None) is not None):
                return orig_attn(L, node, args)  # (decode__kv_inplace: the backend's in-place attention)
            past_k = args[3] if len(args) > 3 else None
            past_v = args[4] if len(args) > 4 else None
            if past_k is not None and not L.is_empty_const(past_k):
                k = L.emit(relax.op.concat([L.tensor(past_k), k], axis=2))
            if past_v is not None and not L.is_empty_const(past_v):
                v = L.emit(relax.op.concat([L.tensor(past_v), v], axis=2))
            h, d = qs[1], qs[3]
            scale = float(node.attr("scale"))
            proto = L.kernel("proto_attn", (h, d, scale),
                             lambda: _mark(make_attention(h, d, scale), f"proto_attention_h{h}_d{d}"))
            out = L.emit(relax.call_tir(proto, [q, k, v], relax.TensorType(qs, "float32")))
            return [out, k, v] if len(node.outputs) == 3 else [out]

        lower.IMPLS[Op.Linear] = linear
        lower.IMPLS[Op.Attention] = attention
        return self

    def __exit__(self, *exc):
        from ternc.ir.ops import Op

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
    from ternc.backends.tvm.lowering import lower_module
    from ternc.backends.tvm.target import tvm_target

    tgt = make_target("cpu", mcpu)
    with _Patched():
        # the measured kernel choice ("auto") runs kernels here: only valid for this host's CPU
        lowered = lower_module(module, None, "cpu", kernel_policy if mcpu is None else "dot", target=tgt)
    ex = tvm.compile(lowered.mod, tgt, relax_pipeline=cpu_pipeline(tgt, dlight))
    return Built(tvm_target("cpu"), tgt, ex, lowered)
