"""Text form of the IR: a printer and a parser that round-trip (`print(parse(print(m))) == print(m)`).

    module @tiny {
      meta = {"decoder": {...}}
      const @embed: f32[256,64] = dense<0123456789abcdef>
      const @axes: i64[1] = [-1]
      func @main(%input_ids: i64[1,seq]) -> (%logits) {
        %h: f32[1,seq,64] = Gather(@embed, %input_ids) {axis = 0}
        %y: f32[*] = Clip(%h, _, @hi)
        return %logits
      }
    }

Constants of at most INLINE_LIMIT elements print their values; larger ones print their content
digest and are supplied to `parse` through `weights=` (the .ternc file carries them).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Mapping

import numpy as np

from .core import Const, Function, Module, Node, Value
from .ops import Op
from .types import DType, TensorType

INLINE_LIMIT = 8
_NAME = r"[A-Za-z0-9_.\-]+"


class ParseError(ValueError):
    pass


def _fmt_scalar(v: Any) -> str:
    if isinstance(v, bool) or isinstance(v, np.bool_):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if math.isnan(f):
            return "nan"
        if math.isinf(f):
            return "inf" if f > 0 else "-inf"
        r = repr(f)
        return r if any(c in r for c in ".e") else r + ".0"
    if isinstance(v, str):
        return json.dumps(v)
    raise TypeError(f"cannot print {v!r}")


def _fmt_attr(v: Any) -> str:
    if isinstance(v, tuple):
        return "[" + ", ".join(_fmt_attr(x) for x in v) + "]"
    return _fmt_scalar(v)


def _fmt_const(c: Const) -> str:
    if c.data is not None and c.data.size <= INLINE_LIMIT and c.type.dtype != DType.STR:
        flat = c.data.reshape(-1)
        if c.type.dtype.is_float:
            vals = [_fmt_scalar(float(x)) for x in flat]
        elif c.type.dtype == DType.BOOL:
            vals = [_fmt_scalar(bool(x)) for x in flat]
        else:
            vals = [str(int(x)) for x in flat]
        return "[" + ", ".join(vals) + "]"
    return f"dense<{c.sha}>"


def print_node(n: Node, consts: Mapping[str, Const]) -> str:
    outs = ", ".join(str(o) for o in n.outputs)
    args = ", ".join("_" if not i else (f"@{i}" if i in consts else f"%{i}") for i in n.inputs)
    s = f"{outs} = {n.op.value}({args})"
    if n.attrs:
        s += " {" + ", ".join(f"{k} = {_fmt_attr(v)}" for k, v in n.attrs) + "}"
    return s


def print_function(f: Function, consts: Mapping[str, Const]) -> str:
    params = ", ".join(str(p) for p in f.params)
    results = ", ".join(f"%{r}" for r in f.results)
    lines = [f"func @{f.name}({params}) -> ({results}) {{"]
    lines += ["  " + print_node(n, consts) for n in f.nodes]
    lines.append(f"  return {results}")
    lines.append("}")
    return "\n".join(lines)


def print_module(m: Module) -> str:
    lines = [f"module @{m.name} {{"]
    if m.meta:
        lines.append("  meta = " + json.dumps(dict(m.meta), sort_keys=True))
    for name, c in m.constants.items():
        lines.append(f"  const @{name}: {c.type} = {_fmt_const(c)}")
    for f in m.functions:
        lines += ["  " + ln for ln in print_function(f, m.constants).split("\n")]
    lines.append("}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# Parser: line-oriented (the printer emits one construct per line).

_TOKEN = re.compile(
    r"\s*(?:(?P<str>\"(?:[^\"\\]|\\.)*\")|(?P<num>-?(?:inf|nan|\d+\.?\d*(?:[eE][-+]?\d+)?))"
    r"|(?P<kw>true|false)|(?P<punct>[\[\],]))"
)


def _parse_value_list(text: str, where: str) -> Any:
    """Parse a JSON-like literal: numbers, strings, true/false, nested [..] lists -> tuples."""
    pos = 0
    stack: list[list] = [[]]
    while True:
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            if text[pos:].strip():
                raise ParseError(f"{where}: cannot parse {text[pos:]!r}")
            break
        pos = m.end()
        if m.group("str"):
            stack[-1].append(json.loads(m.group("str")))
        elif m.group("num"):
            t = m.group("num")
            if t in ("inf", "-inf", "nan") or any(c in t for c in ".eE"):
                stack[-1].append(float(t))
            else:
                stack[-1].append(int(t))
        elif m.group("kw"):
            stack[-1].append(m.group("kw") == "true")
        else:
            p = m.group("punct")
            if p == "[":
                stack.append([])
            elif p == "]":
                if len(stack) < 2:
                    raise ParseError(f"{where}: unbalanced ']'")
                done = tuple(stack.pop())
                stack[-1].append(done)
    if len(stack) != 1 or len(stack[0]) != 1:
        raise ParseError(f"{where}: expected one literal in {text!r}")
    return stack[0][0]


def _split_top(text: str, sep: str = ",") -> list[str]:
    """Split on `sep` outside brackets, braces and strings."""
    parts, depth, cur, in_str, esc = [], 0, [], False, False
    for ch in text:
        if in_str:
            cur.append(ch)
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
            continue
        if ch == '"':
            in_str = True
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        parts.append("".join(cur).strip())
    return parts


def _parse_typed_value(text: str, where: str) -> Value:
    m = re.fullmatch(rf"\s*%({_NAME})\s*:\s*(.+?)\s*", text)
    if not m:
        raise ParseError(f"{where}: expected '%name: type', got {text!r}")
    try:
        return Value(m.group(1), TensorType.parse(m.group(2)))
    except ValueError as e:
        raise ParseError(f"{where}: {e}") from None


_NODE = re.compile(rf"^(?P<outs>.+?)\s=\s(?P<op>[A-Za-z0-9_]+)\((?P<args>.*?)\)(?:\s*\{{(?P<attrs>.*)\}})?$")


def _parse_node(line: str, where: str) -> Node:
    m = _NODE.match(line)
    if not m:
        raise ParseError(f"{where}: cannot parse node {line!r}")
    try:
        op = Op(m.group("op"))
    except ValueError:
        raise ParseError(f"{where}: unknown op {m.group('op')!r}") from None
    outs = tuple(_parse_typed_value(t, where) for t in _split_top(m.group("outs")))
    inputs = []
    for a in _split_top(m.group("args")):
        if a == "_":
            inputs.append("")
        elif re.fullmatch(rf"[%@]{_NAME}", a):
            inputs.append(a[1:])
        else:
            raise ParseError(f"{where}: bad operand {a!r}")
    attrs = {}
    if m.group("attrs"):
        for item in _split_top(m.group("attrs")):
            k, _, v = item.partition("=")
            attrs[k.strip()] = _parse_value_list(v.strip(), where)
    return Node.make(op, inputs, outs, **attrs)


def parse(text: str, weights: Mapping[str, np.ndarray] | None = None) -> Module:
    """Parse the text form. `weights` supplies the data of constants printed as dense<digest>."""
    weights = weights or {}
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise ParseError("empty module text")
    m = re.fullmatch(rf"module @({_NAME}) \{{", lines[0])
    if not m:
        raise ParseError(f"line 1: expected 'module @name {{', got {lines[0]!r}")
    name = m.group(1)
    meta: dict = {}
    consts: dict[str, Const] = {}
    functions: list[Function] = []
    i = 1
    while i < len(lines):
        ln, where = lines[i], f"line {i + 1}"
        if ln == "}":
            break
        if ln.startswith("meta = "):
            meta = json.loads(ln[len("meta = "):])
        elif ln.startswith("const @"):
            cm = re.fullmatch(rf"const @({_NAME}): (\S+) = (.+)", ln)
            if not cm:
                raise ParseError(f"{where}: bad constant {ln!r}")
            cname, ctype = cm.group(1), TensorType.parse(cm.group(2))
            body = cm.group(3)
            dm = re.fullmatch(r"dense<([0-9a-f]+)>", body)
            if dm:
                data = weights.get(cname)
                if data is not None:
                    c = Const.of(np.asarray(data), ctype.dtype)
                    if c.sha != dm.group(1):
                        raise ParseError(f"{where}: weights for @{cname} do not match digest {dm.group(1)}")
                    consts[cname] = c
                else:
                    consts[cname] = Const(ctype, None, dm.group(1))
            else:
                vals = _parse_value_list(body, where)
                shape = tuple(int(d) for d in ctype.shape or ())
                arr = np.array(vals, dtype=ctype.dtype.np).reshape(shape)
                consts[cname] = Const.of(arr, ctype.dtype)
        elif ln.startswith("func @"):
            fm = re.fullmatch(rf"func @({_NAME})\((.*)\) -> \((.*)\) \{{", ln)
            if not fm:
                raise ParseError(f"{where}: bad function header {ln!r}")
            params = tuple(_parse_typed_value(p, where) for p in _split_top(fm.group(2)))
            results = tuple(r.strip()[1:] for r in _split_top(fm.group(3)))
            nodes = []
            i += 1
            while i < len(lines) and not lines[i].startswith("return"):
                nodes.append(_parse_node(lines[i], f"line {i + 1}"))
                i += 1
            if i >= len(lines):
                raise ParseError(f"function @{fm.group(1)}: missing 'return'")
            i += 1  # skip return (results come from the header)
            if i >= len(lines) or lines[i] != "}":
                raise ParseError(f"line {i + 1}: expected '}}' closing @{fm.group(1)}")
            functions.append(Function(fm.group(1), params, tuple(nodes), results))
        else:
            raise ParseError(f"{where}: unexpected {ln!r}")
        i += 1
    return Module(name, tuple(functions), consts, meta)
