"""Reference semantics of the primitive (ONNX-named) ops, and the interpreter's op registry.

Each implementation follows ONNX's latest-opset definition; onnx's own node tests check them
(tests/frontend/test_onnx_conformance.py). High-level ops live in interp.py.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import numpy as np

from .core import Node
from .ops import Op
from . import types as _types
from .types import DType

Impl = Callable[[Node, list], Sequence[np.ndarray]]
IMPLS: dict[Op, Impl] = {}


class InterpError(RuntimeError):
    pass


def impl(*ops: Op):
    def deco(fn: Impl) -> Impl:
        for op in ops:
            IMPLS[op] = fn
        return fn

    return deco


def _dt(name: str) -> np.dtype:
    return DType(name).np


# without ml_dtypes (a board with numpy only) no bf16 array can exist: f16 stands in, matching nothing new
_BF16 = DType.BF16.np if _types.ml_dtypes is not None else np.dtype(np.float16)


def _is_float(dt) -> bool:
    """True for numpy floats and ml_dtypes' bfloat16 (which np.issubdtype does not count as floating)."""
    dt = np.dtype(dt)
    return dt == _BF16 or np.issubdtype(dt, np.floating)


# ---------------------------------------------------------------- elementwise unary
def _erf(x):
    return np.vectorize(math.erf, otypes=[np.float64])(x).astype(x.dtype)


_UNARY = {
    Op.Abs: np.abs, Op.Neg: np.negative, Op.Sqrt: np.sqrt, Op.Reciprocal: np.reciprocal, Op.Exp: np.exp,
    Op.Log: np.log, Op.Tanh: np.tanh, Op.Sin: np.sin, Op.Cos: np.cos, Op.Floor: np.floor, Op.Ceil: np.ceil,
    Op.Round: np.round, Op.Sign: np.sign, Op.Not: np.logical_not, Op.IsNaN: np.isnan, Op.Identity: lambda x: x,
    Op.Erf: _erf, Op.Atan: np.arctan, Op.Asin: np.arcsin, Op.Acos: np.arccos, Op.Tan: np.tan, Op.Sinh: np.sinh,
    Op.Cosh: np.cosh, Op.Asinh: np.arcsinh, Op.Acosh: np.arccosh, Op.Atanh: np.arctanh,
    Op.BitwiseNot: np.invert,
    Op.Sigmoid: lambda x: (1.0 / (1.0 + np.exp(-x))).astype(x.dtype),
    Op.Relu: lambda x: np.maximum(x, np.zeros((), x.dtype)),
    Op.Softplus: lambda x: np.logaddexp(np.zeros((), x.dtype), x),  # log(1 + e^x) without overflow
    Op.Softsign: lambda x: (x / (1 + np.abs(x))).astype(x.dtype),
    Op.Mish: lambda x: (x * np.tanh(np.logaddexp(np.zeros((), x.dtype), x))).astype(x.dtype),
    Op.HardSwish: lambda x: (x * np.clip(x / 6 + 0.5, 0, 1)).astype(x.dtype),
}


_EXACT_UNARY = {Op.Abs, Op.Neg, Op.Floor, Op.Ceil, Op.Round, Op.Sign, Op.Not, Op.IsNaN, Op.Identity,
                Op.BitwiseNot, Op.Relu}


@impl(*_UNARY)
def _unary(node, args):
    x = args[0]
    if x.dtype in (np.float16, _BF16) and node.op not in _EXACT_UNARY:
        # Half-precision transcendental ops: compute in f32 and round once (no f16 overflow in e^x).
        y = np.asarray(_UNARY[node.op](x.astype(np.float32)))
        return [y.astype(x.dtype) if y.dtype == np.float32 else y]
    return [np.asarray(_UNARY[node.op](x))]


@impl(Op.IsInf)
def _isinf(node, args):
    x = args[0]
    pos, neg = node.attr("detect_positive", 1), node.attr("detect_negative", 1)
    return [(np.isposinf(x) & bool(pos)) | (np.isneginf(x) & bool(neg))]


@impl(Op.LeakyRelu)
def _leaky(node, args):
    x = args[0]
    return [np.where(x >= 0, x, x * np.asarray(node.attr("alpha", 0.01), x.dtype)).astype(x.dtype)]


@impl(Op.Elu)
def _elu(node, args):
    x, a = args[0], node.attr("alpha", 1.0)
    return [np.where(x > 0, x, a * (np.exp(x) - 1)).astype(x.dtype)]


@impl(Op.Celu)
def _celu(node, args):
    x, a = args[0], node.attr("alpha", 1.0)
    return [(np.maximum(0, x) + np.minimum(0, a * (np.exp(x / a) - 1))).astype(x.dtype)]


@impl(Op.Selu)
def _selu(node, args):
    x = args[0]
    a, g = node.attr("alpha", 1.67326319217681884765625), node.attr("gamma", 1.05070102214813232421875)
    return [(g * np.where(x > 0, x, a * (np.exp(x) - 1))).astype(x.dtype)]


@impl(Op.ThresholdedRelu)
def _trelu(node, args):
    x = args[0]
    return [np.where(x > node.attr("alpha", 1.0), x, 0).astype(x.dtype)]


@impl(Op.HardSigmoid)
def _hsig(node, args):
    x = args[0]
    return [np.clip(node.attr("alpha", 0.2) * x + node.attr("beta", 0.5), 0, 1).astype(x.dtype)]


@impl(Op.Gelu)
def _gelu(node, args):
    x = args[0]
    if node.attr("approximate", "none") == "tanh":
        y = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    else:
        y = 0.5 * x * (1 + _erf(x / np.sqrt(2).astype(x.dtype)))
    return [np.asarray(y).astype(x.dtype)]


# ---------------------------------------------------------------- elementwise binary
def _int_div(a, b):
    """ONNX Div: integers truncate toward zero (C semantics), exactly (no float64 round trip)."""
    if np.issubdtype(a.dtype, np.integer):
        b = b.astype(a.dtype, copy=False)
        q = np.floor_divide(a, b)
        # floor -> trunc: step back toward zero where the quotient is negative and inexact
        q = q + ((np.remainder(a, b) != 0) & ((a < 0) != (b < 0))).astype(a.dtype)
        return np.asarray(q).astype(a.dtype)
    return np.divide(a, b).astype(a.dtype)


def _pow(a, b):
    r = np.power(a.astype(np.float64) if _is_float(a.dtype) else a, b)
    return np.asarray(r).astype(a.dtype)


_BINARY = {
    Op.Add: np.add, Op.Sub: np.subtract, Op.Mul: np.multiply, Op.Div: _int_div, Op.Pow: _pow,
    Op.Equal: np.equal, Op.Less: np.less, Op.Greater: np.greater, Op.LessOrEqual: np.less_equal,
    Op.GreaterOrEqual: np.greater_equal, Op.And: np.logical_and, Op.Or: np.logical_or,
    Op.Xor: np.logical_xor, Op.BitwiseAnd: np.bitwise_and, Op.BitwiseOr: np.bitwise_or,
    Op.BitwiseXor: np.bitwise_xor,
}


@impl(*_BINARY)
def _binary(node, args):
    a, b = args
    r = np.asarray(_BINARY[node.op](a, b))
    if node.op in (Op.Add, Op.Sub, Op.Mul) and r.dtype != a.dtype:
        r = r.astype(a.dtype)
    return [r]


@impl(Op.Mod)
def _mod(node, args):
    a, b = args
    if node.attr("fmod", 0):
        return [np.fmod(a, b).astype(a.dtype)]
    return [np.mod(a, b).astype(a.dtype)]


@impl(Op.BitShift)
def _shift(node, args):
    a, b = args
    f = np.left_shift if node.attr("direction") == "LEFT" else np.right_shift
    return [f(a, b).astype(a.dtype)]


@impl(Op.PRelu)
def _prelu(node, args):
    x, s = args
    return [np.where(x < 0, x * s, x).astype(x.dtype)]


@impl(Op.Max, Op.Min, Op.Sum, Op.Mean)
def _nary(node, args):
    f = {Op.Max: np.maximum, Op.Min: np.minimum, Op.Sum: np.add, Op.Mean: np.add}[node.op]
    r = args[0]
    for a in args[1:]:
        r = f(r, a)
    if node.op == Op.Mean:
        r = r / len(args)
    return [np.asarray(r).astype(args[0].dtype)]


@impl(Op.Where)
def _where(node, args):
    c, a, b = args
    return [np.where(c, a, b)]


@impl(Op.Clip)
def _clip(node, args):
    x = args[0]
    lo = args[1] if len(args) > 1 and args[1] is not None else None
    hi = args[2] if len(args) > 2 and args[2] is not None else None
    r = x
    if lo is not None:
        r = np.maximum(r, lo)
    if hi is not None:
        r = np.minimum(r, hi)
    return [np.asarray(r).astype(x.dtype)]


@impl(Op.Cast)
def _cast(node, args):
    x, to = args[0], _dt(node.attr("to"))
    if x.dtype == object and to != np.object_:
        return [x.astype(np.float64).astype(to)]
    if to == np.object_:
        return [np.vectorize(lambda v: str(v) if not isinstance(v, float) else repr(v), otypes=[object])(x)]
    return [x.astype(to)]


@impl(Op.CastLike)
def _castlike(node, args):
    return [args[0].astype(args[1].dtype)]


# ---------------------------------------------------------------- shape / data movement
def _ints(a) -> list[int]:
    return [int(v) for v in np.asarray(a).reshape(-1)]


@impl(Op.Reshape)
def _reshape(node, args):
    x, shape = args[0], _ints(args[1])
    if not node.attr("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return [x.reshape(shape)]


@impl(Op.Transpose)
def _transpose(node, args):
    perm = node.attr("perm")
    return [np.transpose(args[0], perm if perm is not None else None)]


@impl(Op.Squeeze)
def _squeeze(node, args):
    x = args[0]
    axes = _ints(args[1]) if len(args) > 1 and args[1] is not None else None
    if axes is None:
        return [np.squeeze(x)]
    return [np.squeeze(x, axis=tuple(a % x.ndim for a in axes))]


@impl(Op.Unsqueeze)
def _unsqueeze(node, args):
    x, axes = args[0], _ints(args[1])
    rank = x.ndim + len(axes)
    return [np.expand_dims(x, tuple(sorted(a % rank for a in axes)))]


@impl(Op.Flatten)
def _flatten(node, args):
    x, axis = args[0], node.attr("axis", 1)
    axis = axis % x.ndim if x.ndim and axis < 0 else axis
    lead = int(np.prod(x.shape[:axis])) if axis else 1
    return [x.reshape(lead, -1) if x.size else x.reshape(lead, int(np.prod(x.shape[axis:])))]


@impl(Op.Concat)
def _concat(node, args):
    return [np.concatenate([a for a in args if a is not None], axis=node.attr("axis"))]


@impl(Op.Split)
def _split(node, args):
    x, axis = args[0], node.attr("axis", 0)
    n = len(node.outputs)
    if len(args) > 1 and args[1] is not None:
        idx = np.cumsum(_ints(args[1]))[:-1]
        return np.split(x, idx, axis=axis)
    size = x.shape[axis]
    chunk = -(-size // n)
    idx = [min(chunk * (i + 1), size) for i in range(n - 1)]
    return np.split(x, idx, axis=axis)


@impl(Op.Slice)
def _slice(node, args):
    x = args[0]
    starts, ends = _ints(args[1]), _ints(args[2])
    axes = _ints(args[3]) if len(args) > 3 and args[3] is not None else list(range(len(starts)))
    steps = _ints(args[4]) if len(args) > 4 and args[4] is not None else [1] * len(starts)
    sl = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        a %= x.ndim
        dim = x.shape[a]
        if st == 0:
            raise InterpError(f"{node.label}: Slice step 0")
        s = s + dim if s < 0 else s
        e = e + dim if e < 0 else e
        if st > 0:  # clamp starts and ends to [0, dim]
            s, e = max(0, min(dim, s)), max(0, min(dim, e))
        else:  # clamp starts to [0, dim-1] and ends to [-1, dim-1]; -1 means "past the front"
            s, e = max(0, min(dim - 1, s)), max(-1, min(dim - 1, e))
            if dim == 0:
                s, e = 0, 0
            elif e == -1:
                e = None
        sl[a] = slice(s, e, st)
    return [x[tuple(sl)]]


@impl(Op.Gather)
def _gather(node, args):
    x, idx = args
    axis = node.attr("axis", 0) % max(x.ndim, 1)
    idx = np.where(idx < 0, idx + x.shape[axis], idx)
    return [np.take(x, idx, axis=axis)]


@impl(Op.GatherElements)
def _gather_el(node, args):
    x, idx = args
    axis = node.attr("axis", 0) % x.ndim
    idx = np.where(idx < 0, idx + x.shape[axis], idx)
    return [np.take_along_axis(x, idx, axis=axis)]


@impl(Op.GatherND)
def _gather_nd(node, args):
    x, idx = args
    b = node.attr("batch_dims", 0)
    idx = np.asarray(idx, dtype=np.int64)
    bshape = x.shape[:b]
    nb = int(np.prod(bshape)) if b else 1
    xr = x.reshape((nb,) + x.shape[b:])
    ir = idx.reshape((nb,) + idx.shape[b:])
    m = ir.shape[-1]
    outs = []
    for i in range(nb):
        ii = ir[i].reshape(-1, m)
        data = xr[i]
        ii = np.where(ii < 0, ii + np.array(data.shape[:m]), ii)
        outs.append(data[tuple(ii.T)])
    out = np.stack(outs)
    return [out.reshape(idx.shape[:-1] + x.shape[b + m:])]


@impl(Op.ScatterND)
def _scatter_nd(node, args):
    x, idx, upd = args
    out = x.copy()
    red = node.attr("reduction", "none")
    m = idx.shape[-1]
    flat_idx = idx.reshape(-1, m)
    flat_upd = upd.reshape((flat_idx.shape[0],) + x.shape[m:])
    for i, ix in enumerate(flat_idx):
        t = tuple(int(v) for v in ix)
        if red == "add":
            out[t] += flat_upd[i]
        elif red == "mul":
            out[t] *= flat_upd[i]
        elif red == "max":
            out[t] = np.maximum(out[t], flat_upd[i])
        elif red == "min":
            out[t] = np.minimum(out[t], flat_upd[i])
        else:
            out[t] = flat_upd[i]
    return [out]


@impl(Op.ScatterElements)
def _scatter_el(node, args):
    x, idx, upd = args
    axis = node.attr("axis", 0) % x.ndim
    red = node.attr("reduction", "none")
    out = x.copy()
    idx = np.where(idx < 0, idx + x.shape[axis], idx)
    for pos in np.ndindex(*idx.shape):
        tgt = list(pos)
        tgt[axis] = int(idx[pos])
        tgt = tuple(tgt)
        u = upd[pos]
        if red == "add":
            out[tgt] += u
        elif red == "mul":
            out[tgt] *= u
        elif red == "max":
            out[tgt] = max(out[tgt], u)
        elif red == "min":
            out[tgt] = min(out[tgt], u)
        else:
            out[tgt] = u
    return [out]


@impl(Op.Expand)
def _expand(node, args):
    x, shape = args[0], tuple(_ints(args[1]))
    return [np.broadcast_to(x, np.broadcast_shapes(x.shape, shape)).copy()]


@impl(Op.Tile)
def _tile(node, args):
    return [np.tile(args[0], _ints(args[1]))]


@impl(Op.Shape)
def _shape(node, args):
    shp = np.array(args[0].shape, dtype=np.int64)
    start, end = node.attr("start", 0), node.attr("end")
    return [shp[start:end] if end is not None else shp[start:]]


@impl(Op.Size)
def _size(node, args):
    return [np.array(args[0].size, dtype=np.int64)]


@impl(Op.ConstantOfShape)
def _const_of_shape(node, args):
    dtype = _dt(node.attr("dtype", "f32"))
    return [np.full(tuple(_ints(args[0])), node.attr("value", 0.0), dtype=dtype)]


@impl(Op.Range)
def _range(node, args):
    s, l, d = (np.asarray(a).reshape(()) for a in args)
    n = max(int(math.ceil((float(l) - float(s)) / float(d))), 0)
    return [(s + np.arange(n, dtype=s.dtype) * d).astype(s.dtype)]


@impl(Op.Trilu)
def _trilu(node, args):
    x = args[0]
    k = int(np.asarray(args[1]).reshape(())) if len(args) > 1 and args[1] is not None else 0
    return [np.triu(x, k) if node.attr("upper", 1) else np.tril(x, k)]


@impl(Op.CumSum)
def _cumsum(node, args):
    x, axis = args[0], int(np.asarray(args[1]).reshape(()))
    if node.attr("reverse", 0):
        x = np.flip(x, axis)
    r = np.cumsum(x, axis=axis, dtype=x.dtype)
    if node.attr("exclusive", 0):
        r = np.concatenate([np.zeros_like(np.take(r, [0], axis=axis)), np.delete(r, -1, axis=axis)], axis=axis)
    if node.attr("reverse", 0):
        r = np.flip(r, axis)
    return [np.ascontiguousarray(r)]


@impl(Op.Pad)
def _pad(node, args):
    x, pads = args[0], _ints(args[1])
    value = args[2] if len(args) > 2 and args[2] is not None and np.asarray(args[2]).size else None
    axes = _ints(args[3]) if len(args) > 3 and args[3] is not None else list(range(x.ndim))
    axes = [a % x.ndim for a in axes]
    width = [(0, 0)] * x.ndim
    n = len(axes)
    for i, a in enumerate(axes):
        width[a] = (pads[i], pads[i + n])
    mode = node.attr("mode", "constant")
    # negative pads crop
    crop = tuple(slice(-b if b < 0 else 0, x.shape[i] + e if e < 0 else None) for i, (b, e) in enumerate(width))
    x = x[crop]
    width = [(max(b, 0), max(e, 0)) for b, e in width]
    if mode == "constant":
        cv = np.asarray(value).reshape(()).item() if value is not None else 0
        return [np.pad(x, width, mode="constant", constant_values=cv)]
    return [np.pad(x, width, mode={"reflect": "reflect", "edge": "edge", "wrap": "wrap"}[mode])]


@impl(Op.OneHot)
def _onehot(node, args):
    idx, depth, values = args
    d = int(np.asarray(depth).reshape(-1)[0])
    axis = node.attr("axis", -1)
    idx = np.where(idx < 0, idx + d, idx).astype(np.int64)
    eye = (np.arange(d) == idx[..., None])
    out = np.where(eye, values[1], values[0]).astype(values.dtype)
    if axis != -1:
        out = np.moveaxis(out, -1, axis if axis >= 0 else axis + out.ndim)
    return [out]


@impl(Op.NonZero)
def _nonzero(node, args):
    return [np.array(np.nonzero(args[0]), dtype=np.int64).reshape(args[0].ndim, -1)]


@impl(Op.TopK)
def _topk(node, args):
    x, k = args[0], int(np.asarray(args[1]).reshape(-1)[0])
    axis = node.attr("axis", -1) % x.ndim
    n = x.shape[axis]
    if node.attr("largest", 1):
        # Descending, ties keep the lower index first: stable-sort the reversed array, reverse back.
        order = (n - 1) - np.flip(np.argsort(np.flip(x, axis), axis=axis, kind="stable"), axis)
    else:
        order = np.argsort(x, axis=axis, kind="stable")
    idx = np.take(order, np.arange(k), axis=axis)
    return [np.take_along_axis(x, idx, axis=axis), idx.astype(np.int64)]


@impl(Op.DepthToSpace)
def _d2s(node, args):
    x, b = args[0], node.attr("blocksize")
    n, c, h, w = x.shape
    if node.attr("mode", "DCR") == "DCR":
        y = x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
    else:  # CRD
        y = x.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    return [y.reshape(n, c // (b * b), h * b, w * b)]


@impl(Op.SpaceToDepth)
def _s2d(node, args):
    x, b = args[0], node.attr("blocksize")
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // b, b, w // b, b)
    if node.attr("mode", "DCR") == "DCR":
        y = y.transpose(0, 3, 5, 1, 2, 4)
    else:  # CRD (opset 28)
        y = y.transpose(0, 1, 3, 5, 2, 4)
    return [y.reshape(n, c * b * b, h // b, w // b)]


@impl(Op.ReverseSequence)
def _revseq(node, args):
    x, lens = args
    baxis, taxis = node.attr("batch_axis", 1), node.attr("time_axis", 0)
    out = x.copy()
    for i, ln in enumerate(_ints(lens)):
        src = [slice(None)] * x.ndim
        src[baxis] = i
        src[taxis] = slice(0, ln)
        out[tuple(src)] = np.flip(x[tuple(src)], axis=taxis - (taxis > baxis))
    return [out]


@impl(Op.EyeLike)
def _eyelike(node, args):
    x = args[0]
    dt = _dt(node.attr("dtype")) if node.attr("dtype") else x.dtype
    return [np.eye(x.shape[0], x.shape[1], k=node.attr("k", 0), dtype=dt)]


# ---------------------------------------------------------------- reductions
def _axes(node, args, x):
    if len(args) > 1 and args[1] is not None and np.asarray(args[1]).size:
        return tuple(a % x.ndim for a in _ints(args[1]))
    return None


def _reduce(fn):
    def run(node, args):
        x = args[0]
        axes = _axes(node, args, x)
        keep = bool(node.attr("keepdims", 1))
        if axes is None and node.attr("noop_with_empty_axes", 0):
            # Reduction over no axis: the identity for the reduction itself, but composite ops keep
            # their elementwise steps (ReduceSumSquare -> x*x, ReduceLogSum -> log x, ...).
            axes = ()
        return [np.asarray(fn(x, axes, keep))]

    return run


def _red_dtype(f):
    return lambda x, a, k: f(x, axis=a, keepdims=k).astype(x.dtype)


_REDUCE = {
    Op.ReduceMean: _red_dtype(np.mean), Op.ReduceSum: _red_dtype(np.sum), Op.ReduceProd: _red_dtype(np.prod),
    Op.ReduceMax: lambda x, a, k: np.max(x, axis=a, keepdims=k, initial=_lowest(x.dtype)) if x.size == 0
    else np.max(x, axis=a, keepdims=k),
    Op.ReduceMin: lambda x, a, k: np.min(x, axis=a, keepdims=k, initial=_highest(x.dtype)) if x.size == 0
    else np.min(x, axis=a, keepdims=k),
    Op.ReduceSumSquare: lambda x, a, k: np.sum(x * x, axis=a, keepdims=k).astype(x.dtype),
    Op.ReduceL1: lambda x, a, k: np.sum(np.abs(x), axis=a, keepdims=k).astype(x.dtype),
    Op.ReduceL2: lambda x, a, k: np.sqrt(np.sum(x * x, axis=a, keepdims=k)).astype(x.dtype),
    Op.ReduceLogSum: lambda x, a, k: np.log(np.sum(x, axis=a, keepdims=k)).astype(x.dtype),
    Op.ReduceLogSumExp: lambda x, a, k: np.log(np.sum(np.exp(x.astype(np.float64)), axis=a, keepdims=k)).astype(x.dtype),
}


def _lowest(dt):
    if dt == np.bool_:
        return False
    return -np.inf if _is_float(dt) else np.iinfo(dt).min


def _highest(dt):
    if dt == np.bool_:
        return True
    return np.inf if _is_float(dt) else np.iinfo(dt).max


for _op, _fn in _REDUCE.items():
    IMPLS[_op] = _reduce(_fn)


@impl(Op.ArgMax, Op.ArgMin)
def _arg(node, args):
    x = args[0]
    axis = node.attr("axis", 0) % x.ndim
    keep = node.attr("keepdims", 1)
    f = np.argmax if node.op == Op.ArgMax else np.argmin
    if node.attr("select_last_index", 0):
        r = x.shape[axis] - 1 - f(np.flip(x, axis), axis=axis)
    else:
        r = f(x, axis=axis)
    r = r.astype(np.int64)
    return [np.expand_dims(r, axis) if keep else r]


# ---------------------------------------------------------------- linear algebra / normalisation
@impl(Op.MatMul)
def _matmul(node, args):
    a, b = args
    if a.dtype in (np.float16, _BF16):  # accumulate in f32, round once (numpy/ml_dtypes would widen bf16)
        return [np.matmul(a.astype(np.float32), b.astype(np.float32)).astype(a.dtype)]
    return [np.matmul(a, b).astype(a.dtype, copy=False)]


@impl(Op.Gemm)
def _gemm(node, args):
    a, b = args[0], args[1]
    if node.attr("transA", 0):
        a = a.T
    if node.attr("transB", 0):
        b = b.T
    y = node.attr("alpha", 1.0) * (a @ b)
    if len(args) > 2 and args[2] is not None:
        y = y + node.attr("beta", 1.0) * args[2]
    return [np.asarray(y).astype(args[0].dtype)]


@impl(Op.Einsum)
def _einsum(node, args):
    return [np.einsum(node.attr("equation"), *args)]


@impl(Op.MatMulInteger)
def _mmi(node, args):
    a, b = args[0].astype(np.int32), args[1].astype(np.int32)
    if len(args) > 2 and args[2] is not None:
        a = a - args[2].astype(np.int32)
    if len(args) > 3 and args[3] is not None:
        b = b - args[3].astype(np.int32)
    return [np.matmul(a, b).astype(np.int32)]


def _softmax(x, axis):
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - m)
    return e / np.sum(e, axis=axis, keepdims=True)


@impl(Op.Softmax)
def _softmax_op(node, args):
    return [_softmax(args[0], node.attr("axis", -1)).astype(args[0].dtype)]


@impl(Op.LogSoftmax)
def _logsoftmax(node, args):
    x, axis = args[0], node.attr("axis", -1)
    m = np.max(x, axis=axis, keepdims=True)
    return [(x - m - np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))).astype(x.dtype)]


@impl(Op.LayerNormalization)
def _layernorm_onnx(node, args):
    x, scale = args[0], args[1]
    bias = args[2] if len(args) > 2 else None
    axis = node.attr("axis", -1) % x.ndim
    axes = tuple(range(axis, x.ndim))
    xf = x.astype(np.float32)
    mean = xf.mean(axis=axes, keepdims=True)
    var = ((xf - mean) ** 2).mean(axis=axes, keepdims=True)
    inv = 1.0 / np.sqrt(var + node.attr("epsilon", 1e-5))
    y = (xf - mean) * inv * scale
    if bias is not None:
        y = y + bias
    outs = [y.astype(x.dtype), mean.astype(np.float32), inv.astype(np.float32)]
    return outs[: len(node.outputs)]


@impl(Op.RMSNormalization)
def _rmsnorm_onnx(node, args):
    x, scale = args
    axis = node.attr("axis", -1) % x.ndim
    axes = tuple(range(axis, x.ndim))
    xf = x.astype(np.float32)
    y = xf / np.sqrt((xf * xf).mean(axis=axes, keepdims=True) + node.attr("epsilon", 1e-5))
    return [(y * scale).astype(x.dtype)]


@impl(Op.RotaryEmbedding)
def _rotary_embedding(node, args):
    """ONNX RotaryEmbedding (opset 23). X is [b, heads, s, d] or [b, s, heads*d] (needs num_heads);
    caches are [max_pos, rd/2] indexed by position_ids [b, s], or [b, s, rd/2] without them."""
    x, cos, sin = args[0], args[1], args[2]
    pos = args[3] if len(args) > 3 else None
    shape = x.shape
    if x.ndim == 4:
        xs = np.transpose(x, (0, 2, 1, 3))  # -> [b, s, heads, d]
    else:
        heads = node.attr("num_heads", 0)
        if not heads:
            raise InterpError(f"{node.label}: RotaryEmbedding on a 3-D input needs num_heads")
        xs = x.reshape(shape[0], shape[1], heads, shape[2] // heads)
    rd = node.attr("rotary_embedding_dim", 0) or xs.shape[-1]
    if pos is not None:
        cos, sin = cos[pos], sin[pos]
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]  # broadcast over heads
    rot, keep = xs[..., :rd], xs[..., rd:]
    interleaved = node.attr("interleaved", 0)
    x1, x2 = (rot[..., 0::2], rot[..., 1::2]) if interleaved else (rot[..., : rd // 2], rot[..., rd // 2:])
    real = cos * x1 - sin * x2
    imag = sin * x1 + cos * x2
    if interleaved:
        rot = np.stack([real, imag], axis=-1).reshape(rot.shape)
    else:
        rot = np.concatenate([real, imag], axis=-1)
    y = np.concatenate([rot, keep], axis=-1).astype(x.dtype)
    return [np.transpose(y, (0, 2, 1, 3)) if x.ndim == 4 else y.reshape(shape)]


@impl(Op.Hardmax)
def _hardmax(node, args):
    x, axis = args[0], node.attr("axis", -1)
    y = np.zeros_like(x)
    if x.size:
        np.put_along_axis(y, np.expand_dims(np.argmax(x, axis=axis), axis), 1, axis=axis)  # first max wins
    return [y]


def _per_channel(v, ndim):
    return v.reshape((-1,) + (1,) * (ndim - 2))


def _batchnorm_apply(x, scale, bias, mean, var, eps):
    c = x.ndim
    y = _per_channel(scale, c) * (x - _per_channel(mean, c)) / np.sqrt(_per_channel(var, c) + eps) \
        + _per_channel(bias, c)
    return y.astype(x.dtype)


@impl(Op.BatchNormalization)
def _batchnorm(node, args):
    """Inference: running statistics. training_mode=1: batch statistics, plus the updated running
    mean/var (momentum-weighted) as optional outputs 2 and 3."""
    x, scale, bias, mean, var = args
    eps = node.attr("epsilon", 1e-5)
    if not node.attr("training_mode", 0):
        return [_batchnorm_apply(x, scale, bias, mean, var, eps)]
    axes = tuple(a for a in range(x.ndim) if a != 1)
    bmean, bvar = x.mean(axis=axes), x.var(axis=axes)
    m = node.attr("momentum", 0.9)
    run_mean = (mean * m + bmean * (1 - m)).astype(x.dtype)
    run_var = (var * m + bvar * (1 - m)).astype(x.dtype)
    return [_batchnorm_apply(x, scale, bias, bmean, bvar, eps), run_mean, run_var][: len(node.outputs)]


@impl(Op.InstanceNormalization)
def _instnorm(node, args):
    x, scale, bias = args
    axes = tuple(range(2, x.ndim))
    mean, var = x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True)
    y = _per_channel(scale, x.ndim) * (x - mean) / np.sqrt(var + node.attr("epsilon", 1e-5)) \
        + _per_channel(bias, x.ndim)
    return [y.astype(x.dtype)]


@impl(Op.GlobalAveragePool, Op.GlobalMaxPool)
def _global_pool(node, args):
    x = args[0]
    f = np.mean if node.op == Op.GlobalAveragePool else np.max
    return [f(x, axis=tuple(range(2, x.ndim)), keepdims=True).astype(x.dtype)]


@impl(Op.Det)
def _det(node, args):
    return [np.asarray(np.linalg.det(args[0])).astype(args[0].dtype)]


@impl(Op.Shrink)
def _shrink(node, args):
    x, lambd, bias = args[0], node.attr("lambd", 0.5), node.attr("bias", 0.0)
    return [np.where(x < -lambd, x + bias, np.where(x > lambd, x - bias, 0)).astype(x.dtype)]


@impl(Op.Compress)
def _compress(node, args):
    x, cond = args
    return [np.compress(np.asarray(cond, bool).reshape(-1), x, axis=node.attr("axis"))]


# ---------------------------------------------------------------- quantization (integer types)
_QRANGE = {np.dtype(np.uint8): (0, 255), np.dtype(np.int8): (-128, 127), np.dtype(np.uint16): (0, 65535),
           np.dtype(np.int16): (-32768, 32767)}


def _q_param(v, shape, axis, block):
    """Broadcast a scale/zero point to x's shape: scalar, per-axis (1-D along axis) or blocked."""
    v = np.asarray(v)
    if v.size == 1:
        return v.reshape(())
    if not block:
        dims = [1] * len(shape)
        dims[axis] = v.size
        return v.reshape(dims)
    return np.take(np.repeat(v, block, axis=axis), np.arange(shape[axis]), axis=axis)


@impl(Op.QuantizeLinear)
def _quantize_linear(node, args):
    """y = saturate(round_half_even(x / scale) + zero_point); output type from the zero point, else
    the output_dtype attribute, else u8."""
    x, scale = args[0], args[1]
    zp = args[2] if len(args) > 2 else None
    axis, block = node.attr("axis", 1) % max(x.ndim, 1), node.attr("block_size", 0)
    out = zp.dtype if zp is not None else _dt(node.attr("output_dtype") or "u8")
    if out not in _QRANGE:
        raise InterpError(f"{node.label}: QuantizeLinear to {out} is not supported")
    prec = node.attr("precision")
    s = _q_param(scale, x.shape, axis, block)
    q = (x.astype(_dt(prec)) / s.astype(_dt(prec))) if prec else x / s
    q = np.rint(q).astype(np.int32)
    if zp is not None:
        q = q + _q_param(zp, x.shape, axis, block).astype(np.int32)
    lo, hi = _QRANGE[out]
    return [np.clip(q, lo, hi).astype(out)]


@impl(Op.DequantizeLinear)
def _dequantize_linear(node, args):
    """y = (x - zero_point) * scale, computed in f32; output type = scale's (or output_dtype)."""
    x, scale = args[0], args[1]
    zp = args[2] if len(args) > 2 else None
    axis, block = node.attr("axis", 1) % max(x.ndim, 1), node.attr("block_size", 0)
    d = x.astype(np.float32)
    if zp is not None:
        d = d - _q_param(zp, x.shape, axis, block).astype(np.float32)
    y = d * _q_param(scale, x.shape, axis, block)
    out = _dt(node.attr("output_dtype")) if node.attr("output_dtype") else scale.dtype
    return [y.astype(out)]


@impl(Op.DynamicQuantizeLinear)
def _dyn_quantize(node, args):
    """u8 asymmetric quantization over the whole tensor, range widened to include 0."""
    x = args[0]
    hi = np.float32(max(0.0, float(np.max(x)))) if x.size else np.float32(0)
    lo = np.float32(min(0.0, float(np.min(x)))) if x.size else np.float32(0)
    scale = np.float32(1.0 if hi == lo else hi - lo) / np.float32(255)
    zp = np.rint(np.clip(np.float32(0) - lo / scale, 0, 255))
    y = np.clip(np.rint(x / scale) + zp, 0, 255)
    return [y.astype(np.uint8), np.array(scale, dtype=x.dtype), np.array(zp, dtype=np.uint8)]


@impl(Op.QLinearMatMul)
def _qlinear_matmul(node, args):
    a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp = args
    acc = np.matmul(a.astype(np.int32) - a_zp.astype(np.int32), b.astype(np.int32) - b_zp.astype(np.int32))
    y = acc * (a_scale * b_scale / y_scale) + y_zp
    lo, hi = _QRANGE[y_zp.dtype]
    return [np.clip(np.rint(y), lo, hi).astype(y_zp.dtype)]


# ---------------------------------------------------------------- ONNX Attention (opset 23)
def _masked_softmax(x):
    """Softmax over the last axis; rows that are entirely -inf give zeros instead of NaN."""
    m = np.max(x, axis=-1, keepdims=True)
    e = np.exp(x - np.where(np.isneginf(m), np.zeros((), x.dtype), m))
    s = np.sum(e, axis=-1, keepdims=True)
    return e / np.where(s == 0, np.ones((), x.dtype), s)


def _mm(a, b):
    """matmul that keeps a's dtype (f16/bf16 accumulate in f32)."""
    if a.dtype in (np.float16, _BF16):
        return np.matmul(a.astype(np.float32), b.astype(np.float32)).astype(a.dtype)
    return np.matmul(a, b).astype(a.dtype, copy=False)


@impl(Op.OnnxAttention)
def _onnx_attention(node, args):
    """ONNX Attention-23: (Q, K, V, attn_mask?, past_key?, past_value?) -> (Y, present_key,
    present_value, qk_matmul_output). Q/K/V are [b, heads, s, d], or [b, s, heads*d] with
    q_num_heads/kv_num_heads. Causal masking is aligned to the end of the past (query i sees keys
    j <= past + i); a mask shorter than the total kv length is padded as "masked"; a bool mask
    means "may attend"; GQA repeats kv heads."""
    q, k, v = args[0], args[1], args[2]
    mask, past_k, past_v = (list(args[3:6]) + [None, None, None])[:3]
    dt = q.dtype
    three_d = q.ndim == 3
    if three_d:
        hq, hkv = node.attr("q_num_heads"), node.attr("kv_num_heads")
        if not hq or not hkv:
            raise InterpError(f"{node.label}: 3-D Attention needs q_num_heads and kv_num_heads")

        def heads(t, h):
            return t.reshape(t.shape[0], t.shape[1], h, t.shape[2] // h).transpose(0, 2, 1, 3)

        q, k, v = heads(q, hq), heads(k, hkv), heads(v, hkv)
    scale = node.attr("scale")
    scale = 1 / np.sqrt(q.shape[3]) if scale is None else scale
    root = dt.type(np.sqrt(scale))  # applied to both q and k, as onnx's reference does
    if past_k is not None:
        k, v = np.concatenate([past_k, k], axis=2), np.concatenate([past_v, v], axis=2)
    present_k, present_v = k, v
    sq, skv = q.shape[2], k.shape[2]
    past = past_k.shape[2] if past_k is not None else 0

    bias = np.zeros((sq, skv), dt)
    if mask is not None and mask.shape[-1] < skv:  # short masks: the missing tail is masked out
        fill = False if mask.dtype == np.bool_ else -np.inf
        mask = np.pad(mask, [(0, 0)] * (mask.ndim - 1) + [(0, skv - mask.shape[-1])], constant_values=fill)
    if mask is not None:
        bias = bias + (np.where(mask, dt.type(0), dt.type(-np.inf)) if mask.dtype == np.bool_ else mask)
    if node.attr("is_causal", 0):
        allowed = np.arange(skv)[None, :] <= np.arange(sq)[:, None] + past
        bias = bias + np.where(allowed, dt.type(0), dt.type(-np.inf))
    bias = bias.astype(dt, copy=False)

    if q.shape[1] != k.shape[1]:
        if q.shape[1] % k.shape[1]:
            raise InterpError(f"{node.label}: {q.shape[1]} query heads is not a multiple of {k.shape[1]} kv heads")
        rep = q.shape[1] // k.shape[1]
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
    qk = _mm(q * root, np.swapaxes(k, -1, -2) * root)
    softcap = node.attr("softcap", 0.0)
    if softcap and softcap > 0:
        qk = (np.tanh(qk / dt.type(softcap)) * dt.type(softcap)).astype(dt)
    scores = qk + bias
    mode = node.attr("qk_matmul_output_mode", 0)
    qk_out = scores if mode == 2 else qk
    prec = node.attr("softmax_precision")
    probs = _masked_softmax(scores.astype(_dt(prec)) if prec else scores)
    probs = np.where(np.isneginf(np.max(bias, axis=-1, keepdims=True)), np.zeros((), probs.dtype), probs)
    if mode == 3:
        qk_out = probs
    y = _mm(probs.astype(dt), v)
    if three_d:
        y = y.transpose(0, 2, 1, 3).reshape(y.shape[0], y.shape[2], -1)
    return [y, present_k, present_v, np.asarray(qk_out).astype(dt)][: max(len(node.outputs), 1)]
