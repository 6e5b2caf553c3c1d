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
    `kernels/` (quantize -> packed-weight matmul with exact int32 accumulators -> dequantize).

An op with no lowering raises `LoweringError` naming the node.

Modules, by concern: common (errors, dtypes, typed operands ConstRef/Sym/Lazy, the KernelRegistry,
the op tables), function (FunctionLowerer), shapes, primitives, attention, kv, eviction, ternary,
module (lower_module).
"""

from . import attention, eviction, primitives, shapes, ternary  # noqa: F401  (register op lowerings)
from .common import (IMPLS, SYM_IMPLS, ConstRef, EntrySignature, KernelKey, KernelRegistry, Lazy, Lowered,
                     LoweringError, Operand, Sym, np_dtype_of, tvm_dtype)
from .function import FunctionLowerer
from .module import lower_module

__all__ = ["IMPLS", "SYM_IMPLS", "ConstRef", "EntrySignature", "KernelKey", "KernelRegistry", "Lazy", "Lowered",
           "LoweringError", "Operand", "Sym", "np_dtype_of", "tvm_dtype", "FunctionLowerer", "lower_module"]
