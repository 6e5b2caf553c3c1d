"""Attention (GQA, bottom-right causal, optional past; KVQuantAttention) on scheduled CPU kernels,
CUDA decode kernels, or Relax ops."""

from __future__ import annotations

import numpy as np

from tvm import relax, te, tirx

from ....ir.ops import Op
from .. import kernels
from .common import _as_int, _simplify, impl
from .kv import _kv_fake_quant_te, _kv_span_select_te


def _causal_mask_te(s, scale: float, causal: bool):
    """scores * scale, with -inf where key j is after query i's absolute position (bottom-right)."""
    sq, sk = s.shape[2], s.shape[3]
    sc = tirx.const(scale, "float32")
    ninf = tirx.const(float("-inf"), "float32")
    if not causal:
        return te.compute(s.shape, lambda b, h, i, j: s[b, h, i, j] * sc, name="attn_scale")
    return te.compute(s.shape, lambda b, h, i, j: tirx.Select(j <= i + (sk - sq), s[b, h, i, j] * sc, ninf),
                      name="attn_mask")


@impl(Op.KVQuantAttention)
@impl(Op.Attention)
def _attention(L, node, args):
    out, k, v, _p = _attend(L, node, args)
    return [out, k, v] if len(node.outputs) >= 3 else [out]


def _attend(L, node, args):
    """Attention over past + new (appended, KV fake-quant applied for KVQuantAttention) ->
    (out, K, V, softmax probabilities)."""
    q, k, v = (L.tensor(a) for a in args[:3])
    past_k = args[3] if len(args) > 3 else None
    past_v = args[4] if len(args) > 4 else None
    def append(past, new):
        pt = L.tensor(past)
        ps, ns = L.shape_of(pt), L.shape_of(new)
        if (not L.tvm_target.gpu and L.ndim(pt) == 4 and isinstance(ps[1], int) and isinstance(ps[3], int)
                and L.dtype_of(pt) == L.dtype_of(new) and ps[1] == ns[1] and ps[3] == ns[3]):
            kv_append = L.kernel("kv_append", (ps[1], ps[3], L.dtype_of(pt)),
                                 lambda: kernels.kv_append_func(ps[1], ps[3], L.dtype_of(pt)))
            shape = [ps[0], ps[1], _simplify(ps[2] + ns[2]), ps[3]]
            return L.emit(relax.call_tir(kv_append, [pt, new], relax.TensorType(shape, L.dtype_of(pt))))
        return L.emit(relax.op.concat([pt, new], axis=2))

    if getattr(past_k, "kv_cache", None) is not None:
        return _attend_inplace(L, node, q, k, v, past_k, past_v)
    n_past = 0
    if past_k is not None and not L.is_empty_const(past_k):
        n_past = L.shape_of(L.tensor(past_k))[2]
        k = append(past_k, k)
    if past_v is not None and not L.is_empty_const(past_v):
        v = append(past_v, v)
    if node.op == Op.KVEvict and node.attr("policy") not in ("streaming", "h2o"):
        raise L.err(f"KV eviction policy {node.attr('policy')!r} has no TVM lowering (streaming and h2o have)")
    if node.op == Op.KVQuantAttention:
        # the cache holds KIVI fake-quantized values (ir/interp.kv_fake_quant_append): only the
        # rows that join the quantized span in this call are quantized and dequantized
        if L.dtype_of(k) != "float32":
            raise L.err(f"quantize-kv lowering needs a float32 cache, got {L.dtype_of(k)}")
        cfg = {a: int(node.attr(a)) for a in ("bits", "group_size", "residual", "sinks")}
        d = L.shape_of(k)[3]
        if not isinstance(d, int) or d % min(cfg["group_size"], d):
            raise L.err(f"head dim {d} must be static and a multiple of the value group")
        if node.attr("rotate") and L.tvm_target.gpu:
            raise L.err("quantize-kv{rotate=1} lowers for CPU targets only (the CUDA schedule of the "
                        "rotation matmul over the growing cache is missing); use rotate=0 on cuda")
        if node.attr("rotate"):
            # RotateKV-style: quantize x @ H, keep (x_hat @ H) @ H^T for the rows that join the span
            # (float32 matmuls: summation order differs from numpy's, so a code can flip at a
            # rounding boundary; tests compare tokens)
            from ....ir.kvquant import hadamard

            hm = hadamard(d)
            hc, htc = relax.const(hm), relax.const(np.ascontiguousarray(hm.T))
            rot = []
            for x, keys in ((k, True), (v, False)):
                xr = L.emit(relax.op.matmul(x, hc))
                xq = L.bb.emit_te(_kv_fake_quant_te, xr, n_past, cfg, keys, primfunc_name_hint="kv_fake_quant_rot")
                back = L.emit(relax.op.matmul(xq, htc))
                rot.append(L.bb.emit_te(_kv_span_select_te, back, x, n_past, cfg, primfunc_name_hint="kv_span_select"))
            k, v = rot
        else:
            k = L.bb.emit_te(_kv_fake_quant_te, k, n_past, cfg, True, primfunc_name_hint="kv_fake_quant_k")
            v = L.bb.emit_te(_kv_fake_quant_te, v, n_past, cfg, False, primfunc_name_hint="kv_fake_quant_v")
    qs, ks = L.shape_of(q), L.shape_of(k)
    hq, hkv = qs[1], ks[1]
    if not isinstance(hq, int) or not isinstance(hkv, int) or hq % hkv:
        raise L.err(f"query heads {hq} must be a static multiple of kv heads {hkv}")
    dt = L.dtype_of(q)
    d = qs[3]
    if not L.tvm_target.gpu and dt == "float32" and isinstance(d, int) and L.dtype_of(k) == dt and L.dtype_of(v) == dt:
        # scheduled CPU kernels: GQA by indexing (no repeated K/V), mask and scale fused
        scale, causal = float(node.attr("scale")), bool(node.attr("causal"))
        scores_k = L.kernel("attn_scores", (hq, hkv, d, scale, causal),
                            lambda: kernels.attention_scores_func(hq, hkv, d, scale, causal))
        pv_k = L.kernel("attn_pv", (hq, hkv, d), lambda: kernels.attention_pv_func(hq, hkv, d))
        b, sq, sk = qs[0], qs[2], ks[2]
        s = L.emit(relax.call_tir(scores_k, [q, k], relax.TensorType([b, hq, sq, sk], "float32")))
        p = L.emit(relax.op.nn.softmax(s, axis=-1))
        out = L.emit(relax.call_tir(pv_k, [p, v], relax.TensorType([b, hq, sq, d], "float32")))
        return out, k, v, p
    if (L.tvm_target.gpu and dt == "float32" and isinstance(d, int) and L.dtype_of(k) == dt
            and L.dtype_of(v) == dt and _as_int(qs[2]) == 1):
        # one query token (decode): the causal mask keeps every key, so scores are a plain GQA
        # product by indexing (no repeated K/V); the scale goes on q (an elementwise op that fuses
        # into the static, CUDA-graph captured producer of q)
        qsc = L.emit(relax.op.multiply(q, relax.const(float(node.attr("scale")), "float32")))
        scores_k = L.kernel("gqa_scores", (hq, hkv, d), lambda: kernels.gqa_decode_scores_func(hq, hkv, d))
        pv_k = L.kernel("gqa_pv", (hq, hkv, d), lambda: kernels.gqa_decode_pv_func(hq, hkv, d))
        b, sk = qs[0], ks[2]
        s = L.emit(relax.call_tir(scores_k, [qsc, k], relax.TensorType([b, hq, 1, sk], "float32")))
        p = L.emit(relax.op.nn.softmax(s, axis=-1))
        out = L.emit(relax.call_tir(pv_k, [p, v], relax.TensorType([b, hq, 1, d], "float32")))
        return out, k, v, p
    kr, vr = k, v
    if hq != hkv:
        kr = L.emit(relax.op.repeat(k, hq // hkv, axis=1))
        vr = L.emit(relax.op.repeat(v, hq // hkv, axis=1))
    qf, kf, vf = q, kr, vr
    if dt != "float32":
        qf, kf, vf = (L.emit(relax.op.astype(t, "float32")) for t in (q, kr, vr))
    s = L.emit(relax.op.matmul(qf, L.emit(relax.op.permute_dims(kf, [0, 1, 3, 2]))))
    s = L.bb.emit_te(_causal_mask_te, s, float(node.attr("scale")), bool(node.attr("causal")),
                     primfunc_name_hint="attn_mask")
    p = L.emit(relax.op.nn.softmax(s, axis=-1))
    out = L.emit(relax.op.matmul(p, vf))
    if dt != "float32":
        out = L.emit(relax.op.astype(out, dt))
    return out, k, v, p


def _attend_inplace(L, node, q, k_new, v_new, past_k, past_v):
    """Attention over a preallocated cache (FunctionLowerer's inplace_kv): the new keys/values are
    written into rows [past, past + sq) of the caches in place (no copy of the cache), and the
    capacity kernels read the first past + sq rows. Same arithmetic as the appending path."""
    if node.op != Op.Attention or getattr(past_v, "kv_cache", None) is None or L.tvm_target.gpu:
        raise L.err("in-place KV cache lowering takes plain Attention on CPU targets only")
    qs, ns = L.shape_of(q), L.shape_of(k_new)
    hq, hkv, d = qs[1], ns[1], qs[3]
    dt = L.dtype_of(q)
    if dt != "float32" or L.dtype_of(k_new) != dt or not all(isinstance(x, int) for x in (hq, hkv, d)) or hq % hkv:
        raise L.err("in-place KV cache lowering needs float32, static heads (a multiple of kv heads) and head dim")
    past = past_k.kv_len
    caches = []
    for lazy, new in ((past_k, k_new), (past_v, v_new)):
        cache = lazy.kv_cache
        write = L.kernel("kv_write", (hkv, d, dt), lambda: kernels.kv_write_func(hkv, d, dt))
        caches.append(L.emit(relax.call_tir_inplace(write, [cache, new, relax.prim_value(past)], [0],
                                                    relax.TensorType(L.shape_of(cache), dt))))
    kc, vc = caches
    scale, causal = float(node.attr("scale")), bool(node.attr("causal"))
    scores_k = L.kernel("attn_scores_cap", (hq, hkv, d, scale, causal),
                        lambda: kernels.attention_scores_func(hq, hkv, d, scale, causal, capacity=True))
    pv_k = L.kernel("attn_pv_cap", (hq, hkv, d), lambda: kernels.attention_pv_func(hq, hkv, d, capacity=True))
    b, sq = qs[0], qs[2]
    sk = _simplify(past + sq)
    s = L.emit(relax.call_tir(scores_k, [q, kc], relax.TensorType([b, hq, sq, sk], "float32")))
    p = L.emit(relax.op.nn.softmax(s, axis=-1))
    out = L.emit(relax.call_tir(pv_k, [p, vc], relax.TensorType([b, hq, sq, d], "float32")))
    return out, kc, vc, p
