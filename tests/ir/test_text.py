"""Text form: printer/parser round trip and readable Before/After."""

from __future__ import annotations

import numpy as np
import pytest

import ternc
from ternc.ir import Const, DType, Function, Module, Node, Op, ParseError, TensorType, Value, parse

TEXT = """\
module @tiny {
  meta = {"note": "hand written"}
  const @w: f32[2,3] = [1.0, 0.0, -1.0, 0.5, 0.25, -0.125]
  const @eps_axes: i64[1] = [-1]
  func @main(%x: f32[batch,seq,3]) -> (%y) {
    %h: f32[batch,seq,2] = Linear(%x, @w)
    %s: f32[batch,seq,2] = Softmax(%h) {axis = -1}
    %y: f32[batch,seq,2] = Clip(%s, _, _)
    return %y
  }
}
"""


def test_parse_print_round_trip_hand_written():
    m = parse(TEXT)
    assert str(m) == TEXT
    out = ternc.interpret(m, {"x": np.ones((1, 2, 3), np.float32)})["y"]
    h = np.array([0.0, 0.625], np.float32)
    np.testing.assert_allclose(out[0, 0], np.exp(h) / np.exp(h).sum(), rtol=1e-6)


def test_round_trip_of_imported_model_with_weights(onnx_export, tmp_path):
    m = ternc.load(onnx_export("llama", False))
    text = str(m)
    assert str(parse(text)) == text
    weights = {k: c.data for k, c in m.constants.items()}
    m2 = parse(text, weights)
    ids = np.array([[1, 2, 3]])
    np.testing.assert_array_equal(ternc.interpret(m, {"input_ids": ids})["logits"],
                                  ternc.interpret(m2, {"input_ids": ids})["logits"])
    ternc.save(m, tmp_path / "m.ternc")
    assert str(ternc.load(tmp_path / "m.ternc")) == text


def test_large_constants_print_as_digest_and_need_weights():
    big = np.arange(100, dtype=np.float32)
    m = Module("m", (Function("main", (Value("x", TensorType(DType.F32, (100,))),),
                              (Node.make(Op.Add, ["x", "b"], [Value("y", TensorType(DType.F32, (100,)))]),),
                              ("y",)),), {"b": Const.of(big)})
    text = str(m)
    assert "dense<" in text and "99.0" not in text
    with pytest.raises(ternc.ir.InterpError, match="@b has no data"):
        ternc.interpret(parse(text), {"x": big})
    with pytest.raises(ParseError, match="do not match digest"):
        parse(text, {"b": big + 1})


@pytest.mark.parametrize("bad, msg", [
    ("modul @x {", "expected 'module @name"),
    ("module @x {\n  func @f(%a: f32[2]) -> (%a) {\n    %b: f32[2] = Nope(%a)\n    return %b\n  }\n}", "unknown op"),
    ("module @x {\n  func @f(%a: q99[2]) -> (%a) {\n    return %a\n  }\n}", "q99"),
    ("module @x {\n  func @f(%a: f32[2]) -> (%a) {\n    %b: f32[2] = Relu(a)\n    return %b\n  }\n}", "bad operand"),
    ("module @x {\n  func @f(%a: f32[2]) -> (%a) {\n    %b: f32[2] = Relu(%a)\n", "missing 'return'"),
])
def test_parse_errors_say_where(bad, msg):
    with pytest.raises((ParseError, ValueError), match=msg):
        parse(bad)


def test_attribute_values_round_trip():
    n = Node.make(Op.Transpose, ["x"], [Value("y", TensorType(DType.F32, None))], perm=(0, 2, 1),
                  f=1e-05, s="a \"q\"", t=True, neg=-np.inf, fl=(1.5, 2.0))
    m = Module("m", (Function("main", (Value("x", TensorType(DType.F32, ("?", 2, 3))),), (n,), ("y",)),))
    text = str(m)
    m2 = parse(text)
    assert m2.functions[0].nodes[0].attrs == n.attrs
    assert str(m2) == text
