"""Bad ONNX input gets a clear error naming the file/node/op, never a deep traceback."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import ternc
from ternc.frontend import FrontendError, UnsupportedOpError, from_onnx


def _model(nodes, inputs, outputs, inits=(), opset=18):
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


X = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
Y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])


def test_missing_file(tmp_path):
    with pytest.raises(FrontendError, match="no such file"):
        ternc.load(tmp_path / "nope.onnx")


def test_truncated_file(onnx_export, tmp_path):
    data = onnx_export("llama", False).read_bytes()
    p = tmp_path / "cut.onnx"
    p.write_bytes(data[: len(data) // 3])
    with pytest.raises(FrontendError, match=r"cut.onnx: not a valid ONNX model \(truncated or corrupt"):
        ternc.load(p)


def test_garbage_file(tmp_path):
    p = tmp_path / "junk.onnx"
    p.write_bytes(b"this is not protobuf at all" * 10)
    with pytest.raises(FrontendError, match="junk.onnx"):
        ternc.load(p)


def test_unsupported_op_names_node_and_lists_supported():
    m = _model([helper.make_node("LpNormalization", ["x"], ["y"], name="norm_7")], [X], [Y])
    with pytest.raises(UnsupportedOpError, match=r"node 'norm_7' \(LpNormalization\).*Supported ONNX ops: .*MatMul"):
        from_onnx(m)


def test_custom_domain_rejected():
    n = helper.make_node("FusedMatMul", ["x", "x"], ["y"], domain="com.microsoft", name="fm")
    m = _model([n], [X], [Y])
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    with pytest.raises(UnsupportedOpError, match="'fm'.*domain 'com.microsoft'"):
        from_onnx(m)


def test_unsupported_opset():
    m = _model([helper.make_node("Relu", ["x"], ["y"])], [X], [Y], opset=11)
    with pytest.raises(FrontendError, match="opset 11 is not supported.*17..23"):
        from_onnx(m)


def _external_model(tmp_path, location):
    w = numpy_helper.from_array(np.arange(2, dtype=np.float32), "w")
    m = _model([helper.make_node("Add", ["x", "w"], ["y"])], [X], [Y], inits=[w])
    onnx.external_data_helper.convert_model_to_external_data(m, all_tensors_to_one_file=True, location="w.bin",
                                                             size_threshold=0)
    onnx.save(m, tmp_path / "m.onnx")
    return tmp_path / "m.onnx"


def test_external_data_loads(tmp_path):
    p = _external_model(tmp_path, "w.bin")
    m = ternc.load(p)
    np.testing.assert_array_equal(ternc.interpret(m, {"x": np.ones(2, np.float32)})["y"], [1.0, 2.0])


def test_missing_external_data(tmp_path):
    p = _external_model(tmp_path, "w.bin")
    (tmp_path / "w.bin").unlink()
    with pytest.raises(FrontendError, match="needs external data file 'w.bin', which is missing"):
        ternc.load(p)


def test_external_data_outside_model_folder(tmp_path):
    p = _external_model(tmp_path, "w.bin")
    m = onnx.load(p, load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../../etc/passwd"
    onnx.save(m, p)
    with pytest.raises(FrontendError, match="outside the model's folder"):
        ternc.load(p)


def test_truncated_external_data(tmp_path):
    p = _external_model(tmp_path, "w.bin")
    (tmp_path / "w.bin").write_bytes(b"\0\0")
    with pytest.raises(FrontendError, match="truncated"):
        ternc.load(p)


def test_input_never_produced():
    m = _model([helper.make_node("Relu", ["ghost"], ["y"], name="r")], [X], [Y])
    with pytest.raises(FrontendError, match="ghost.*name: r"):
        from_onnx(m)
