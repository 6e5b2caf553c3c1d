"""`hw-numerics`: make the interpreter follow the FPGA datapath's number formats (LOSSY).

Sets `numerics = "fx"` on TernaryLinear, RoPE, GatedAct, FusedLinear, RMSNorm and Attention nodes, so
the reference interpreter computes exactly what the KV260 accelerator computes (FX Q15.16 activations,
the hardware quantizer, pseudo-float dequantize factors, Q1.14 RoPE, table sigmoid, integer RMSNorm,
24-bit KV words and exp2-table softmax; ir/hw_numerics.py). fx values travel between nodes as f64
(exact FX values); the KV cache as f32 (exact 24-bit KV words).
The RTL benches are checked bit-exactly against those functions; this pass lets a whole model be
run under them and compared with the float path (tests/passes/test_hw_numerics.py measures it).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ir.core import Module, Node
from ..ir.ops import Op
from .base import PassResult

FX_OPS = (Op.TernaryLinear, Op.RoPE, Op.GatedAct, Op.FusedLinear, Op.RMSNorm, Op.Attention, Op.KVQuantAttention)


@dataclass(frozen=True)
class HWNumericsOptions:
    numerics: str = "fx"  # "fx" (hardware formats) or "float" (undo)

    def __post_init__(self):  # checked when the spec is parsed (a SpecError), not when the pass runs
        if self.numerics not in ("fx", "float"):
            raise ValueError(f"hw-numerics: numerics must be 'fx' or 'float', got {self.numerics!r}")


def run(module: Module, opts: HWNumericsOptions = HWNumericsOptions()) -> PassResult:
    if opts.numerics not in ("fx", "float"):
        raise ValueError(f"hw-numerics: numerics must be 'fx' or 'float', got {opts.numerics!r}")
    changed = 0
    fns = []
    for fn in module.functions:
        nodes = []
        for n in fn.nodes:
            if n.op in FX_OPS and n.attr("numerics", "float") != opts.numerics:
                n = n.with_attrs(numerics=None if opts.numerics == "float" else opts.numerics)
                changed += 1
            nodes.append(n)
        fns.append(fn.with_nodes(nodes))
    return PassResult(module.replace(functions=tuple(fns)), {"nodes_marked": changed})
