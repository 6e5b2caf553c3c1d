"""`fold`: constant folding and static-shape folding.

A node whose inputs are all constants is evaluated with the reference interpreter (so folding can
never disagree with it) and its outputs become module constants. `Shape`/`Size` of a value whose
type has static dimensions (the ones selected) fold without evaluating anything. Outputs larger than
`max_elements` stay computed (folding must not blow up the weight file), and nodes producing a
function result are kept so entry points keep their result names.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir.core import Const, Module, Node, digest
from ..ir.interp import IMPLS  # importing interp registers the high-level ops too
from ..ir.ops import Op
from .base import PassResult, clean, fresh, rename_inputs, used_names


@dataclass(frozen=True)
class FoldOptions:
    max_elements: int = 16 * 1024 * 1024  # largest folded constant (elements); bigger ones stay computed
    shapes: bool = True  # fold Shape/Size of statically-shaped values

    def __post_init__(self):
        if self.max_elements < 1:
            raise ValueError(f"max_elements must be >= 1, got {self.max_elements}")


def _static_shape_value(node: Node, types) -> np.ndarray | None:
    t = types.get(node.inputs[0])
    if t is None or t.shape is None:
        return None
    if node.op == Op.Shape:
        start, end = node.attr("start", 0), node.attr("end")
        dims = t.shape[start:end] if end is not None else t.shape[start:]
        if all(isinstance(d, int) for d in dims):
            return np.array(dims, dtype=np.int64)
    elif node.op == Op.Size and t.is_static:
        return np.array(int(np.prod(t.shape, dtype=np.int64)), dtype=np.int64)
    return None


def run(module: Module, opts: FoldOptions = FoldOptions()) -> PassResult:
    consts: dict[str, Const] = dict(module.constants)
    taken = used_names(module)
    shared: dict[tuple[str, str], str] = {}  # (value name, digest) -> constant: main/prefill share folds
    folded = shape_folded = 0
    fns = []
    for fn in module.functions:
        types = fn.value_types()
        results = set(fn.results)
        rename: dict[str, str] = {}
        nodes = []
        for node in fn.nodes:
            node = rename_inputs(node, rename)
            outs = None
            if any(o.name in results for o in node.outputs):
                pass
            elif opts.shapes and node.op in (Op.Shape, Op.Size):
                v = _static_shape_value(node, types)
                if v is not None:
                    outs, shape_folded = [v], shape_folded + 1
            if outs is None and node.inputs and not any(o.name in results for o in node.outputs) \
                    and all((not i) or (i in consts and consts[i].data is not None) for i in node.inputs):
                outs = _evaluate(node, consts, opts.max_elements)
                if outs is not None:
                    folded += 1
            if outs is None:
                nodes.append(node)
                continue
            for o, a in zip(node.outputs, outs):
                # The interpreter's array is the truth; the declared dtype only keeps tags such as t2.
                dtype = o.type.dtype if o.type.dtype.np == a.dtype else None
                key = (o.name, digest(a))
                if key not in shared:
                    shared[key] = fresh(f"{o.name}.fold", taken)
                    consts[shared[key]] = Const.of(a, dtype)
                rename[o.name] = shared[key]
        fns.append(fn.with_nodes(nodes, results=tuple(rename.get(r, r) for r in fn.results)))
    out = clean(module.replace(functions=tuple(fns), constants=consts))
    return PassResult(out, {"folded": folded, "shape_folded": shape_folded})


def _evaluate(node: Node, consts: dict[str, Const], max_elements: int) -> list[np.ndarray] | None:
    impl = IMPLS.get(node.op)
    if impl is None:
        return None
    args = [consts[i].data if i else None for i in node.inputs]
    try:
        outs = impl(node, args)
    except Exception:  # an op the interpreter rejects here is left for run time to report
        return None
    if len(outs) < len(node.outputs):
        return None
    outs = [np.asarray(o) for o in outs[: len(node.outputs)]]
    if any(o.size > max_elements for o in outs):
        return None
    return outs
