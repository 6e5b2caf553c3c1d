"""What every pass shares: the pass record, the per-pass result, and small IR-rewriting helpers.

A pass is a pure function `run(module, options) -> PassResult`: it never mutates its input (the IR
is frozen) and returns a new Module plus a few counters. Its options are a frozen dataclass whose
typed fields are what the textual pipeline spec (`pass{key=value}`) may set; see `registry.py`.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from ..ir.core import Const, Function, Module, Node, dce_function, prune_constants
from ..ir.decoder import DecoderSpec
from ..ir.graph import fresh, rename_inputs, used_names  # noqa: F401  (passes import them from here)
from ..ir.types import DType


@dataclass(frozen=True)
class PassResult:
    module: Module
    stats: Mapping[str, Any] = field(default_factory=dict)  # pass-specific counters, e.g. {"raised": 14}


@dataclass(frozen=True)
class PassInfo:
    """One row of the registry: a pass's name, option type, implementation and one-line summary."""

    name: str
    options: type  # a frozen dataclass; its fields are the pass's options
    run: Callable[[Module, Any], PassResult]
    summary: str
    lossless: bool = True  # False: changes the numbers (quantization); tests measure the error


@dataclass(frozen=True)
class NoOptions:
    """For passes without options."""


# ---------------------------------------------------------------------------------- helpers
def clean(module: Module) -> Module:
    """DCE every function and drop constants nothing references (how passes tidy up after rewrites)."""
    return prune_constants(module.replace(functions=tuple(dce_function(f) for f in module.functions)))


def matches_any(names: Iterable[str], patterns: Iterable[str]) -> bool:
    """fnmatch-style: does any of `names` match any of `patterns`?"""
    pats = list(patterns)
    return any(n and fnmatch.fnmatchcase(n, p) for n in names for p in pats)


def node_count(module: Module) -> int:
    return sum(len(f.nodes) for f in module.functions)


def nodes_changed(before: Module, after: Module) -> tuple[int, int]:
    """(removed, added) nodes over all functions, comparing nodes by op, inputs, outputs and attrs."""
    removed = added = 0
    after_fns = {f.name: f for f in after.functions}
    for f in before.functions:
        a = after_fns.pop(f.name, None)
        old = _multiset(f.nodes)
        new = _multiset(a.nodes) if a else {}
        removed += sum(max(c - new.get(k, 0), 0) for k, c in old.items())
        added += sum(max(c - old.get(k, 0), 0) for k, c in new.items())
    added += sum(len(f.nodes) for f in after_fns.values())
    return removed, added


def _multiset(nodes: Iterable[Node]) -> dict[Node, int]:
    out: dict[Node, int] = {}
    for n in nodes:
        out[n] = out.get(n, 0) + 1
    return out


_DTYPE_BYTES = {"f64": 8, "f32": 4, "f16": 2, "bf16": 2, "i8": 1, "u8": 1, "i16": 2, "i32": 4, "i64": 8,
                "i4": 0.5, "u4": 0.5, "u2": 0.25, "t2": 0.25}


def kv_bytes_per_token(module: Module) -> float | None:
    """KV-cache bytes one token costs: meta["kv_bytes_per_token"] when a KV pass set it, else
    2 (K and V) * n_layers * kv_heads * head_dim * bytes per element of meta["decoder"]["kv_dtype"].
    None for modules without a KV cache."""
    if "kv_bytes_per_token" in module.meta:
        return float(module.meta["kv_bytes_per_token"])
    dec = DecoderSpec.of(module)
    if not dec or not dec.n_layers or not dec.kv_heads or not dec.head_dim:
        return None
    per = _DTYPE_BYTES.get(dec.kv_dtype)
    if per is None:
        per = DType(dec.kv_dtype).np.itemsize
    return float(2 * dec.n_layers * dec.kv_heads * dec.head_dim * per)


def const_array(module: Module, name: str):
    """The data of constant `name`, or None if `name` is not a constant with data."""
    c = module.constants.get(name)
    return None if c is None else c.data


def add_const(consts: dict[str, Const], taken: set[str], base: str, array, dtype: DType | None = None) -> str:
    name = fresh(base, taken)
    consts[name] = Const.of(array, dtype)
    return name
