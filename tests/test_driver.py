"""driver.compile_to: refusals that must come before any build."""

from __future__ import annotations

import pytest

import ternc
from ternc.driver import TargetError, compile_to


def test_ops_without_a_tvm_lowering_are_listed_before_building(tmp_path):
    pytest.importorskip("tvm")
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("Split", ["x"], ["a", "b"], axis=1, num_outputs=2), helper.make_node("Add", ["a", "b"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])])
    p = tmp_path / "split.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)]), p)
    m = ternc.load(p)
    from ternc.backends.tvm.lower import IMPLS
    from ternc.ir.ops import Op

    if Op.Split in IMPLS:
        pytest.skip("Split lowers now")
    with pytest.raises(TargetError, match=r"no lowering for 1 op\(s\) in this model: Split \(1x"):
        compile_to(m, target="cpu", out=str(tmp_path / "art"))
    assert not (tmp_path / "art").exists()
