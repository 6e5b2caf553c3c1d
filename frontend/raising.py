"""Pattern raising: primitive ONNX-export subgraphs -> high-level ternc ops.

Raised: Linear (MatMul/Gemm with a constant weight, optional bias Add), RMSNorm (HF Llama /
BitNet form), RoPE (rotate-half form), GatedAct (SiLU and ReLU^2 gates), Attention (the SDPA
decomposition torch's exporter emits, with GQA head expansion, causal mask, and past-KV concat).

Every raising is checked by differential execution: the raised module must compute the same
outputs as the primitive one on random inputs (within 1e-4 relative). If it does not, the primitive
module is kept and `meta["raising"]` says why - a wrong raise never passes silently.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..ir.core import Function, Module, Node
from ..ir.graph import Builder, Graph, rewrite
from ..ir.ops import Op
from ..ir.types import DType, TensorType

LAYOUT_OPS = {Op.Reshape, Op.Transpose, Op.Expand, Op.Unsqueeze, Op.Squeeze, Op.Identity}


def _other(node: Node, v: str) -> str:
    a, b = node.inputs
    return b if a == v else a


class _Raiser:
    def __init__(self, module: Module, fn: Function):
        self.module = module
        self.consts = dict(module.constants)
        self.g = Graph(fn, self.consts)
        self.build = Builder(self.consts, set(self.consts))  # new names avoid the constants' names
        self.replace: dict[int, Node] = {}  # id of the root node -> new node
        self.counts: dict[str, int] = {}
        self._transposed: dict[str, str] = {}

    def emit(self, root: Node, new: Node) -> None:
        self.replace[id(root)] = new
        self.counts[new.op.value] = self.counts.get(new.op.value, 0) + 1

    def new_const(self, base: str, array: np.ndarray, dtype: DType | None = None) -> str:
        return self.build.const(base, array, dtype)

    # -------------------------------------------------------------- Linear
    def linear(self, n: Node) -> bool:
        g = self.g
        if n.op == Op.MatMul:
            x, w = n.inputs
            wd = g.const(w)
            if wd is None or wd.ndim != 2 or not np.issubdtype(wd.dtype, np.floating):
                return False
            if w not in self._transposed:
                self._transposed[w] = self.new_const(f"{w}.T" if not w.endswith(".T") else w + "t",
                                                     np.ascontiguousarray(wd.T), DType.from_np(wd.dtype))
            wt = self._transposed[w]
        elif n.op == Op.Gemm:
            if n.attr("transA", 0) or n.attr("alpha", 1.0) != 1.0 or n.attr("beta", 1.0) != 1.0:
                return False
            x, w = n.inputs[:2]
            wd = g.const(w)
            if wd is None or wd.ndim != 2:
                return False
            if n.attr("transB", 0):
                wt = w
            else:
                wt = self.new_const(f"{w}.T", np.ascontiguousarray(wd.T), DType.from_np(wd.dtype))
            if len(n.inputs) > 2 and n.inputs[2]:
                bd = g.const(n.inputs[2])
                if bd is None or bd.ndim != 1:
                    return False
                self.emit(n, Node.make(Op.Linear, [x, wt, n.inputs[2]], n.outputs, n.origin))
                return True
        else:
            return False
        self.emit(n, Node.make(Op.Linear, [x, wt], n.outputs, n.origin))
        return True

    # -------------------------------------------------------------- RMSNorm
    def rmsnorm(self, n: Node) -> bool:
        g = self.g
        if n.op != Op.Mul:
            return False
        for w, normed in (n.inputs, n.inputs[::-1]):
            wd = g.const(w)
            if wd is None or wd.ndim != 1:
                continue
            m = g.node(normed, Op.Mul)
            if m is None:
                continue
            for x, r in (m.inputs, m.inputs[::-1]):
                rec = g.node(r, Op.Reciprocal)
                sq = g.node(rec.inputs[0], Op.Sqrt) if rec else None
                add = g.node(sq.inputs[0], Op.Add) if sq else None
                if add is None:
                    continue
                for mean_v, eps_v in (add.inputs, add.inputs[::-1]):
                    eps = g.scalar(eps_v)
                    mean = g.node(mean_v, Op.ReduceMean)
                    if eps is None or mean is None or mean.attr("keepdims", 1) != 1:
                        continue
                    axes = g.const(mean.inputs[1]) if len(mean.inputs) > 1 else None
                    if axes is None or list(np.asarray(axes).reshape(-1)) not in ([-1],):
                        continue
                    pw = g.node(mean.inputs[0], Op.Pow)
                    if pw is None or pw.inputs[0] != x or g.scalar(pw.inputs[1]) != 2.0:
                        continue
                    self.emit(n, Node.make(Op.RMSNorm, [x, w], n.outputs, n.origin, eps=eps))
                    return True
        return False

    # -------------------------------------------------------------- RoPE
    def _slice_range(self, v: str) -> tuple[str, int, int] | None:
        s = self.g.node(v, Op.Slice)
        if s is None or len(s.inputs) < 4:
            return None
        st, en, ax = (self.g.const(i) for i in s.inputs[1:4])
        steps = self.g.const(s.inputs[4]) if len(s.inputs) > 4 else np.array([1])
        if any(a is None for a in (st, en, ax, steps)) or st.size != 1 or int(steps.reshape(-1)[0]) != 1:
            return None
        rank = self.g.types.get(s.inputs[0], TensorType(DType.F32, None)).rank
        axis = int(ax.reshape(-1)[0])
        if axis != -1 and (rank is None or axis != rank - 1):
            return None
        return s.inputs[0], int(st.reshape(-1)[0]), int(en.reshape(-1)[0])

    def rope(self, n: Node) -> bool:
        g = self.g
        if n.op != Op.Add:
            return False
        for a, b in (n.inputs, n.inputs[::-1]):
            m1, m2 = g.node(a, Op.Mul), g.node(b, Op.Mul)
            if m1 is None or m2 is None:
                continue
            for cat_v, sin in (m2.inputs, m2.inputs[::-1]):
                cat = g.node(cat_v, Op.Concat)
                if cat is None or len(cat.inputs) != 2 or cat.attr("axis") not in (-1, 3):
                    continue
                neg = g.node(cat.inputs[0], Op.Neg)
                if neg is None:
                    continue
                hi, lo = self._slice_range(neg.inputs[0]), self._slice_range(cat.inputs[1])
                if hi is None or lo is None or hi[0] != lo[0]:
                    continue
                x = hi[0]
                half = hi[1]
                if lo[1] != 0 or lo[2] != half or half <= 0:
                    continue
                if x not in m1.inputs:
                    continue
                cos = _other(m1, x)
                self.emit(n, Node.make(Op.RoPE, [x, cos, sin], n.outputs, n.origin))
                return True
        return False

    # -------------------------------------------------------------- gated activation
    def gated(self, n: Node) -> bool:
        g = self.g
        if n.op != Op.Mul:
            return False
        for a, up in (n.inputs, n.inputs[::-1]):
            am = g.node(a, Op.Mul)
            if am is not None:
                for gate, sg in (am.inputs, am.inputs[::-1]):
                    s = g.node(sg, Op.Sigmoid)
                    if s is not None and s.inputs[0] == gate:
                        self.emit(n, Node.make(Op.GatedAct, [gate, up], n.outputs, n.origin, act="silu"))
                        return True
            pw = g.node(a, Op.Pow)
            if pw is not None and g.scalar(pw.inputs[1]) == 2.0:
                r = g.node(pw.inputs[0], Op.Relu)
                if r is not None:
                    self.emit(n, Node.make(Op.GatedAct, [r.inputs[0], up], n.outputs, n.origin, act="relu2"))
                    return True
        return False

    # -------------------------------------------------------------- attention
    def _through_layout(self, v: str) -> str:
        """Walk back through GQA head expansion (Unsqueeze/Expand/Reshape) and the 3-D key transpose
        to the [b, heads, seq, d] tensor; stop at the 4-D head-split transpose or any compute op."""
        while True:
            p = self.g.prod.get(v)
            if p is None or p.op not in LAYOUT_OPS:
                return v
            if p.op == Op.Transpose and len(p.attr("perm") or ()) == 4:
                return v
            v = p.inputs[0]

    def _scaled(self, v: str) -> tuple[str, float]:
        m = self.g.node(v, Op.Mul)
        if m is not None:
            for x, s in (m.inputs, m.inputs[::-1]):
                sc = self.g.scalar(s)
                if sc is not None:
                    return x, sc
        d = self.g.node(v, Op.Div)
        if d is not None:
            sc = self.g.scalar(d.inputs[1])
            if sc is not None:
                return d.inputs[0], 1.0 / sc
        return v, 1.0

    def attention(self, n: Node) -> bool:
        g = self.g
        if n.op != Op.MatMul:
            return False
        p_v, v_e = n.inputs
        p = p_v
        w = g.node(p, Op.Where)  # Where(IsNaN(sm), 0, sm) guard for fully-masked rows
        if w is not None and g.node(w.inputs[0], Op.IsNaN) is not None:
            p = w.inputs[2]
        sm = g.node(p, Op.Softmax)
        if sm is None or sm.attr("axis", -1) not in (-1, 3):
            return False
        s = sm.inputs[0]
        causal = False
        add = g.node(s, Op.Add)
        if add is not None:
            for sc_v, mask in (add.inputs, add.inputs[::-1]):
                if g.node(sc_v, Op.MatMul) is not None:
                    s, causal = sc_v, True
                    break
            else:
                return False
        qk = g.node(s, Op.MatMul)
        if qk is None:
            return False
        q, s1 = self._scaled(qk.inputs[0])
        kt, s2 = self._scaled(qk.inputs[1])
        # scale may also sit after the score MatMul
        k = self._through_layout(kt)
        v = self._through_layout(v_e)
        inputs = [q, k, v]
        outputs = [n.outputs[0]]
        kc, vc = g.node(k, Op.Concat), g.node(v, Op.Concat)
        params = g.params
        if (kc is not None and vc is not None and len(kc.inputs) == 2 and len(vc.inputs) == 2
                and kc.attr("axis") in (-2, 2) and vc.attr("axis") in (-2, 2)
                and kc.inputs[0] in params and vc.inputs[0] in params):
            inputs = [q, kc.inputs[1], vc.inputs[1], kc.inputs[0], vc.inputs[0]]
            outputs = [n.outputs[0], kc.outputs[0], vc.outputs[0]]
            self.absorbed.update({id(kc), id(vc)})
        self.emit(n, Node.make(Op.Attention, inputs, outputs, n.origin, scale=s1 * s2, causal=int(causal)))
        return True

    def run(self) -> tuple[Function, dict]:
        self.absorbed: set[int] = set()
        rules = (self.attention, self.rope, self.rmsnorm, self.gated, self.linear)
        for n in self.g.fn.nodes:
            for rule in rules:
                if rule(n):
                    break
        return rewrite(self.g.fn, self.replace, drop=self.absorbed), self.counts


def random_inputs(fn: Function, seed: int = 0, dims: dict | None = None, vocab: int | None = None) -> dict:
    """Small random inputs for a function's parameters (symbolic dims get small sizes)."""
    rng = np.random.default_rng(seed)
    dims = {"seq": 5, "past": 3, "batch": 1, **(dims or {})}
    out = {}
    for p in fn.params:
        shape = tuple(d if isinstance(d, int) else dims.get(d, 2) for d in (p.type.shape or (1,)))
        if p.type.dtype.is_int:
            hi = vocab or 32
            if "mask" in p.name:
                out[p.name] = np.ones(shape, p.type.dtype.np)
            elif "position" in p.name:
                out[p.name] = np.broadcast_to(np.arange(shape[-1]), shape).astype(p.type.dtype.np)
            else:
                out[p.name] = rng.integers(0, hi, size=shape).astype(p.type.dtype.np)
        elif p.type.dtype == DType.BOOL:
            out[p.name] = np.ones(shape, bool)
        else:
            out[p.name] = rng.standard_normal(shape).astype(p.type.dtype.np)
    return out


def _vocab_hint(module: Module) -> int | None:
    for n in module.functions[0].nodes:
        if n.op == Op.Gather and n.inputs[0] in module.constants:
            return int(module.constants[n.inputs[0]].type.shape[0])
    return None


def raise_module(module: Module, check: bool = True, rtol: float = 1e-4) -> Module:
    from ..ir.interp import interpret
    from ..ir.verify import verify

    fns, total = [], {}
    for fn in module.functions:
        r = _Raiser(module, fn)
        new_fn, counts = r.run()
        fns.append(new_fn)
        for k, v in counts.items():
            total[k] = total.get(k, 0) + v
        consts = r.consts
    raised = module.replace(functions=tuple(fns), constants=consts,
                            meta={**module.meta, "raised": total})
    from ..ir.core import prune_constants

    raised = prune_constants(raised)
    try:
        verify(raised)
    except Exception as e:  # a raise that breaks SSA order is a bug in a rule: keep the primitive graph
        warnings.warn(f"pattern raising produced an invalid module ({e}); keeping the primitive graph")
        return module.replace(meta={**module.meta, "raising": f"failed verification: {e}"})
    if check:
        for fn in module.functions:
            inputs = random_inputs(fn, vocab=_vocab_hint(module))
            ref = interpret(module, inputs, fn.name)
            got = interpret(raised, inputs, fn.name)
            for k in ref:
                a, b = np.asarray(ref[k], np.float64), np.asarray(got[k], np.float64)
                err = float(np.max(np.abs(a - b))) if a.size else 0.0
                scale = float(np.max(np.abs(a))) if a.size else 0.0
                if a.shape != b.shape or err > rtol * max(scale, 1e-6):
                    msg = f"output {k}: raised graph differs by {err:.3g} (scale {scale:.3g})"
                    warnings.warn(f"pattern raising changed results ({msg}); keeping the primitive graph")
                    return module.replace(meta={**module.meta, "raising": f"failed check: {msg}"})
    return raised
