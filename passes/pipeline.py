"""Pass pipelines (plain ordered lists, all here) and `compile`, which runs one.

    module, report = compile(module, KV260_PIPELINE, target="kv260")
    module, report = compile(module, "raise-ternary,pack-ternary{format=tl1}")

Which target runs which pipeline is the target table's business (`ternc.targets`); `ternc.compile`
picks the pipeline from it. Every pass's result is verified (`ir.verify`) unless `verify_each=False`
or env TERNC_VERIFY=0, and a per-pass table (nodes changed, weight bytes, KV bytes per token) is
printed or handed to `report`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from ..ir.core import Module
from ..ir.verify import VerifyError, verify
from .base import PassInfo, kv_bytes_per_token, node_count, nodes_changed
from .registry import SpecError, format_spec, get_pass, make_options, parse_spec

# Spec strings, parsed by registry.parse_spec. Ternary pipelines fold first: some exports unpack
# BitLinear weights at run time (ScatterND/bit ops on constants), and raise-ternary needs the
# unpacked weight as a constant.

# The interpreter runs the module as loaded; only cleanups that cannot change a number.
REFERENCE_PIPELINE = ["fold", "cse", "dce"]
# TVM (cpu, aarch64, cuda): bitnet.cpp-style I2_S weights (2 bits/weight; the CUDA kernels read
# the same codes as W2A8 dp4a words).
TVM_PIPELINE = ["fold", "raise-ternary", "cse", "dce", "pack-ternary{format=i2}"]
# KV260 TLMM engine: TL2 (5 bits per 3 weights), epilogues streamed in the linear engine.
# hw-numerics last: the reference interpreter then computes what the FPGA datapath computes.
KV260_PIPELINE = ["fold", "raise-ternary", "cse", "dce", "fuse-epilogue", "pack-ternary{format=tl2}", "hw-numerics"]


@dataclass(frozen=True)
class PassRow:
    name: str
    spec: str  # the pass with its non-default options, as a spec item
    nodes_before: int
    nodes_after: int
    removed: int
    added: int
    weight_bytes_before: int
    weight_bytes_after: int
    kv_bytes_per_token_before: float | None
    kv_bytes_per_token_after: float | None
    seconds: float
    stats: Mapping[str, Any] = field(default_factory=dict)

    @property
    def nodes_changed(self) -> int:
        return self.removed + self.added


@dataclass
class PassReport:
    """What a pipeline did, one row per pass. `str(report)` is the table `compile` prints."""

    target: str
    spec: str
    rows: list[PassRow] = field(default_factory=list)

    @property
    def weight_bytes(self) -> tuple[int, int] | None:
        return (self.rows[0].weight_bytes_before, self.rows[-1].weight_bytes_after) if self.rows else None

    def row(self, name: str) -> PassRow:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no pass {name!r} in this report; ran: {', '.join(r.name for r in self.rows)}")

    def table(self) -> str:
        head = ("pass", "nodes", "changed", "weights", "KV B/tok", "ms", "notes")
        body = []
        for r in self.rows:
            notes = " ".join(f"{k}={v}" for k, v in r.stats.items() if v)
            body.append((r.spec, f"{r.nodes_before}->{r.nodes_after}", f"-{r.removed}/+{r.added}",
                         f"{_bytes(r.weight_bytes_before)}->{_bytes(r.weight_bytes_after)}",
                         f"{_kv(r.kv_bytes_per_token_before)}->{_kv(r.kv_bytes_per_token_after)}",
                         f"{r.seconds * 1e3:.0f}", notes))
        widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
        lines = [f"ternc compile: target {self.target}: {self.spec or '(no passes)'}"]
        for row in [head, *body]:
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        return "\n".join(lines)

    __str__ = table


def _bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n}B"


def _kv(v: float | None) -> str:
    return "-" if v is None else f"{v:g}"


PassesArg = str | Sequence[str | tuple[str, Mapping[str, Any] | Any] | tuple[PassInfo, Any]] | None


def resolve(passes: PassesArg = None) -> list[tuple[PassInfo, Any]]:
    """The (pass, options) steps `compile` would run: a spec string, or a list of spec strings /
    (name, {option: value}) / (name, options object) items; None: no passes."""
    if passes is None:
        return []
    if isinstance(passes, str):
        return parse_spec(passes)
    steps = []
    for item in passes:
        if isinstance(item, str):
            steps += parse_spec(item)
        elif isinstance(item, tuple) and len(item) == 2:
            info = item[0] if isinstance(item[0], PassInfo) else get_pass(item[0])
            opts = item[1]
            if isinstance(opts, Mapping):
                opts = make_options(info, dict(opts))
            elif not isinstance(opts, info.options):
                raise SpecError(f"pass {info.name!r}: options must be a dict or {info.options.__name__}, "
                                f"got {type(opts).__name__}")
            steps.append((info, opts))
        else:
            raise SpecError(f"bad pipeline item {item!r}: use 'name{{k=v}}' or (name, {{k: v}})")
    return steps


def _verify_enabled(verify_each: bool | None) -> bool:
    if verify_each is not None:
        return verify_each
    return os.environ.get("TERNC_VERIFY", "1").strip().lower() not in ("0", "false", "no", "off")


# Passes that work on ternary linears, and those that make them: a pipeline running one of the first
# before any of the second on a module without ternary linears would be a silent no-op (issue 14).
_NEEDS_TERNARY = ("pack-ternary", "split-ternary")
_MAKES_TERNARY = ("raise-ternary", "quantize-ternary")


def _check_has_ternary(module: Module, name: str, ran: list[str]) -> None:
    if name not in _NEEDS_TERNARY or any(r in _MAKES_TERNARY for r in ran):
        return
    from ..ir.ops import Op

    ternary = (Op.TernaryLinear, Op.TernaryMatMul, Op.FusedLinear)
    if any(n.op in ternary for f in module.functions for n in f.nodes):
        return
    raise SpecError(f"pass {name!r} has nothing to work on: @{module.name} has no ternary linears yet. Run "
                    f"raise-ternary (exact, for BitNet-style graphs) or quantize-ternary (lossy) before it, "
                    f"e.g. \"fold,raise-ternary,{name}\"")


def compile(module: Module, passes: PassesArg = None, verify_each: bool | None = None,
            report: bool | Callable[[str], Any] = True, target: str = "",
            progress: Callable[[str], Any] | None = None) -> tuple[Module, PassReport]:
    """Run the pipeline `passes` on `module`; returns (new module, PassReport).

    The input module is never modified. `verify_each` (default: on unless env TERNC_VERIFY=0) checks
    the IR after every pass and names the pass that broke it. `report`: True prints the per-pass
    table, False is silent, a callable receives the table text. `target` only labels the report.
    Building an artifact from the returned module is the target's job (`ternc.targets`).
    `progress(step)` is called with "pass NAME" as each pass starts.
    """
    steps = resolve(passes)
    check = _verify_enabled(verify_each)
    if check:
        verify(module)
    rep = PassReport(target, format_spec(steps))
    ran: list[str] = []
    for info, opts in steps:
        _check_has_ternary(module, info.name, ran)
        ran.append(info.name)
        if progress is not None:
            progress(f"pass {info.name}")
        t0 = time.perf_counter()
        result = info.run(module, opts)
        seconds = time.perf_counter() - t0
        new = result.module
        if check:
            try:
                verify(new)
            except VerifyError as e:
                raise VerifyError(f"IR invalid after pass {info.name!r}: {e}") from e
        removed, added = nodes_changed(module, new)
        rep.rows.append(PassRow(info.name, format_spec([(info, opts)]), node_count(module), node_count(new),
                                removed, added, module.weight_bytes, new.weight_bytes,
                                kv_bytes_per_token(module), kv_bytes_per_token(new), seconds, dict(result.stats)))
        module = new
    if report is True:
        print(rep.table())
    elif callable(report):
        report(rep.table())
    return module, rep
