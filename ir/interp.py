"""The numpy reference interpreter. Its implementation of each op IS that op's meaning.

Primitive ops follow ONNX (latest opset) semantics (ir/prims.py); high-level and ternary ops are
defined here in terms of `ir/semantics.py`, `ir/packing.py` and the KV modules. Every backend, pass
and RTL golden model compares against this.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

from . import semantics
from .core import Function, Module, Node
from .enums import FUSED_EPILOGUES, Epilogue, KVPolicy
from .ops import Op
from .prims import IMPLS, InterpError, _softmax, impl

# ---------------------------------------------------------------- high-level ops
@impl(Op.Linear)
def _linear(node, args):
    x, w = args[0], args[1]
    y = np.matmul(x, w.T)
    if len(args) > 2 and args[2] is not None:
        y = y + args[2]
    return [y.astype(x.dtype)]


@impl(Op.RMSNorm)
def _rmsnorm(node, args):
    """HF Llama RMSNorm: computed in f32, then weight * normalized (cast back to x's dtype first)."""
    x, w = args
    if node.attr("numerics", "float") == "fx":
        from . import hw_numerics as hn

        # FX values are carried as f64 (exact) between fx ops; see hw_numerics' decoder section.
        return [hn.from_fx(hn.rmsnorm_fx(hn.to_fx(x), hn.to_fx(w), float(node.attr("eps"))))]
    xf = x.astype(np.float32)
    var = np.mean(xf * xf, axis=-1, keepdims=True)
    y = (xf * (1.0 / np.sqrt(var + np.float32(node.attr("eps"))))).astype(x.dtype)
    return [(w * y).astype(x.dtype)]


@impl(Op.LayerNorm)
def _layernorm(node, args):
    """ONNX LayerNormalization over the last axis (one definition: ir/prims.py)."""
    ln = Node.make(Op.LayerNormalization, node.inputs, node.outputs[:1], node.origin, axis=-1,
                   epsilon=float(node.attr("eps")))
    return IMPLS[Op.LayerNormalization](ln, args)


def rotate_half(x: np.ndarray) -> np.ndarray:
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


@impl(Op.RoPE)
def _rope(node, args):
    """x * cos + rotate_half(x) * sin (HF / GPT-NeoX layout: halves, not interleaved pairs).

    {numerics = "fx"}: FX activations with cos/sin rounded to Q1.14, `hw_numerics.rope_fx`."""
    x, cos, sin = args
    if node.attr("numerics", "float") == "fx":
        from . import hw_numerics as hn

        h = x.shape[-1] // 2
        q14 = float(1 << hn.ROPE_FRAC)
        c = np.round(np.asarray(cos, np.float64)[..., :h] * q14).astype(np.int64)
        sn = np.round(np.asarray(sin, np.float64)[..., :h] * q14).astype(np.int64)
        xr = hn.to_fx(x)
        y0, y1 = hn.rope_fx(xr[..., :h], xr[..., h:], c, sn)
        return [hn.from_fx(np.concatenate([y0, y1], axis=-1))]
    return [(x * cos + rotate_half(x) * sin).astype(x.dtype)]


def attention_probs(q: np.ndarray, k: np.ndarray, scale: float, causal: bool,
                    q_pos: np.ndarray | None = None, k_pos: np.ndarray | None = None) -> np.ndarray:
    """Softmax(q k^T * scale) with bottom-right-aligned causal masking and GQA head sharing.

    q [b, hq, sq, d]; k [b, hkv, sk, d]; query i (of sq) sits at absolute position sk - sq + i and
    sees keys j <= that position. With q_pos [sq] / k_pos [sk] (token positions; caches whose
    entries are not in position order, KVEvict{policy=lazyllm}) the causal mask is by position:
    query i sees key j iff k_pos[j] <= q_pos[i]. Computed in f32.
    """
    b, hq, sq, d = q.shape
    hkv, sk = k.shape[1], k.shape[2]
    if hq % hkv:
        raise InterpError(f"query heads {hq} not a multiple of kv heads {hkv}")
    kr = np.repeat(k, hq // hkv, axis=1).astype(np.float32)
    s = np.matmul(q.astype(np.float32), np.swapaxes(kr, -1, -2)) * np.float32(scale)
    if causal:
        if q_pos is None:
            qi = np.arange(sq)[:, None] + (sk - sq)
            kj = np.arange(sk)[None, :]
        else:
            qi = np.asarray(q_pos, np.int64).reshape(-1)[:, None]
            kj = np.asarray(k_pos, np.int64).reshape(-1)[None, :]
        s = np.where(kj <= qi, s, np.float32(-np.inf))
    return _softmax(s, -1).astype(np.float32)


@impl(Op.Attention)
def _attention(node, args):
    q, k, v = args[0], args[1], args[2]
    past_k = args[3] if len(args) > 3 else None
    past_v = args[4] if len(args) > 4 else None
    if node.attr("numerics", "float") == "fx":
        return _attention_fx(node, q, k, v, past_k, past_v)
    if past_k is not None:
        k = np.concatenate([past_k, k], axis=2)
        v = np.concatenate([past_v, v], axis=2)
    p = attention_probs(q, k, node.attr("scale"), bool(node.attr("causal")))
    hq, hkv = q.shape[1], k.shape[1]
    out = np.matmul(p, np.repeat(v, hq // hkv, axis=1).astype(np.float32)).astype(q.dtype)
    if len(node.outputs) == 3:
        return [out, k, v]
    return [out]


def _attention_fx(node, q, k, v, past_k, past_v, kv_quant=None):
    """Attention{numerics=fx}: the accelerator's KV words and exp2-table softmax
    (hw_numerics.attention_fx). The cache is carried as f32 holding 24-bit KV words exactly.
    kv_quant (KVQuantAttention): the KIVI span on KV words (hw_numerics.kv_quant_span_fx)."""
    from . import hw_numerics as hn

    kn, vn = hn.kv_from_fx(hn.to_fx(k)), hn.kv_from_fx(hn.to_fx(v))
    n_past = 0
    if past_k is not None and past_k.shape[2]:
        n_past = past_k.shape[2]
        kn = np.concatenate([hn.kv_from_float(past_k), kn], axis=2)
        vn = np.concatenate([hn.kv_from_float(past_v), vn], axis=2)
    if kv_quant is not None:
        from .kvquant import quantized_span

        _, old_stop = quantized_span(n_past, kv_quant)
        start, new_stop = quantized_span(kn.shape[2], kv_quant)
        lo = max(old_stop, start)
        kn = np.stack([hn.kv_quant_span_fx(x, lo, new_stop, kv_quant.bits, kv_quant.group_size, False) for x in kn])
        vn = np.stack([hn.kv_quant_span_fx(x, lo, new_stop, kv_quant.bits, kv_quant.group_size, True) for x in vn])
    b, sq, sk = q.shape[0], q.shape[2], kn.shape[2]
    qf = hn.to_fx(q)
    pos_q, pos_k = np.arange(sq) + (sk - sq), np.arange(sk)
    if not node.attr("causal"):
        pos_q = np.full(sq, sk)
    sc = int(hn.to_fx(float(node.attr("scale"))))
    out = np.stack([hn.attention_fx(qf[i], kn[i], vn[i], sc, pos_q, pos_k) for i in range(b)])
    res = [hn.from_fx(out)]
    if len(node.outputs) == 3:
        res += [hn.kv_to_float(kn), hn.kv_to_float(vn)]
    return res


@impl(Op.GatedAct)
def _gated(node, args):
    g, u = args
    act = node.attr("act")
    if node.attr("numerics", "float") == "fx" and act in ("silu", "relu2"):
        from . import hw_numerics as hn

        f = hn.silu_gate_fx if act == "silu" else hn.relu2_gate_fx
        return [hn.from_fx(f(hn.to_fx(g), hn.to_fx(u)))]
    if act == "silu":
        a = g * (1.0 / (1.0 + np.exp(-g)))
    elif act == "relu2":
        r = np.maximum(g, 0)
        a = r * r
    else:
        raise InterpError(f"{node.label}: unknown gate activation {act!r}")
    return [(a * u).astype(g.dtype)]


# ---------------------------------------------------------------- the ternary integer contract
def unpack_weight(node: Node, parts: Sequence[np.ndarray]) -> np.ndarray:
    """Ternary int8 [N, K] weight from the node's packed inputs (format attr; see ir/packing.py)."""
    fmt, k, n = node.attr("format"), node.attr("k"), node.attr("n")
    from . import packing

    layout = packing.get_format(fmt)
    w = layout.unpack(dict(zip(layout.part_names, parts)), k)
    if w.shape != (n, k):
        raise InterpError(f"{node.label}: weight unpacks to {w.shape}, expected [{n}, {k}]")
    return w


@impl(Op.QuantizeAct)
def _quant_act(node, args):
    x_q, a_scale = semantics.quantize_act(args[0], node.attr("eps", semantics.ACT_EPS))
    return [x_q, a_scale]


@impl(Op.TernaryMatMul)
def _tmatmul(node, args):
    return [semantics.ternary_matmul_i32(args[0], unpack_weight(node, args[1:]))]


@impl(Op.Dequantize)
def _dequant(node, args):
    acc, a_scale, w_scale = args
    return [semantics.dequantize(acc, a_scale, np.asarray(w_scale).reshape(()))]


@impl(Op.TernaryLinear)
def _tlinear(node, args):
    """The integer contract; with {numerics = "fx"} the FPGA datapath's formats (ir/hw_numerics.py):
    FX Q15.16 activations, the hardware quantizer, the same exact int32 core, and the pseudo-float
    dequantize factor. The fx variant is lossy against the float path; tests measure by how much."""
    x, w_scale = args[0], np.asarray(args[1]).reshape(())
    packed = args[2:]
    bias = None
    if node.attr("has_bias", 0):
        bias, packed = packed[-1], packed[:-1]
    w = unpack_weight(node, packed)
    if node.attr("numerics", "float") == "fx":
        from . import hw_numerics as hn

        y = hn.ternary_linear_fx(hn.to_fx(x), w, float(w_scale))
        if bias is not None:
            y = hn.add_fx(y, hn.to_fx(bias))
        return [hn.from_fx(y)]  # f64: exact FX values (see hw_numerics' decoder section)
    else:
        y = semantics.ternary_linear(x, w, w_scale, node.attr("eps", semantics.ACT_EPS))
    if bias is not None:
        y = y + bias
    return [y.astype(x.dtype)]


# ---------------------------------------------------------------- driver
class Interpreter:
    """Runs one function of a module. `observe(node, outputs)` is called after each node."""

    def __init__(self, module: Module, observe: Callable[[Node, Sequence[np.ndarray]], None] | None = None):
        self.module = module
        self.observe = observe

    def run(self, entry: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        fn = self.module.func(entry)
        env = self._bind(fn, inputs)
        for node in fn.nodes:
            args = []
            for name in node.inputs:
                if not name:
                    args.append(None)
                    continue
                args.append(self._lookup(env, name, node))
            f = IMPLS.get(node.op)
            if f is None:
                raise InterpError(f"@{fn.name}, node {node.label}: the interpreter has no implementation of "
                                  f"{node.op.value}")
            try:
                outs = f(node, args)
            except InterpError:
                raise
            except Exception as e:
                raise InterpError(f"@{fn.name}, node {node.label}: {type(e).__name__}: {e}") from e
            if len(outs) < len(node.outputs):
                raise InterpError(f"@{fn.name}, node {node.label}: produced {len(outs)} outputs, "
                                  f"expected {len(node.outputs)}")
            for o, val in zip(node.outputs, outs):
                env[o.name] = np.asarray(val)
            if self.observe is not None:
                self.observe(node, outs)
        return {r: self._lookup(env, r, None) for r in fn.results}

    def _bind(self, fn: Function, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        env: dict[str, np.ndarray] = {}
        missing = [p.name for p in fn.params if p.name not in inputs]
        if missing:
            raise InterpError(f"@{fn.name}: missing inputs {missing}; it takes "
                              f"{', '.join(str(p) for p in fn.params)}")
        extra = set(inputs) - {p.name for p in fn.params}
        if extra:
            bound = {k: v for k, v in self.module.meta.get("bound_inputs", {}).items() if k in extra}
            note = "".join(f"; %{k} was bound at load to {v}" for k, v in bound.items())
            raise InterpError(f"@{fn.name}: unknown inputs {sorted(extra)}{note}")
        for p in fn.params:
            a = np.asarray(inputs[p.name])
            want = p.type.dtype.np
            if a.dtype != want:
                if np.can_cast(a.dtype, want, casting="same_kind"):
                    a = a.astype(want)
                else:
                    raise InterpError(f"@{fn.name}: input %{p.name} has dtype {a.dtype}, expected {p.type}")
            if p.type.shape is not None:
                if a.ndim != len(p.type.shape) or any(
                        isinstance(d, int) and d != s for d, s in zip(p.type.shape, a.shape)):
                    raise InterpError(f"@{fn.name}: input %{p.name} has shape {list(a.shape)}, expected {p.type}")
            env[p.name] = a
        return env

    def _lookup(self, env, name, node):
        if name in env:
            return env[name]
        c = self.module.constants.get(name)
        if c is None:
            where = f"node {node.label}" if node else "results"
            raise InterpError(f"{where}: value %{name} is undefined")
        if c.data is None:
            raise InterpError(f"constant @{name} has no data (module parsed from text without its weights)")
        return c.data


def interpret(module: Module, inputs: Mapping[str, np.ndarray], entry: str = "main") -> dict[str, np.ndarray]:
    """Run `entry` of `module` on numpy inputs; returns {result name: array}."""
    return Interpreter(module).run(entry, inputs)


# ---------------------------------------------------------------- FusedLinear (passes/fuse_epilogue.py)
# A linear (Linear or TernaryLinear) streamed into an elementwise epilogue, as the FPGA linear engine
# runs it. Defined by composing the existing implementations above; no arithmetic of its own.
#
#   FusedLinear(x, *lin, *epilogue operands) {epilogue, linear, linear_operands, <linear's attrs>,
#                                             <epilogue's attrs>}
#   `lin` are the linear's inputs after x (`linear_operands` of them): Linear (w[, bias]);
#   TernaryLinear (w_scale, *packed[, bias]) with its attrs format/k/n/has_bias/eps carried over.
#     residual_add: (x, *lin, r)                 -> Add(linear(x), r)
#     rope:         (x, *lin, shape, cos, sin)   -> RoPE(Transpose(Reshape(linear(x), shape)), cos, sin)
#                   {perm, allowzero}: the head split between the projection and RoPE
#     gated_silu / gated_relu2: (x, *gate_lin, *up_lin) -> GatedAct(linear_gate(x), linear_up(x))
_FUSED_OWN_ATTRS = {"epilogue", "linear", "linear_operands", "perm", "allowzero"}


@impl(Op.FusedLinear)
def _fused_linear(node, args):
    epilogue = node.attr("epilogue")
    if epilogue not in FUSED_EPILOGUES:
        raise InterpError(f"{node.label}: unknown epilogue {epilogue!r}; valid: "
                          f"{', '.join(e.value for e in FUSED_EPILOGUES)}")
    epilogue = Epilogue(epilogue)
    lin_op = Op(node.attr("linear", "Linear"))
    if lin_op not in (Op.Linear, Op.TernaryLinear):
        raise InterpError(f"{node.label}: fused linear must be Linear or TernaryLinear, got {lin_op.value}")
    n_ops = int(node.attr("linear_operands"))
    lin_attrs = {k: v for k, v in node.attrs if k not in _FUSED_OWN_ATTRS}
    x, rest = args[0], list(args[1:])

    def linear(operands, names):
        lin = Node.make(lin_op, [node.inputs[0], *names], node.outputs, node.origin, **lin_attrs)
        return IMPLS[lin_op](lin, [x, *operands])[0]

    def step(op, inputs, **attrs):
        return IMPLS[op](Node.make(op, node.inputs[:1], node.outputs, node.origin, **attrs), inputs)[0]

    y = linear(rest[:n_ops], node.inputs[1:1 + n_ops])
    rest = rest[n_ops:]
    if epilogue == Epilogue.RESIDUAL_ADD:
        (r,) = rest
        if node.attr("numerics", "float") == "fx":
            from . import hw_numerics as hn

            return [hn.from_fx(hn.add_fx(hn.to_fx(y), hn.to_fx(r)))]
        return [step(Op.Add, [y, r])]
    if epilogue == Epilogue.ROPE:
        shape, cos, sin = rest
        h = step(Op.Reshape, [y, shape], allowzero=node.attr("allowzero", 0))
        h = step(Op.Transpose, [h], perm=node.attr("perm"))
        return [step(Op.RoPE, [h, cos, sin], numerics=node.attr("numerics"))]
    up = linear(rest[:n_ops], node.inputs[1 + n_ops:1 + 2 * n_ops])
    return [step(Op.GatedAct, [y, up], act=epilogue.act, numerics=node.attr("numerics"))]


# ---------------------------------------------------------------- KV cache ops (passes quantize-kv,
# evict-kv, prune-prefill). Appended; selection and quantization math lives in ir/kvquant.py and
# ir/kvevict.py, attention in `attention_probs`.
def _kv_concat(args):
    """(q, k_all, v_all, n_past) from (q, k, v, past_k?, past_v?, ...)."""
    q, k, v = args[0], args[1], args[2]
    past_k = args[3] if len(args) > 3 else None
    past_v = args[4] if len(args) > 4 else None
    if past_k is None:
        return q, k, v, 0
    return q, np.concatenate([past_k, k], axis=2), np.concatenate([past_v, v], axis=2), past_k.shape[2]


def _attend(q, k, v, node, q_pos=None, k_pos=None):
    """Exactly Op.Attention's arithmetic, also returning the probabilities [b, hq, sq, sk].
    (q_pos/k_pos: causal mask by token position, see `attention_probs`.)"""
    p = attention_probs(q, k, node.attr("scale"), bool(node.attr("causal")), q_pos, k_pos)
    hq, hkv = q.shape[1], k.shape[1]
    return np.matmul(p, np.repeat(v, hq // hkv, axis=1).astype(np.float32)).astype(q.dtype), p


def kv_quant_config(node):
    from .kvquant import KVQuantConfig

    return KVQuantConfig(bits=int(node.attr("bits")), group_size=int(node.attr("group_size")),
                         residual=int(node.attr("residual")), sinks=int(node.attr("sinks")),
                         rotate=bool(node.attr("rotate")))


def kv_fake_quant_append(past_k, past_v, k, v, cfg):
    """Append new tokens to a fake-quantized cache: (k_hat, v_hat) [b, h, n_past + n_new, d].

    State invariant: a cache of n tokens holds dequantize_kv(quantize_kv(exact keys/values, cfg)),
    i.e. sinks and the full-precision tail exact, the quantized span [s, stop(n)) dequantized. Since
    the span only grows by whole groups and each group's codes use only its own tokens (kvquant's
    prefix property), appending never changes existing codes: only tokens [max(stop(n_past), s),
    stop(n)) -- exact until now (they sat in the tail or are new) -- are quantized, as whole groups.
    """
    from dataclasses import replace as _replace

    from .kvquant import dequantize_kv, quantize_kv, quantized_span

    n_past = 0 if past_k is None else past_k.shape[2]
    k_all = k if past_k is None else np.concatenate([past_k, k], axis=2)
    v_all = v if past_v is None else np.concatenate([past_v, v], axis=2)
    _, old_stop = quantized_span(n_past, cfg)
    start, new_stop = quantized_span(k_all.shape[2], cfg)
    lo = max(old_stop, start)
    if new_stop > lo:
        sub = quantize_kv(k_all[:, :, lo:new_stop], v_all[:, :, lo:new_stop], _replace(cfg, sinks=0, residual=0))
        kq, vq = dequantize_kv(sub)
        k_all = np.concatenate([k_all[:, :, :lo], kq.astype(k_all.dtype), k_all[:, :, new_stop:]], axis=2)
        v_all = np.concatenate([v_all[:, :, :lo], vq.astype(v_all.dtype), v_all[:, :, new_stop:]], axis=2)
    return k_all, v_all


@impl(Op.KVQuantAttention)
def _kvquant_attention(node, args):
    """(q, k, v, past_k?, past_v?) {scale, causal, bits, group_size, residual, sinks, rotate}
    -> (out[, present_k, present_v]). The cache (past + new tokens) is stored KIVI-quantized per
    ir/kvquant.py (fake-quant: carried tensors hold the dequantized values, see
    `kv_fake_quant_append`); attention runs over the stored (dequantized) cache."""
    q, k, v = args[0], args[1], args[2]
    past_k = args[3] if len(args) > 3 else None
    past_v = args[4] if len(args) > 4 else None
    if node.attr("numerics", "float") == "fx":
        cfg = kv_quant_config(node)
        if cfg.rotate:
            raise InterpError(f"{node.label}: hardware numerics have no rotated KV format (rotate=1)")
        return _attention_fx(node, q, k, v, past_k, past_v, cfg)
    k_all, v_all = kv_fake_quant_append(past_k, past_v, k, v, kv_quant_config(node))
    out, _ = _attend(q, k_all, v_all, node)
    return [out, k_all, v_all] if len(node.outputs) == 3 else [out]


@impl(Op.KVEvict)
def _kv_evict(node, args):
    """Attention with a token-selecting cache; inputs (q, k, v, past_k?, past_v?, policy state...).

    policy=streaming {budget, sinks}: attend over past + new, then keep kvevict.streaming_keep(n,
        sinks, budget - sinks) -> (out, present_k, present_v).
    policy=h2o {budget, sinks, recent}: state = accumulated attention [b, kv_heads, n_past] (f32);
        acc = h2o_accumulate(state, probs summed over each GQA group); keep = h2o_keep(acc, budget,
        recent, sinks) per KV head -> (out, present_k, present_v, acc gathered at keep).
    policy=lazyllm {layer, schedule} (LazyLLM prefill pruning with revival, passes/prune_prefill.py):
        inputs (q, k, v, past_k?, past_v?, past_pos?, rows_pos, aux_pos?). The r query rows are the
        tokens layer `layer` computes in this call, at ascending positions rows_pos [r] i64 (the
        last = the newest token); past_pos [n_past] i64 are the positions of the cached entries
        (any order; absent = empty). Attention runs over past + new with the causal mask BY
        POSITION (key pos <= query pos) -> (out, present_k, present_v, present_pos = past_pos ++
        rows_pos). Unless `layer` is the last (layer + 1 == len(schedule)), the layer also selects
        the next layer's rows: aux_pos [a] i64 (absent = empty) are the positions parked in layer
        + 1's aux cache, and (take, park) = kvevict.lazyllm_next_rows(newest row's attention,
        present_pos, rows_pos, aux_pos, kvevict.lazyllm_keep_counts(max(present_pos) + 1,
        schedule)[layer + 1]) are indices into concat(rows, aux): take = the rows of layer + 1,
        park = its new aux cache -> (out, present_k, present_v, present_pos, take, park). Batch 1.
    """
    from . import kvevict

    policy = node.attr("policy")
    q, k_all, v_all, n_past = _kv_concat(args)
    if policy == KVPolicy.LAZYLLM:
        return _lazyllm(node, args, q, k_all, v_all)
    state = args[5] if len(args) > 5 else None
    out, p = _attend(q, k_all, v_all, node)
    budget = int(node.attr("budget", 0))
    sinks = int(node.attr("sinks", 0))
    n = k_all.shape[2]
    if policy == KVPolicy.STREAMING:
        keep = kvevict.streaming_keep(n, sinks, budget - sinks)
        return [out, k_all[:, :, keep], v_all[:, :, keep]]
    if policy == KVPolicy.H2O:
        b, hq, sq, sk = p.shape
        hkv = k_all.shape[1]
        grouped = kvevict.group_query_scores(p.reshape(b, hq, sq * sk), hkv).reshape(b, hkv, sq, sk)
        acc_past = np.zeros((b, hkv, n_past), np.float32) if state is None else state
        acc = kvevict.h2o_accumulate(acc_past, grouped)
        keep = kvevict.h2o_keep(acc, budget, int(node.attr("recent")), sinks, per_head=True)
        return [out, kvevict.gather_tokens(k_all, keep), kvevict.gather_tokens(v_all, keep),
                kvevict.gather_tokens(acc[..., None], keep)[..., 0]]
    raise InterpError(f"{node.label}: unknown KVEvict policy {policy!r}")


def _lazyllm(node, args, q, k_all, v_all):
    """KVEvict{policy=lazyllm}: see `_kv_evict`'s docstring (the semantics) and ir/kvevict.py."""
    from . import kvevict

    def pos(i):
        a = args[i] if len(args) > i else None
        return np.zeros(0, np.int64) if a is None else np.asarray(a, np.int64).reshape(-1)

    past_pos, rows_pos, aux_pos = pos(5), pos(6), pos(7)
    present_pos = np.concatenate([past_pos, rows_pos])
    if q.shape[0] != 1:
        raise InterpError(f"{node.label}: lazyllm pruning supports batch 1, got {q.shape[0]}")
    if rows_pos.size != q.shape[2] or present_pos.size != k_all.shape[2]:
        raise InterpError(f"{node.label}: {rows_pos.size} row positions for {q.shape[2]} query rows and "
                          f"{present_pos.size} cache positions for {k_all.shape[2]} keys")
    if rows_pos.size == 0 or (np.diff(rows_pos) <= 0).any():
        raise InterpError(f"{node.label}: row positions must be non-empty and strictly ascending")
    if np.unique(present_pos).size != present_pos.size or rows_pos[-1] != present_pos.max():
        raise InterpError(f"{node.label}: cache positions must be unique and the last row the newest token")
    out, p = _attend(q, k_all, v_all, node, rows_pos, present_pos)
    schedule, layer = node.attr("schedule"), int(node.attr("layer"))
    if layer + 1 >= len(schedule):
        return [out, k_all, v_all, present_pos]
    count = int(kvevict.lazyllm_keep_counts(int(present_pos.max()) + 1, schedule)[layer + 1])
    take, park = kvevict.lazyllm_next_rows(p[:, :, -1, :], present_pos, rows_pos, aux_pos, count)
    return [out, k_all, v_all, present_pos, take, park]
