"""Fuzzing the `.ternc` module loader: byte-level mutants, and crafted files whose IR text, string
constants or tensors are changed *with* their checksums recomputed (so the parser, the verifier and
the tensor checks are reached, not just the digest). Invariant: a ternc error or a verified module."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest
from hypothesis import strategies as st

from .harness import corpus_files, examples, fuzz
from .mutate import FLOATS, INTS, TEXTS, mutate_bytes


def _seed_files() -> dict[str, bytes]:
    import tempfile
    from pathlib import Path

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import ternc

    rng = np.random.default_rng(0)
    f = TensorProto.FLOAT
    w = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w")
    emb = numpy_helper.from_array(rng.standard_normal((10, 8)).astype(np.float32), "emb")
    g = helper.make_graph([helper.make_node("Gather", ["emb", "ids"], ["e"]), helper.make_node("MatMul", ["e", "w"], ["h"]),
                           helper.make_node("Softmax", ["h"], ["y"], axis=-1)], "g",
                          [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, "seq"])],
                          [helper.make_tensor_value_info("y", f, [1, "seq", 4])], [w, emb])
    m = ternc.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]))
    out = {}
    with tempfile.TemporaryDirectory() as d:
        ternc.save(m, Path(d) / "m.ternc")
        out["small"] = (Path(d) / "m.ternc").read_bytes()
    from ternc.ir.core import Const

    s = m.replace(constants={**m.constants, "names": Const.of(np.array(["a", "b"], dtype=object))})
    with tempfile.TemporaryDirectory() as d:
        ternc.save(s, Path(d) / "s.ternc")
        out["strings"] = (Path(d) / "s.ternc").read_bytes()
    del onnx
    return out


SEEDS = _seed_files()
OPS = ["Add", "MatMul", "Gather", "Softmax", "Linear", "Attention", "Reshape", "Range", "Mish", "KVEvict", "Cast"]
TYPES = ["f32[1, seq, 4]", "i64[]", "f32[?]", "bf16[2, 2]", "f32[99999999999999999999]", "str[1]", "f32[-1]"]


def _split(blob: bytes):
    from safetensors.numpy import load

    n = int.from_bytes(blob[:8], "little")
    meta = json.loads(blob[8:8 + n]).get("__metadata__", {})
    return meta, load(blob)


class _Draw:
    def __init__(self, draw):
        self.draw = draw


def _mutate_text(draw, text: str) -> str:
    lines = text.splitlines()
    for _ in range(draw(st.integers(1, 3), label="text rounds")):
        i = draw(st.integers(0, len(lines) - 1), label="line")
        op = draw(st.sampled_from(["token", "delete", "dup", "swap", "number", "op", "type", "attr"]))
        if op == "delete":
            del lines[i]
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "number":
            nums = list(re.finditer(r"-?\d+(\.\d+)?(e-?\d+)?", lines[i]))
            if nums:
                m = draw(st.sampled_from(nums))
                new = str(draw(st.sampled_from(INTS + FLOATS)))
                lines[i] = lines[i][:m.start()] + new + lines[i][m.end():]
        elif op == "op":
            lines[i] = re.sub(r"= (\w+)", "= " + draw(st.sampled_from(OPS)), lines[i], count=1)
        elif op == "type":
            lines[i] = re.sub(r"\w+\[[^\]]*\]", draw(st.sampled_from(TYPES)), lines[i], count=1)
        elif op == "attr":
            lines[i] = lines[i].replace("{", "{" + draw(st.sampled_from(["axis=", "scale=1e999,", "x=[", "k=\"", "a=1,a=2,"])), 1)
        else:
            toks = lines[i].split(" ")
            k = draw(st.integers(0, len(toks) - 1))
            toks[k] = draw(st.one_of(st.sampled_from(TEXTS), st.text(max_size=8)))
            lines[i] = " ".join(toks)
        if not lines:
            break
    return "\n".join(lines)


@st.composite
def module_payloads(draw):
    from safetensors.numpy import save

    blob = SEEDS[draw(st.sampled_from(sorted(SEEDS)), label="seed")]
    kind = draw(st.sampled_from(["bytes", "ir", "strings", "tensors"]), label="kind")
    if kind == "bytes":
        return {"file": mutate_bytes(_Draw(draw), blob), "run": True}
    meta, tensors = _split(blob)
    if kind == "ir":
        text = _mutate_text(draw, meta["ir"])
        meta = {**meta, "ir": text, "ir_sha256": hashlib.sha256(text.encode()).hexdigest()}
    elif kind == "strings":
        s = draw(st.sampled_from(["{bad", "[1]", '{"names": [1, 2]}', '{"names": ["a"]}', '{"zzz": ["a"]}', "null",
                                  '{"names": ' + "[" * 2000 + "]" * 2000 + "}"]))
        meta = {**meta, "strings": s}
        if draw(st.booleans(), label="rehash strings"):
            meta["strings_sha256"] = hashlib.sha256(s.encode()).hexdigest()
    else:
        name = draw(st.sampled_from(sorted(tensors)))
        op = draw(st.sampled_from(["rename", "drop", "dtype", "reshape", "extra"]))
        a = tensors.pop(name)
        if op == "rename":
            tensors[name + draw(st.sampled_from(["x", ".T", "_1"]))] = a
        elif op == "dtype":
            tensors[name] = a.astype(draw(st.sampled_from([np.float16, np.int8, np.float64, np.int64])))
        elif op == "reshape":
            tensors[name] = a.reshape(-1)
        elif op == "extra":
            tensors[name] = a
            tensors["extra"] = np.zeros(3, np.float32)
    return {"file": save(tensors, metadata=meta), "run": True}


def _save(payload, path):
    path.with_suffix(".ternc").write_bytes(payload["file"])


def test_seeds_load(zygote):
    for name, blob in SEEDS.items():
        out = zygote.run("module_load", {"file": blob, "run": True})
        assert out.kind == "ok", (name, out)


def test_fuzz_module_short(zygote):
    fuzz("module", module_payloads(), "module_load", examples(40), seed=15, zygote=zygote, save=_save)


@pytest.mark.fuzz
def test_fuzz_module_long(zygote):
    fuzz("module", module_payloads(), "module_load", examples(10_000), seed=1515, zygote=zygote, save=_save)


@pytest.mark.parametrize("path", corpus_files("module"), ids=lambda p: p.name)
def test_corpus_module(zygote, path):
    out = zygote.run("module_load", {"file": path.read_bytes(), "run": True})
    assert not out.bad, out
