"""Mutators for the fuzzers, driven by hypothesis draws (so runs are seeded and reproducible).

- bytes: flip / overwrite / insert / delete / duplicate / truncate spans;
- protobuf messages (ONNX models): pick any set field anywhere in the message tree and give it an
  interesting value (boundary integers, NaN/inf, another name from the same model, invalid UTF-8),
  or delete / duplicate / clear repeated elements;
- JSON documents (artifact manifests): the same on the parsed tree (types swapped, keys dropped).
"""

from __future__ import annotations

import copy
import math

from hypothesis import strategies as st

INTS = [0, 1, -1, 2, 3, 7, 8, 16, 255, 256, 4096, 2**31 - 1, -(2**31), 2**32, 2**40, 2**62, 2**63 - 1, -(2**63)]
FLOATS = [0.0, -0.0, 1.0, -1.0, 0.5, 1e-320, 1e38, -1e38, math.inf, -math.inf, math.nan, 3.4e38]
TEXTS = ["", "x", "seq", "past", "main", "../outside", "a" * 300, "\u00e9\u4e2d", "0", "-1", "1e999", "null"]


def mutate_bytes(data: st.DataObject, blob: bytes, rounds: int = 3) -> bytes:
    b = bytearray(blob)
    for _ in range(data.draw(st.integers(1, rounds), label="byte rounds")):
        if not b:
            b += data.draw(st.binary(min_size=1, max_size=16))
            continue
        op = data.draw(st.sampled_from(["flip", "set", "insert", "delete", "dup", "truncate"]), label="byte op")
        i = data.draw(st.integers(0, len(b) - 1), label="offset")
        n = data.draw(st.integers(1, 64), label="span")
        if op == "flip":
            b[i] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "set":
            b[i:i + n] = data.draw(st.binary(min_size=1, max_size=n))
        elif op == "insert":
            b[i:i] = data.draw(st.binary(min_size=1, max_size=n))
        elif op == "delete":
            del b[i:i + n]
        elif op == "dup":
            b[i:i] = b[i:i + n]
        else:
            del b[i:]
    return bytes(b)


def _leaves(msg, out):
    """(message, field descriptor) for every set field in the tree, plus the messages themselves."""
    from google.protobuf.descriptor import FieldDescriptor
    from google.protobuf.message import Message

    for fd, val in msg.ListFields():
        out.append((msg, fd))
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            for v in ([val] if isinstance(val, Message) else val):
                _leaves(v, out)
    return out


def _names(msg) -> list[str]:
    from google.protobuf.descriptor import FieldDescriptor

    names = []
    for m, fd in _leaves(msg, []):
        if fd.type == FieldDescriptor.TYPE_STRING:
            v = getattr(m, fd.name)
            names += [v] if isinstance(v, str) else [x for x in v if isinstance(x, str)]
    return sorted(set(names))[:200]


_INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1), "uint64": (0, 2**64 - 1),
               "uint32": (0, 2**32 - 1), "enum": (0, 40), "sint32": (-(2**31), 2**31 - 1)}


def _int_kind(fd) -> str:
    from google.protobuf.descriptor import FieldDescriptor as F

    return {F.TYPE_INT32: "int32", F.TYPE_INT64: "int64", F.TYPE_UINT64: "uint64", F.TYPE_UINT32: "uint32",
            F.TYPE_ENUM: "enum", F.TYPE_SINT32: "sint32"}.get(fd.type, "")


def _value(data, fd, names, current):
    from google.protobuf.descriptor import FieldDescriptor as F

    kind = _int_kind(fd)
    if kind:
        lo, hi = _INT_RANGES[kind]
        v = data.draw(st.one_of(st.sampled_from(INTS), st.integers(-3, 3).map(lambda d: (current or 0) + d),
                                st.integers(lo, hi)), label="int")
        return min(max(v, lo), hi)
    if fd.type in (F.TYPE_FLOAT, F.TYPE_DOUBLE):
        return data.draw(st.one_of(st.sampled_from(FLOATS), st.floats(width=32 if fd.type == F.TYPE_FLOAT else 64)))
    if fd.type == F.TYPE_STRING:
        return data.draw(st.one_of(st.sampled_from(names or TEXTS), st.sampled_from(TEXTS), st.text(max_size=20)),
                         label="text")
    if fd.type == F.TYPE_BYTES:
        cur = current if isinstance(current, bytes) else b""
        return data.draw(st.one_of(st.binary(max_size=64), st.just(cur[: len(cur) // 2]), st.just(cur + cur[:8])))
    if fd.type == F.TYPE_BOOL:
        return data.draw(st.booleans())
    return current


def mutate_proto(data: st.DataObject, msg, rounds: int = 3):
    """A mutated deep copy of a protobuf message (structure-aware: every field is reachable)."""
    from google.protobuf.descriptor import FieldDescriptor as F
    from google.protobuf.message import Message

    msg = copy.deepcopy(msg)
    names = _names(msg)
    for _ in range(data.draw(st.integers(1, rounds), label="proto rounds")):
        leaves = _leaves(msg, [])
        if not leaves:
            break
        parent, fd = data.draw(st.sampled_from(leaves), label="field")
        val = getattr(parent, fd.name)
        repeated = not isinstance(val, (Message, str, bytes, int, float, bool))
        if repeated and len(val):
            op = data.draw(st.sampled_from(["set", "delete", "dup", "clear", "swap"]), label="repeated op")
            i = data.draw(st.integers(0, len(val) - 1))
            if op == "delete":
                del val[i]
            elif op == "clear":
                parent.ClearField(fd.name)
            elif op == "swap" and len(val) > 1:
                j = data.draw(st.integers(0, len(val) - 1))
                if fd.type == F.TYPE_MESSAGE:
                    a, b = copy.deepcopy(val[i]), copy.deepcopy(val[j])
                    val[i].CopyFrom(b)
                    val[j].CopyFrom(a)
                else:
                    val[i], val[j] = val[j], val[i]
            elif op == "dup":
                if fd.type == F.TYPE_MESSAGE:
                    val.add().CopyFrom(val[i])
                else:
                    val.append(val[i])
            elif fd.type != F.TYPE_MESSAGE:
                try:
                    val[i] = _value(data, fd, names, val[i])
                except (TypeError, ValueError):
                    pass
        elif fd.type == F.TYPE_MESSAGE:
            if data.draw(st.booleans(), label="clear submessage"):
                parent.ClearField(fd.name)
        else:
            try:
                setattr(parent, fd.name, _value(data, fd, names, val))
            except (TypeError, ValueError):
                pass
    return msg


def _json_paths(doc, path=()):
    out = [path]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _json_paths(v, path + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _json_paths(v, path + (i,))
    return out


JSON_VALUES = [None, 0, -1, 1, 2**63, 1.5, math.nan, "", "x", "../outside.so", "/etc/passwd", [], {}, [1], {"a": 1},
               True, "cuda", "aarch64", "kv260", "lib/model.so", "weights.safetensors"]


def mutate_json(data: st.DataObject, doc, rounds: int = 3):
    doc = copy.deepcopy(doc)
    for _ in range(data.draw(st.integers(1, rounds), label="json rounds")):
        paths = _json_paths(doc)
        path = data.draw(st.sampled_from(paths), label="json path")
        if not path:
            if data.draw(st.integers(0, 9)) == 0:  # replace the whole document
                doc = data.draw(st.sampled_from(JSON_VALUES))
            continue
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        key = path[-1]
        op = data.draw(st.sampled_from(["set", "delete", "rename", "copy"]), label="json op")
        if op == "delete":
            del parent[key]
        elif op == "rename" and isinstance(parent, dict):
            parent[data.draw(st.sampled_from(TEXTS))] = parent.pop(key)
        elif op == "copy":
            other = data.draw(st.sampled_from(paths))
            src = doc
            try:
                for k in other:
                    src = src[k]
                parent[key] = copy.deepcopy(src)
            except (KeyError, IndexError, TypeError):
                pass
        else:
            parent[key] = data.draw(st.one_of(st.sampled_from(JSON_VALUES), st.integers(), st.text(max_size=12)))
    return doc
