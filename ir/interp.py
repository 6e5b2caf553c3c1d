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
    xf = x.astype(np.float32)
    var = np.mean(xf * xf, axis=-1, keepdims=True)
    y = (xf * (1.0 / np.sqrt(var + np.float32(node.attr("eps"))))).astype(x.dtype)
    return [(w * y).astype(x.dtype)]


@impl(Op.LayerNorm)
def _layernorm(node, args):
    x, scale = args[0], args[1]
    bias = args[2] if len(args) > 2 else None
    xf = x.astype(np.float32)
    mean = xf.mean(-1, keepdims=True)
    var = ((xf - mean) ** 2).mean(-1, keepdims=True)
    y = (xf - mean) / np.sqrt(var + np.float32(node.attr("eps"))) * scale
    if bias is not None:
        y = y + bias
    return [y.astype(x.dtype)]


def rotate_half(x: np.ndarray) -> np.ndarray:
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


@impl(Op.RoPE)
def _rope(node, args):
    """x * cos + rotate_half(x) * sin (HF / GPT-NeoX layout: halves, not interleaved pairs)."""
    x, cos, sin = args
    return [(x * cos + rotate_half(x) * sin).astype(x.dtype)]


def attention_probs(q: np.ndarray, k: np.ndarray, scale: float, causal: bool) -> np.ndarray:
    """Softmax(q k^T * scale) with bottom-right-aligned causal masking and GQA head sharing.

    q [b, hq, sq, d]; k [b, hkv, sk, d]; query i (of sq) sits at absolute position sk - sq + i and
    sees keys j <= that position. Computed in f32.
    """
    b, hq, sq, d = q.shape
    hkv, sk = k.shape[1], k.shape[2]
    if hq % hkv:
        raise InterpError(f"query heads {hq} not a multiple of kv heads {hkv}")
    kr = np.repeat(k, hq // hkv, axis=1).astype(np.float32)
    s = np.matmul(q.astype(np.float32), np.swapaxes(kr, -1, -2)) * np.float32(scale)
    if causal:
        qi = np.arange(sq)[:, None] + (sk - sq)
        kj = np.arange(sk)[None, :]
        s = np.where(kj <= qi, s, np.float32(-np.inf))
    return _softmax(s, -1).astype(np.float32)


@impl(Op.Attention)
def _attention(node, args):
    q, k, v = args[0], args[1], args[2]
    past_k = args[3] if len(args) > 3 else None
    past_v = args[4] if len(args) > 4 else None
    if past_k is not None:
        k = np.concatenate([past_k, k], axis=2)
        v = np.concatenate([past_v, v], axis=2)
    p = attention_probs(q, k, node.attr("scale"), bool(node.attr("causal")))
    hq, hkv = q.shape[1], k.shape[1]
    out = np.matmul(p, np.repeat(v, hq // hkv, axis=1).astype(np.float32)).astype(q.dtype)
    if len(node.outputs) == 3:
        return [out, k, v]
    return [out]


@impl(Op.GatedAct)
def _gated(node, args):
    g, u = args
    act = node.attr("act")
    if act == "silu":
        a = g * (1.0 / (1.0 + np.exp(-g)))
    elif act == "relu2":
        r = np.maximum(g, 0)
        a = r * r
    elif act == "gelu_tanh":
        a = 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g**3)))
    else:
        raise InterpError(f"{node.label}: unknown gate activation {act!r}")
    return [(a * u).astype(g.dtype)]


# ---------------------------------------------------------------- the ternary integer contract
def unpack_weight(node: Node, parts: Sequence[np.ndarray]) -> np.ndarray:
    """Ternary int8 [N, K] weight from the node's packed inputs (format attr; see ir/packing.py)."""
    fmt, k, n = node.attr("format"), node.attr("k"), node.attr("n")
    if fmt == "t2":
        w = np.asarray(parts[0]).astype(np.int8)
    else:
        from . import packing

        # Canonical part order is the key order packing.pack returns.
        names = list(packing.pack(np.zeros((1, 3), np.int8), fmt).keys())
        w = packing.unpack(dict(zip(names, parts)), fmt, k)
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
    x, w_scale = args[0], np.asarray(args[1]).reshape(())
    packed = args[2:]
    bias = None
    if node.attr("has_bias", 0):
        bias, packed = packed[-1], packed[:-1]
    y = semantics.ternary_linear(x, unpack_weight(node, packed), w_scale, node.attr("eps", semantics.ACT_EPS))
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
            raise InterpError(f"@{fn.name}: unknown inputs {sorted(extra)}")
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
