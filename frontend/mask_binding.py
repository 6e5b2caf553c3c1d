"""Bind a legacy export's `attention_mask` input to "no padding" (all ones).

TorchScript-path exports (`torch.onnx.export(..., dynamo=False)`, optimum, older hubs) take an
`attention_mask` [batch, past + seq] next to `input_ids`. ternc generates one unpadded sequence at a
time, where that mask is all ones, and its Attention op is plain causal. Binding the input to ones
computed from the other inputs' shapes turns the graph into the dynamo export's form, so attention,
the KV-cache decoder and every runner work without a mask. The binding is recorded in
`meta["bound_inputs"]`; a caller that feeds an `attention_mask` is told it is not an input.
"""

from __future__ import annotations

from ..ir.core import Function, Module, Node, Value
from ..ir.ops import Op
from ..ir.types import DType, TensorType


def _mask_param(fn: Function) -> Value | None:
    cands = [p for p in fn.params if "attention_mask" in p.name and p.type.shape is not None
             and len(p.type.shape) == 2 and (p.type.dtype.is_int or p.type.dtype == DType.BOOL)]
    return cands[0] if len(cands) == 1 else None


def _ids_param(fn: Function) -> Value | None:
    ids = [p for p in fn.params if p.type.dtype.is_int and p.type.shape is not None and len(p.type.shape) == 2
           and "mask" not in p.name and "position" not in p.name and "type" not in p.name]
    return ids[0] if ids else None


def _past_param(fn: Function) -> Value | None:
    return next((p for p in fn.params if "past" in p.name and p.type.shape is not None and len(p.type.shape) == 4),
                None)


def bind_attention_mask(module: Module) -> Module:
    """`module` with main's `attention_mask` computed as ones([batch, past + seq]) when its length is
    the token ids' length (no past inputs) or that plus the past length (past K/V inputs, dim 2);
    unchanged when there is no such input or its length cannot be told from the other inputs."""
    fn = module.func("main") if "main" in {f.name for f in module.functions} else None
    if fn is None or not any(n.op == Op.Softmax for n in fn.nodes):
        return module
    mask, ids = _mask_param(fn), _ids_param(fn)
    if mask is None or ids is None:
        return module
    past = _past_param(fn)
    m_len, ids_len = mask.type.shape[1], ids.type.shape[1]
    i64 = DType.I64
    name = mask.name
    nodes = [Node.make(Op.Shape, [ids.name], [Value(f"{name}.batch", TensorType(i64, (1,)))], start=0, end=1),
             Node.make(Op.Shape, [ids.name], [Value(f"{name}.seq", TensorType(i64, (1,)))], start=1, end=2)]
    if m_len == ids_len:
        length, how = f"{name}.seq", "[batch, seq] of the token ids"
    elif past is not None and past.type.shape[2] != ids_len:
        nodes += [Node.make(Op.Shape, [past.name], [Value(f"{name}.past", TensorType(i64, (1,)))], start=2, end=3),
                  Node.make(Op.Add, [f"{name}.seq", f"{name}.past"], [Value(f"{name}.len", TensorType(i64, (1,)))])]
        length, how = f"{name}.len", f"[batch, past + seq] (past from %{past.name})"
    else:
        return module
    nodes += [Node.make(Op.Concat, [f"{name}.batch", length], [Value(f"{name}.shape", TensorType(i64, (2,)))],
                        axis=0),
              Node.make(Op.ConstantOfShape, [f"{name}.shape"], [Value(name, mask.type)],
                        value=True if mask.type.dtype == DType.BOOL else 1, dtype=mask.type.dtype.value)]
    new_fn = fn.with_nodes(nodes + list(fn.nodes), params=tuple(p for p in fn.params if p.name != name))
    bound = {**module.meta.get("bound_inputs", {}),
             name: f"ones {how}: one unpadded sequence (ternc's attention is plain causal)"}
    return module.with_function(new_fn).replace(meta={**module.meta, "bound_inputs": bound})
