"""Test helpers for the TVM backend tests: tiny models and a local ternarization stand-in.

`ternarize(module, fmt)` rewrites every Linear with a constant [N, K] weight into a TernaryLinear
(BitNet absmean weight quantization through `ternc.ir.semantics.ternarize_absmean`, packed with
`ternc.ir.packing.pack`). It is a fixture helper only (the real pass lives in passes/).
"""

from __future__ import annotations

import numpy as np

from ternc.ir import packing, semantics
from ternc.ir.core import Const, Node
from ternc.ir.ops import Op


def ternarize(module, fmt="i2", skip=("logits",)):
    """fmt: one format, or a list of formats used round-robin over the weights (mixed model)."""
    fmts = [fmt] if isinstance(fmt, str) else list(fmt)
    consts = dict(module.constants)
    chosen: dict[str, str] = {}
    done: dict[str, list[str]] = {}
    fns = []
    for fn in module.functions:
        nodes = []
        for n in fn.nodes:
            w = consts.get(n.inputs[1]) if n.op == Op.Linear and len(n.inputs) >= 2 else None
            if w is None or w.data is None or w.data.ndim != 2 or n.outputs[0].name in skip:
                nodes.append(n)
                continue
            wname = n.inputs[1]
            nn_, kk = w.data.shape
            fmt = chosen.setdefault(wname, fmts[len(chosen) % len(fmts)])
            if wname not in done:
                w_t, scale = semantics.ternarize_absmean(w.data)
                parts = packing.pack(w_t, fmt)
                names = []
                for pn, arr in parts.items():
                    cname = f"{wname}.{fmt}.{pn}"
                    consts[cname] = Const.of(arr)
                    names.append(cname)
                consts[f"{wname}.scale"] = Const.of(np.array(scale, np.float32))
                done[wname] = names
            inputs = [n.inputs[0], f"{wname}.scale", *done[wname]]
            has_bias = len(n.inputs) > 2 and bool(n.inputs[2])
            if has_bias:
                inputs.append(n.inputs[2])
            nodes.append(Node.make(Op.TernaryLinear, inputs, n.outputs, n.origin, format=fmt, k=kk, n=nn_,
                                   has_bias=int(has_bias)))
        fns.append(fn.with_nodes(nodes))
    used = {i for f in fns for n in f.nodes for i in n.inputs}
    consts = {k: v for k, v in consts.items() if k in used}
    return module.replace(functions=tuple(fns), constants=consts)
