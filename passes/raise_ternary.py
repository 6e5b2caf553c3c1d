"""`raise-ternary`: find BitNet linears in an imported graph and raise them to TernaryLinear (t2).

A BitNet export (transformers `BitLinear`, unpacking constant-folded by the exporter) computes

    A   = 127 / clip(max|x|, eps)          (ReduceMax(Abs(x)) -> Clip -> Reciprocal -> Mul 127, or Div)
    x_q = cast(clip(round(x * A), -128, 127))                  (Round, Clip, Cast i8, Cast f32)
    y   = Linear(x_q, T * s) / (c * A)     T in {-1,0,1}: the weight constant is ternary up to s

which is the integer contract TernaryLinear(x, w_scale = s / c, T) (ir/semantics.py). MatMul(x_q, W[K, N]) with a
constant weight counts as Linear (exports that unpack weights at run time import as MatMul; run
`fold` first so the unpacked weight becomes a constant). Also raised: the "fake-quant" form `Linear(clip(round(x*A), -128, 127) / A, T * s, bias?)` (AutoBitLinear /
ActQuant), which is TernaryLinear(x, s, T, bias). Both are the same arithmetic up to f32 rounding
of the scale products (measured against onnxruntime in the tests).

A Linear whose weight is ternary but whose activations are NOT int8-quantized in the graph is left
alone unless `require_act_quant=false`: raising it adds activation quantization (lossy).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir import semantics
from ..ir.core import Module, Node
from ..ir.graph import Graph, rewrite
from ..ir.ops import Op
from ..ir.types import DType
from .base import PassResult, add_const, clean, used_names


@dataclass(frozen=True)
class RaiseTernaryOptions:
    require_act_quant: bool = True  # false: also raise float-activation linears (lossy)
    rtol: float = 1e-6  # weights must satisfy |w - s*round(w/s)| <= rtol * s, s = max|w|

    def __post_init__(self):
        if not 0 <= self.rtol < 0.5:
            raise ValueError(f"rtol must be in [0, 0.5), got {self.rtol}")


def ternary_split(w: np.ndarray, rtol: float) -> tuple[np.ndarray, np.float32] | None:
    """(T int8 in {-1,0,1}, s) with w == s*T up to rtol, or None if `w` is not ternary up to a scale."""
    if w.ndim != 2 or not np.issubdtype(w.dtype, np.floating) or w.size == 0:
        return None
    wf = w.astype(np.float64)
    s = float(np.max(np.abs(wf)))
    if s == 0.0 or not np.isfinite(s):
        return None
    t = np.round(wf / s)
    if np.max(np.abs(wf - s * t)) > rtol * s:
        return None
    return t.astype(np.int8), np.float32(s)


class _Matcher(Graph):
    """The BitLinear patterns, matched on the ir.graph view of one function."""

    # A = 127 / clip(max|x|, eps), spelled Mul(Reciprocal(C), 127) or Div(127, C)
    def act_scale(self, a: str) -> tuple[str, float] | None:
        n = self.node(a, Op.Mul, Op.Div)
        if n is None:
            return None
        clip_v = None
        if n.op == Op.Div and self.scalar(n.inputs[0]) == semantics.ACT_QMAX:
            clip_v = n.inputs[1]
        elif n.op == Op.Mul:
            for r, c in (n.inputs, n.inputs[::-1]):
                rec = self.node(r, Op.Reciprocal)
                if rec is not None and self.scalar(c) == semantics.ACT_QMAX:
                    clip_v = rec.inputs[0]
        if clip_v is None:
            return None
        clip = self.node(clip_v, Op.Clip, Op.Max)
        if clip is None or len(clip.inputs) < 2 or (clip.op == Op.Clip and len(clip.inputs) > 2 and clip.inputs[2]):
            return None
        eps = self.scalar(clip.inputs[1])
        rmax = self.node(clip.inputs[0], Op.ReduceMax)
        if eps is None or eps <= 0 or rmax is None or rmax.attr("keepdims", 1) != 1 or len(rmax.inputs) != 2:
            return None
        axes = self.const(rmax.inputs[1])
        if axes is None or np.asarray(axes).reshape(-1).tolist() != [-1]:
            return None
        ab = self.node(rmax.inputs[0], Op.Abs)
        return (ab.inputs[0], eps) if ab is not None else None

    # clip(round(x * A), -128, 127) -> (x, A, eps)
    def quantized(self, v: str) -> tuple[str, str, float] | None:
        clip = self.node(v, Op.Clip)
        if clip is None or len(clip.inputs) != 3 or self.scalar(clip.inputs[1]) != semantics.ACT_QMIN \
                or self.scalar(clip.inputs[2]) != semantics.ACT_QMAX:
            return None
        rnd = self.node(clip.inputs[0], Op.Round)
        mul = self.node(rnd.inputs[0], Op.Mul) if rnd else None
        if mul is None:
            return None
        for x, a in (mul.inputs, mul.inputs[::-1]):
            m = self.act_scale(a)
            if m is not None and m[0] == x:
                return x, a, m[1]
        return None

    def int_activations(self, v: str) -> tuple[str, str, float] | None:
        """v = Cast f32 (Cast i8 (clip(round(x*A)))) -> (x, A, eps)."""
        steps = 0
        while (c := self.node(v, Op.Cast)) is not None and steps < 2:
            v, steps = c.inputs[0], steps + 1
        return self.quantized(v) if steps else None

    def dequantized_activations(self, v: str) -> tuple[str, str, float] | None:
        """v = clip(round(x*A)) / A -> (x, A, eps)."""
        d = self.node(v, Op.Div)
        if d is None:
            return None
        q = self.quantized(d.inputs[0])
        return q if q is not None and q[1] == d.inputs[1] else None

    def dequant_epilogue(self, lin: Node, a: str) -> tuple[Node, float] | None:
        """Linear output y -> y / (c * A) (or y / A, optionally then * c' or / c'): (root node, factor)
        with the epilogue equal to multiplying acc / A by `factor`."""
        y = lin.outputs[0].name
        if not self.sole_use(y):
            return None
        d = self.uses(y)[0]
        if d.op != Op.Div or d.inputs[0] != y:
            return None
        if d.inputs[1] == a:
            factor, root = 1.0, d
            out = d.outputs[0].name
            if self.sole_use(out):
                nxt = self.uses(out)[0]
                if nxt.op in (Op.Mul, Op.Div):
                    other = nxt.inputs[1] if nxt.inputs[0] == out else (nxt.inputs[0] if nxt.op == Op.Mul else None)
                    c = self.scalar(other) if other else None
                    if c is not None and c != 0:
                        factor, root = (c if nxt.op == Op.Mul else 1.0 / c), nxt
            return root, factor
        m = self.node(d.inputs[1], Op.Mul)
        if m is None or a not in m.inputs:
            return None
        c = self.scalar(m.inputs[1] if m.inputs[0] == a else m.inputs[0])
        if c is None or c == 0:
            return None
        return d, 1.0 / c


def run(module: Module, opts: RaiseTernaryOptions = RaiseTernaryOptions()) -> PassResult:
    consts = dict(module.constants)
    taken = used_names(module)
    ternary_of: dict[str, tuple[str, np.float32] | None] = {}  # weight constant -> (t2 constant, s)
    scale_of: dict[float, str] = {}
    counts = {"int8_graph": 0, "fake_quant": 0, "float_activations": 0}

    def ternary(w: str, transposed: bool):
        """Ternary split of weight constant `w` in [N, K] layout (MatMul weights are [K, N])."""
        key = f"{w}.T" if transposed else w
        if key not in ternary_of:
            c = consts.get(w)
            data = None if c is None or c.data is None else (c.data.T if transposed else c.data)
            split = ternary_split(data, opts.rtol) if data is not None else None
            ternary_of[key] = None if split is None else (
                add_const(consts, taken, f"{key}.t2", np.ascontiguousarray(split[0]), DType.T2), split[1])
        return ternary_of[key]

    def scale_const(value: float) -> str:
        value = float(np.float32(value))
        if value not in scale_of:
            scale_of[value] = add_const(consts, taken, "w_scale", np.array(value, np.float32))
        return scale_of[value]

    fns = []
    for fn in module.functions:
        mt = _Matcher(fn, module.constants)
        replace: dict[int, Node] = {}  # id of the node the new TernaryLinear stands in for -> it
        for lin in fn.nodes:
            # MatMul with a constant weight: exports whose unpacking `fold` evaluated after import
            if lin.op not in (Op.Linear, Op.MatMul) or len(lin.inputs) < 2:
                continue
            tw = ternary(lin.inputs[1], transposed=lin.op == Op.MatMul)
            if tw is None:
                continue
            t2, s = tw
            n_out, k = consts[t2].type.shape
            bias = lin.inputs[2] if lin.op == Op.Linear and len(lin.inputs) > 2 and lin.inputs[2] else None
            attrs = dict(format="t2", k=k, n=n_out, has_bias=int(bias is not None))
            x_in = lin.inputs[0]
            q = mt.int_activations(x_in)
            if q is not None and bias is None:
                x, a, eps = q
                epi = mt.dequant_epilogue(lin, a)
                if epi is None:
                    continue
                root, factor = epi
                inputs = [x, scale_const(s * factor), t2]
                kind = "int8_graph"
            else:
                q = mt.dequantized_activations(x_in)
                if q is not None:
                    x, _, eps = q
                    kind = "fake_quant"
                elif not opts.require_act_quant:
                    x, eps, kind = x_in, semantics.ACT_EPS, "float_activations"
                else:
                    continue
                root = lin
                inputs = [x, scale_const(s), t2] + ([bias] if bias else [])
            replace[id(root)] = Node.make(Op.TernaryLinear, inputs, root.outputs, lin.origin or root.origin,
                                          eps=eps, **attrs)
            counts[kind] += 1
        fns.append(rewrite(fn, replace))
    out = clean(module.replace(functions=tuple(fns), constants=consts))
    return PassResult(out, {"raised": sum(counts.values()), **counts})
