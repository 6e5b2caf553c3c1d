"""`cse`: common-subexpression elimination.

Two nodes with the same op, the same inputs and the same attributes compute the same values (every
IR op is a pure function of its inputs), so later ones are dropped and their uses point at the
first. With `constants=true`, constants with identical content (type, shape and bytes) are merged
first, which exposes more duplicates (e.g. two transposed copies of one weight). Nodes producing a
function result are kept, so entry points keep their result names.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ir.core import Module
from .base import PassResult, clean, rename_inputs


@dataclass(frozen=True)
class CSEOptions:
    constants: bool = True  # also merge constants with identical content


def run(module: Module, opts: CSEOptions = CSEOptions()) -> PassResult:
    const_alias: dict[str, str] = {}
    if opts.constants:
        first: dict[tuple[str, str], str] = {}
        for name, c in module.constants.items():
            key = (c.sha, str(c.type))
            if c.data is None:  # parsed without weights: content unknown, nothing to compare
                continue
            const_alias[name] = first.setdefault(key, name)
        const_alias = {k: v for k, v in const_alias.items() if k != v}
    merged_nodes = 0
    fns = []
    for fn in module.functions:
        results = set(fn.results)
        alias = dict(const_alias)
        seen: dict[tuple, tuple[str, ...]] = {}
        nodes = []
        for node in fn.nodes:
            node = rename_inputs(node, alias)
            key = (node.op, node.inputs, node.attrs, tuple(o.type.dtype for o in node.outputs))
            prev = seen.get(key)
            if prev is not None and not any(o.name in results for o in node.outputs):
                alias.update({o.name: p for o, p in zip(node.outputs, prev)})
                merged_nodes += 1
                continue
            seen.setdefault(key, tuple(o.name for o in node.outputs))
            nodes.append(node)
        fns.append(fn.with_nodes(nodes, results=tuple(alias.get(r, r) for r in fn.results)))
    out = clean(module.replace(functions=tuple(fns)))
    return PassResult(out, {"merged_nodes": merged_nodes, "merged_constants": len(const_alias)})
