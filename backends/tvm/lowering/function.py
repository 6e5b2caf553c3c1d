"""FunctionLowerer: one IR Function -> one Relax function (parameters, values, the node loop)."""

from __future__ import annotations

from typing import Any

import numpy as np

from tvm import relax, tirx

from ....ir.core import Function, Module, Node
from ....ir.decoder import DecoderSpec
from ....ir.ops import Op
from ....ir.types import DType
from ..target import tvm_target
from .common import (IMPLS, INLINE_MAX, SYM_IMPLS, ConstRef, EntrySignature, KernelRegistry, Lazy, LoweringError,
                     Operand, Sym, _simplify, np_dtype_of, tvm_dtype)


class FunctionLowerer:
    """Lowers one Function; op implementations (IMPLS, SYM_IMPLS) receive it as `L` and read operands
    through `get` / `tensor` / `sym`, emit through `emit`, and reach shared kernels through `kernels`."""

    def __init__(self, module: Module, fn: Function, bb: relax.BlockBuilder, target_kind,
                 kernel_policy: str, kernel_log: list, kernels: KernelRegistry, target=None,
                 fixed_dims: dict | None = None, tuner=None, entry_name: str | None = None,
                 inplace_kv: dict | None = None):
        """entry_name: the Relax function's name (default the IR function's); inplace_kv: {past input:
        present output} of a decode whose KV cache is preallocated and written in place (module.py
        _inplace_kv_plan): those inputs become caches [b, h, cap, d] plus one `kv_len` shape input."""
        self.entry_name = entry_name or fn.name
        self.inplace_kv = dict(inplace_kv or {})
        self.target = target
        self.tuner = tuner  # kernels.KernelTuner for measured choices (None: the shared default)
        self.module = module
        self.fn = fn
        self.bb = bb
        self.tvm_target = tvm_target(target_kind)
        self.kernel_policy = kernel_policy
        self.kernel_log = kernel_log
        self.kernels = kernels  # shared across the module's functions
        self.syms: dict[str, Any] = dict(fixed_dims or {})  # symbol -> tirx.Var, or an int it is fixed to
        self.env: dict[str, Operand] = {}
        self.weight_vars: dict[str, relax.Var] = {}
        self.raw_views: dict[str, relax.Var] = {}  # byte-view weights viewed back to their IR dtype
        # per-function reuse of emitted values: linears reading the same activation quantize it once
        # ((input, K, eps) -> (x_q, a_scale, leading dims)); dp4a activation words per (x_q, K)
        self.quantized: dict[tuple, tuple] = {}
        self.dp4a_packed: list[tuple] = []
        self.node: Node | None = None
        self.types = fn.value_types()
        self._fresh = 0
        # decode-like functions (one token) pick GEMV-style kernels; see _tokens_hint
        dec = DecoderSpec.of(module)
        self.tokens_hint = 1 if dec is not None and fn.name == dec.decode else 32

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
    def get(self, name: str) -> Operand:
        if name in self.env:
            return self.env[name]
        c = self.module.constants.get(name)
        if c is None:
            raise self.err(f"value %{name} is undefined")
        return ConstRef(name)

    def const_array(self, name: str) -> np.ndarray:
        c = self.module.constants[name]
        if c.data is None:
            raise self.err(f"constant @{name} has no data")
        return np.asarray(c.data)

    def sym(self, v) -> Sym | None:
        """The compile-time value of an operand, if it is one (small int constant or Sym)."""
        if isinstance(v, Sym):
            return v
        if isinstance(v, ConstRef):
            a = self.const_array(v.name)
            if a.size <= INLINE_MAX and a.dtype.kind in "iub":
                return Sym(np.array([int(x) for x in a.reshape(-1)], dtype=object).reshape(a.shape),
                           str(a.dtype) if a.dtype.kind != "b" else "bool")
        return None

    def tensor(self, v: Operand):
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
        if isinstance(v, ConstRef):
            name = v.name
            a = self.const_array(name)
            if a.size <= INLINE_MAX:
                return relax.const(a, str(a.dtype) if a.dtype != DType.BF16.np else "bfloat16")
            var = self._weight_var(name)
            if name in self.kernels.weight_storage:  # stored as a byte view: view back
                if name not in self.raw_views:
                    self.raw_views[name] = self.emit(relax.op.memory.view(
                        var, list(a.shape), tvm_dtype(self.module.constants[name].type.dtype)))
                return self.raw_views[name]
            return var
        return v

    def weight_as(self, v, dtype: str, shape: list):
        """The weight `v` as the parameter of its storage view (dtype, shape) when lower_module decided
        to store it that way (Lowered.weight_storage), else None."""
        if not isinstance(v, ConstRef) or self.kernels.weight_storage.get(v.name) != (dtype, tuple(shape)):
            return None
        return self._weight_var(v.name)

    def _weight_var(self, name: str):
        if name not in self.weight_vars:
            view = self.kernels.weight_storage.get(name)
            if view is not None:
                ty = relax.TensorType(list(view[1]), view[0])
            else:
                a = self.const_array(name)
                ty = relax.TensorType(list(a.shape), tvm_dtype(self.module.constants[name].type.dtype))
            self.weight_vars[name] = relax.Var(name.replace(".", "_"), ty)
        return self.weight_vars[name]

    def is_empty_const(self, v) -> bool:
        return isinstance(v, ConstRef) and self.const_array(v.name).size == 0

    # ------------------------------------------------------------------ driver
    def lower(self) -> tuple[relax.Function, EntrySignature]:
        fn = self.fn
        params = []
        sig_inputs = []
        kv_len = None
        for p in fn.params:
            if p.type.shape is None:
                raise LoweringError(f"@{fn.name}: input %{p.name} has unknown rank")
            shape = [self.dim(d) for d in p.type.shape]
            dt = tvm_dtype(p.type.dtype)
            sig_shape = [self.syms[d] if isinstance(self.syms.get(d), int) else d for d in p.type.shape]
            if p.name in self.inplace_kv:
                # the cache at its capacity; the IR value (rows [0, past)) is a view only Shape and
                # Attention read, and attention reads the cache itself (attention.py)
                kv_len = shape[2]
                cap_shape = [*shape[:2], self.dim("cap"), *shape[3:]]
                var = relax.Var(p.name.replace(".", "_"), relax.TensorType(cap_shape, dt))
                lazy = Lazy(lambda v=var, s=shape, t=dt: relax.op.memory.view(v, s, t), shape=shape)
                lazy.kv_cache, lazy.kv_len = var, kv_len
                self.env[p.name] = lazy
                sig_shape = [*sig_shape[:2], "cap", *sig_shape[3:]]
            else:
                var = relax.Var(p.name.replace(".", "_"), relax.TensorType(shape, dt))
                self.env[p.name] = var
            params.append(var)
            sig_inputs.append({"name": p.name, "dtype": dt, "shape": sig_shape})
        if self.inplace_kv:
            params.append(relax.Var("kv_len", relax.ShapeType([kv_len])))
        try:
            return self._lower_body(fn, params, sig_inputs)
        except BaseException:
            self._abandon_function()
            raise

    def _abandon_function(self):
        """Close the binding block and variable scope a failed function left open in the shared
        BlockBuilder (TVM's function scope does not on an exception, and the builder then warns
        "destroyed with remaining blocks" at exit)."""
        try:
            self.bb._end_block()
            self.bb.end_scope()
        except Exception:  # already closed: nothing to clean
            pass

    def _lower_body(self, fn, params, sig_inputs):
        with self.bb.function(self.entry_name):
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
        return EntrySignature(self.entry_name, sig_inputs, weights, sig_outputs)

    def kernel(self, kind: str, params: tuple, make):
        """The shared kernel (kind, params) (built by `make()` and added once): KernelRegistry.get."""
        return self.kernels.get(kind, params, make)

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
