"""Shape computations at compile time (Sym values over symbolic PrimExprs) and the ops that
consume or produce shapes: Reshape, Transpose, Squeeze/Unsqueeze, Flatten, Concat, Slice, Gather,
Expand, Range, ConstantOfShape, Shape, Split."""

from __future__ import annotations

import math

import numpy as np

from tvm import relax, tirx

from ....ir.ops import Op
from ....ir.types import DType
from .common import (SYM_IMPLS, ConstRef, Lazy, Sym, _as_int, _is_int_dtype, _obj, _shape_arg, _simplify, impl,
                     sym_impl, tvm_dtype)


@sym_impl(Op.Shape)
def _s_shape(L, node, args, syms):
    x = args[0]
    if isinstance(x, Lazy) and x.shape is not None:  # known without emitting the value
        shp = list(x.shape)
    elif isinstance(x, Lazy):
        shp = L.shape_of(L.tensor(x))
    elif isinstance(x, Sym):
        shp = list(x.shape)
    elif isinstance(x, ConstRef):
        shp = list(L.const_array(x.name).shape)
    else:
        shp = L.shape_of(x)
    start, end = node.attr("start", 0), node.attr("end")
    return Sym(_obj(shp[start:end] if end is not None else shp[start:]), "int64")


@sym_impl(Op.Squeeze)
def _s_squeeze(L, node, args, syms):
    s = syms[0]
    if len(args) > 1 and args[1] is not None:
        axes = tuple(int(a) % s.vals.ndim for a in syms[1].vals.reshape(-1))
        return Sym(np.squeeze(s.vals, axis=axes), s.dtype)
    return Sym(s.vals.reshape([d for d in s.shape if d != 1]), s.dtype)


@sym_impl(Op.Unsqueeze)
def _s_unsqueeze(L, node, args, syms):
    s = syms[0]
    axes = [int(a) for a in syms[1].vals.reshape(-1)]
    rank = s.vals.ndim + len(axes)
    if rank > 1:
        return None
    return Sym(np.expand_dims(s.vals, tuple(sorted(a % rank for a in axes))), s.dtype)


@sym_impl(Op.Concat)
def _s_concat(L, node, args, syms):
    if any(s.vals.ndim != 1 for s in syms):
        return None
    return Sym(np.concatenate([s.vals for s in syms]), syms[0].dtype)


@sym_impl(Op.Gather)
def _s_gather(L, node, args, syms):
    x, idx = syms
    if x.vals.ndim != 1:
        return None
    n = x.shape[0]
    ii = np.vectorize(lambda i: int(i) % n if _as_int(i) is not None else None, otypes=[object])(idx.vals)
    if any(v is None for v in np.asarray(ii).reshape(-1)):
        return None
    return Sym(np.asarray(x.vals[np.asarray(ii, dtype=np.int64)], dtype=object), x.dtype)


@sym_impl(Op.Identity)
def _s_ident(L, node, args, syms):
    return syms[0]


@sym_impl(Op.Cast)
def _s_cast(L, node, args, syms):
    to = tvm_dtype(DType(node.attr("to")))
    if not _is_int_dtype(to):
        return None
    return Sym(syms[0].vals, to)


def _sym_binary(f):
    def run(L, node, args, syms):
        a, b = syms
        if not (_is_int_dtype(a.dtype) and _is_int_dtype(b.dtype)):
            return None
        try:
            vals = np.frompyfunc(lambda x, y: _simplify(f(x, y)), 2, 1)(a.vals, b.vals)
        except Exception:
            return None
        vals = np.asarray(vals, dtype=object)
        if vals.ndim > 1:
            return None
        return Sym(vals, a.dtype)
    return run


def _tdiv(x, y):
    xi, yi = _as_int(x), _as_int(y)
    if xi is not None and yi is not None:
        return int(math.trunc(xi / yi))
    return tirx.floordiv(x, y)  # shapes are non-negative


SYM_IMPLS[Op.Add] = _sym_binary(lambda x, y: x + y)


SYM_IMPLS[Op.Sub] = _sym_binary(lambda x, y: x - y)


SYM_IMPLS[Op.Mul] = _sym_binary(lambda x, y: x * y)


SYM_IMPLS[Op.Div] = _sym_binary(_tdiv)


def _known_equal(x, y):
    """x == y for (symbolic) shape values, or None when it cannot be told at compile time. Shape
    values are never negative, so a symbolic one differs from a negative constant (TorchScript's
    `Where(Equal(shape, -1), 1, shape)` idiom for Expand)."""
    xi, yi = _as_int(x), _as_int(y)
    if xi is not None and yi is not None:
        return xi == yi
    if (xi is not None and xi < 0) or (yi is not None and yi < 0):
        return False
    try:
        d = _as_int(_simplify(x - y))
    except Exception:
        return None
    return None if d is None else d == 0


@sym_impl(Op.Equal)
def _s_equal(L, node, args, syms):
    a, b = syms
    if a.vals.ndim > 1 or b.vals.ndim > 1 or not (_is_int_dtype(a.dtype) and _is_int_dtype(b.dtype)):
        return None
    av, bv = np.broadcast_arrays(a.vals, b.vals)
    out = [_known_equal(x, y) for x, y in zip(av.reshape(-1), bv.reshape(-1))]
    if any(v is None for v in out):
        return None
    return Sym(np.array([int(v) for v in out], dtype=object).reshape(av.shape), "bool")


@sym_impl(Op.Where)
def _s_where(L, node, args, syms):
    c, a, b = syms
    if c.dtype != "bool" or max(c.vals.ndim, a.vals.ndim, b.vals.ndim) > 1:
        return None
    cv, av, bv = np.broadcast_arrays(c.vals, a.vals, b.vals)
    if any(_as_int(v) is None for v in cv.reshape(-1)):
        return None
    vals = np.array([x if _as_int(k) else y for k, x, y in zip(cv.reshape(-1), av.reshape(-1), bv.reshape(-1))],
                    dtype=object).reshape(cv.shape)
    return Sym(vals, a.dtype)


@sym_impl(Op.ConstantOfShape)
def _s_const_of_shape(L, node, args, syms):
    shape = [_as_int(v) for v in syms[0].vals.reshape(-1)]
    dt = tvm_dtype(DType(node.attr("dtype", "f32")))
    if any(v is None for v in shape) or len(shape) > 1 or not _is_int_dtype(dt) or math.prod(shape) > 64:
        return None
    return Sym(np.array([int(node.attr("value", 0))] * math.prod(shape), dtype=object).reshape(shape), dt)


@sym_impl(Op.Reshape)
def _s_reshape(L, node, args, syms):
    x, shape = syms
    target = [_as_int(v) for v in shape.vals.reshape(-1)]
    if x.vals.ndim > 1 or len(target) > 1 or any(v is None for v in target):
        return None
    if target and target[0] not in (-1, x.vals.size, 0):
        return None
    return Sym(x.vals.reshape(-1) if target else x.vals.reshape(()), x.dtype)


@sym_impl(Op.Slice)
def _s_slice(L, node, args, syms):
    x = syms[0]
    if x.vals.ndim != 1 or any(s is None for s in syms[1:3]):
        return None
    ints = [[_as_int(v) for v in s.vals.reshape(-1)] if s is not None else None for s in syms[1:]]
    if any(v is None for part in ints if part for v in part):
        return None
    st, en = ints[0][0], ints[1][0]
    step = ints[3][0] if len(ints) > 3 and ints[3] else 1
    return Sym(x.vals[slice(st, en, step)], x.dtype)


@impl(Op.Reshape)
def _reshape(L, node, args):
    x = L.tensor(args[0])
    in_shape = L.shape_of(x)
    shape = _shape_arg(L, args[1])
    if not node.attr("allowzero", 0):
        shape = [in_shape[i] if _as_int(s) == 0 else s for i, s in enumerate(shape)]
    if any(_as_int(s) == -1 for s in shape):
        total = 1
        for d in in_shape:
            total = total * d
        known = 1
        for s in shape:
            if _as_int(s) != -1:
                known = known * s
        shape = [_simplify(tirx.floordiv(total, known)) if _as_int(s) == -1 else s for s in shape]
    return relax.op.reshape(x, [_simplify(s) for s in shape])


@impl(Op.Transpose)
def _transpose(L, node, args):
    perm = node.attr("perm")
    x = L.tensor(args[0])
    p = list(perm) if perm is not None else None
    if L.ndim(x) == 2 and (perm is None or tuple(perm) == (1, 0)):
        return Lazy(lambda: relax.op.permute_dims(x, p), source=x, shape=L.shape_of(x)[::-1])  # see _matmul
    return relax.op.permute_dims(x, p)


@impl(Op.Squeeze)
def _squeeze(L, node, args):
    x = L.tensor(args[0])
    axes = None
    if len(args) > 1 and args[1] is not None:
        axes = [int(a) for a in _shape_arg(L, args[1])]
    return relax.op.squeeze(x, axes)


@impl(Op.Unsqueeze)
def _unsqueeze(L, node, args):
    x = L.tensor(args[0])
    axes = [int(a) for a in _shape_arg(L, args[1])]
    rank = L.ndim(x) + len(axes)
    for a in sorted(a % rank for a in axes):
        x = L.emit(relax.op.expand_dims(x, a))
    return x


@impl(Op.Flatten)
def _flatten(L, node, args):
    x = L.tensor(args[0])
    shp = L.shape_of(x)
    axis = node.attr("axis", 1) % max(len(shp), 1)
    lead, rest = 1, 1
    for d in shp[:axis]:
        lead = lead * d
    for d in shp[axis:]:
        rest = rest * d
    return relax.op.reshape(x, [_simplify(lead), _simplify(rest)])


@impl(Op.Concat)
def _concat(L, node, args):
    ts = [L.tensor(a) for a in args if a is not None and not L.is_empty_const(a)]
    if len(ts) == 1:
        return ts[0]
    if all(t.same_as(ts[0]) for t in ts[1:]):
        # concat(x, x, ...) (RoPE's cat(freqs, freqs)) as a tile: a fused TIR function may not take
        # one buffer twice (TVM 0.27 FuseTIR fails on that with a RenewDefs check)
        reps = [1] * L.ndim(ts[0])
        reps[node.attr("axis") % L.ndim(ts[0])] = len(ts)
        return relax.op.tile(ts[0], reps)
    return relax.op.concat(ts, axis=node.attr("axis"))


@impl(Op.Slice)
def _slice(L, node, args):
    x = L.tensor(args[0])
    shp = L.shape_of(x)
    starts, ends = _shape_arg(L, args[1]), _shape_arg(L, args[2])
    axes = [int(a) for a in _shape_arg(L, args[3])] if len(args) > 3 and args[3] is not None else list(range(len(starts)))
    steps = _shape_arg(L, args[4]) if len(args) > 4 and args[4] is not None else [1] * len(starts)
    b, e, st, ax = [], [], [], []
    for s0, e0, a, step in zip(starts, ends, axes, steps):
        a %= len(shp)
        dim = shp[a]
        step = _as_int(step)
        if step is None or step <= 0:
            raise L.err("Slice with a negative or symbolic step is not supported")

        def norm(v, dim=dim):
            vi = _as_int(v)
            if vi is not None and vi < 0:
                v = dim + vi
            elif vi is not None and vi >= 2 ** 62:
                return dim
            return _simplify(tirx.max(tirx.min(tirx.IntImm("int64", v) if isinstance(v, int) else v, dim), 0)
                             if not isinstance(dim, int) or not isinstance(v, int) else max(0, min(v, dim)))

        b.append(norm(s0))
        e.append(norm(e0))
        st.append(step)
        ax.append(a)
    y = L.emit(relax.op.strided_slice(x, ax, b, e, st, assume_inbound=True))
    # A declared static result (e.g. "the last token": [1, 1, H] from seq) is a contract of the IR;
    # Relax would carry min(1, seq), which GPU schedules cannot allocate. Checked at run time.
    declared = node.outputs[0].type.shape if node.outputs[0].type is not None else None
    got = L.shape_of(y)
    if (declared is not None and len(declared) == len(got) and all(isinstance(d, int) for d in declared)
            and any(_as_int(g) is None for g in got)):
        y = L.bb.match_cast(y, relax.TensorType(list(declared), L.dtype_of(y)))
    return y


@impl(Op.Split)
def _split(L, node, args):
    """ONNX Split: sizes from the `split` input, else len(outputs) chunks of ceil(dim / n) (the last
    ones shorter or empty), each a strided_slice over a static or symbolic dimension."""
    x = L.tensor(args[0])
    shp = L.shape_of(x)
    axis = node.attr("axis", 0) % max(len(shp), 1)
    dim, n = shp[axis], len(node.outputs)
    if len(args) > 1 and args[1] is not None:
        sizes = _shape_arg(L, args[1])
        if len(sizes) != n:
            raise L.err(f"Split has {len(sizes)} sizes for {n} outputs")
        ends, end = [], 0
        for size in sizes:
            end = _simplify(end + size)
            ends.append(end)
    else:
        chunk = -(-dim // n) if isinstance(dim, int) else _simplify(tirx.floordiv(dim + (n - 1), n))
        ends = [_dim_end(chunk * (i + 1), dim) for i in range(n - 1)] + [dim]
    outs, begin = [], 0
    for end in ends:
        outs.append(L.emit(relax.op.strided_slice(x, [axis], [begin], [end], [1], assume_inbound=True)))
        begin = end
    return outs


def _dim_end(end, dim):
    """min(end, dim) for static or symbolic values."""
    if isinstance(end, int) and isinstance(dim, int):
        return min(end, dim)
    return _simplify(tirx.min(end, dim))


@impl(Op.Gather)
def _gather(L, node, args):
    x, idx = L.tensor(args[0]), L.tensor(args[1])
    axis = node.attr("axis", 0) % max(L.ndim(x), 1)
    return relax.op.take(x, idx, axis=axis, mode="wrap")


@impl(Op.Expand)
def _expand(L, node, args):
    x = L.tensor(args[0])
    xs = L.shape_of(x)
    ts = _shape_arg(L, args[1])
    n = max(len(xs), len(ts))
    xs = [1] * (n - len(xs)) + list(xs)
    ts = [1] * (n - len(ts)) + list(ts)
    out = [t if _as_int(x_) == 1 else x_ for x_, t in zip(xs, ts)]
    return relax.op.broadcast_to(x, out)


@impl(Op.Range)
def _range(L, node, args):
    s, l, d = (L.sym(a) for a in args)
    declared = node.outputs[0].type.shape if node.outputs[0].type is not None else None
    if (s is None or l is None) and d is not None and declared is not None and len(declared) == 1 \
            and declared[0] != "?":
        # a start known only at run time (e.g. the position counter evict-kv carries) with the
        # length the IR declares: start + arange(len) * delta
        dt = d.dtype
        dv = _simplify(d.vals.reshape(-1)[0])
        if _as_int(dv) is None:
            raise L.err("Range with a run-time start needs a constant delta")
        start = L.tensor(args[0])
        if L.dtype_of(start) != dt:
            start = L.emit(relax.op.astype(start, dt))
        if L.ndim(start) != 0:
            start = L.emit(relax.op.reshape(start, []))
        steps = L.emit(relax.op.arange(0, L.dim(declared[0]), 1, dtype=dt))
        if _as_int(dv) != 1:
            steps = L.emit(relax.op.multiply(steps, relax.const(_as_int(dv), dt)))
        return relax.op.add(steps, start)
    if s is None or l is None or d is None:
        raise L.err("Range operands must be compile-time (symbolic) scalars")
    dt = s.dtype
    sv, lv, dv = (_simplify(v.vals.reshape(-1)[0]) for v in (s, l, d))
    return relax.op.arange(sv, lv, dv, dtype=dt)


@impl(Op.ConstantOfShape)
def _const_of_shape(L, node, args):
    shape = _shape_arg(L, args[0])
    dt = tvm_dtype(DType(node.attr("dtype", "f32")))
    return relax.op.full(shape, relax.const(node.attr("value", 0.0), dt), dt)


@impl(Op.Shape)
def _shape_tensor(L, node, args):
    return L.tensor(_s_shape(L, node, args, None))
