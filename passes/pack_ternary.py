"""`pack-ternary{format=i2|tl1|tl2|tq1}`: store TernaryLinear / TernaryMatMul / FusedLinear weights packed.

Replaces each unpacked (format "t2", int8 [N, K]) weight operand by the uint8 arrays
`ir.packing.pack` returns, in its key order (the order the interpreter unpacks them in), and sets
the node's `format`. Lossless: `packing.unpack` restores the exact ternary matrix, so outputs and
int32 accumulators are bit-identical (tested). A weight shared by several nodes is packed once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir import packing
from ..ir.core import Module, Node
from ..ir.enums import Epilogue
from ..ir.ops import Op
from ..ir.types import DType
from .base import PassResult, add_const, clean, used_names


@dataclass(frozen=True)
class PackTernaryOptions:
    format: str = "tl2"  # a packed layout of the ir.packing registry

    def __post_init__(self):
        if self.format not in packing.packed_formats():
            raise ValueError(f"unknown ternary format {self.format!r}; valid: {', '.join(packing.packed_formats())}")


def _weight_slots(node: Node) -> list[int]:
    """Input indices of unpacked (t2) weights: TernaryLinear (x, w_scale, w[, bias]) -> [2];
    TernaryMatMul (x_q, w) -> [1]; FusedLinear over TernaryLinear: the weight of each fused linear."""
    if node.attr("format") != packing.UNPACKED:
        return []
    if node.op == Op.TernaryLinear:
        return [2]
    if node.op == Op.TernaryMatMul:
        return [1]
    if node.op == Op.FusedLinear and node.attr("linear") == Op.TernaryLinear.value:
        n_ops = node.attr("linear_operands")
        gated = Epilogue.parse(node.attr("epilogue")).gated
        return [2, 2 + n_ops] if gated else [2]
    return []


def run(module: Module, opts: PackTernaryOptions = PackTernaryOptions()) -> PassResult:
    consts = dict(module.constants)
    taken = used_names(module)
    packed_as: dict[str, list[str]] = {}
    packed_nodes = 0
    fns = []
    for fn in module.functions:
        nodes = []
        for node in fn.nodes:
            slots = [i for i in _weight_slots(node) if node.inputs[i] in consts and consts[node.inputs[i]].data is not None]
            if not slots:
                nodes.append(node)
                continue
            inputs = list(node.inputs)
            for slot in reversed(slots):  # right to left, so earlier slot indices stay valid
                w = node.inputs[slot]
                if w not in packed_as:
                    parts = packing.pack(np.asarray(consts[w].data), opts.format)
                    base = w[:-3] if w.endswith(".t2") else w
                    packed_as[w] = [add_const(consts, taken, f"{base}.{opts.format}.{part}", arr, DType.U8)
                                    for part, arr in parts.items()]
                inputs[slot:slot + 1] = packed_as[w]
            attrs = {"format": opts.format}
            if node.op == Op.FusedLinear:  # each fused linear now has len(parts) - 1 more operands
                attrs["linear_operands"] = node.attr("linear_operands") + len(packed_as[node.inputs[slots[0]]]) - 1
            nodes.append(Node(node.op, tuple(inputs), node.outputs, node.attrs, node.origin).with_attrs(**attrs))
            packed_nodes += 1
        fns.append(fn.with_nodes(nodes))
    out = clean(module.replace(functions=tuple(fns), constants=consts))
    return PassResult(out, {"packed_nodes": packed_nodes, "packed_weights": len(packed_as)})
