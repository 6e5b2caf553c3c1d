"""`fuse-epilogue`: fuse a linear with the elementwise step after it into one FusedLinear.

The FPGA linear engine streams read -> quantize -> ternary matmul -> dequantize -> epilogue -> write
(TeLLMe), so the epilogues it supports become part of the linear op (semantics: ir/interp.py):

  residual_add   Add(linear(x), r)                     (o_proj, down_proj + residual)
  rope           RoPE(Transpose(Reshape(linear(x))))   (q/k projections, with the head split)
  gated_silu     GatedAct(linear_g(x), linear_u(x))    (gate and up projections of one x)
  gated_relu2

Only when each intermediate has exactly one use (nothing else needs the unfused value) and is not a
function result. Lossless: the fused op is defined as the composition of the ops it replaces.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ir.core import Function, Module, Node
from ..ir.enums import FUSED_EPILOGUES, Epilogue
from ..ir.graph import Graph, rewrite
from ..ir.ops import Op
from .base import PassResult, clean

LINEARS = (Op.Linear, Op.TernaryLinear)


@dataclass(frozen=True)
class FuseEpilogueOptions:
    epilogues: tuple[str, ...] = tuple(e.value for e in FUSED_EPILOGUES)  # which epilogues to fuse

    def __post_init__(self):
        bad = [e for e in self.epilogues if e not in FUSED_EPILOGUES]
        if bad:
            raise ValueError(f"unknown epilogue(s) {bad}; valid: {', '.join(e.value for e in FUSED_EPILOGUES)}")


class _Fuser:
    def __init__(self, fn: Function, opts: FuseEpilogueOptions):
        self.g, self.opts = Graph(fn), opts
        self.counts = {e.value: 0 for e in FUSED_EPILOGUES}

    @staticmethod
    def header(lin: Node) -> dict:
        return dict(lin.attrs, linear=lin.op.value, linear_operands=len(lin.inputs) - 1)

    def fuse(self, root: Node) -> Node | None:
        want = self.opts.epilogues
        if root.op == Op.Add and Epilogue.RESIDUAL_ADD in want:
            for y, r in (root.inputs, root.inputs[::-1]):
                lin = self.g.sole_producer(y, *LINEARS)
                if lin is not None and r != y:
                    return self.emit(root, Epilogue.RESIDUAL_ADD, lin, [*lin.inputs, r])
        if root.op == Op.RoPE and Epilogue.ROPE in want:
            tr = self.g.sole_producer(root.inputs[0], Op.Transpose)
            rs = self.g.sole_producer(tr.inputs[0], Op.Reshape) if tr else None
            lin = self.g.sole_producer(rs.inputs[0], *LINEARS) if rs else None
            if lin is not None:
                return self.emit(root, Epilogue.ROPE, lin, [*lin.inputs, rs.inputs[1], *root.inputs[1:]],
                                 perm=tr.attr("perm"), allowzero=rs.attr("allowzero", 0))
        gated = Epilogue.gated_by(root.attr("act")) if root.op == Op.GatedAct else None
        if gated is not None and gated in want:
            g, u = (self.g.sole_producer(v, *LINEARS) for v in root.inputs)
            if g is not None and u is not None and g.op == u.op and g.inputs[0] == u.inputs[0] \
                    and g.attrs == u.attrs and len(g.inputs) == len(u.inputs) and root.inputs[0] != root.inputs[1]:
                return self.emit(root, gated, g, [*g.inputs, *u.inputs[1:]])
        return None

    def emit(self, root: Node, epilogue: Epilogue, lin: Node, inputs: list[str], **attrs) -> Node:
        self.counts[epilogue.value] += 1
        return Node.make(Op.FusedLinear, inputs, root.outputs, lin.origin or root.origin,
                         epilogue=epilogue.value, **self.header(lin), **attrs)

    def run(self) -> Function:
        return rewrite(self.g.fn, {id(n): f for n in self.g.fn.nodes if (f := self.fuse(n)) is not None})


def run(module: Module, opts: FuseEpilogueOptions = FuseEpilogueOptions()) -> PassResult:
    fns, counts = [], {e.value: 0 for e in FUSED_EPILOGUES}
    for fn in module.functions:
        f = _Fuser(fn, opts)
        fns.append(f.run())
        for k, v in f.counts.items():
            counts[k] += v
    return PassResult(clean(module.replace(functions=tuple(fns))), {"fused": sum(counts.values()), **counts})
