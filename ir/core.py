"""The ternc IR: values, nodes, functions, modules. Immutable; transforms build new objects.

A Module holds named constants (weights) shared by its functions, a JSON-able `meta` dict
(model config, decoder entry points), and one or more Functions (entry points such as `main`,
`prefill`, `decode`). A Function is a list of Nodes in topological order over SSA values.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Iterable, Mapping

import numpy as np

from .ops import Op
from .types import DType, TensorType

AttrValue = int | float | str | bool | tuple


@dataclass(frozen=True)
class Value:
    name: str
    type: TensorType

    def __str__(self) -> str:
        return f"%{self.name}: {self.type}"


def _freeze_attr(v: Any) -> AttrValue:
    if isinstance(v, (list, tuple)):
        return tuple(_freeze_attr(x) for x in v)
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, DType):
        return v.value
    if isinstance(v, (bool, int, float, str)):
        return v
    raise TypeError(f"unsupported attribute value {v!r} ({type(v).__name__})")


@dataclass(frozen=True)
class Node:
    op: Op
    inputs: tuple[str, ...]  # value or constant names; "" marks an omitted optional input
    outputs: tuple[Value, ...]
    attrs: tuple[tuple[str, AttrValue], ...] = ()
    origin: str = field(default="", compare=False)  # source node name (e.g. the ONNX node), for errors

    @staticmethod
    def make(op: Op, inputs: Iterable[str], outputs: Iterable[Value], origin: str = "", **attrs) -> "Node":
        frozen = tuple(sorted((k, _freeze_attr(v)) for k, v in attrs.items() if v is not None))
        return Node(op, tuple(inputs), tuple(outputs), frozen, origin)

    def attr(self, name: str, default: Any = None) -> Any:
        for k, v in self.attrs:
            if k == name:
                return v
        return default

    @property
    def attr_dict(self) -> dict[str, AttrValue]:
        return dict(self.attrs)

    def with_attrs(self, **updates) -> "Node":
        d = self.attr_dict
        d.update(updates)
        return Node.make(self.op, self.inputs, self.outputs, self.origin, **d)

    @property
    def label(self) -> str:
        """How errors name this node: its first output and op, plus its source node if known."""
        out = self.outputs[0].name if self.outputs else "?"
        src = f" (from {self.origin})" if self.origin and self.origin != out else ""
        return f"%{out} = {self.op.value}{src}"


@dataclass(frozen=True)
class Function:
    name: str
    params: tuple[Value, ...]
    nodes: tuple[Node, ...]
    results: tuple[str, ...]

    def producers(self) -> dict[str, Node]:
        return {o.name: n for n in self.nodes for o in n.outputs}

    def consumers(self) -> dict[str, list[Node]]:
        users: dict[str, list[Node]] = {}
        for n in self.nodes:
            for i in n.inputs:
                if i:
                    users.setdefault(i, []).append(n)
        return users

    def value_types(self) -> dict[str, TensorType]:
        types = {p.name: p.type for p in self.params}
        for n in self.nodes:
            for o in n.outputs:
                types[o.name] = o.type
        return types

    def with_nodes(self, nodes: Iterable[Node], **kw) -> "Function":
        return replace(self, nodes=tuple(nodes), **kw)


def digest(array: np.ndarray) -> str:
    """Content digest of a constant: sha256 over dtype, shape and bytes (first 16 hex digits)."""
    a = np.ascontiguousarray(array)
    h = hashlib.sha256()
    h.update(str(a.dtype).encode())
    h.update(str(a.shape).encode())
    if a.dtype == object:  # string constants: hash the text (the bytes of an object array are pointers)
        h.update(json.dumps([str(x) for x in a.reshape(-1)]).encode())
    else:
        h.update(a.tobytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True, eq=False)
class Const:
    type: TensorType
    data: np.ndarray | None  # None when parsed from text without its weights
    sha: str

    @staticmethod
    def of(array: np.ndarray, dtype: DType | None = None) -> "Const":
        array = np.asarray(array)
        if dtype is not None and array.dtype != dtype.np:
            array = array.astype(dtype.np)
        array.setflags(write=False)
        return Const(TensorType.of(array, dtype), array, digest(array))

    @property
    def nbytes(self) -> int:
        if self.data is not None:
            return int(self.data.nbytes)
        n = 1
        for d in self.type.shape or ():
            n *= int(d)
        return n * self.type.dtype.np.itemsize


@dataclass(frozen=True, eq=False)
class Module:
    name: str
    functions: tuple[Function, ...]
    constants: Mapping[str, Const] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "constants", MappingProxyType(dict(self.constants)))
        # meta must be JSON-able: it is printed into the text form and the artifact manifest.
        object.__setattr__(self, "meta", MappingProxyType(json.loads(json.dumps(dict(self.meta)))))

    def func(self, name: str) -> Function:
        for f in self.functions:
            if f.name == name:
                return f
        raise KeyError(f"module @{self.name} has no function @{name}; it has "
                       f"{', '.join('@' + f.name for f in self.functions)}")

    @property
    def entry_names(self) -> list[str]:
        return [f.name for f in self.functions]

    def with_function(self, fn: Function) -> "Module":
        fns = [fn if f.name == fn.name else f for f in self.functions]
        if fn.name not in self.entry_names:
            fns.append(fn)
        return replace(self, functions=tuple(fns))

    def with_constants(self, constants: Mapping[str, Const]) -> "Module":
        return replace(self, constants=constants)

    def replace(self, **kw) -> "Module":
        if "meta" in kw:
            kw["meta"] = dict(kw["meta"])
        return replace(self, **kw)

    @property
    def weight_bytes(self) -> int:
        return sum(c.nbytes for c in self.constants.values())

    def __str__(self) -> str:
        from .text import print_module

        return print_module(self)


def dce_function(fn: Function) -> Function:
    """Drop nodes none of whose outputs reach a result (the IR has no side-effecting ops)."""
    live = set(fn.results)
    keep = []
    for n in reversed(fn.nodes):
        if any(o.name in live for o in n.outputs):
            keep.append(n)
            live.update(i for i in n.inputs if i)
    return fn.with_nodes(reversed(keep))


def prune_constants(module: Module) -> Module:
    """Drop constants no function references."""
    used = {i for f in module.functions for n in f.nodes for i in n.inputs}
    return module.with_constants({k: v for k, v in module.constants.items() if k in used})
