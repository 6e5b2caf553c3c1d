"""`split-ternary`: lower TernaryLinear into its integer-contract steps.

    y = TernaryLinear(x, w_scale, *w[, bias])  ->  x_q, a_scale = QuantizeAct(x)
                                                   acc = TernaryMatMul(x_q, *w)     (exact int32)
                                                   y   = Dequantize(acc, a_scale, w_scale)  [+ bias]

Lossless (the interpreter defines TernaryLinear as exactly this composition), and it exposes the
int32 accumulators, so tests and backends can compare them exactly.
"""

from __future__ import annotations

from ..ir.core import Module, Node, Value
from ..ir.ops import Op
from ..ir.types import DType, TensorType
from .base import NoOptions, PassResult, fresh, used_names


def run(module: Module, opts: NoOptions = NoOptions()) -> PassResult:
    taken = used_names(module)
    split = 0
    fns = []
    for fn in module.functions:
        types = fn.value_types()
        nodes = []
        for node in fn.nodes:
            if node.op != Op.TernaryLinear:
                nodes.append(node)
                continue
            x, w_scale, *parts = node.inputs
            bias = parts.pop() if node.attr("has_bias", 0) else None
            out = node.outputs[0]
            shape = out.type.shape
            xt = types.get(x)
            lead = tuple(xt.shape[:-1]) if xt is not None and xt.shape else None
            base = out.name
            xq = Value(fresh(f"{base}.x_q", taken), TensorType(DType.I8, xt.shape if xt is not None else None))
            sc = Value(fresh(f"{base}.a_scale", taken), TensorType(DType.F32, lead + (1,) if lead is not None else None))
            acc = Value(fresh(f"{base}.acc", taken), TensorType(DType.I32, shape))
            mm = {k: node.attr(k) for k in ("format", "k", "n")}
            nodes.append(Node.make(Op.QuantizeAct, [x], [xq, sc], node.origin, eps=node.attr("eps")))
            nodes.append(Node.make(Op.TernaryMatMul, [xq.name, *parts], [acc], node.origin, **mm))
            # Dequantize is f32; TernaryLinear adds the bias, then casts to x's dtype (f16 models).
            steps = [(Op.Dequantize, [acc.name, sc.name, w_scale], {})]
            if bias is not None:
                steps.append((Op.Add, [None, bias], {}))
            if out.type.dtype != DType.F32:
                steps.append((Op.Cast, [None], {"to": out.type.dtype.value}))
            prev = None
            for i, (op, ins, attrs) in enumerate(steps):
                last = i == len(steps) - 1
                v = out if last else Value(fresh(f"{base}.{op.value.lower()}", taken), TensorType(DType.F32, shape))
                nodes.append(Node.make(op, [prev if a is None else a for a in ins], [v], node.origin, **attrs))
                prev = v.name
            split += 1
        fns.append(fn.with_nodes(nodes))
    return PassResult(module.replace(functions=tuple(fns)), {"split": split})
