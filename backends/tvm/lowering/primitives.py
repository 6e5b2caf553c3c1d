"""Elementwise, reduction, matmul/linear, normalization, RoPE and activation lowerings."""

from __future__ import annotations

from tvm import relax, te, tirx

from ....ir.ops import Op
from ....ir.types import DType
from .. import kernels
from .common import IMPLS, Lazy, _flatten_tokens, _is_int_dtype, _shape_arg, impl, tvm_dtype


_UNARY = {
    Op.Abs: relax.op.abs, Op.Neg: relax.op.negative, Op.Sqrt: relax.op.sqrt, Op.Exp: relax.op.exp,
    Op.Log: relax.op.log, Op.Tanh: relax.op.tanh, Op.Sigmoid: relax.op.sigmoid, Op.Erf: relax.op.erf,
    Op.Sin: relax.op.sin, Op.Cos: relax.op.cos, Op.Floor: relax.op.floor, Op.Ceil: relax.op.ceil,
    Op.Sign: relax.op.sign, Op.Not: relax.op.logical_not, Op.Relu: relax.op.nn.relu,
    Op.IsNaN: relax.op.isnan, Op.IsInf: relax.op.isinf, Op.Atan: relax.op.atan, Op.Asin: relax.op.asin,
    Op.Acos: relax.op.acos, Op.Tan: relax.op.tan, Op.Sinh: relax.op.sinh, Op.Cosh: relax.op.cosh,
    Op.BitwiseNot: relax.op.bitwise_not,
}


@impl(*_UNARY)
def _unary(L, node, args):
    return _UNARY[node.op](L.tensor(args[0]))


@impl(Op.Identity)
def _identity(L, node, args):
    return L.tensor(args[0])


@impl(Op.Reciprocal)
def _recip(L, node, args):
    x = L.tensor(args[0])
    return relax.op.divide(relax.const(1, L.dtype_of(x)), x)


@impl(Op.Round)
def _round(L, node, args):  # ONNX Round: half to even
    x = L.tensor(args[0])
    return L.bb.emit_te(lambda t: te.compute(t.shape, lambda *i: tirx.nearbyint(t(*i)), name="round"), x)


_BINARY = {
    Op.Add: relax.op.add, Op.Sub: relax.op.subtract, Op.Mul: relax.op.multiply, Op.Pow: relax.op.power,
    Op.Equal: relax.op.equal, Op.Less: relax.op.less, Op.Greater: relax.op.greater,
    Op.LessOrEqual: relax.op.less_equal, Op.GreaterOrEqual: relax.op.greater_equal,
    Op.And: relax.op.logical_and, Op.Or: relax.op.logical_or, Op.Xor: relax.op.logical_xor,
    Op.BitwiseAnd: relax.op.bitwise_and, Op.BitwiseOr: relax.op.bitwise_or, Op.BitwiseXor: relax.op.bitwise_xor,
}


@impl(*_BINARY)
def _binary(L, node, args):
    a, b = L.tensor(args[0]), L.tensor(args[1])
    da, db = L.dtype_of(a), L.dtype_of(b)
    if da != db and node.op in (Op.Add, Op.Sub, Op.Mul, Op.Pow):
        b = L.emit(relax.op.astype(b, da))
    return _BINARY[node.op](a, b)


@impl(Op.Div)
def _div(L, node, args):
    a, b = L.tensor(args[0]), L.tensor(args[1])
    if _is_int_dtype(L.dtype_of(a)):
        # ONNX integer Div truncates toward zero
        def f(x, y):
            return te.compute(x.shape if len(x.shape) >= len(y.shape) else y.shape,
                              lambda *i: tirx.truncdiv(x(*i[len(i) - len(x.shape):]), y(*i[len(i) - len(y.shape):])),
                              name="tdiv")
        if L.shape_of(a) != L.shape_of(b) and (L.ndim(a) and L.ndim(b)):
            raise L.err("integer Div with broadcasting is not supported")
        return L.bb.emit_te(f, a, b)
    return relax.op.divide(a, b)


@impl(Op.Max, Op.Min, Op.Sum, Op.Mean)
def _nary(L, node, args):
    f = {Op.Max: relax.op.maximum, Op.Min: relax.op.minimum, Op.Sum: relax.op.add, Op.Mean: relax.op.add}[node.op]
    ts = [L.tensor(a) for a in args if a is not None]
    r = ts[0]
    for t in ts[1:]:
        r = L.emit(f(r, t))
    if node.op == Op.Mean:
        r = relax.op.divide(r, relax.const(len(ts), L.dtype_of(ts[0])))
    return r


@impl(Op.Where)
def _where(L, node, args):
    c, a, b = (L.tensor(x) for x in args)
    return relax.op.where(c, a, b)


@impl(Op.Clip)
def _clip(L, node, args):
    x = L.tensor(args[0])
    dt = L.dtype_of(x)
    if len(args) > 1 and args[1] is not None:
        x = L.emit(relax.op.maximum(x, relax.op.astype(L.tensor(args[1]), dt)))
    if len(args) > 2 and args[2] is not None:
        x = L.emit(relax.op.minimum(x, relax.op.astype(L.tensor(args[2]), dt)))
    return x


@impl(Op.Cast)
def _cast(L, node, args):
    return relax.op.astype(L.tensor(args[0]), tvm_dtype(DType(node.attr("to"))))


@impl(Op.CastLike)
def _castlike(L, node, args):
    return relax.op.astype(L.tensor(args[0]), L.dtype_of(L.tensor(args[1])))


def _axes_arg(L, node, args, x):
    if len(args) > 1 and args[1] is not None:
        ax = [int(a) for a in _shape_arg(L, args[1])]
        return ax if ax else None
    ax = node.attr("axes")
    return list(ax) if ax is not None else None


def _reduce(f):
    def run(L, node, args):
        x = L.tensor(args[0])
        axes = _axes_arg(L, node, args, x)
        if axes is None and node.attr("noop_with_empty_axes", 0):
            return x
        return f(x, axes, bool(node.attr("keepdims", 1)))
    return run


IMPLS[Op.ReduceMean] = _reduce(lambda x, a, k: relax.op.mean(x, a, k))


IMPLS[Op.ReduceSum] = _reduce(lambda x, a, k: relax.op.sum(x, a, k))


IMPLS[Op.ReduceMax] = _reduce(lambda x, a, k: relax.op.max(x, a, k))


IMPLS[Op.ReduceMin] = _reduce(lambda x, a, k: relax.op.min(x, a, k))


IMPLS[Op.ReduceProd] = _reduce(lambda x, a, k: relax.op.prod(x, a, k))


@impl(Op.Softmax)
def _softmax(L, node, args):
    return relax.op.nn.softmax(L.tensor(args[0]), axis=node.attr("axis", -1))


@impl(Op.MatMul)
def _matmul(L, node, args):
    a = L.tensor(args[0])
    b = args[1]
    w = b.source if isinstance(b, Lazy) else None
    if w is not None and L.ndim(a) >= 2:
        y = _dense(L, a, w)  # a @ W^T without materializing W^T (tied LM heads)
        if y is not None:
            return y
    return relax.op.matmul(a, L.tensor(args[1]))


def _dense_te(x, w):
    """y[..., n] = sum_k x[..., k] * w[n, k] (torch Linear layout, no transpose materialized)."""
    kdim = x.shape[-1]
    rk = te.reduce_axis((0, kdim), name="k")
    return te.compute(list(x.shape[:-1]) + [w.shape[0]],
                      lambda *i: te.sum(x(*i[:-1], rk) * w[i[-1], rk], axis=rk), name="linear")


def _dense(L, x, w):
    """x [..., K] @ w[N, K]^T with the scheduled CPU dense kernel, or None when it does not apply."""
    ws = L.shape_of(w)
    dt, wdt = L.dtype_of(x), L.dtype_of(w)
    if not (not L.tvm_target.gpu and dt in ("float32", "float64") and wdt in (dt, "float16") and len(ws) == 2
            and all(isinstance(d, int) for d in ws) and L.shape_of(x)[-1] == ws[1]):
        return None
    n, k = ws
    dense = L.kernel("dense", (k, n, dt, wdt), lambda: kernels.dense_func(k, n, dt, wdt))
    x2, lead = _flatten_tokens(L, x)
    y = L.emit(relax.call_tir(dense, [x2, w], relax.TensorType([L.shape_of(x2)[0], n], dt)))
    return L.emit(relax.op.reshape(y, [*lead, n]))


@impl(Op.Linear)
def _linear(L, node, args):
    x, w = L.tensor(args[0]), L.tensor(args[1])
    y = _dense(L, x, w)
    if y is None:
        y = L.bb.emit_te(_dense_te, x, w, primfunc_name_hint="linear")
    if len(args) > 2 and args[2] is not None:
        y = L.emit(relax.op.add(y, L.tensor(args[2])))
    return y


@impl(Op.Gemm)
def _gemm(L, node, args):
    a, b = L.tensor(args[0]), L.tensor(args[1])
    if node.attr("transA", 0):
        a = L.emit(relax.op.permute_dims(a))
    if node.attr("transB", 0):
        b = L.emit(relax.op.permute_dims(b))
    y = L.emit(relax.op.matmul(a, b))
    alpha = node.attr("alpha", 1.0)
    dt = L.dtype_of(y)
    if alpha != 1.0:
        y = L.emit(relax.op.multiply(y, relax.const(alpha, dt)))
    if len(args) > 2 and args[2] is not None:
        c = L.tensor(args[2])
        beta = node.attr("beta", 1.0)
        if beta != 1.0:
            c = L.emit(relax.op.multiply(c, relax.const(beta, dt)))
        y = L.emit(relax.op.add(y, c))
    return y


@impl(Op.RMSNorm)
def _rmsnorm(L, node, args):
    from .ternary import fuse_rmsnorm_into_dp4a

    fused = fuse_rmsnorm_into_dp4a(L, node, args)  # CUDA decode: the norm joins the quantize kernel
    if fused is not None:
        return fused
    x, w = L.tensor(args[0]), L.tensor(args[1])
    return relax.op.nn.rms_norm(x, w, axes=[-1], epsilon=float(node.attr("eps")))


@impl(Op.LayerNorm)
def _layernorm(L, node, args):
    x, g = L.tensor(args[0]), L.tensor(args[1])
    if len(args) > 2 and args[2] is not None:
        b = L.tensor(args[2])
    else:
        b = relax.op.zeros_like(g)
    return relax.op.nn.layer_norm(x, g, L.emit(b), axes=[-1], epsilon=float(node.attr("eps")))


@impl(Op.RoPE)
def _rope(L, node, args):
    x, cos, sin = (L.tensor(a) for a in args)
    d = L.shape_of(x)[-1]
    if not isinstance(d, int) or d % 2:
        raise L.err(f"RoPE needs a static even head dim, got {d}")
    return L.bb.emit_te(_rope_te, x, cos, sin, primfunc_name_hint="rope")


def _rope_te(x, cos, sin):
    """x * cos + rotate_half(x) * sin in one elementwise kernel (cos/sin broadcast from the right;
    rotate_half(x)[..., i] = -x[..., i + d/2] for i < d/2, else x[..., i - d/2])."""
    nd, d = len(x.shape), int(x.shape[-1])
    h = d // 2

    def bidx(t, ix):
        off = nd - len(t.shape)
        return [0 if (isinstance(t.shape[i], tirx.IntImm) and int(t.shape[i]) == 1
                      and not (isinstance(x.shape[i + off], tirx.IntImm) and int(x.shape[i + off]) == 1))
                else ix[i + off] for i in range(len(t.shape))]

    def f(*ix):
        last = ix[-1]
        partner = x[(*ix[:-1], tirx.floormod(last + h, d))]  # in range for every lane, no masked read
        rot = tirx.Select(last < h, -partner, partner)
        return x[ix] * cos[tuple(bidx(cos, ix))] + rot * sin[tuple(bidx(sin, ix))]

    return te.compute(x.shape, f, name="rope")


@impl(Op.GatedAct)
def _gated(L, node, args):
    g, u = L.tensor(args[0]), L.tensor(args[1])
    act = node.attr("act")
    if act in ("silu", "relu2") and [str(d) for d in L.shape_of(g)] == [str(d) for d in L.shape_of(u)]:
        return L.bb.emit_te(_gated_te, g, u, act, primfunc_name_hint=f"gated_{act}")
    if act == "silu":
        a = L.emit(relax.op.multiply(g, L.emit(relax.op.sigmoid(g))))
    elif act == "relu2":
        r = L.emit(relax.op.nn.relu(g))
        a = L.emit(relax.op.multiply(r, r))
    elif act == "gelu_tanh":
        a = L.emit(relax.op.nn.gelu_tanh(g))
    else:
        raise L.err(f"unknown gate activation {act!r}")
    return relax.op.multiply(a, u)


def _gated_te(g, u, act: str):
    """act(g) * u in one elementwise kernel: silu(g) = g * sigmoid(g), relu2(g) = max(g, 0)^2."""
    def f(*ix):
        x = g[ix]
        if act == "silu":
            a = x * tirx.sigmoid(x)
        else:
            r = tirx.max(x, tirx.const(0, x.dtype))
            a = r * r
        return a * u[ix]

    return te.compute(g.shape, f, name=f"gated_{act}")


@impl(Op.Softplus)
def _softplus(L, node, args):
    x = L.tensor(args[0])
    return relax.op.log(L.emit(relax.op.add(L.emit(relax.op.exp(x)), relax.const(1, L.dtype_of(x)))))


@impl(Op.Gelu)
def _gelu(L, node, args):
    x = L.tensor(args[0])
    if node.attr("approximate", "none") == "tanh":
        return relax.op.nn.gelu_tanh(x)
    return relax.op.nn.gelu(x)
