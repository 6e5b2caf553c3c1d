"""ONNX -> ternc IR.

Loads a model file (external data must stay inside the model's folder), checks the opset, converts
every node to a primitive IR op with ONNX's latest-opset conventions (e.g. `axes` as inputs), then
raises transformer patterns into high-level ops (see `raising.py`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
from onnx import numpy_helper

from ..ir.core import Const, Function, Module, Node, Value
from ..ir.ops import HIGH_LEVEL, ONNX_NAMES, Op
from ..ir.types import DType, TensorType

MIN_OPSET, MAX_OPSET = 17, 23


class FrontendError(ValueError):
    """Bad or unsupported ONNX input; the message names the file, node or op."""


class UnsupportedOpError(FrontendError):
    pass


ONNX_DTYPES: dict[int, DType] = {
    1: DType.F32, 2: DType.U8, 3: DType.I8, 4: DType.U16, 5: DType.I16, 6: DType.I32, 7: DType.I64,
    8: DType.STR, 9: DType.BOOL, 10: DType.F16, 11: DType.F64, 12: DType.U32, 13: DType.U64, 16: DType.BF16,
}

# Primitive ops the frontend maps 1:1 (the conformance suite runs onnx's node tests for these).
SUPPORTED_ONNX_OPS = sorted({ONNX_NAMES.get(op, op.value) for op in Op if op not in HIGH_LEVEL} | {"Constant"})


def onnx_dtype(code: int, where: str) -> DType:
    try:
        return ONNX_DTYPES[code]
    except KeyError:
        name = onnx.TensorProto.DataType.Name(code) if code in onnx.TensorProto.DataType.values() else str(code)
        raise FrontendError(f"{where}: element type {name} is not supported "
                            f"(supported: {', '.join(sorted(d.value for d in ONNX_DTYPES.values()))})") from None


# ------------------------------------------------------------------------------ loading
def load_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    """Read an ONNX file with checked external data. Errors name the file."""
    path = Path(path)
    if not path.exists():
        raise FrontendError(f"{path}: no such file")
    if path.is_dir():
        raise FrontendError(f"{path}: is a directory, expected an .onnx file")
    if not path.is_file():  # a FIFO or a link to a device would block or never end
        raise FrontendError(f"{path}: not a regular file (a FIFO, device or socket), expected an .onnx file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError and friends
        raise FrontendError(f"{path}: not a valid ONNX model (truncated or corrupt file?): "
                            f"{type(e).__name__}: {e}") from None
    if not model.graph.node and not model.graph.output:
        raise FrontendError(f"{path}: ONNX model has an empty graph (truncated or not an ONNX file?)")
    _load_external_data(model, path.parent.resolve(), path)
    return model


def _load_external_data(model: onnx.ModelProto, base: Path, path: Path) -> None:
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    for t in _get_all_tensors(model):
        if not uses_external_data(t):
            continue
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        where = f"{path}: tensor {t.name!r}"
        if not isinstance(loc, str) or not loc or "\0" in loc or len(loc) > 4096:
            raise FrontendError(f"{where}: invalid external data location {loc!r:.80}")
        try:
            target = (base / loc).resolve()
        except (OSError, ValueError, RuntimeError) as e:
            raise FrontendError(f"{where}: invalid external data location {loc!r:.80} ({e})") from None
        if os.path.isabs(loc) or base not in target.parents:
            raise FrontendError(f"{where} points to external data {loc!r} outside the "
                                f"model's folder {base}; refusing to read it")
        try:
            if not target.is_file():
                raise FrontendError(f"{where} needs external data file {loc!r}, which is missing (or is not a "
                                    f"regular file)")
            size = target.stat().st_size
        except OSError as e:  # e.g. a name too long for the file system
            raise FrontendError(f"{where}: cannot read external data {loc!r:.80}: {e.strerror}") from None
        offset = _byte_count(info.get("offset", "0"), "offset", where)
        want = _byte_count(info["length"], "length", where) if "length" in info else size - offset
        if offset + want > size or want < 0:
            raise FrontendError(f"{path}: external data {loc!r} for tensor {t.name!r} is truncated "
                                f"(needs bytes {offset}..{offset + want}, file has {size})")
        with open(target, "rb") as f:
            f.seek(offset)
            t.raw_data = f.read(want)
        del t.external_data[:]
        t.data_location = onnx.TensorProto.DEFAULT


def _byte_count(text: str, key: str, where: str) -> int:
    if not isinstance(text, str) or not text.isascii() or not text.isdigit() or len(text) > 19:
        raise FrontendError(f"{where}: external data {key} {text!r:.40} is not a non-negative byte count")
    return int(text)


def check_text_fields(model: onnx.ModelProto, source: str) -> None:
    """Every `string` field of the model must be valid UTF-8 (protobuf hands invalid ones back as bytes,
    which later code would trip over). Tensor payloads are not walked (no copies of the weights)."""
    from google.protobuf.descriptor import FieldDescriptor
    from google.protobuf.message import Message

    def walk(msg, path):
        if isinstance(msg, onnx.TensorProto):
            fields = [(f, getattr(msg, f.name)) for f in msg.DESCRIPTOR.fields
                      if f.name in ("name", "doc_string", "external_data")]
        else:
            fields = msg.ListFields()
        for fd, val in fields:
            if fd.type == FieldDescriptor.TYPE_STRING:
                for v in ([val] if isinstance(val, (str, bytes)) else val):
                    if not isinstance(v, str):
                        raise FrontendError(f"{source}: {path}.{fd.name} is not valid UTF-8 ({bytes(v)[:40]!r})")
            elif fd.type == FieldDescriptor.TYPE_MESSAGE:
                if isinstance(val, Message):
                    walk(val, f"{path}.{fd.name}")
                else:
                    for k, v in enumerate(val):
                        walk(v, f"{path}.{fd.name}[{k}]")

    walk(model, "model")


# ------------------------------------------------------------------------------ conversion
_SANITIZE = re.compile(r"[^A-Za-z0-9_.\-]")


class _Names:
    def __init__(self):
        self.map: dict[str, str] = {"": ""}
        self.used: set[str] = set()

    def get(self, onnx_name: str) -> str:
        if onnx_name in self.map:
            return self.map[onnx_name]
        base = _SANITIZE.sub("_", onnx_name) or "v"
        name, i = base, 1
        while name in self.used:
            name, i = f"{base}_{i}", i + 1
        self.used.add(name)
        self.map[onnx_name] = name
        return name


def _attr_value(a: onnx.AttributeProto, where: str) -> Any:
    T = onnx.AttributeProto
    if a.type == T.INT:
        return int(a.i)
    if a.type == T.FLOAT:
        return float(a.f)
    if a.type == T.STRING:
        return a.s.decode("utf-8")
    if a.type == T.INTS:
        return tuple(int(x) for x in a.ints)
    if a.type == T.FLOATS:
        return tuple(float(x) for x in a.floats)
    if a.type == T.STRINGS:
        return tuple(s.decode("utf-8") for s in a.strings)
    if a.type == T.TENSOR:
        return numpy_helper.to_array(a.t)
    raise FrontendError(f"{where}: attribute '{a.name}' of type {T.AttributeType.Name(a.type)} is not supported")


def _tensor_type(vi: onnx.ValueInfoProto, where: str) -> TensorType:
    tt = vi.type.tensor_type
    if not vi.type.HasField("tensor_type"):
        raise FrontendError(f"{where}: value {vi.name!r} is not a tensor (sequences/maps are not supported)")
    dtype = onnx_dtype(tt.elem_type, f"{where}, value {vi.name!r}") if tt.elem_type else DType.F32
    if not tt.HasField("shape"):
        return TensorType(dtype, None)
    dims = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            if d.dim_value < 0:
                raise FrontendError(f"{where}: value {vi.name!r} has a negative dimension {d.dim_value}")
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param") and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", d.dim_param):
            dims.append(d.dim_param)
        else:
            dims.append("?")
    return TensorType(dtype, tuple(dims))


class _Converter:
    def __init__(self, model: onnx.ModelProto, source: str):
        self.model = model
        self.source = source
        self.names = _Names()
        self.consts: dict[str, Const] = {}
        self.nodes: list[Node] = []
        self.types: dict[str, TensorType] = {}
        self.opset = 0
        self._n_const = 0

    def const(self, array: np.ndarray, hint: str = "c", dtype: DType | None = None) -> str:
        name = self.names.get(f"__{hint}_{self._n_const}")
        self._n_const += 1
        self.consts[name] = Const.of(np.asarray(array), dtype)
        return name

    def run(self) -> Function:
        g = self.model.graph
        opsets = {o.domain: o.version for o in self.model.opset_import}
        self.opset = opsets.get("", opsets.get("ai.onnx", 0))
        if not (MIN_OPSET <= self.opset <= MAX_OPSET):
            raise FrontendError(f"{self.source}: default-domain opset {self.opset} is not supported "
                                f"(supported: {MIN_OPSET}..{MAX_OPSET}); convert it with onnx.version_converter."
                                f"convert_version(model, {min(max(self.opset, MIN_OPSET), MAX_OPSET)}) and save the "
                                f"result, or re-export with opset_version in that range")
        for vi in list(g.value_info) + list(g.output):
            self.types[vi.name] = _tensor_type(vi, self.source)
        for init in g.initializer:
            where = f"{self.source}: initializer {init.name!r}"
            dt = onnx_dtype(init.data_type, where)
            try:
                arr = numpy_helper.to_array(init)
            except Exception as e:
                raise FrontendError(f"{where}: cannot read tensor data ({e})") from None
            self.consts[self.names.get(init.name)] = Const.of(arr, dt)
        init_names = {i.name for i in g.initializer}
        params = []
        for vi in g.input:
            if vi.name in init_names:
                continue
            params.append(Value(self.names.get(vi.name), _tensor_type(vi, f"{self.source}: input")))
        for node in g.node:
            self.convert_node(node)
        results = []
        produced = {o.name for n in self.nodes for o in n.outputs} | {p.name for p in params} | set(self.consts)
        for o in g.output:
            n = self.names.get(o.name)
            if n not in produced:
                raise FrontendError(f"{self.source}: graph output {o.name!r} is never produced")
            results.append(n)
        return Function("main", tuple(params), tuple(self.nodes), tuple(results))

    def convert_node(self, node: onnx.NodeProto) -> None:
        label = node.name or (node.output[0] if node.output else node.op_type)
        where = f"{self.source}: node {label!r} ({node.op_type})"
        if node.domain not in ("", "ai.onnx"):
            raise UnsupportedOpError(f"{where}: operator domain {node.domain!r} is not supported "
                                     f"(only the default ONNX domain)")
        conv = CONVERTERS.get(node.op_type)
        try:
            op = Op(node.op_type)
        except ValueError:
            op = None
        if conv is None and (op is None or op in HIGH_LEVEL or op in ONNX_NAMES):
            # Checked before the attributes, so e.g. If/Loop are named as unsupported ops rather
            # than failing on their graph attributes.
            raise UnsupportedOpError(
                f"{where}: op {node.op_type!r} is not supported. Supported ONNX ops: "
                f"{', '.join(SUPPORTED_ONNX_OPS)}")
        attrs = {a.name: _attr_value(a, where) for a in node.attribute}
        inputs = [self.names.get(i) for i in node.input]
        for i, raw in zip(inputs, node.input):
            if raw and i not in self.consts and not self._defined(i):
                raise FrontendError(f"{where}: input {raw!r} is not produced by any earlier node, input or "
                                    f"initializer (graph not topologically sorted or truncated)")
        outputs = [Value(self.names.get(o), self.types.get(o, TensorType(DType.F32, None))) for o in node.output]
        if conv is not None:
            conv(self, node, inputs, outputs, attrs, where)
            return
        self.emit(op, inputs, outputs, label, **attrs)

    def _defined(self, name: str) -> bool:
        if not hasattr(self, "_def_cache"):
            self._def_cache = set()
        if name in self._def_cache:
            return True
        g_inputs = {self.names.get(vi.name) for vi in self.model.graph.input}
        self._def_cache |= g_inputs | {o.name for n in self.nodes for o in n.outputs}
        return name in self._def_cache

    def emit(self, op: Op, inputs, outputs, origin: str, **attrs) -> None:
        # Trailing absent optional inputs are dropped so arity checks see the real count.
        inputs = list(inputs)
        while inputs and not inputs[-1]:
            inputs.pop()
        # Node outputs that ONNX leaves unnamed (optional outputs) are given fresh names.
        outs = [o if o.name else Value(self.names.get(f"__unused_{len(self.nodes)}_{k}"), o.type)
                for k, o in enumerate(outputs)]
        self.nodes.append(Node.make(op, inputs, outs, origin, **attrs))
        if hasattr(self, "_def_cache"):
            self._def_cache |= {o.name for o in outs}


Converter = Callable[[_Converter, onnx.NodeProto, list, list, dict, str], None]
CONVERTERS: dict[str, Converter] = {}


def converter(*op_types: str):
    def deco(fn):
        for t in op_types:
            CONVERTERS[t] = fn
        return fn

    return deco


@converter("Constant")
def _constant(cv, node, inputs, outputs, attrs, where):
    if len(attrs) != 1:
        raise FrontendError(f"{where}: Constant needs exactly one value attribute")
    (key, val), = attrs.items()
    if key == "value":
        arr = np.asarray(val)
        dtype = onnx_dtype(node.attribute[0].t.data_type, where)
    elif key in ("value_float", "value_int"):
        arr = np.asarray(val, dtype=np.float32 if key == "value_float" else np.int64)
        dtype = None
    elif key in ("value_floats", "value_ints"):
        arr = np.asarray(val, dtype=np.float32 if key == "value_floats" else np.int64)
        dtype = None
    elif key in ("value_string", "value_strings"):
        arr = np.asarray(val, dtype=object)
        dtype = DType.STR
    else:
        raise UnsupportedOpError(f"{where}: Constant attribute '{key}' is not supported")
    # The constant takes the output's name so later references resolve to it.
    cv.consts[outputs[0].name] = Const.of(arr, dtype)


@converter("Cast")
def _cast(cv, node, inputs, outputs, attrs, where):
    attrs["to"] = onnx_dtype(attrs["to"], where).value
    attrs.pop("saturate", None)
    attrs.pop("round_mode", None)
    cv.emit(Op.Cast, inputs, outputs, node.name, **attrs)


@converter("ConstantOfShape")
def _cos(cv, node, inputs, outputs, attrs, where):
    val = attrs.pop("value", None)
    if val is None:
        value, dtype = 0.0, DType.F32
    else:
        value = np.asarray(val).reshape(-1)[0].item()
        dtype = onnx_dtype(node.attribute[0].t.data_type, where)
    cv.emit(Op.ConstantOfShape, inputs, outputs, node.name, value=value, dtype=dtype.value)


@converter("EyeLike")
def _eyelike(cv, node, inputs, outputs, attrs, where):
    if "dtype" in attrs:
        attrs["dtype"] = onnx_dtype(attrs["dtype"], where).value
    cv.emit(Op.EyeLike, inputs, outputs, node.name, **attrs)


def _dtype_attrs(op: Op, *names: str):
    """ONNX element-type codes in attributes (0 = unset) become IR dtype names."""

    def conv(cv, node, inputs, outputs, attrs, where):
        for n in names:
            if attrs.get(n):
                attrs[n] = onnx_dtype(attrs[n], f"{where}, attribute {n!r}").value
            else:
                attrs.pop(n, None)
        cv.emit(op, inputs, outputs, node.name, **attrs)

    return conv


CONVERTERS["QuantizeLinear"] = _dtype_attrs(Op.QuantizeLinear, "output_dtype", "precision")
CONVERTERS["Attention"] = _dtype_attrs(Op.OnnxAttention, "softmax_precision")  # ONNX's op, not the high-level one
CONVERTERS["DequantizeLinear"] = _dtype_attrs(Op.DequantizeLinear, "output_dtype")


def _axes_attr_to_input(op: Op, since: int):
    """Older opsets carry `axes` as an attribute; the IR always takes it as an input."""

    def conv(cv, node, inputs, outputs, attrs, where):
        if "axes" in attrs and cv.opset < since:
            axes = attrs.pop("axes")
            inputs = [inputs[0], cv.const(np.asarray(axes, np.int64), "axes")]
        cv.emit(op, inputs, outputs, node.name, **attrs)

    return conv


for _op in ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceSumSquare", "ReduceL1", "ReduceL2",
            "ReduceLogSum", "ReduceLogSumExp"):
    CONVERTERS[_op] = _axes_attr_to_input(Op(_op), 18)


@converter("Split")
def _split(cv, node, inputs, outputs, attrs, where):
    attrs.pop("num_outputs", None)  # implied by the number of outputs
    if "split" in attrs:
        inputs = [inputs[0], cv.const(np.asarray(attrs.pop("split"), np.int64), "split")]
    cv.emit(Op.Split, inputs, outputs, node.name, **attrs)


@converter("Dropout")
def _dropout(cv, node, inputs, outputs, attrs, where):
    # Inference only: identity; the optional mask output is all-true. Training mode is random (and
    # onnx's test data for it comes from numpy's RNG), so it is rejected rather than run as identity.
    # Not in SUPPORTED_ONNX_OPS for that reason (its training-mode node tests cannot pass).
    if len(inputs) > 2 and inputs[2]:
        tm = cv.consts.get(inputs[2])
        if tm is None or tm.data is None or np.asarray(tm.data).any():
            raise UnsupportedOpError(f"{where}: Dropout in training mode (training_mode input "
                                     f"{node.input[2]!r} is not a constant false) is not supported; "
                                     f"export the model in eval mode")
    cv.emit(Op.Identity, inputs[:1], outputs[:1], node.name)
    if len(outputs) > 1 and outputs[1].name:
        shape = cv.names.get(f"__dropout_shape_{len(cv.nodes)}")
        cv.emit(Op.Shape, inputs[:1], [Value(shape, TensorType(DType.I64, None))], node.name)
        cv.emit(Op.ConstantOfShape, [shape], outputs[1:2], node.name, value=True, dtype="bool")


def from_onnx(model: onnx.ModelProto | str | os.PathLike, name: str | None = None, raise_patterns: bool = True,
              check_raising: bool = True) -> Module:
    """Convert an ONNX model (proto or path) into a ternc Module with entry point `main`."""
    source = "<onnx model>"
    if not isinstance(model, onnx.ModelProto):
        source = str(model)
        model = load_onnx(model)
    check_text_fields(model, source)
    if model.functions:
        try:
            from onnx import inliner

            model = inliner.inline_local_functions(model)
        except Exception as e:
            raise FrontendError(f"{source}: cannot inline model-local functions: {e}") from None
    try:
        # full_check: strict type/shape inference too, so type-inconsistent graphs (that onnxruntime
        # refuses) are refused here rather than run with numpy's promotions
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:
        raise FrontendError(f"{source}: invalid ONNX model: {' '.join(str(e).split())[:500]}") from None
    if model.graph.node and not model.graph.value_info:
        # an export with value_info stripped: infer the intermediate types and shapes again (the
        # decoder setup needs the KV shapes)
        try:
            model = onnx.shape_inference.infer_shapes(model, data_prop=True)
        except Exception as e:
            raise FrontendError(f"{source}: shape inference failed: {' '.join(str(e).split())[:300]}") from None
    conv = _Converter(model, source)
    fn = conv.run()
    module_name = _SANITIZE.sub("_", name or (Path(source).stem if source != "<onnx model>" else model.graph.name
                                              or "model")) or "model"
    module = Module(module_name, (fn,), conv.consts, {"source": {"format": "onnx", "opset": conv.opset,
                                                                "producer": model.producer_name}})
    from ..ir.verify import verify

    verify(module)
    if raise_patterns:
        from .mask_binding import bind_attention_mask
        from .raising import raise_module

        module = raise_module(bind_attention_mask(module), check=check_raising)
    return module
