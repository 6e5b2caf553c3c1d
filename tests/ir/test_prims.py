"""Primitive op semantics (ir/prims.py) against ONNX.

Two kinds of checks: hand-written cases for the ONNX rules that are easy to get wrong (integer
Div truncation, Mod/fmod signs, Round half-to-even, Slice clamping with negative steps, ...), and
property tests that build a one-node ONNX model, run it through the frontend + interpreter and
through onnx's own ReferenceEvaluator, and require identical dtype/shape and equal values.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays
from onnx import helper
from onnx.reference import ReferenceEvaluator

from ternc.frontend.onnx_import import from_onnx
from ternc.ir import interpret

OPSET = 23
I64_MAX, I64_MIN = np.iinfo(np.int64).max, np.iinfo(np.int64).min


def one_node_model(op: str, inputs: list, attrs: dict | None = None, n_out: int = 1,
                   const: dict[int, np.ndarray] | None = None) -> tuple[onnx.ModelProto, dict]:
    """A model with one `op` node. `inputs` are arrays (None: absent optional); `const` indices become
    initializers (ONNX shape inputs such as axes/starts are usually constants in real exports)."""
    const = const or {}
    names, vis, inits, feeds = [], [], [], {}
    for k, a in enumerate(inputs):
        if a is None:
            names.append("")
            continue
        name = f"in{k}"
        names.append(name)
        if k in const:
            inits.append(onnx.numpy_helper.from_array(np.asarray(a), name))
        else:
            vis.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape))
            feeds[name] = a
    outs = [f"out{k}" for k in range(n_out)]
    node = helper.make_node(op, names, outs, **(attrs or {}))
    graph = helper.make_graph([node], "g", vis, [helper.make_empty_tensor_value_info(o) for o in outs],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    # onnx's shape inference fills in the output types (the checker wants them).
    return onnx.shape_inference.infer_shapes(model, strict_mode=True), feeds


def run_ternc(model, feeds) -> list[np.ndarray]:
    module = from_onnx(model, raise_patterns=False)
    fn = module.func("main")
    with np.errstate(all="ignore"):
        res = interpret(module, {p.name: feeds[p.name] for p in fn.params})
    return [res[r] for r in fn.results]


def run_reference(model, feeds) -> list[np.ndarray]:
    with np.errstate(all="ignore"):
        return ReferenceEvaluator(model).run(None, feeds)


def check_against_onnx(op, inputs, attrs=None, n_out=1, const=None, rtol=1e-6):
    model, feeds = one_node_model(op, inputs, attrs, n_out, const)
    want = run_reference(model, feeds)
    got = run_ternc(model, feeds)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        w = np.asarray(w)
        assert g.dtype == w.dtype, (op, attrs, g.dtype, w.dtype)
        assert g.shape == w.shape, (op, attrs, g.shape, w.shape)
        if np.issubdtype(w.dtype, np.floating):
            np.testing.assert_allclose(g, w, rtol=rtol, atol=0, equal_nan=True)
        else:
            np.testing.assert_array_equal(g, w)
    return got


def ternc1(op, inputs, attrs=None, const=None, n_out=1):
    model, feeds = one_node_model(op, inputs, attrs, n_out, const)
    return run_ternc(model, feeds)


# ------------------------------------------------------------------ hand-written ONNX rules
def test_integer_div_truncates_toward_zero_exactly():
    a = np.array([7, -7, 7, -7, 6, -6, 0, I64_MAX, I64_MIN + 1], np.int64)
    b = np.array([2, 2, -2, -2, 3, 3, 5, 1, 1], np.int64)
    (y,) = ternc1("Div", [a, b])
    assert y.tolist() == [3, -3, -3, 3, 2, -2, 0, I64_MAX, I64_MIN + 1]  # no float64 round trip
    (y,) = ternc1("Div", [np.array([250, 7], np.uint8), np.array([3, 2], np.uint8)])
    assert y.dtype == np.uint8 and y.tolist() == [83, 3]


def test_mod_signs():
    a, b = np.array([-7, 7, -7, 7], np.int32), np.array([3, 3, -3, -3], np.int32)
    assert ternc1("Mod", [a, b])[0].tolist() == [2, 1, -1, -2]  # sign of the divisor (Python %)
    assert ternc1("Mod", [a, b], {"fmod": 1})[0].tolist() == [-1, 1, -1, 1]  # sign of the dividend (C fmod)
    af, bf = a.astype(np.float32), b.astype(np.float32)
    np.testing.assert_array_equal(ternc1("Mod", [af, bf], {"fmod": 1})[0], [-1, 1, -1, 1])


def test_round_half_to_even():
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 2.4999, 2.5001], np.float32)
    np.testing.assert_array_equal(ternc1("Round", [x])[0], [0, 2, 2, -0, -2, -2, 2, 3])


def test_slice_negative_step_clamps_start_into_range():
    x = np.arange(5, dtype=np.float32)

    def sl(s, e, st):
        ins = [x, np.array([s]), np.array([e]), np.array([0]), np.array([st])]
        return ternc1("Slice", ins, const={1: 1, 2: 1, 3: 1, 4: 1})[0].tolist()

    assert sl(-100, 2, -1) == []                 # start clamps to 0, not to "the last element"
    assert sl(-100, -200, -1) == [0]             # start -> 0, end -> -1 ("before the front")
    assert sl(100, -200, -1) == [4, 3, 2, 1, 0]  # start clamps to dim-1
    assert sl(I64_MAX, I64_MIN, -2) == [4, 2, 0]
    assert sl(-1, 0, -1) == [4, 3, 2, 1]
    assert sl(1, 100, 2) == [1, 3]
    assert sl(3, 1, 1) == []


def test_gather_negative_indices():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    (y,) = ternc1("Gather", [x, np.array([-1, 0, -3], np.int64)], {"axis": 0})
    np.testing.assert_array_equal(y, x[[2, 0, 0]])
    (y,) = ternc1("Gather", [x, np.array([[-1]], np.int64)], {"axis": -1})
    np.testing.assert_array_equal(y, x[:, [[3]]])


def test_clip_absent_bounds_and_integers():
    x = np.array([-5, 0, 5], np.int8)
    assert ternc1("Clip", [x, None, np.array(2, np.int8)])[0].tolist() == [-5, 0, 2]
    assert ternc1("Clip", [x, np.array(-1, np.int8)])[0].tolist() == [-1, 0, 5]
    assert ternc1("Clip", [x])[0].tolist() == [-5, 0, 5]
    assert ternc1("Clip", [x, np.array(3, np.int8), np.array(1, np.int8)])[0].tolist() == [1, 1, 1]  # min > max


def test_pow_keeps_base_dtype():
    (y,) = ternc1("Pow", [np.array([2, 3], np.int32), np.array([2.5, 2.0], np.float32)])
    assert y.dtype == np.int32 and y.tolist() == [5, 9]
    (y,) = ternc1("Pow", [np.array([2.0, 4.0], np.float16), np.array([3, -1], np.int64)])
    assert y.dtype == np.float16 and y.tolist() == [8.0, 0.25]


def test_reduce_keepdims_and_empty_axes():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    empty = np.array([], np.int64)
    assert ternc1("ReduceSum", [x, empty], const={1: 1})[0].shape == (1, 1)  # empty axes: all
    np.testing.assert_array_equal(ternc1("ReduceSum", [x, empty], {"noop_with_empty_axes": 1}, const={1: 1})[0], x)
    assert ternc1("ReduceMax", [x, np.array([-1])], {"keepdims": 0}, const={1: 1})[0].tolist() == [2, 5]
    assert ternc1("ReduceMean", [x], {"keepdims": 0})[0].shape == ()


def test_cast_rules():
    x = np.array([-1.7, -0.2, 0.0, 0.9, 2.5], np.float32)
    assert ternc1("Cast", [x], {"to": onnx.TensorProto.INT32})[0].tolist() == [-1, 0, 0, 0, 2]  # truncation
    assert ternc1("Cast", [x], {"to": onnx.TensorProto.BOOL})[0].tolist() == [True, True, False, True, True]
    (y,) = ternc1("Cast", [np.array([1 + 2**-9, 3.0], np.float32)], {"to": onnx.TensorProto.BFLOAT16})
    assert str(y.dtype) == "bfloat16" and y.astype(np.float32).tolist() == [1.0, 3.0]  # nearest-even


def test_topk_ties_keep_lower_index_and_unsigned():
    x = np.array([[3, 1, 3, 2, 3]], np.uint64)
    v, i = ternc1("TopK", [x, np.array([3], np.int64)], n_out=2)
    assert v.tolist() == [[3, 3, 3]] and i.tolist() == [[0, 2, 4]]
    v, i = ternc1("TopK", [x, np.array([2], np.int64)], {"largest": 0}, n_out=2)
    assert v.tolist() == [[1, 2]] and i.tolist() == [[1, 3]]


def test_depth_space_round_trip():
    x = np.arange(2 * 8 * 2 * 3, dtype=np.float32).reshape(2, 8, 2, 3)
    for mode in ("DCR", "CRD"):
        (y,) = check_against_onnx("DepthToSpace", [x], {"blocksize": 2, "mode": mode})
        assert y.shape == (2, 2, 4, 6)
    (z,) = check_against_onnx("SpaceToDepth", [np.arange(96, dtype=np.float32).reshape(1, 2, 6, 8)],
                              {"blocksize": 2})
    assert z.shape == (1, 8, 3, 4)


# ------------------------------------------------------------------ differential property tests
small_shapes = array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5)
finite_f32 = st.floats(-100, 100, width=32, allow_nan=False)


@settings(max_examples=40, deadline=None)
@given(dtype=st.sampled_from([np.int8, np.int32, np.int64]), data=st.data(), fmod=st.sampled_from([0, 1]))
def test_integer_div_mod_match_onnx(dtype, data, fmod):
    shape = data.draw(small_shapes)
    lim = 100 if dtype == np.int8 else 10**6
    a = data.draw(arrays(dtype, shape, elements=st.integers(-lim, lim)))
    b = data.draw(arrays(dtype, shape, elements=st.integers(-lim, lim).filter(bool)))
    check_against_onnx("Div", [a, b])
    check_against_onnx("Mod", [a, b], {"fmod": fmod})


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_slice_matches_onnx(data):
    shape = data.draw(array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=6))
    x = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    rank = len(shape)
    axes = data.draw(st.lists(st.integers(-rank, rank - 1), min_size=1, max_size=rank,
                              unique_by=lambda a: a % rank))
    bound = st.one_of(st.integers(-8, 8), st.sampled_from([I64_MAX, I64_MIN]))
    starts = [data.draw(bound) for _ in axes]
    ends = [data.draw(bound) for _ in axes]
    steps = [data.draw(st.sampled_from([-3, -2, -1, 1, 2, 3])) for _ in axes]
    ins = [x] + [np.array(v, np.int64) for v in (starts, ends, axes, steps)]
    (got,) = ternc1("Slice", ins, const={1: 1, 2: 1, 3: 1, 4: 1})
    want = slice_by_spec(x, starts, ends, axes, steps)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def slice_by_spec(x, starts, ends, axes, steps):
    """Slice written out from the ONNX spec text, index by index. (onnx's ReferenceEvaluator uses
    numpy slicing, which clamps a too-negative start to "empty" under negative steps where the spec
    clamps it to 0; onnxruntime follows the spec: see test_slice_reference_deviation.)"""
    idx = [list(range(d)) for d in x.shape]
    for s, e, a, st in zip(starts, ends, axes, steps):
        a %= x.ndim
        d = x.shape[a]
        s, e = s + d if s < 0 else s, e + d if e < 0 else e
        if st > 0:
            s, e = min(max(s, 0), d), min(max(e, 0), d)
        else:
            s, e = min(max(s, 0), d - 1), min(max(e, -1), d - 1)
        picked, i = [], s
        while (i < e) if st > 0 else (i > e):
            picked.append(i)
            i += st
        idx[a] = picked
    return x[np.ix_(*idx)] if x.ndim > 1 else x[idx[0]]


def test_slice_reference_deviation():
    """Where onnx's ReferenceEvaluator and the spec disagree, ternc follows the spec (and onnxruntime)."""
    x = np.arange(5, dtype=np.float32)
    ins = [x, np.array([-100]), np.array([-200]), np.array([0]), np.array([-1])]
    model, feeds = one_node_model("Slice", ins, const={1: 1, 2: 1, 3: 1, 4: 1})
    assert run_ternc(model, feeds)[0].tolist() == [0.0] == slice_by_spec(x, [-100], [-200], [0], [-1]).tolist()
    ort = pytest.importorskip("onnxruntime")
    model.ir_version = min(model.ir_version, 11)  # opset 23's IR version; newer than onnxruntime knows otherwise
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert sess.run(None, feeds)[0].tolist() == [0.0]


@settings(max_examples=60, deadline=None)
@given(data=st.data(), op=st.sampled_from(["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd",
                                           "ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp"]),
       keepdims=st.sampled_from([0, 1]), noop=st.sampled_from([0, 1]))
def test_reductions_match_onnx(data, op, keepdims, noop):
    shape = data.draw(small_shapes)
    # no subnormals: squaring 1e-19 lands at FLT_MIN in float32 and flushes to 0 in some paths
    x = data.draw(arrays(np.float32, shape, elements=st.floats(-3, 3, width=32, allow_subnormal=False)
                         .filter(lambda v: v == 0 or abs(v) > 1e-12)))
    rank = len(shape)
    axes = data.draw(st.lists(st.integers(-rank, rank - 1), max_size=rank, unique_by=lambda a: a % rank))
    check_against_onnx(op, [x, np.array(axes, np.int64)], {"keepdims": keepdims, "noop_with_empty_axes": noop},
                       const={1: 1}, rtol=1e-5)


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_gather_matches_onnx(data):
    shape = data.draw(small_shapes)
    x = data.draw(arrays(np.float32, shape, elements=finite_f32))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    n = shape[axis]
    idx = data.draw(arrays(np.int64, data.draw(array_shapes(min_dims=0, max_dims=2, max_side=3)),
                           elements=st.integers(-n, n - 1)))
    check_against_onnx("Gather", [x, idx], {"axis": axis})


@settings(max_examples=40, deadline=None)
@given(x=arrays(np.float32, small_shapes, elements=finite_f32),
       to=st.sampled_from([onnx.TensorProto.INT8, onnx.TensorProto.INT32, onnx.TensorProto.INT64,
                           onnx.TensorProto.UINT8, onnx.TensorProto.BOOL, onnx.TensorProto.FLOAT16,
                           onnx.TensorProto.DOUBLE]))
def test_cast_from_float_matches_onnx(x, to):
    if to == onnx.TensorProto.UINT8:
        x = np.abs(x)  # negative -> unsigned is undefined
    check_against_onnx("Cast", [x], {"to": to})


@settings(max_examples=40, deadline=None)
@given(x=arrays(np.float32, small_shapes, elements=st.floats(-4, 4, width=32).map(lambda v: round(v * 2) / 2)))
def test_round_matches_onnx(x):
    check_against_onnx("Round", [x])


@settings(max_examples=30, deadline=None)
@given(data=st.data(), exclusive=st.sampled_from([0, 1]), reverse=st.sampled_from([0, 1]))
def test_cumsum_matches_onnx(data, exclusive, reverse):
    shape = data.draw(small_shapes)
    x = data.draw(arrays(np.int32, shape, elements=st.integers(-50, 50)))
    axis = np.array(data.draw(st.integers(-len(shape), len(shape) - 1)), np.int64)
    check_against_onnx("CumSum", [x, axis], {"exclusive": exclusive, "reverse": reverse}, const={1: 1})


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_split_uneven_matches_onnx(data):
    n = data.draw(st.integers(1, 9))
    # valid splits only: every output gets at least one element (ceil-sized chunks, last smaller)
    parts = data.draw(st.integers(1, n).filter(lambda p: -(-n // p) * (p - 1) < n))
    x = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    check_against_onnx("Split", [x], {"axis": 0, "num_outputs": parts}, n_out=parts)


@settings(max_examples=30, deadline=None)
@given(data=st.data(), largest=st.sampled_from([0, 1]), dtype=st.sampled_from([np.float32, np.int64, np.uint8]))
def test_topk_matches_onnx(data, largest, dtype):
    n = data.draw(st.integers(1, 8))
    x = data.draw(arrays(dtype, (2, n), elements=st.integers(0, 4)))  # many ties
    k = np.array([data.draw(st.integers(1, n))], np.int64)
    check_against_onnx("TopK", [x, k], {"largest": largest, "axis": 1}, n_out=2)


@pytest.mark.parametrize("op", ["Trilu"])
@pytest.mark.parametrize("upper", [0, 1])
@pytest.mark.parametrize("k", [-3, -1, 0, 2, 5])
def test_trilu_matches_onnx(op, upper, k):
    x = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    check_against_onnx(op, [x, np.array(k, np.int64)], {"upper": upper}, const={1: 1})


UNARY_FLOAT = ["Abs", "Neg", "Sqrt", "Reciprocal", "Exp", "Log", "Tanh", "Sigmoid", "Relu", "Erf", "Sin", "Cos",
               "Floor", "Ceil", "Sign", "Softplus", "Softsign", "Atan", "Sinh", "Asinh", "IsNaN", "Identity"]


@settings(max_examples=15, deadline=None)
@given(x=arrays(st.sampled_from([np.float32, np.float64, np.float16]), small_shapes,
                elements=st.floats(-20, 20, width=16)))
@pytest.mark.parametrize("op", UNARY_FLOAT)
def test_unary_matches_onnx(op, x):
    if op in ("Sqrt", "Log"):
        x = np.abs(x)
    check_against_onnx(op, [x], rtol=2e-3 if x.dtype == np.float16 else 1e-5)


BINARY = ["Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Equal", "Less", "Greater", "LessOrEqual",
          "GreaterOrEqual"]


@settings(max_examples=15, deadline=None)
@given(data=st.data(), dtype=st.sampled_from([np.float32, np.float16, np.int32, np.int64, np.uint8]))
@pytest.mark.parametrize("op", BINARY)
def test_binary_broadcast_matches_onnx(op, data, dtype):
    from hypothesis.extra.numpy import mutually_broadcastable_shapes

    shapes = data.draw(mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=4)).input_shapes
    lo, hi = (0, 5) if op == "Pow" else (1, 20) if op == "Div" else (0 if dtype == np.uint8 else -20, 20)
    a = data.draw(arrays(dtype, shapes[0], elements=st.integers(lo if op != "Pow" or dtype == np.uint8 else -4, hi)))
    b = data.draw(arrays(dtype, shapes[1], elements=st.integers(lo, hi)))
    if op == "Sub" and dtype == np.uint8:
        a, b = np.maximum(a, b), np.minimum(a, b)  # keep clear of wrap-around (the reference warns)
    if op == "Pow" and dtype == np.uint8:
        # ONNX's Pow has no uint8 base: the frontend's full check refuses the model (as onnxruntime does)
        from ternc.frontend.onnx_import import FrontendError

        with pytest.raises(FrontendError, match="Pow.*uint8"):
            check_against_onnx(op, [a, b])
        return
    check_against_onnx(op, [a, b], rtol=2e-3 if dtype == np.float16 else 1e-6)


@settings(max_examples=30, deadline=None)
@given(data=st.data(), qtype=st.sampled_from([np.uint8, np.int8, np.int16]), mode=st.sampled_from(["tensor", "axis"]))
def test_quantize_dequantize_match_onnx(data, qtype, mode):
    shape = data.draw(array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4))
    x = data.draw(arrays(np.float32, shape, elements=st.floats(-300, 300, width=32)))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    n = 1 if mode == "tensor" else shape[axis]
    scale = data.draw(arrays(np.float32, (n,) if mode == "axis" else (),
                             elements=st.sampled_from([0.5, 1.0, 2.0, 0.1, 3.0])))
    info = np.iinfo(qtype)
    zp = data.draw(arrays(qtype, scale.shape, elements=st.integers(max(info.min, -20), min(info.max, 20))))
    (q,) = check_against_onnx("QuantizeLinear", [x, scale, zp], {"axis": axis})
    check_against_onnx("DequantizeLinear", [q, scale, zp], {"axis": axis})


@settings(max_examples=30, deadline=None)
@given(data=st.data(), interleaved=st.sampled_from([0, 1]), three_d=st.booleans(), with_pos=st.booleans())
def test_rotary_embedding_matches_onnx(data, interleaved, three_d, with_pos):
    b, s, h = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 4)), data.draw(st.integers(1, 3))
    d = 2 * data.draw(st.integers(1, 4))
    rd = data.draw(st.sampled_from([0, d] + ([d - 2] if d > 2 else [])))
    half = (rd or d) // 2
    x = data.draw(arrays(np.float32, (b, s, h * d) if three_d else (b, h, s, d), elements=finite_f32))
    if with_pos:
        max_pos = s + 3
        cos = data.draw(arrays(np.float32, (max_pos, half), elements=st.floats(-1, 1, width=32)))
        sin = data.draw(arrays(np.float32, (max_pos, half), elements=st.floats(-1, 1, width=32)))
        pos = data.draw(arrays(np.int64, (b, s), elements=st.integers(0, max_pos - 1)))
        ins = [x, cos, sin, pos]
    else:
        cos = data.draw(arrays(np.float32, (b, s, half), elements=st.floats(-1, 1, width=32)))
        sin = data.draw(arrays(np.float32, (b, s, half), elements=st.floats(-1, 1, width=32)))
        ins = [x, cos, sin]
    attrs = {"interleaved": interleaved, "rotary_embedding_dim": rd}
    if three_d:
        attrs["num_heads"] = h
    check_against_onnx("RotaryEmbedding", ins, attrs, rtol=1e-5)
