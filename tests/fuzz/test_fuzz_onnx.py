"""Fuzzing the ONNX frontend (`ternc.load` on an .onnx file): structural and byte-level mutants of small
seed models. Invariant (harness.py): a ternc error or a verified module; never another exception, a
crash, a hang or >1 GiB. The default run does a short seeded pass; `-m fuzz` runs TERNC_FUZZ_EXAMPLES."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from .harness import corpus_files, examples, fuzz
from .mutate import mutate_bytes, mutate_proto


def _model(nodes, inputs, outputs, inits=(), opset=18):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], producer_name="fuzz-seed")


def _seeds() -> dict[str, onnx.ModelProto]:
    f = TensorProto.FLOAT
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32), "w2")
    b1 = numpy_helper.from_array(np.zeros(16, np.float32), "b1")
    mlp = _model([helper.make_node("MatMul", ["x", "w1"], ["h0"]), helper.make_node("Add", ["h0", "b1"], ["h1"]),
                  helper.make_node("Relu", ["h1"], ["h2"]), helper.make_node("MatMul", ["h2", "w2"], ["y"])],
                 [helper.make_tensor_value_info("x", f, ["seq", 8])], [helper.make_tensor_value_info("y", f, ["seq", 4])],
                 [w1, w2, b1])
    emb = numpy_helper.from_array(rng.standard_normal((10, 4)).astype(np.float32), "emb")
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    gather = _model([helper.make_node("Gather", ["emb", "ids"], ["e"]),
                     helper.make_node("ReduceSum", ["e", "axes"], ["s"], keepdims=0),
                     helper.make_node("Mul", ["s", "k"], ["y"])],
                    [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, "seq"]),
                     helper.make_tensor_value_info("k", f, [])],
                    [helper.make_tensor_value_info("y", f, [1, 4])], [emb, axes])
    ext = _model([helper.make_node("Add", ["x", "w"], ["y"])], [helper.make_tensor_value_info("x", f, [4])],
                 [helper.make_tensor_value_info("y", f, [4])],
                 [numpy_helper.from_array(np.zeros(4, np.float32), "w")])
    t = ext.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "w.bin"), ("offset", "16"), ("length", "16")):
        e = t.external_data.add()
        e.key, e.value = k, v
    return {"mlp": mlp, "gather": gather, "external": ext}


SEEDS = _seeds()


class _Draw:
    def __init__(self, draw):
        self.draw = draw


@st.composite
def onnx_payloads(draw):
    seed = SEEDS[draw(st.sampled_from(sorted(SEEDS)), label="seed")]
    d = _Draw(draw)
    if draw(st.integers(0, 3), label="byte-level?") == 0:
        return {"model": mutate_bytes(d, seed.SerializeToString())}
    m = mutate_proto(d, seed)
    try:
        return {"model": m.SerializeToString()}
    except Exception:  # e.g. a mutated string protobuf will not encode: fall back to the seed bytes
        return {"model": seed.SerializeToString()}


def _save(payload, path):
    path.with_suffix(".onnx").write_bytes(payload["model"])


def test_seeds_load(zygote):
    for name, m in SEEDS.items():
        out = zygote.run("onnx_load", {"model": m.SerializeToString()})
        assert out.kind == "ok", (name, out)


def test_fuzz_onnx_short(zygote):
    fuzz("onnx", onnx_payloads(), "onnx_load", examples(40), seed=14, zygote=zygote, save=_save)


@pytest.mark.fuzz
def test_fuzz_onnx_long(zygote):
    fuzz("onnx", onnx_payloads(), "onnx_load", examples(10_000), seed=1414, zygote=zygote, save=_save)


@pytest.mark.parametrize("path", corpus_files("onnx"), ids=lambda p: p.name)
def test_corpus_onnx(zygote, path):
    out = zygote.run("onnx_load", {"model": path.read_bytes()})
    assert not out.bad, out
