"""Lower ternc IR functions to a TVM IRModule (Relax + TensorIR) through TVM's Python APIs.

Each IR Function becomes one Relax function built with `relax.BlockBuilder`:

  * parameters: the function's inputs (symbolic dims such as `seq`/`past` become `tirx.Var`s shared
    by the whole function), then the module constants it uses as tensors ("weights", passed at run
    time from the artifact's safetensors; constants of <= INLINE_MAX elements are inlined);
  * shape computations (Shape, Squeeze, Gather on shapes, Add on scalars, Cast, Concat, ...) are
    evaluated at compile time over symbolic PrimExprs (`Sym` values): they feed Reshape, Range,
    Expand, Slice as symbolic shapes and never reach the device;
  * standard ops map to `relax.op.*`; Attention (GQA, bottom-right causal, optional past) is built
    from Relax ops plus one TE masking stage; the ternary ops call the TensorIR kernels of
    `kernels.py` (quantize -> packed-weight matmul with exact int32 accumulators -> dequantize).

An op with no lowering raises `LoweringError` naming the node.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import tvm
import tvm.sym
from tvm import relax, te, tirx

from ...ir import semantics
from ...ir.core import Function, Module, Node
from ...ir.ops import Op
from ...ir.types import DType, TensorType
from . import kernels
from .target import CAPABILITIES, tvm_target

INLINE_MAX = 64  # constants with at most this many elements are embedded in the compiled module

_TVM_DTYPE = {
    DType.F64: "float64", DType.F32: "float32", DType.F16: "float16", DType.BF16: "bfloat16",
    DType.I64: "int64", DType.I32: "int32", DType.I16: "int16", DType.I8: "int8",
    DType.U64: "uint64", DType.U32: "uint32", DType.U16: "uint16", DType.U8: "uint8",
    DType.BOOL: "bool", DType.T2: "int8", DType.I4: "int8", DType.U4: "uint8", DType.U2: "uint8",
}


class LoweringError(RuntimeError):
    pass


def tvm_dtype(dt: DType) -> str:
    try:
        return _TVM_DTYPE[dt]
    except KeyError:
        raise LoweringError(f"dtype {dt.value} has no TVM equivalent") from None


def np_dtype_of(tvm_dt: str) -> np.dtype:
    if tvm_dt == "bfloat16":
        return DType.BF16.np
    return np.dtype(tvm_dt)


@dataclass
class Sym:
    """A small integer tensor known at compile time as (symbolic) PrimExprs: shape arithmetic."""

    vals: np.ndarray  # object array of PrimExpr / int
    dtype: str

    @property
    def shape(self):
        return self.vals.shape


class Lazy:
    """A value emitted only if something reads it as a tensor (e.g. W^T of a tied LM head, which
    MatMul consumes as a dense kernel on W without materializing the transpose)."""

    def __init__(self, make, source=None, shape=None):
        self.make = make
        self.source = source
        self.shape = shape
        self.var = None


@dataclass
class EntrySignature:
    """How to call one lowered entry point."""

    name: str
    inputs: list[dict]  # {"name", "dtype", "shape"} (shape dims: int or symbol name)
    weights: list[str]  # module constant names, passed after the inputs in this order
    outputs: list[dict]  # {"name", "dtype"}

    def to_json(self) -> dict:
        return {"inputs": self.inputs, "weights": self.weights, "outputs": self.outputs}


@dataclass
class Lowered:
    mod: tvm.IRModule
    entries: dict[str, EntrySignature]
    weights: list[str]  # union over entries
    kernel_choices: list[dict] = field(default_factory=list)
    # weights passed in another storage dtype/shape than the IR constant (a byte view): name -> (dtype, shape)
    weight_storage: dict = field(default_factory=dict)

    def weight_array(self, module: Module, name: str) -> np.ndarray:
        """The array to pass for weight `name`: the constant, viewed as the kernels take it."""
        from .runtime import storage_view

        a = np.ascontiguousarray(module.constants[name].data)
        return storage_view(a, *self.weight_storage[name]) if name in self.weight_storage else a


def _is_int_dtype(dt: str) -> bool:
    return dt.startswith("int") or dt.startswith("uint")


def _simplify(e):
    """Simplify a PrimExpr; constants come back as Python ints."""
    if isinstance(e, (int, np.integer)):
        return int(e)
    e = _ANALYZER.simplify(e)
    if isinstance(e, tirx.IntImm):
        return int(e.value)
    return e


_ANALYZER = tvm.sym.Analyzer()


def _as_int(e) -> int | None:
    e = _simplify(e)
    return e if isinstance(e, int) else None


class FunctionLowerer:
    def __init__(self, module: Module, fn: Function, bb: relax.BlockBuilder, target_kind,
                 kernel_policy: str, kernel_log: list, kernel_cache: dict, target=None,
                 fixed_dims: dict | None = None):
        self.target = target
        self.module = module
        self.fn = fn
        self.bb = bb
        self.tvm_target = tvm_target(target_kind)
        self.kernel_policy = kernel_policy
        self.kernel_log = kernel_log
        self.kernel_cache = kernel_cache  # (fmt, k, n, kind) -> GlobalVar, shared across functions
        self.syms: dict[str, Any] = dict(fixed_dims or {})  # symbol -> tirx.Var, or an int it is fixed to
        self.env: dict[str, Any] = {}
        self.weight_vars: dict[str, relax.Var] = {}
        self.memo: dict = {}  # per-function reuse of emitted values (shared activation quantization)
        self.node: Node | None = None
        self.types = fn.value_types()
        self._fresh = 0
        # decode-like functions (one token) pick GEMV-style kernels; see _tokens_hint
        self.tokens_hint = 1 if fn.name == (module.meta.get("decoder") or {}).get("decode") else 32

    # ------------------------------------------------------------------ helpers
    def err(self, msg: str) -> LoweringError:
        where = f"@{self.fn.name}, node {self.node.label}" if self.node else f"@{self.fn.name}"
        return LoweringError(f"{where}: {msg}")

    def dim(self, d):
        if isinstance(d, int):
            return d
        if d == "?":
            self._fresh += 1
            return tirx.Var(f"d{self._fresh}", "int64")
        if d not in self.syms:
            self.syms[d] = tirx.Var(d, "int64")
        return self.syms[d]

    def emit(self, expr, name: str = ""):
        return self.bb.emit(expr, name_hint=name.replace(".", "_") if name else "")

    def shape_of(self, x) -> list:
        shp = x.ty.shape if hasattr(x, "ty") else None
        if shp is None or not hasattr(shp, "values"):
            raise self.err(f"shape of operand unknown to the lowering ({x.ty})")
        return [_simplify(v) for v in shp.values]

    def dtype_of(self, x) -> str:
        return str(x.ty.dtype)

    def ndim(self, x) -> int:
        return int(x.ty.ndim)

    # ------------------------------------------------------------------ values
    def get(self, name: str):
        if name in self.env:
            return self.env[name]
        c = self.module.constants.get(name)
        if c is None:
            raise self.err(f"value %{name} is undefined")
        return ("const", name)

    def const_array(self, name: str) -> np.ndarray:
        c = self.module.constants[name]
        if c.data is None:
            raise self.err(f"constant @{name} has no data")
        return np.asarray(c.data)

    def sym(self, v) -> Sym | None:
        """The compile-time value of an operand, if it is one (small int constant or Sym)."""
        if isinstance(v, Sym):
            return v
        if isinstance(v, tuple) and v[0] == "const":
            a = self.const_array(v[1])
            if a.size <= INLINE_MAX and a.dtype.kind in "iub":
                return Sym(np.array([int(x) for x in a.reshape(-1)], dtype=object).reshape(a.shape),
                           str(a.dtype) if a.dtype.kind != "b" else "bool")
        return None

    def tensor(self, v):
        """A Relax expression for an operand."""
        if isinstance(v, Lazy):
            if v.var is None:
                v.var = self.emit(v.make())
            return v.var
        if isinstance(v, Sym):
            flat = [_simplify(x) for x in v.vals.reshape(-1)]
            if all(isinstance(x, int) for x in flat):
                return relax.const(np.array(flat, dtype=np_dtype_of(v.dtype)).reshape(v.shape), v.dtype)
            t = self.emit(relax.op.shape_to_tensor(relax.ShapeExpr(flat)))
            if v.dtype != "int64":
                t = self.emit(relax.op.astype(t, v.dtype))
            if v.vals.ndim != 1:
                t = self.emit(relax.op.reshape(t, list(v.shape)))
            return t
        if isinstance(v, tuple) and v[0] == "const":
            name = v[1]
            a = self.const_array(name)
            if a.size <= INLINE_MAX:
                return relax.const(a, str(a.dtype) if a.dtype != DType.BF16.np else "bfloat16")
            var = self._weight_var(name)
            if name in self.kernel_cache.get("__weight_storage__", {}):  # stored as a byte view: view back
                key = ("__raw_view__", self.fn.name, name)
                if key not in self.kernel_cache:
                    self.kernel_cache[key] = self.emit(relax.op.memory.view(
                        var, list(a.shape), tvm_dtype(self.module.constants[name].type.dtype)))
                return self.kernel_cache[key]
            return var
        return v

    def weight_as(self, v, dtype: str, shape: list):
        """The weight `v` as the parameter of its storage view (dtype, shape) when lower_module decided
        to store it that way (Lowered.weight_storage), else None."""
        if not (isinstance(v, tuple) and v[0] == "const"):
            return None
        if self.kernel_cache.get("__weight_storage__", {}).get(v[1]) != (dtype, tuple(shape)):
            return None
        return self._weight_var(v[1])

    def _weight_var(self, name: str):
        if name not in self.weight_vars:
            view = self.kernel_cache.get("__weight_storage__", {}).get(name)
            if view is not None:
                ty = relax.TensorType(list(view[1]), view[0])
            else:
                a = self.const_array(name)
                ty = relax.TensorType(list(a.shape), tvm_dtype(self.module.constants[name].type.dtype))
            self.weight_vars[name] = relax.Var(name.replace(".", "_"), ty)
        return self.weight_vars[name]

    def is_empty_const(self, v) -> bool:
        return isinstance(v, tuple) and v[0] == "const" and self.const_array(v[1]).size == 0

    # ------------------------------------------------------------------ driver
    def lower(self) -> tuple[relax.Function, EntrySignature]:
        fn = self.fn
        params = []
        sig_inputs = []
        for p in fn.params:
            if p.type.shape is None:
                raise LoweringError(f"@{fn.name}: input %{p.name} has unknown rank")
            shape = [self.dim(d) for d in p.type.shape]
            dt = tvm_dtype(p.type.dtype)
            var = relax.Var(p.name.replace(".", "_"), relax.TensorType(shape, dt))
            params.append(var)
            self.env[p.name] = var
            sig_inputs.append({"name": p.name, "dtype": dt,
                               "shape": [self.syms[d] if isinstance(self.syms.get(d), int) else d for d in p.type.shape]})
        with self.bb.function(fn.name):
            with self.bb.dataflow():
                for node in fn.nodes:
                    self.node = node
                    self.lower_node(node)
                self.node = None
                outs, sig_outputs = [], []
                for r in fn.results:
                    v = self.tensor(self.get(r))
                    if not isinstance(v, relax.Var):
                        v = self.emit(v)
                    outs.append(v)
                    sig_outputs.append({"name": r, "dtype": self.dtype_of(v)})
                gv = self.bb.emit_output(relax.Tuple(outs))
            weights = list(self.weight_vars)
            self.bb.emit_func_output(gv, params=params + [self.weight_vars[w] for w in weights])
        return EntrySignature(fn.name, sig_inputs, weights, sig_outputs)

    def lower_node(self, node: Node):
        args = [self.get(i) if i else None for i in node.inputs]
        # compile-time shape arithmetic first
        if node.op in SYM_IMPLS and len(node.outputs) == 1:
            syms = [self.sym(a) if a is not None else None for a in args]
            ok = all(s is not None for s, a in zip(syms, args) if a is not None)
            if node.op == Op.Shape:
                ok = True
            if ok:
                res = SYM_IMPLS[node.op](self, node, args, syms)
                if res is not None:
                    self.env[node.outputs[0].name] = res
                    return
        impl = IMPLS.get(node.op)
        if impl is None:
            raise self.err(f"the TVM backend has no lowering for op {node.op.value}")
        try:
            outs = impl(self, node, args)
        except LoweringError:
            raise
        except Exception as e:  # TVM errors: name the node
            raise self.err(f"{type(e).__name__}: {e}") from e
        if not isinstance(outs, (list, tuple)):
            outs = [outs]
        for o, val in zip(node.outputs, outs):
            if val is not None and not isinstance(val, (Sym, relax.Var, Lazy)):
                val = self.emit(val, o.name)
            self.env[o.name] = val


# ====================================================================== compile-time (Sym) ops
SYM_IMPLS: dict = {}


def sym_impl(*ops):
    def deco(f):
        for op in ops:
            SYM_IMPLS[op] = f
        return f
    return deco


def _obj(vals) -> np.ndarray:
    a = np.empty(len(vals), dtype=object)
    for i, v in enumerate(vals):
        a[i] = v
    return a


@sym_impl(Op.Shape)
def _s_shape(L, node, args, syms):
    x = args[0]
    if isinstance(x, Lazy):
        x = x.shape if x.shape is not None else L.tensor(x)
    if isinstance(x, Sym):
        shp = list(x.shape)
    elif isinstance(x, tuple):
        shp = list(L.const_array(x[1]).shape)
    elif isinstance(x, list):
        shp = x
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


# ====================================================================== tensor ops
IMPLS: dict = {}


def impl(*ops):
    def deco(f):
        for op in ops:
            IMPLS[op] = f
        return f
    return deco


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


def _shape_arg(L, v) -> list:
    s = L.sym(v)
    if s is None:
        raise L.err("shape operand is not known at compile time (data-dependent shapes are not supported)")
    return [_simplify(x) for x in s.vals.reshape(-1)]


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
    key = ("dense", k, n, dt, wdt)
    if key not in L.kernel_cache:
        L.kernel_cache[key] = L.bb.add_func(kernels.dense_func(k, n, dt, wdt), f"ternc_dense_k{k}_n{n}_{wdt}")
    x2, lead = _flatten_tokens(L, x)
    y = L.emit(relax.call_tir(L.kernel_cache[key], [x2, w], relax.TensorType([L.shape_of(x2)[0], n], dt)))
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


def _causal_mask_te(s, scale: float, causal: bool):
    """scores * scale, with -inf where key j is after query i's absolute position (bottom-right)."""
    sq, sk = s.shape[2], s.shape[3]
    sc = tirx.const(scale, "float32")
    ninf = tirx.const(float("-inf"), "float32")
    if not causal:
        return te.compute(s.shape, lambda b, h, i, j: s[b, h, i, j] * sc, name="attn_scale")
    return te.compute(s.shape, lambda b, h, i, j: tirx.Select(j <= i + (sk - sq), s[b, h, i, j] * sc, ninf),
                      name="attn_mask")


def _fp16_directed(x, up: bool):
    """The fp16 value nearest to f32 `x` that is >= x (up) or <= x, as f32 (kvquant._round_to_fp16):
    round to nearest even, then one fp16 step toward the bound if that overshot."""
    h = x.astype("float16")
    hf = h.astype("float32")
    bits = tirx.reinterpret("uint16", h).astype("int32")
    neg = tirx.bitwise_and(bits, tirx.const(0x8000, "int32")) != 0
    if up:  # scales are >= 0: the next fp16 above a non-negative h is bits + 1
        fix = tirx.Select(neg, bits - 1, bits + 1)
        bad = hf < x
    else:  # next fp16 below: magnitude + 1 for negatives (incl. -0), - 1 for positives
        fix = tirx.Select(neg, bits + 1, bits - 1)
        bad = hf > x
    stepped = tirx.reinterpret("float16", fix.astype("uint16")).astype("float32")
    return tirx.Select(bad, stepped, hf)


def _i64(v):
    return tirx.IntImm("int64", v) if isinstance(v, int) else v.astype("int64")


def _kv_span(n, n_past, cfg: dict):
    """(start, lo, hi) for a cache of n tokens after n_past: the sinks end at start, and rows
    [lo, hi) join the quantized span in this call (kvquant.quantized_span of n_past and n)."""
    grp, resid, sinks = cfg["group_size"], cfg["residual"], cfg["sinks"]

    def stop(m):
        start = tirx.min(_i64(m), _i64(sinks))
        return start + tirx.max(_i64(0), tirx.floordiv(_i64(m) - start - _i64(resid), _i64(grp))) * _i64(grp)

    start_n = tirx.min(_i64(n), _i64(sinks))
    return start_n, tirx.max(stop(n_past), start_n), stop(n)


def _kv_span_select_te(y, x, n_past, cfg: dict):
    """Rows of y where they join the quantized span in this call, else x."""
    _, lo, hi = _kv_span(x.shape[2], n_past, cfg)
    return te.compute(x.shape, lambda bb, hh, t, c: tirx.Select(tirx.all(t >= lo, t < hi), y[bb, hh, t, c],
                                                                 x[bb, hh, t, c]), name="kv_span_select")


def _kv_fake_quant_te(x, n_past, cfg: dict, keys: bool):
    """ir/kvquant.py's KIVI quantize-dequantize of the rows [lo, stop(n)) of a cache x [b, h, n, d]
    that join the quantized span in this call (lo = max(stop(n_past), sinks)); other rows pass
    through. Keys: statistics per channel over each group of `group_size` tokens; values: per
    token over groups of min(group_size, d) channels. zero = min rounded down to fp16, scale =
    (max - zero) / qmax rounded up to fp16 (+ one fp16 step if zero + qmax * scale < max), codes
    round half to even, x_hat = code * scale + zero (f32)."""
    b, h, n, d = x.shape
    bits, grp = cfg["bits"], cfg["group_size"]
    qmax = float((1 << bits) - 1)
    i64 = _i64
    start_n, lo, hi = _kv_span(n, n_past, cfg)
    vg = min(grp, int(d))
    r = te.reduce_axis((0, grp if keys else vg), name="r")

    def member(bb, hh, t, c, rr):
        if keys:  # the token group holding t (aligned at the sinks), same channel
            t0 = start_n + tirx.floordiv(t - start_n, i64(grp)) * i64(grp)
            return x[bb, hh, tirx.min(t0 + rr, n - 1), c]
        return x[bb, hh, t, tirx.floordiv(c, vg) * vg + rr]  # the channel group holding c, same token

    mn = te.compute(x.shape, lambda bb, hh, t, c: te.min(member(bb, hh, t, c, r), axis=r), name="kvq_min")
    r2 = te.reduce_axis((0, grp if keys else vg), name="r2")
    mx = te.compute(x.shape, lambda bb, hh, t, c: te.max(member(bb, hh, t, c, r2), axis=r2), name="kvq_max")

    def fq(bb, hh, t, c):
        xv = x[bb, hh, t, c]
        zero = _fp16_directed(mn[bb, hh, t, c], up=False)
        top = mx[bb, hh, t, c]
        scale = _fp16_directed((top - zero) / tirx.const(qmax, "float32"), up=True)
        short = zero + tirx.const(qmax, "float32") * scale < top
        bump = tirx.reinterpret("float16", (tirx.reinterpret("uint16", scale.astype("float16")).astype("int32")
                                            + 1).astype("uint16")).astype("float32")
        scale = tirx.Select(short, bump, scale)
        q = tirx.Select(scale > tirx.const(0.0, "float32"), (xv - zero) / scale, tirx.const(0.0, "float32"))
        code = tirx.min(tirx.max(tirx.nearbyint(q), tirx.const(0.0, "float32")), tirx.const(qmax, "float32"))
        xhat = code * scale + zero
        return tirx.Select(tirx.all(t >= lo, t < hi), xhat, xv)

    return te.compute(x.shape, fq, name="kv_fake_quant")


@impl(Op.KVEvict)
def _kv_evict(L, node, args):
    """policy=streaming: attention over past + new, then the cache keeps the first `sinks` and the
    most recent budget - sinks tokens (kvevict.streaming_keep) as two slices."""
    out, k_all, v_all, p = _attend(L, node, args)
    if node.attr("policy") == "h2o":
        return _h2o_evict(L, node, args, out, k_all, v_all, p)
    sinks, window = int(node.attr("sinks", 0)), int(node.attr("budget", 0)) - int(node.attr("sinks", 0))

    def keep(t):
        n = L.shape_of(t)[2]
        a = _dim_min(n, sinks)
        b = max(a, n - window) if isinstance(n, int) else _simplify(tirx.max(a, n - window))
        head = L.emit(relax.op.strided_slice(t, [2], [0], [a], assume_inbound=True))
        tail = L.emit(relax.op.strided_slice(t, [2], [b], [n], assume_inbound=True))
        return L.emit(relax.op.concat([head, tail], axis=2))

    return [out, keep(k_all), keep(v_all)]


def _dim_min(n, m: int):
    """min(n, m) for a static or symbolic dimension n."""
    return min(n, m) if isinstance(n, int) else _simplify(tirx.min(n, tirx.IntImm("int64", m)))


def _h2o_evict(L, node, args, out, k_all, v_all, p):
    """policy=h2o (ir/interp.py): acc = state (zeros for new tokens) + this call's attention
    probabilities summed over each GQA group and the query rows; keep per KV head the `sinks` first,
    `recent` newest and highest-acc others, budget in all (ties -> lower index), ascending ->
    (out, K, V, acc) gathered at the kept indices. Ranking and compaction are O(n^2) per head."""
    b, hq, sq, n = L.shape_of(p)
    hkv = L.shape_of(k_all)[1]
    state = L.tensor(args[5]) if len(args) > 5 and args[5] is not None else None
    budget, recent, sinks = int(node.attr("budget")), int(node.attr("recent")), int(node.attr("sinks", 0))
    kk = _dim_min(n, budget)
    acc = L.bb.emit_te(_h2o_acc_te, p, state, hq // hkv, primfunc_name_hint="h2o_accumulate")
    sel = L.bb.emit_te(_h2o_select_te, acc, kk, budget, recent, sinks, primfunc_name_hint="h2o_select")
    gk = L.bb.emit_te(_gather_tokens_te, k_all, sel, primfunc_name_hint="h2o_gather")
    gv = L.bb.emit_te(_gather_tokens_te, v_all, sel, primfunc_name_hint="h2o_gather")
    ga = L.bb.emit_te(lambda a, ix: te.compute(ix.shape, lambda bb, h, o: a[bb, h, ix[bb, h, o]], name="h2o_acc_keep"),
                      acc, sel, primfunc_name_hint="h2o_gather_acc")
    return [out, gk, gv, ga]


def _h2o_acc_te(p, state, group: int):
    """acc[b, g, j] = sum_i sum_(q heads of group g) p[b, q, i, j] (+ state[b, g, j] for old tokens)."""
    b, hq, sq, n = p.shape
    rg = te.reduce_axis((0, group), name="rg")
    grouped = te.compute((b, hq // group, sq, n), lambda bb, g, i, j: te.sum(p[bb, g * group + rg, i, j], axis=rg),
                         name="h2o_group")
    ri = te.reduce_axis((0, sq), name="ri")
    fresh = te.compute((b, hq // group, n), lambda bb, g, j: te.sum(grouped[bb, g, ri, j], axis=ri), name="h2o_fresh")
    if state is None:
        return fresh
    n_old = state.shape[2]
    return te.compute(fresh.shape, lambda bb, g, j: fresh[bb, g, j] + tirx.Select(
        j < n_old, state[bb, g, tirx.min(j, n_old - 1)], tirx.const(0.0, "float32")), name="h2o_acc")


def _h2o_select_te(acc, kk, budget: int, recent: int, sinks: int):
    """Ascending indices [b, g, kk] of the kept tokens (kvevict.h2o_keep): forced (first `sinks`,
    last `recent`) rank above all, then by acc descending, ties to the lower index; when n <= budget
    all are kept (kk = n)."""
    b, g, n = acc.shape
    inf = tirx.const(float("inf"), "float32")

    def score(bb, h, j):
        forced = tirx.any(j < sinks, j >= n - recent)
        return tirx.Select(forced, inf, acc[bb, h, j])

    ri = te.reduce_axis((0, n), name="ri")
    rank = te.compute(acc.shape, lambda bb, h, j: te.sum(tirx.Select(tirx.any(
        score(bb, h, ri) > score(bb, h, j), tirx.all(score(bb, h, ri) == score(bb, h, j), ri < j)),
        tirx.const(1, "int64"), tirx.const(0, "int64")), axis=ri), name="h2o_rank")
    rp = te.reduce_axis((0, n), name="rp")
    before = te.compute(acc.shape, lambda bb, h, j: te.sum(tirx.Select(tirx.all(rp < j, rank[bb, h, rp] < kk),
                                                                     tirx.const(1, "int64"), tirx.const(0, "int64")),
                                                          axis=rp), name="h2o_prefix")
    rs = te.reduce_axis((0, n), name="rs")
    return te.compute((b, g, kk), lambda bb, h, o: te.sum(tirx.Select(
        tirx.all(rank[bb, h, rs] < kk, before[bb, h, rs] == o.astype("int64")), rs.astype("int64"),
        tirx.const(0, "int64")), axis=rs), name="h2o_keep")


def _gather_tokens_te(x, sel):
    """x[b, h, sel[b, h, o], :] -> [b, h, kk, d]."""
    b, h, kk = sel.shape
    return te.compute((b, h, kk, x.shape[3]), lambda bb, hh, o, c: x[bb, hh, sel[bb, hh, o], c], name="gather_tokens")


@impl(Op.KVQuantAttention)
@impl(Op.Attention)
def _attention(L, node, args):
    out, k, v, _p = _attend(L, node, args)
    return [out, k, v] if len(node.outputs) >= 3 else [out]


def _attend(L, node, args):
    """Attention over past + new (appended, KV fake-quant applied for KVQuantAttention) ->
    (out, K, V, softmax probabilities)."""
    q, k, v = (L.tensor(a) for a in args[:3])
    past_k = args[3] if len(args) > 3 else None
    past_v = args[4] if len(args) > 4 else None
    def append(past, new):
        pt = L.tensor(past)
        ps, ns = L.shape_of(pt), L.shape_of(new)
        if (not L.tvm_target.gpu and L.ndim(pt) == 4 and isinstance(ps[1], int) and isinstance(ps[3], int)
                and L.dtype_of(pt) == L.dtype_of(new) and ps[1] == ns[1] and ps[3] == ns[3]):
            key = ("kv_append", ps[1], ps[3], L.dtype_of(pt))
            if key not in L.kernel_cache:
                L.kernel_cache[key] = L.bb.add_func(kernels.kv_append_func(ps[1], ps[3], L.dtype_of(pt)),
                                                    f"ternc_kv_append_h{ps[1]}_d{ps[3]}")
            shape = [ps[0], ps[1], _simplify(ps[2] + ns[2]), ps[3]]
            return L.emit(relax.call_tir(L.kernel_cache[key], [pt, new], relax.TensorType(shape, L.dtype_of(pt))))
        return L.emit(relax.op.concat([pt, new], axis=2))

    n_past = 0
    if past_k is not None and not L.is_empty_const(past_k):
        n_past = L.shape_of(L.tensor(past_k))[2]
        k = append(past_k, k)
    if past_v is not None and not L.is_empty_const(past_v):
        v = append(past_v, v)
    if node.op == Op.KVEvict and node.attr("policy") not in ("streaming", "h2o"):
        raise L.err(f"KV eviction policy {node.attr('policy')!r} has no TVM lowering (streaming and h2o have)")
    if node.op == Op.KVQuantAttention:
        # the cache holds KIVI fake-quantized values (ir/interp.kv_fake_quant_append): only the
        # rows that join the quantized span in this call are quantized and dequantized
        if L.dtype_of(k) != "float32":
            raise L.err(f"quantize-kv lowering needs a float32 cache, got {L.dtype_of(k)}")
        cfg = {a: int(node.attr(a)) for a in ("bits", "group_size", "residual", "sinks")}
        d = L.shape_of(k)[3]
        if not isinstance(d, int) or d % min(cfg["group_size"], d):
            raise L.err(f"head dim {d} must be static and a multiple of the value group")
        if node.attr("rotate") and L.tvm_target.gpu:
            raise L.err("quantize-kv{rotate=1} lowers for CPU targets only (the CUDA schedule of the "
                        "rotation matmul over the growing cache is missing); use rotate=0 on cuda")
        if node.attr("rotate"):
            # RotateKV-style: quantize x @ H, keep (x_hat @ H) @ H^T for the rows that join the span
            # (float32 matmuls: summation order differs from numpy's, so a code can flip at a
            # rounding boundary; tests compare tokens)
            from ...ir.kvquant import hadamard

            hm = hadamard(d)
            hc, htc = relax.const(hm), relax.const(np.ascontiguousarray(hm.T))
            rot = []
            for x, keys in ((k, True), (v, False)):
                xr = L.emit(relax.op.matmul(x, hc))
                xq = L.bb.emit_te(_kv_fake_quant_te, xr, n_past, cfg, keys, primfunc_name_hint="kv_fake_quant_rot")
                back = L.emit(relax.op.matmul(xq, htc))
                rot.append(L.bb.emit_te(_kv_span_select_te, back, x, n_past, cfg, primfunc_name_hint="kv_span_select"))
            k, v = rot
        else:
            k = L.bb.emit_te(_kv_fake_quant_te, k, n_past, cfg, True, primfunc_name_hint="kv_fake_quant_k")
            v = L.bb.emit_te(_kv_fake_quant_te, v, n_past, cfg, False, primfunc_name_hint="kv_fake_quant_v")
    qs, ks = L.shape_of(q), L.shape_of(k)
    hq, hkv = qs[1], ks[1]
    if not isinstance(hq, int) or not isinstance(hkv, int) or hq % hkv:
        raise L.err(f"query heads {hq} must be a static multiple of kv heads {hkv}")
    dt = L.dtype_of(q)
    d = qs[3]
    if not L.tvm_target.gpu and dt == "float32" and isinstance(d, int) and L.dtype_of(k) == dt and L.dtype_of(v) == dt:
        # scheduled CPU kernels: GQA by indexing (no repeated K/V), mask and scale fused
        scale, causal = float(node.attr("scale")), bool(node.attr("causal"))
        ks_ = ("attn_s", hq, hkv, d, scale, causal)
        kp_ = ("attn_pv", hq, hkv, d)
        if ks_ not in L.kernel_cache:
            L.kernel_cache[ks_] = L.bb.add_func(kernels.attention_scores_func(hq, hkv, d, scale, causal),
                                                f"ternc_attn_scores_h{hq}_{hkv}_d{d}")
        if kp_ not in L.kernel_cache:
            L.kernel_cache[kp_] = L.bb.add_func(kernels.attention_pv_func(hq, hkv, d), f"ternc_attn_pv_h{hq}_{hkv}_d{d}")
        b, sq, sk = qs[0], qs[2], ks[2]
        s = L.emit(relax.call_tir(L.kernel_cache[ks_], [q, k], relax.TensorType([b, hq, sq, sk], "float32")))
        p = L.emit(relax.op.nn.softmax(s, axis=-1))
        out = L.emit(relax.call_tir(L.kernel_cache[kp_], [p, v], relax.TensorType([b, hq, sq, d], "float32")))
        return out, k, v, p
    if (L.tvm_target.gpu and dt == "float32" and isinstance(d, int) and L.dtype_of(k) == dt
            and L.dtype_of(v) == dt and _as_int(qs[2]) == 1):
        # one query token (decode): the causal mask keeps every key, so scores are a plain GQA
        # product by indexing (no repeated K/V); the scale goes on q (an elementwise op that fuses
        # into the static, CUDA-graph captured producer of q)
        qsc = L.emit(relax.op.multiply(q, relax.const(float(node.attr("scale")), "float32")))
        ks_, kp_ = ("gqa_scores", hq, hkv, d), ("gqa_pv", hq, hkv, d)
        if ks_ not in L.kernel_cache:
            L.kernel_cache[ks_] = L.bb.add_func(kernels.gqa_decode_scores_func(hq, hkv, d),
                                                f"ternc_gqa_scores_h{hq}_{hkv}_d{d}")
            L.kernel_cache[kp_] = L.bb.add_func(kernels.gqa_decode_pv_func(hq, hkv, d), f"ternc_gqa_pv_h{hq}_{hkv}_d{d}")
        b, sk = qs[0], ks[2]
        s = L.emit(relax.call_tir(L.kernel_cache[ks_], [qsc, k], relax.TensorType([b, hq, 1, sk], "float32")))
        p = L.emit(relax.op.nn.softmax(s, axis=-1))
        out = L.emit(relax.call_tir(L.kernel_cache[kp_], [p, v], relax.TensorType([b, hq, 1, d], "float32")))
        return out, k, v, p
    kr, vr = k, v
    if hq != hkv:
        kr = L.emit(relax.op.repeat(k, hq // hkv, axis=1))
        vr = L.emit(relax.op.repeat(v, hq // hkv, axis=1))
    qf, kf, vf = q, kr, vr
    if dt != "float32":
        qf, kf, vf = (L.emit(relax.op.astype(t, "float32")) for t in (q, kr, vr))
    s = L.emit(relax.op.matmul(qf, L.emit(relax.op.permute_dims(kf, [0, 1, 3, 2]))))
    s = L.bb.emit_te(_causal_mask_te, s, float(node.attr("scale")), bool(node.attr("causal")),
                     primfunc_name_hint="attn_mask")
    p = L.emit(relax.op.nn.softmax(s, axis=-1))
    out = L.emit(relax.op.matmul(p, vf))
    if dt != "float32":
        out = L.emit(relax.op.astype(out, dt))
    return out, k, v, p


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


# ---------------------------------------------------------------------- ternary contract
def _flatten_tokens(L, x):
    shp = L.shape_of(x)
    m = 1
    for d in shp[:-1]:
        m = m * d
    return L.emit(relax.op.reshape(x, [_simplify(m), shp[-1]])), shp[:-1]


def _quantize(L, x2, k: int, eps: float):
    key = ("quant", k, float(eps), L.tvm_target.gpu)
    if key not in L.kernel_cache:
        f = kernels.quantize_func(k, eps, L.tvm_target)
        L.kernel_cache[key] = L.bb.add_func(f, f"ternc_quantize_k{k}")
    m = L.shape_of(x2)[0]
    out = L.emit(relax.call_tir(L.kernel_cache[key], [x2], [
        relax.TensorType([m, kernels.padded_k(k)], "int8"), relax.TensorType([m, 1], "float32")]))
    return L.emit(relax.TupleGetItem(out, 0)), L.emit(relax.TupleGetItem(out, 1))


def _tmatmul_dp4a(L, xq_padded, parts, k: int, n: int):
    """CUDA decode on i2 weights: dp4a over the packed bytes viewed as int32 words (zero copy)."""
    m = L.shape_of(xq_padded)[0]
    kw = -(-k // 128) * 8
    tile = 1 if L.tokens_hint == 1 else kernels.GEMM_TOKEN_TILE  # prefill: whole token tiles
    mp = m if tile == 1 else _simplify(tirx.floordiv(m + (tile - 1), tile) * tile)
    pk = ("dp4a_pack", k, tile)
    if pk not in L.kernel_cache:
        L.kernel_cache[pk] = L.bb.add_func(kernels.dp4a_pack_func(k, tile), f"ternc_dp4a_pack_k{k}_t{tile}")
    memo = L.memo.setdefault("dp4a_pack", [])  # q/k/v (gate/up) share one packed activation
    hit = next((r for v, kk, r in memo if kk == k and v.same_as(xq_padded)), None)
    if hit is None:
        packed = L.emit(relax.call_tir(L.kernel_cache[pk], [xq_padded], [
            relax.TensorType([mp, 4, kw], "int32"), relax.TensorType([mp], "int32")]))
        hit = (L.emit(relax.TupleGetItem(packed, 0)), L.emit(relax.TupleGetItem(packed, 1)))
        memo.append((xq_padded, k, hit))
    xw, ssum = hit
    words = L.weight_as(parts[0], "int32", [n, kw])
    if words is None:
        words = L.emit(relax.op.memory.view(L.tensor(parts[0]), [n, kw], "int32"))
    if L.tokens_hint == 1:  # decode: one token per call
        key = ("i2", k, n, "dp4a")
        if key not in L.kernel_cache:
            L.kernel_cache[key] = L.bb.add_func(kernels.dp4a_gemv_func(k, n), f"ternc_tmm_dp4a_i2_k{k}_n{n}")
    else:  # prefill: tiled GEMM, each weight word read once per 32 tokens
        key = ("i2", k, n, "dp4a_gemm")
        if key not in L.kernel_cache:
            L.kernel_cache[key] = L.bb.add_func(kernels.dp4a_gemm_func(k, n), f"ternc_tmm_dp4a_gemm_i2_k{k}_n{n}")
        mb = _simplify(tirx.floordiv(m + (tile - 1), tile))
        acc = L.emit(relax.call_tir(L.kernel_cache[key], [words, xw, ssum, relax.prim_value(mb)],
                                    relax.TensorType([mp, n], "int32")))
        acc = L.emit(relax.op.strided_slice(acc, [0], [0], [m], assume_inbound=True))
        if _as_int(L.shape_of(acc)[0]) is None and str(L.shape_of(acc)[0]) != str(m):
            acc = L.bb.match_cast(acc, relax.TensorType([m, n], "int32"))
        return acc
    return L.emit(relax.call_tir(L.kernel_cache[key], [words, xw, ssum], relax.TensorType([m, n], "int32")))


def _tmatmul(L, node, xq_padded, parts, fmt: str, k: int, n: int):
    kind = kernels.choose_kind(fmt, k, n, L.tokens_hint, L.tvm_target, L.kernel_policy, L.kernel_log, L.target)
    if kind == "dp4a":
        return _tmatmul_dp4a(L, xq_padded, parts, k, n)
    key = (fmt, k, n, kind)
    if key not in L.kernel_cache:
        L.kernel_cache[key] = L.bb.add_func(kernels.matmul_func(fmt, k, n, kind), f"ternc_tmm_{kind}_{fmt}_k{k}_n{n}")
    m = L.shape_of(xq_padded)[0]
    exp_shapes = kernels.part_shapes(fmt, n, k)
    ts = [L.tensor(p) for p in parts]
    for t, s, nm in zip(ts, exp_shapes, kernels.part_names(fmt)):
        if [_as_int(d) for d in L.shape_of(t)] != list(s):
            raise L.err(f"packed part {nm!r} has shape {L.shape_of(t)}, expected {list(s)} for {fmt} [N={n}, K={k}]")
    return L.emit(relax.call_tir(L.kernel_cache[key], [xq_padded, *ts], relax.TensorType([m, n], "int32")))


def _format_attrs(L, node, n_parts: int):
    fmt, k, n = node.attr("format"), node.attr("k"), node.attr("n")
    if fmt not in kernels.SUPPORTED_FORMATS:
        raise L.err(f"ternary format {fmt!r} has no TVM kernel (supported: {', '.join(kernels.SUPPORTED_FORMATS)})")
    if k is None or n is None:
        raise L.err("ternary op without k/n attributes")
    if n_parts != len(kernels.part_names(fmt)):
        raise L.err(f"format {fmt} takes {len(kernels.part_names(fmt))} packed arrays, got {n_parts}")
    return fmt, int(k), int(n)


def _dequant(L, acc, a_scale, w_scale):
    ws = L.tensor(w_scale)
    if L.ndim(ws) != 0:
        ws = L.emit(relax.op.reshape(ws, []))
    y = L.emit(relax.op.divide(L.emit(relax.op.astype(acc, "float32")), a_scale))
    return L.emit(relax.op.multiply(y, ws))


@impl(Op.TernaryLinear)
def _ternary_linear(L, node, args):
    x = L.tensor(args[0])
    packed = list(args[2:])
    bias = None
    if node.attr("has_bias", 0):
        bias, packed = packed[-1], packed[:-1]
    fmt, k, n = _format_attrs(L, node, len(packed))
    dt = L.dtype_of(x)
    eps = float(node.attr("eps", semantics.ACT_EPS))
    qkey = (node.inputs[0], k, eps)
    if qkey in L.memo.setdefault("quant", {}):  # linears reading the same activation quantize it once
        xq, a_scale, lead = L.memo["quant"][qkey]
    else:
        x2, lead = _flatten_tokens(L, x)
        if dt != "float32":
            x2 = L.emit(relax.op.astype(x2, "float32"))
        xq, a_scale = _quantize(L, x2, k, eps)
        L.memo["quant"][qkey] = (xq, a_scale, lead)
    acc = _tmatmul(L, node, xq, packed, fmt, k, n)
    y = _dequant(L, acc, a_scale, args[1])
    y = L.emit(relax.op.reshape(y, [*lead, n]))
    if bias is not None:
        y = L.emit(relax.op.add(y, L.tensor(bias)))
    if dt != "float32":
        y = L.emit(relax.op.astype(y, dt))
    return y


@impl(Op.QuantizeAct)
def _quantize_act(L, node, args):
    x = L.tensor(args[0])
    x2, lead = _flatten_tokens(L, x)
    k = L.shape_of(x)[-1]
    if not isinstance(k, int):
        raise L.err("QuantizeAct needs a static last dim")
    if L.dtype_of(x2) != "float32":
        x2 = L.emit(relax.op.astype(x2, "float32"))
    xq, a_scale = _quantize(L, x2, k, float(node.attr("eps", semantics.ACT_EPS)))
    xq = L.emit(relax.op.strided_slice(xq, [1], [0], [k]))
    return [L.emit(relax.op.reshape(xq, [*lead, k])), L.emit(relax.op.reshape(a_scale, [*lead, 1]))]


@impl(Op.TernaryMatMul)
def _ternary_matmul(L, node, args):
    fmt, k, n = _format_attrs(L, node, len(args) - 1)
    xq = L.tensor(args[0])
    x2, lead = _flatten_tokens(L, xq)
    kp = kernels.padded_k(k)
    if kp != k:
        x2 = L.emit(relax.op.nn.pad(x2, [0, 0, 0, kp - k]))
    acc = _tmatmul(L, node, x2, args[1:], fmt, k, n)
    return relax.op.reshape(acc, [*lead, n])


@impl(Op.Dequantize)
def _dequantize(L, node, args):
    acc, a_scale = L.tensor(args[0]), L.tensor(args[1])
    return _dequant(L, acc, a_scale, args[2])


# ====================================================================== module
def _weight_storage(module: Module, entries: list[str], target_kind) -> dict:
    """Weights stored in another dtype than their IR constant (zero-copy byte views), decided once
    for all entries: on CUDA, i2 codes are int32 words [N, 8 ceil(K/128)] (what dp4a reads), so
    decode's kernels take them without a view op (which would split CUDA-graph capture regions)."""
    if not tvm_target(target_kind).gpu:
        return {}
    out = {}
    for name in entries:
        for n in module.func(name).nodes:
            if n.op not in (Op.TernaryLinear, Op.TernaryMatMul) or n.attr("format") != "i2":
                continue
            codes = n.inputs[2] if n.op == Op.TernaryLinear else n.inputs[1]
            c = module.constants.get(codes)
            k, nn = n.attr("k"), n.attr("n")
            if c is None or c.data is None or k is None or nn is None:
                continue
            kw = -(-int(k) // 128) * 8
            if c.data.dtype == np.uint8 and c.data.shape == (int(nn), 4 * kw):
                out[codes] = ("int32", (int(nn), kw))
    return out


def _decode_token_dim(module: Module, name: str) -> str | None:
    """The symbol of decode's new-token count (input_ids [B, seq]) when `name` is a decoder's decode."""
    dec = module.meta.get("decoder") or {}
    if name != dec.get("decode"):
        return None
    p = next((p for p in module.func(name).params if p.name == dec.get("input_ids")), None)
    if p is None or p.type.shape is None or len(p.type.shape) != 2 or not isinstance(p.type.shape[1], str):
        return None
    return p.type.shape[1]


def lower_module(module: Module, entries: list[str] | None = None, target_kind="cpu",
                 kernel_policy: str = "auto", target=None, decode_tokens: int | None = None) -> Lowered:
    """Lower the named entry points (default: prefill/decode for decoders, else every function).

    decode_tokens: fix a decoder's decode entry to this many new tokens per call (CUDA: 1, so its
    shapes are static but for the KV length and CUDA graphs can capture them).
    target_kind: a TvmTarget or its name ("cpu", "aarch64", "cuda"); kernel_policy: "auto" (measured
    choice per ternary weight shape, CPU host targets only), "dot", "lut", ... or fixed choices
    {(format, k, n, m): kind} (kernels.choose_kind); target: the tvm Target the measurement compiles for.
    Refuses (UnsupportedError) a module using attribute values the backend does not implement."""
    CAPABILITIES.check(module, f"the TVM backend (target {tvm_target(target_kind).name})")
    if entries is None:
        dec = module.meta.get("decoder")
        entries = [dec["prefill"], dec["decode"]] if dec else module.entry_names
    bb = relax.BlockBuilder()
    sigs: dict[str, EntrySignature] = {}
    log: list = []
    cache: dict = {"__weight_storage__": _weight_storage(module, entries, target_kind)}
    for name in entries:
        tok = _decode_token_dim(module, name) if decode_tokens else None
        fl = FunctionLowerer(module, module.func(name), bb, target_kind, kernel_policy, log, cache, target,
                             fixed_dims={tok: int(decode_tokens)} if tok else None)
        sigs[name] = fl.lower()
    mod = bb.get()
    for name, sig in sigs.items():  # parameters after the inputs are weights (static for CUDA graphs)
        gv = mod.get_global_var(name)
        mod[gv] = mod[gv].with_attr("num_input", len(sig.inputs))
    weights: list[str] = []
    for s in sigs.values():
        for w in s.weights:
            if w not in weights:
                weights.append(w)
    storage = {w: v for w, v in cache["__weight_storage__"].items() if w in weights}
    return Lowered(mod, sigs, weights, log, storage)
