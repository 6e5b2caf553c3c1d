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


# ---------------------------------------------------------------- issue 14, item 6
def _relu_bytes():
    x = helper.make_tensor_value_info("xname", TensorProto.FLOAT, ["DIMP", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["DIMP", 2])
    m = _model([helper.make_node("Relu", ["xname"], ["y"])], [x], [y])
    m.producer_name = "PRODNAME"
    return m.SerializeToString()


@pytest.mark.parametrize("token, field", [(b"xname", "input"), (b"DIMP", "dim_param"), (b"PRODNAME", "producer_name")])
def test_invalid_utf8(tmp_path, token, field):
    p = tmp_path / "u.onnx"
    p.write_bytes(_relu_bytes().replace(token, b"\xff\xfe" + token[2:]))
    with pytest.raises(FrontendError, match=f"{field} is not valid UTF-8"):
        ternc.load(p)


@pytest.mark.parametrize("extra, message", [
    ({"offset": "abc"}, "offset 'abc' is not a non-negative byte count"),
    ({"offset": "-4"}, "offset '-4'"),
    ({"length": "xyz"}, "length 'xyz'"),
    ({"offset": "99999999999999999999999"}, "not a non-negative byte count"),
    ({"location": "w\x00.bin"}, "invalid external data location"),
    ({"location": "a" * 5000}, "invalid external data location"),
])
def test_bad_external_data_fields(tmp_path, extra, message):
    (tmp_path / "w.bin").write_bytes(np.ones(4, np.float32).tobytes())
    w = numpy_helper.from_array(np.ones(4, np.float32), "w")
    m = _model([helper.make_node("Add", ["x", "w"], ["y"])], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [w])
    t = m.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in {"location": "w.bin", **extra}.items():
        e = t.external_data.add()
        e.key, e.value = k, v
    p = tmp_path / "e.onnx"
    p.write_bytes(m.SerializeToString())
    with pytest.raises(FrontendError, match=message):
        ternc.load(p)


def test_fifo_is_refused(tmp_path):
    import os

    os.mkfifo(tmp_path / "f.onnx")
    with pytest.raises(FrontendError, match="not a regular file"):
        ternc.load(tmp_path / "f.onnx")


@pytest.mark.parametrize("with_past", [False, True])
def test_value_info_stripped_export_loads(onnx_export, tmp_path, with_past):
    path = onnx_export("llama", with_past)
    m = onnx.load(str(path))
    del m.graph.value_info[:]
    p = tmp_path / "novi.onnx"
    onnx.save(m, str(p))
    ref, got = ternc.load(path), ternc.load(p)
    assert "decoder" in got.meta
    ids = np.array([[3, 1, 4, 1, 5]])
    np.testing.assert_allclose(ternc.generate(got, ids, 4), ternc.generate(ref, ids, 4))


def test_with_past_export_missing_a_present_output(onnx_export, tmp_path):
    m = onnx.load(str(onnx_export("llama", True)))
    outs = [o for o in m.graph.output if o.name != "present.1.value"]
    del m.graph.output[:]
    m.graph.output.extend(outs)
    p = tmp_path / "np.onnx"
    onnx.save(m, str(p))
    with pytest.raises(FrontendError, match=r"produce \['present.1.value'\] but the graph does not output them"):
        ternc.load(p)


def test_type_inconsistent_graph_is_refused():
    """onnx.checker's full check (strict type inference): Add of f32 and i64 is refused, as onnxruntime does."""
    m = _model([helper.make_node("Add", ["x", "i"], ["y"])], [X, helper.make_tensor_value_info("i", TensorProto.INT64, [2])],
               [Y])
    with pytest.raises(FrontendError, match="invalid ONNX model"):
        from_onnx(m)
