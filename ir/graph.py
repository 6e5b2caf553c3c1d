"""One graph view and rewriter for pattern matchers (frontend raising, raise-ternary, fuse-epilogue,
prune-prefill).

`Graph(fn, constants)` answers the questions a matcher asks of a function: who produces a value
(optionally only if it is one of some ops), who uses it, whether it has a sole use, what constant
or scalar it is, and the nearest producer of some kind walking back through first inputs.
`Builder` makes nodes and constants with fresh names. `rewrite` swaps nodes (by identity) for
their replacements, drops absorbed ones, and removes what no result needs any more.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

from .core import Const, Function, Module, Node, Value, dce_function
from .ops import Op
from .types import DType, TensorType


class Graph:
    """A read-only view of one function (and the module's constants)."""

    def __init__(self, fn: Function, constants: Mapping[str, Const] | None = None):
        self.fn = fn
        self.consts = constants if constants is not None else {}
        self.prod = fn.producers()
        self.users = fn.consumers()
        self.results = set(fn.results)
        self.params = {p.name for p in fn.params}
        self._types = None

    @property
    def types(self) -> dict[str, TensorType]:
        if self._types is None:
            self._types = self.fn.value_types()
        return self._types

    def node(self, v: str, *ops: Op) -> Node | None:
        """The producer of `v` (None for parameters and constants); with `ops`, only if it is one of them."""
        n = self.prod.get(v)
        return n if n is not None and (not ops or n.op in ops) else None

    def uses(self, v: str) -> list[Node]:
        return self.users.get(v, [])

    def n_users(self, v: str) -> int:
        return len(self.users.get(v, ()))

    def sole_use(self, v: str) -> bool:
        """`v` feeds exactly one node and is not a function result (so a rewrite may absorb it)."""
        return self.n_users(v) == 1 and v not in self.results

    def sole_producer(self, v: str, *ops: Op) -> Node | None:
        """The producer of `v` if it is one of `ops` and `v` has a sole use."""
        n = self.node(v, *ops)
        return n if n is not None and self.sole_use(v) else None

    def const(self, v: str) -> np.ndarray | None:
        """The data of constant `v`, or None."""
        c = self.consts.get(v)
        return None if c is None else c.data

    def scalar(self, v: str) -> float | None:
        """Constant `v` as a float when it holds exactly one element, else None."""
        c = self.const(v)
        if c is None or c.size != 1:
            return None
        return float(np.asarray(c).reshape(-1)[0])

    def back_to(self, v: str, ops: Iterable[Op], limit: int = 64) -> Node | None:
        """The nearest producer with op in `ops`, following first inputs back from `v`."""
        ops = set(ops)
        for _ in range(limit):
            n = self.prod.get(v)
            if n is None:
                return None
            if n.op in ops:
                return n
            v = n.inputs[0]
        return None


def used_names(module: Module) -> set[str]:
    """Every constant, parameter and value name in the module (for picking fresh names)."""
    names = set(module.constants)
    for f in module.functions:
        names.update(p.name for p in f.params)
        names.update(o.name for n in f.nodes for o in n.outputs)
    return names


def fresh(base: str, taken: set[str]) -> str:
    """`base`, or `base_1`, `base_2`, ... whichever is not taken; records the choice in `taken`."""
    name, i = base, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


class Builder:
    """Fresh-named constants and nodes for a rewrite; `consts` (a mutable copy of the module's) and
    `taken` are updated in place."""

    def __init__(self, consts: dict[str, Const], taken: set[str]):
        self.consts, self.taken = consts, taken

    def fresh(self, base: str) -> str:
        return fresh(base, self.taken)

    def const(self, base: str, array, dtype: DType | None = None) -> str:
        name = self.fresh(base)
        self.consts[name] = Const.of(np.asarray(array), dtype)
        return name

    def node(self, op: Op, inputs, base: str, ttype: TensorType, **attrs) -> tuple[Node, str]:
        """A one-output node whose output gets a fresh name from `base`: (node, output name)."""
        out = self.fresh(base)
        return Node.make(op, inputs, [Value(out, ttype)], **attrs), out

    def emit(self, into: list[Node], op: Op, inputs, base: str, ttype: TensorType, **attrs) -> str:
        """Append a one-output node to `into`; returns its output name."""
        n, out = self.node(op, inputs, base, ttype, **attrs)
        into.append(n)
        return out


def rewrite(fn: Function, replace: Mapping[int, Node], drop: Iterable[int] = ()) -> Function:
    """`fn` with node `n` replaced by `replace[id(n)]` and nodes whose id is in `drop` removed, then
    dead-code eliminated (the replaced patterns' interiors go when nothing else uses them)."""
    drop = set(drop)
    nodes = [replace.get(id(n), n) for n in fn.nodes if id(n) not in drop]
    return dce_function(fn.with_nodes(stable_topological_order(nodes)))


def stable_topological_order(nodes: list[Node]) -> list[Node]:
    """`nodes` reordered so every value is produced before it is read, moving as little as possible
    (ties keep the original order). A raised node sits where its pattern's root was, which can be after
    a node reading one of its other outputs (TorchScript exports take Shape of the concatenated KV
    before the attention MatMul). Values no node produces (params, constants) count as available; a
    cycle leaves the order as it came (the verifier reports it)."""
    import heapq

    producer = {o.name: i for i, n in enumerate(nodes) for o in n.outputs}
    waiting = [0] * len(nodes)
    users: dict[int, list[int]] = {}
    for i, n in enumerate(nodes):
        deps = {producer[v] for v in n.inputs if v and v in producer and producer[v] != i}
        waiting[i] = len(deps)
        for d in deps:
            users.setdefault(d, []).append(i)
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users.get(i, ()):
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        return list(nodes)
    return [nodes[i] for i in order]


def rename_inputs(node: Node, mapping: Mapping[str, str]) -> Node:
    """`node` reading `mapping[v]` instead of each input `v` in `mapping`."""
    if not any(i in mapping for i in node.inputs):
        return node
    return Node(node.op, tuple(mapping.get(i, i) for i in node.inputs), node.outputs, node.attrs, node.origin)
