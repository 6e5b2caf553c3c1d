"""What every lowering module shares: errors, dtypes, the typed operands an IR value lowers to,
the registry of emitted kernels, the op-implementation tables, and the lowered result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Union

import numpy as np

import tvm
import tvm.sym
from tvm import relax, tirx

from ....ir.core import Module
from ....ir.types import DType

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


@dataclass(frozen=True)
class ConstRef:
    """A module constant not yet turned into a Relax value: small integer ones are compile-time
    `Sym`s, small ones are inlined, the rest become weight parameters (FunctionLowerer.tensor)."""

    name: str


# What an IR value lowers to: a Relax expression, a compile-time shape value, a value emitted only
# on use, or a module constant.
Operand = Union[relax.Expr, Sym, Lazy, ConstRef]


@dataclass(frozen=True)
class KernelKey:
    """Identifies one emitted kernel: its family and the parameters it was built for."""

    kind: str
    params: tuple


class KernelRegistry:
    """The hand-scheduled kernels added to the module being built, shared by all its functions:
    each (kind, params) is added once and called by its GlobalVar. Also carries how weights are
    stored (`weight_storage`: name -> (dtype, shape) of a byte view, decided once per module)."""

    def __init__(self, bb: relax.BlockBuilder, weight_storage: dict):
        self.bb = bb
        self.funcs: dict[KernelKey, relax.GlobalVar] = {}
        self.weight_storage = weight_storage

    def get(self, kind: str, params: tuple, make: Callable[[], tirx.PrimFunc]) -> relax.GlobalVar:
        """The kernel (kind, params), built by `make()` and added under its global symbol the first time."""
        key = KernelKey(kind, tuple(params))
        if key not in self.funcs:
            func = make()
            self.funcs[key] = self.bb.add_func(func, str(func.attrs["global_symbol"]))
        return self.funcs[key]


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
    # the decode entry over a preallocated KV cache written in place (module.inplace_kv_plan), or None:
    # {"entry", "decode", "caches": [past inputs], "length_input", "signature": EntrySignature json}
    kv_inplace: dict | None = None

    def weight_array(self, module: Module, name: str) -> np.ndarray:
        """The array to pass for weight `name`: the constant, viewed as the kernels take it."""
        from ..runtime import storage_view

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


# Op implementations, filled by the op modules: SYM_IMPLS evaluate shape arithmetic at compile time
# (returning a Sym, or None to fall back to IMPLS), IMPLS emit Relax.
SYM_IMPLS: dict = {}


def sym_impl(*ops):
    def deco(f):
        for op in ops:
            SYM_IMPLS[op] = f
        return f
    return deco


IMPLS: dict = {}


def impl(*ops):
    def deco(f):
        for op in ops:
            IMPLS[op] = f
        return f
    return deco


def _obj(vals) -> np.ndarray:
    a = np.empty(len(vals), dtype=object)
    for i, v in enumerate(vals):
        a[i] = v
    return a


def _shape_arg(L, v) -> list:
    s = L.sym(v)
    if s is None:
        raise L.err("shape operand is not known at compile time (data-dependent shapes are not supported)")
    return [_simplify(x) for x in s.vals.reshape(-1)]


def _flatten_tokens(L, x):
    shp = L.shape_of(x)
    m = 1
    for d in shp[:-1]:
        m = m * d
    return L.emit(relax.op.reshape(x, [_simplify(m), shp[-1]])), shp[:-1]


def _dim_min(n, m: int):
    """min(n, m) for a static or symbolic dimension n."""
    return min(n, m) if isinstance(n, int) else _simplify(tirx.min(n, tirx.IntImm("int64", m)))


def _i64(v):
    return tirx.IntImm("int64", v) if isinstance(v, int) else v.astype("int64")
