"""`quantize-ternary`: quantize float Linear weights to ternary (LOSSY) -> TernaryLinear (t2).

BitNet b1.58 absmean quantization per tensor (`semantics.ternarize_absmean`): w_t = clip(round(w /
mean|w|), -1, 1), scale = mean|w|, and activations become int8 per token. A float model was not
trained for this, so outputs change; the tests measure by how much. Use `raise-ternary` for models
that already are ternary (that one is exact).

Skipped: linears matching any `skip` pattern (fnmatch on the weight constant, the output value or
the source node name) and, with `keep_lm_head` (default), the projection to the vocabulary (a
linear producing a function result, or with N equal to an embedding table's row count).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir import semantics
from ..ir.core import Module, Node
from ..ir.ops import Op
from ..ir.types import DType
from .base import PassResult, add_const, clean, matches_any, used_names


@dataclass(frozen=True)
class QuantizeTernaryOptions:
    skip: tuple[str, ...] = ()  # fnmatch patterns of linears to keep in float
    keep_lm_head: bool = True  # keep the final projection to the vocabulary in float


def _vocab_sizes(module: Module) -> set[int]:
    rows = set()
    for f in module.functions:
        for n in f.nodes:
            c = module.constants.get(n.inputs[0]) if n.op == Op.Gather and n.inputs else None
            if c is not None and c.type.shape and isinstance(c.type.shape[0], int):
                rows.add(c.type.shape[0])
    return rows


def run(module: Module, opts: QuantizeTernaryOptions = QuantizeTernaryOptions()) -> PassResult:
    consts = dict(module.constants)
    taken = used_names(module)
    vocab = _vocab_sizes(module)
    done: dict[str, tuple[str, str]] = {}
    quantized, skipped = 0, []
    fns = []
    for fn in module.functions:
        results = set(fn.results)
        nodes = []
        for node in fn.nodes:
            w = node.inputs[1] if node.op == Op.Linear else None
            c = consts.get(w) if w else None
            if c is None or c.data is None or c.data.ndim != 2 or not c.type.dtype.is_float:
                nodes.append(node)
                continue
            out = node.outputs[0].name
            n_out, k = c.data.shape
            lm_head = out in results or n_out in vocab
            if matches_any((w, out, node.origin), opts.skip) or (opts.keep_lm_head and lm_head):
                skipped.append(out)
                nodes.append(node)
                continue
            if w not in done:
                w_t, scale = semantics.ternarize_absmean(c.data)
                done[w] = (add_const(consts, taken, f"{w}.t2", w_t, DType.T2),
                           add_const(consts, taken, f"{w}.scale", np.array(scale, np.float32)))
            t2, scale_name = done[w]
            bias = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else None
            nodes.append(Node.make(Op.TernaryLinear, [node.inputs[0], scale_name, t2] + ([bias] if bias else []),
                                   node.outputs, node.origin, format="t2", k=k, n=n_out,
                                   has_bias=int(bias is not None), eps=semantics.ACT_EPS))
            quantized += 1
        fns.append(fn.with_nodes(nodes))
    out = clean(module.replace(functions=tuple(fns), constants=consts))
    return PassResult(out, {"quantized": quantized, "skipped": len(skipped)})
