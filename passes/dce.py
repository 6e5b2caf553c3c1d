"""`dce`: dead-code elimination: nodes that reach no function result, and unreferenced constants."""

from __future__ import annotations

from ..ir.core import Module
from .base import NoOptions, PassResult, clean, node_count


def run(module: Module, opts: NoOptions = NoOptions()) -> PassResult:
    out = clean(module)
    return PassResult(out, {"removed_nodes": node_count(module) - node_count(out),
                            "removed_constants": len(module.constants) - len(out.constants)})
