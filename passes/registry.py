"""The pass registry (one table) and the textual pipeline spec parser.

Spec grammar (whitespace around tokens is ignored):

    spec    := item (',' item)*
    item    := NAME ('{' [option (',' option)*] '}')?
    option  := KEY '=' value
    value   := WORD | '[' [WORD (',' WORD)*] ']'        WORD: any run of chars except , { } [ ] =

e.g. "fold,raise-ternary,pack-ternary{format=tl2},quantize-ternary{skip=[lm_head*,*.o_proj*]}".
Option values are converted to the option field's type (bool: true/false/1/0; int; float; str;
tuple[str, ...] from a [..] list or a single word); unknown passes, unknown options and bad values
raise SpecError naming what is valid.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import typing
from typing import Any

from ..ir import packing
from . import cse, dce, fold, fuse_epilogue, pack_ternary, quantize_ternary, raise_ternary, split_ternary
from . import evict_kv, hw_numerics, prune_prefill, quantize_kv
from .base import NoOptions, PassInfo

# ----------------------------------------------------------------------------------------------
# THE registry: every pass ternc knows, in one place. Add a row to add a pass.
_PASSES = [
    # general (lossless)
    PassInfo("fold", fold.FoldOptions, fold.run,
             "evaluate nodes whose inputs are all constants; fold Shape/Size of static shapes"),
    PassInfo("dce", NoOptions, dce.run, "remove nodes that reach no result and unreferenced constants"),
    PassInfo("cse", cse.CSEOptions, cse.run, "merge identical nodes (same op, inputs, attrs) and constants"),
    PassInfo("fuse-epilogue", fuse_epilogue.FuseEpilogueOptions, fuse_epilogue.run,
             "fuse residual Add / RoPE / gated activation into the preceding linear (FusedLinear)"),
    # ternary weights and int8 activations
    PassInfo("raise-ternary", raise_ternary.RaiseTernaryOptions, raise_ternary.run,
             "raise BitNet act-quant + ternary-weight matmul + dequant patterns to TernaryLinear (exact)"),
    PassInfo("quantize-ternary", quantize_ternary.QuantizeTernaryOptions, quantize_ternary.run,
             "quantize float Linear weights to ternary absmean (LOSSY)", lossless=False),
    PassInfo("pack-ternary", pack_ternary.PackTernaryOptions, pack_ternary.run,
             f"store ternary weights packed ({', '.join(packing.FORMATS)}; see ir/packing.py)"),
    PassInfo("split-ternary", NoOptions, split_ternary.run,
             "lower TernaryLinear to QuantizeAct + TernaryMatMul (int32) + Dequantize"),
    PassInfo("hw-numerics", hw_numerics.HWNumericsOptions, hw_numerics.run,
             "interpret ternary linears and epilogues in the FPGA datapath's fixed-point formats (LOSSY)",
             lossless=False),
    # KV cache and prompt pruning
    PassInfo("quantize-kv", quantize_kv.QuantizeKVOptions, quantize_kv.run,
             "KIVI-style KV-cache quantization (2/4/8 bit, sinks + recent in full precision) (LOSSY)",
             lossless=False),
    PassInfo("evict-kv", evict_kv.EvictKVOptions, evict_kv.run,
             "fixed-budget KV eviction: StreamingLLM (sinks + recent) or H2O (heavy hitters) (LOSSY)",
             lossless=False),
    PassInfo("prune-prefill", prune_prefill.PrunePrefillOptions, prune_prefill.run,
             "LazyLLM-style progressive prompt-token pruning in prefill; pruned tokens revived from an aux cache "
             "in decode (revive=false: never) (LOSSY)", lossless=False),
]
REGISTRY: dict[str, PassInfo] = {p.name: p for p in _PASSES}
assert len(REGISTRY) == len(_PASSES), "duplicate pass name in the registry"


class SpecError(ValueError):
    """A bad pipeline spec: unknown pass or option, or a value of the wrong type."""


def get_pass(name: str) -> PassInfo:
    try:
        return REGISTRY[name]
    except KeyError:
        raise SpecError(f"unknown pass {name!r}; valid passes: {', '.join(sorted(REGISTRY))}") from None


def option_fields(info: PassInfo) -> dict[str, tuple[Any, Any]]:
    """{option name: (type, default)} of a pass."""
    hints = typing.get_type_hints(info.options)
    return {f.name: (hints[f.name], f.default) for f in dataclasses.fields(info.options)}


def _describe(info: PassInfo) -> str:
    fields = option_fields(info)
    if not fields:
        return f"pass {info.name!r} takes no options"
    return f"valid options of {info.name!r}: " + ", ".join(
        f"{k}: {_type_name(t)} = {_fmt(d)}" for k, (t, d) in fields.items())


def _type_name(t) -> str:
    if typing.get_origin(t) is tuple:
        return f"[{typing.get_args(t)[0].__name__}, ...]"
    return getattr(t, "__name__", str(t))


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, tuple):
        return "[" + ",".join(str(x) for x in v) + "]"
    return str(v)


def _convert(info: PassInfo, key: str, raw: str | list[str], typ) -> Any:
    def fail(why: str):
        raise SpecError(f"pass {info.name!r}, option {key}={raw!r}: {why}")

    if typing.get_origin(typ) is tuple:
        elem = typing.get_args(typ)[0]
        items = raw if isinstance(raw, list) else [raw]
        return tuple(_convert(info, key, x, elem) for x in items)
    if isinstance(raw, list):
        fail(f"expected a single {_type_name(typ)}, got a list")
    if typ is bool:
        if raw.lower() in ("true", "1", "yes", "on"):
            return True
        if raw.lower() in ("false", "0", "no", "off"):
            return False
        fail("expected true or false")
    if typ is int:
        try:
            return int(raw, 0)
        except ValueError:
            fail("expected an integer")
    if typ is float:
        try:
            v = float(raw)
        except ValueError:
            fail("expected a number")
        # NaN/inf and subnormals (e.g. keep=1e-320) pass naive range checks but mean nothing here
        if not math.isfinite(v) or (v != 0.0 and abs(v) < sys.float_info.min):
            fail("expected a finite, normal number")
        return v
    if typ is str:
        return raw
    fail(f"unsupported option type {typ}")


def make_options(info: PassInfo, raw: dict[str, Any]):
    """Build a pass's options from {name: value}; values may be strings (converted) or typed."""
    fields = option_fields(info)
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            raise SpecError(f"unknown option {key!r} for pass {info.name!r}; {_describe(info)}")
        typ = fields[key][0]
        if isinstance(value, (str, list)):
            value = _convert(info, key, value, typ)
        elif typing.get_origin(typ) is tuple and isinstance(value, (list, tuple)):
            value = tuple(value)
        kwargs[key] = value
    try:
        return info.options(**kwargs)
    except (ValueError, TypeError) as e:
        raise SpecError(f"pass {info.name!r}: {e}") from None


_TOKEN = re.compile(r"\s*(?:(?P<punct>[,{}\[\]=])|(?P<word>[^,{}\[\]=\s]+))")


def _tokens(spec: str) -> list[str]:
    pos, out = 0, []
    while pos < len(spec):
        if spec[pos:].strip() == "":
            break
        m = _TOKEN.match(spec, pos)
        if not m:
            raise SpecError(f"bad character in pipeline spec at {pos}: {spec[pos:pos + 10]!r}")
        out.append(m.group("punct") or m.group("word"))
        pos = m.end()
    return out


def parse_spec(spec: str) -> list[tuple[PassInfo, Any]]:
    """"a{k=v},b" -> [(PassInfo a, a's options), (PassInfo b, defaults)]. Raises SpecError."""
    toks = _tokens(spec)
    i, out = 0, []

    def expect_word(what: str) -> str:
        nonlocal i
        if i >= len(toks) or toks[i] in ",{}[]=":
            got = toks[i] if i < len(toks) else "end of spec"
            raise SpecError(f"pipeline spec {spec!r}: expected {what}, got {got!r}")
        i += 1
        return toks[i - 1]

    def take(tok: str) -> bool:
        nonlocal i
        if i < len(toks) and toks[i] == tok:
            i += 1
            return True
        return False

    if not toks:
        return []
    while True:
        info = get_pass(expect_word("a pass name"))
        raw: dict[str, Any] = {}
        if take("{") and not take("}"):
            while True:
                key = expect_word(f"an option name ({_describe(info)})")
                if key in raw:
                    raise SpecError(f"pipeline spec {spec!r}: option {key!r} of {info.name!r} given twice")
                if not take("="):
                    raise SpecError(f"pipeline spec {spec!r}: expected '=' after option {key!r} of {info.name!r}")
                if take("["):
                    items = []
                    if not take("]"):
                        while True:
                            items.append(expect_word("a list item"))
                            if take("]"):
                                break
                            if not take(","):
                                raise SpecError(f"pipeline spec {spec!r}: expected ',' or ']' in the list "
                                                f"of option {key!r}")
                    raw[key] = items
                else:
                    raw[key] = expect_word(f"a value for option {key!r}")
                if take("}"):
                    break
                if not take(","):
                    raise SpecError(f"pipeline spec {spec!r}: expected ',' or '}}' after option {key!r}")
        out.append((info, make_options(info, raw)))
        if i == len(toks):
            return out
        if not take(","):
            raise SpecError(f"pipeline spec {spec!r}: expected ',' between passes, got {toks[i]!r}")


def format_spec(steps: list[tuple[PassInfo, Any]]) -> str:
    """The inverse of parse_spec (non-default options only)."""
    parts = []
    for info, opts in steps:
        fields = option_fields(info)
        kv = [f"{k}={_fmt(getattr(opts, k))}" for k, (_, d) in fields.items() if getattr(opts, k) != d]
        parts.append(info.name + ("{" + ",".join(kv) + "}" if kv else ""))
    return ",".join(parts)
