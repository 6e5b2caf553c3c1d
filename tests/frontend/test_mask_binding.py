"""frontend/mask_binding.py: a legacy export's attention_mask input becomes ones of the right length."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

import ternc
from ternc.frontend.mask_binding import bind_attention_mask
from ternc.frontend.onnx_import import from_onnx


def _masked_softmax_model(mask_dim: str, with_past: bool):
    """logits = Softmax(x + mask) with x [b, seq, past+seq] from ids; mask [b, mask_dim]."""
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", mask_dim])]
    if with_past:
        inputs.append(helper.make_tensor_value_info("past_key_values.0.key", TensorProto.FLOAT,
                                                    ["batch", 2, "past", 4]))
    nodes = [helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
             helper.make_node("Softmax", ["m"], ["y"], axis=-1)]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", mask_dim])]
    if with_past:
        nodes.append(helper.make_node("Shape", ["past_key_values.0.key"], ["ps"]))
        outputs.append(helper.make_tensor_value_info("ps", TensorProto.INT64, [4]))
    nodes.append(helper.make_node("Shape", ["input_ids"], ["is"]))
    outputs.append(helper.make_tensor_value_info("is", TensorProto.INT64, [2]))
    g = helper.make_graph(nodes, "g", inputs, outputs)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def test_mask_of_the_token_length_becomes_ones():
    m = bind_attention_mask(from_onnx(_masked_softmax_model("seq", False), raise_patterns=False))
    assert [p.name for p in m.func("main").params] == ["input_ids"]
    assert "[batch, seq]" in m.meta["bound_inputs"]["attention_mask"]
    y = ternc.interpret(m, {"input_ids": np.zeros((1, 5), np.int64)})["y"]
    np.testing.assert_allclose(y, np.full((1, 5), 0.2, np.float32), rtol=1e-6)


def test_mask_over_past_and_tokens_counts_the_past():
    m = bind_attention_mask(from_onnx(_masked_softmax_model("past_seq", True), raise_patterns=False))
    assert [p.name for p in m.func("main").params] == ["input_ids", "past_key_values.0.key"]
    y = ternc.interpret(m, {"input_ids": np.zeros((1, 3), np.int64),
                            "past_key_values.0.key": np.zeros((1, 2, 4, 4), np.float32)})["y"]
    assert y.shape == (1, 7)


def test_mask_of_unknown_length_is_left_alone():
    model = _masked_softmax_model("other", False)
    m = from_onnx(model, raise_patterns=False)
    assert bind_attention_mask(m) is m
