"""What a backend implements, as data: checked against a module before anything is built.

A backend's `Capabilities` names the values of semantic attributes (`ops.ATTR_SCHEMAS`) it
implements beyond each attribute's default. A node that carries any other value is refused with an
`UnsupportedError` naming the function, node and attribute, so no artifact silently computes
something other than the interpreter (the reference semantics).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from .core import Module
from .ops import Op, semantic_attrs


class UnsupportedError(ValueError):
    """A module uses an op attribute value its target's backend does not implement."""


@dataclass(frozen=True)
class Capabilities:
    # (op, attribute) -> the non-default values implemented; a semantic attribute not listed is
    # implemented at its default value only
    attr_values: Mapping[tuple[Op, str], frozenset] = field(default_factory=dict)
    # True for the interpreter (it defines every value) and for backends checked bit-exact against it
    all_semantics: bool = False
    ops: frozenset | None = None  # ops implemented (None: every op its lowering accepts)

    def implements(self, op: Op, attr: str, value) -> bool:
        if self.all_semantics:
            return True
        schema = semantic_attrs(op).get(attr)
        if schema is None or value is None or value == schema.default:
            return True
        return value in self.attr_values.get((op, attr), frozenset())

    def refusals(self, module: Module) -> list[str]:
        """One line per node that uses something these capabilities lack."""
        out = []
        for fn in module.functions:
            for n in fn.nodes:
                if self.ops is not None and n.op not in self.ops:
                    out.append(f"@{fn.name}: {n.label}: op {n.op.value} is not implemented")
                    continue
                for attr in semantic_attrs(n.op):
                    value = n.attr(attr)
                    if not self.implements(n.op, attr, value):
                        out.append(f"@{fn.name}: {n.label}: attribute {attr}={value!r}")
        return out

    def check(self, module: Module, who: str) -> None:
        """Raise UnsupportedError listing (up to 5 of) the nodes `who` cannot build."""
        bad = self.refusals(module)
        if bad:
            more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
            raise UnsupportedError(f"{who} does not implement: " + "; ".join(bad[:5]) + more)


EVERYTHING = Capabilities(all_semantics=True)
