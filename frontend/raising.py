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
    def _through_layout(self, v: str) -> tuple[str, int]:
        """Walk back through GQA head expansion (Unsqueeze/Expand/Reshape) and the key transpose to
        the [b, heads, seq, d] tensor; stop at the 4-D head-split transpose or any compute op. Also
        returns how many last-two-axes swaps were passed (the key operand of q @ k^T has one: a 3-D
        (0, 2, 1) in dynamo exports, a 4-D (0, 1, 3, 2) after the head expansion in TorchScript ones)."""
        swaps = 0
        while True:
            p = self.g.prod.get(v)
            if p is None or p.op not in LAYOUT_OPS:
                return v, swaps
            if p.op == Op.Transpose:
                perm = tuple(p.attr("perm") or ())
                if perm == (0, 1, 3, 2) or perm == (0, 2, 1) and len(perm) == 3:
                    swaps += 1
                elif len(perm) == 4:
                    return v, swaps
            v = p.inputs[0]

    def _copy_of(self, v: str) -> str:
        """The value `v` copies unchanged through Identity or one-input Concat (TorchScript exports
        route the first layer's past key through `Concat(past)`)."""
        while True:
            p = self.g.prod.get(v)
            if p is None or not (p.op == Op.Identity or p.op == Op.Concat and len(p.inputs) == 1):
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

    def _not_causal(self, mask: str) -> str | None:
        """Why the additive mask `mask` is not the plain causal mask Attention{causal} means, or None.

        The mask is evaluated (it depends only on shapes) at a length past every integer constant in
        its subgraph, so a sliding window (Mistral) shows up. Masks that read a runtime input other
        than token ids (an attention_mask) cannot be evaluated here and are taken as causal.
        """
        cache = self.__dict__.setdefault("_mask_verdicts", {})
        if mask in cache:
            return cache[mask]
        g, nodes, params, seen, stack = self.g, [], set(), set(), [mask]
        pnames = {p.name: p for p in g.fn.params}
        while stack:
            v = stack.pop()
            if v in seen:
                continue
            seen.add(v)
            if v in pnames:
                params.add(v)
            nd = g.prod.get(v)
            if nd is not None:
                nodes.append(nd)
                stack.extend(i for i in nd.inputs if i)
        verdict = None
        if not any("mask" in p for p in params):  # past K/V params only contribute their shapes
            ints = [abs(int(c.data.reshape(-1)[0])) for v in seen if (c := self.consts.get(v)) is not None
                    and c.data is not None and c.data.size == 1 and np.issubdtype(c.data.dtype, np.integer)]
            length = int(min(max([16] + [c + 2 for c in ints if c < 100_000]), 4100))
            verdict = self._causal_verdict(mask, [pnames[p] for p in pnames if p in params],
                                           [nd for nd in g.fn.nodes if nd in nodes], length)
        cache[mask] = verdict
        return verdict

    def _causal_verdict(self, mask: str, params: list, nodes: list, length: int) -> str | None:
        from ..ir.interp import interpret

        sub = Function("mask", tuple(params), tuple(nodes), (mask,))
        used = {i for nd in nodes for i in nd.inputs if i in self.consts}
        feeds = {p.name: np.zeros(tuple(d if isinstance(d, int) else (0 if "past" in d else 1 if "batch" in d
                                                                       else length) for d in p.type.shape),
                                  p.type.dtype.np) for p in params}
        try:
            m = np.asarray(interpret(Module("mask", (sub,), {k: self.consts[k] for k in used}), feeds, "mask")[mask])
        except Exception:  # not evaluable on its own: keep the causal reading (checked numerically later)
            return None
        if m.ndim < 2:
            return None
        m = m.reshape(-1, *m.shape[-2:])[0]
        lq, lk = m.shape
        visible = m > -1e30
        allowed = np.arange(lk)[None, :] <= np.arange(lq)[:, None] + (lk - lq)
        if lq < 2 or (visible == allowed).all():
            return None
        sees = int(visible[-1].sum())
        if (visible <= allowed).all() and sees < lk:
            return (f"the mask lets the last of {lq} queries see only {sees} keys: sliding-window attention "
                    f"(window {sees}) is not supported (ternc's Attention is plain causal)")
        return f"the attention mask is not causal at length {lq}; only causal masks are supported"

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
            problem = self._not_causal(mask)
            if problem:
                from .onnx_import import FrontendError

                raise FrontendError(f"attention at {n.label}: {problem}")
        qk = g.node(s, Op.MatMul)
        if qk is None:
            return False
        q, s1 = self._scaled(qk.inputs[0])
        kt, s2 = self._scaled(qk.inputs[1])
        # scale may also sit after the score MatMul
        k, k_swaps = self._through_layout(kt)
        v, v_swaps = self._through_layout(v_e)
        if k_swaps != 1 or v_swaps != 0:
            return False
        inputs = [q, k, v]
        outputs = [n.outputs[0]]
        kc, vc = g.node(k, Op.Concat), g.node(v, Op.Concat)
        params = g.params
        if (kc is not None and vc is not None and len(kc.inputs) == 2 and len(vc.inputs) == 2
                and kc.attr("axis") in (-2, 2) and vc.attr("axis") in (-2, 2)
                and self._copy_of(kc.inputs[0]) in params and self._copy_of(vc.inputs[0]) in params):
            inputs = [q, kc.inputs[1], vc.inputs[1], self._copy_of(kc.inputs[0]), self._copy_of(vc.inputs[0])]
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


# ------------------------------------------------------------------------------ the load-time check
# Sizes of the differential check: small symbolic dims, and a hard cap on what the drawn inputs may
# occupy (a declared 1 GiB input is never allocated: the check is skipped and the primitive graph kept).
CHECK_DIMS = {"seq": 5, "past": 3, "batch": 1}
CHECK_INPUT_BYTES = 64 << 20
MAX_DRAWS = 12

# Integer inputs that select along an axis of another operand: (op, input index) -> data input index.
_INDEX_OPERANDS = {(Op.Gather, 1): 0, (Op.GatherElements, 1): 0, (Op.GatherND, 1): 0,
                   (Op.ScatterElements, 1): 0, (Op.ScatterND, 1): 0}
# Integer inputs that are axes (distinct, small), shapes/repeats (ones: broadcast-neutral) or counts.
_AXES_OPERANDS = {(Op.Squeeze, 1), (Op.Unsqueeze, 1), (Op.ReduceSum, 1), (Op.ReduceMean, 1), (Op.ReduceMax, 1),
                  (Op.ReduceMin, 1), (Op.ReduceProd, 1), (Op.CumSum, 1), (Op.Slice, 3)}
_ONES_OPERANDS = {(Op.Expand, 1), (Op.Tile, 1), (Op.ConstantOfShape, 0), (Op.TopK, 1), (Op.Slice, 4),
                  (Op.Range, 2)}
_ZERO_OPERANDS = {(Op.Slice, 1), (Op.Pad, 1), (Op.Range, 0)}
_PASS_THROUGH = {Op.Unsqueeze, Op.Squeeze, Op.Reshape, Op.Cast, Op.Identity, Op.Expand, Op.Transpose}


def _op_of(name: str):
    try:
        return Op(name)
    except ValueError:
        return None


def _roles(fn: Function) -> dict[str, tuple]:
    """How each parameter is used, for drawing values the graph can run on: ("index", data, axis),
    ("axes",), ("ones",), ("zeros",) or absent (a plain value)."""
    roles: dict[str, tuple] = {}
    params = {p.name for p in fn.params}
    # a parameter reshaped/cast on its way to an index operand is still an index (into an unknown shape)
    origin = {p: p for p in params}
    for n in fn.nodes:
        if n.op in _PASS_THROUGH and n.inputs and n.inputs[0] in origin:
            origin[n.outputs[0].name] = origin[n.inputs[0]]
        elif n.op == Op.Where and any(i in origin for i in n.inputs[1:]):  # an ignore-index replaced
            origin[n.outputs[0].name] = next(origin[i] for i in n.inputs[1:] if i in origin)
        for k, v in enumerate(n.inputs):
            if v in origin and v not in params and (n.op, k) in _INDEX_OPERANDS:
                roles.setdefault(origin[v], ("index", None, 0, n.op))
    for n in fn.nodes:
        for k, v in enumerate(n.inputs):
            if v not in params or v in roles:
                continue
            key = (n.op, k)
            if key in _INDEX_OPERANDS:
                roles[v] = ("index", n.inputs[_INDEX_OPERANDS[key]], int(n.attr("axis", 0) or 0), n.op)
            elif key == (Op.Reshape, 1):
                roles[v] = ("reshape", n.inputs[0])
            elif key in _AXES_OPERANDS:
                roles[v] = ("axes",)
            elif key in _ONES_OPERANDS:
                roles[v] = ("ones",)
            elif key in _ZERO_OPERANDS:
                roles[v] = ("zeros",)
    return roles


def _concrete_shape(shape, dims: dict) -> tuple[int, ...]:
    if shape is None:
        return (1,)
    return tuple(d if isinstance(d, int) else int(dims.get(d, dims.get("?", 2))) for d in shape)


def random_inputs(fn: Function, seed: int = 0, dims: dict | None = None, vocab: int | None = None,
                  module: Module | None = None) -> dict:
    """Small random inputs for a function's parameters: symbolic dims get small sizes (`dims`, else
    seq=5, past=3, batch=1, others 2), scalar parameters stay scalars, token ids fall in the
    vocabulary, and integer inputs used as indices/axes/shapes/counts get values the consuming op
    accepts (index ranges need `module` when the indexed operand is a constant)."""
    rng = np.random.default_rng(seed)
    dims = {**CHECK_DIMS, **(dims or {})}
    shapes = {p.name: _concrete_shape(p.type.shape, dims) for p in fn.params}
    roles = _roles(fn)
    consts = module.constants if module is not None else {}
    out = {}
    for p in fn.params:
        shape, dt = shapes[p.name], p.type.dtype
        role = roles.get(p.name)
        if dt.is_int:
            if role and role[0] == "index":
                data = role[1]
                dshape = shapes.get(data) or (consts[data].type.shape if data in consts else None) if data else None
                axis = role[2] if role[3] != Op.GatherND else 0
                size = None
                if dshape is not None and -len(dshape) <= axis < len(dshape) and isinstance(dshape[axis], int):
                    size = dshape[axis]
                if role[3] == Op.GatherND and shape:  # index tuples: each entry in range of its data axis
                    hi = min((d for d in (dshape or ()) if isinstance(d, int)), default=1)
                    size = hi
                out[p.name] = rng.integers(0, max(1, size or 1), size=shape).astype(dt.np)
            elif role and role[0] == "reshape":
                out[p.name] = _reshape_target(shapes.get(role[1]) or (consts[role[1]].type.shape if role[1] in consts
                                                                       else None), shape, dt.np)
            elif role and role[0] == "axes":
                out[p.name] = np.arange(int(np.prod(shape)), dtype=dt.np).reshape(shape)
            elif role and role[0] in ("ones", "zeros"):
                out[p.name] = (np.ones if role[0] == "ones" else np.zeros)(shape, dt.np)
            elif "mask" in p.name:
                out[p.name] = np.ones(shape, dt.np)
            elif "position" in p.name:
                out[p.name] = np.broadcast_to(np.arange(shape[-1] if shape else 1), shape).astype(dt.np)
            else:
                hi = vocab or 32
                if dt.np != np.dtype(np.bool_):
                    hi = min(hi, int(np.iinfo(dt.np).max))
                out[p.name] = rng.integers(0, hi, size=shape).astype(dt.np)
        elif dt == DType.BOOL:
            out[p.name] = np.ones(shape, bool)
        elif dt == DType.STR:
            out[p.name] = np.full(shape, "a", dtype=object)
        else:
            out[p.name] = rng.standard_normal(shape, dtype=np.float32).astype(dt.np)
    return out


def _reshape_target(data_shape, shape, dtype) -> np.ndarray:
    """A Reshape target of the parameter's length that fits the data: keep leading dims, fold the rest
    into the last entry (or pad with ones); zeros (copy every dim) when the data shape is unknown."""
    n = int(shape[0]) if len(shape) == 1 else 0
    if data_shape is None or not all(isinstance(d, int) for d in data_shape) or len(shape) != 1:
        return np.zeros(shape, dtype)
    dims = list(data_shape)
    if n <= len(dims):
        target = dims[:max(n - 1, 0)] + ([int(np.prod(dims[max(n - 1, 0):]))] if n else [])
    else:
        target = dims + [1] * (n - len(dims))
    return np.asarray(target, dtype)


def _vocab_hint(module: Module) -> int | None:
    for n in module.functions[0].nodes:
        if n.op == Op.Gather and n.inputs[0] in module.constants and module.constants[n.inputs[0]].type.shape:
            return int(module.constants[n.inputs[0]].type.shape[0])
    return None


def _window_hint(fn: Function, module: Module) -> int | None:
    """The largest small integer constant that a comparison of positions involves (a sliding-window
    length, e.g. `kv_idx > q_idx - window`): the check then also runs past that many tokens."""
    prod = fn.producers()
    cmp_ops = {Op.Less, Op.LessOrEqual, Op.Greater, Op.GreaterOrEqual}
    best = None
    seen: set[str] = set()
    stack = [i for n in fn.nodes if n.op in cmp_ops for i in n.inputs]
    while stack:
        v = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        c = module.constants.get(v)
        if c is not None and c.data is not None and c.data.size == 1 and c.type.dtype.is_int:
            val = abs(int(np.asarray(c.data).reshape(-1)[0]))
            if 2 < val <= 4096 and (best is None or val > best):
                best = val
            continue
        n = prod.get(v)
        if n is not None and n.op in (Op.Add, Op.Sub, Op.Neg, Op.Cast, Op.Unsqueeze, Op.Reshape, Op.Expand):
            stack.extend(i for i in n.inputs if i)
    return best


def _dim_names(fn: Function) -> list[str]:
    names = []
    for p in fn.params:
        for d in p.type.shape or ():
            if isinstance(d, str) and d not in names:
                names.append(d)
    return names


def _dim_candidates(fn: Function, base: dict) -> list[dict]:
    """Symbolic-dim assignments to try, most plausible first. Dims other than seq/past/batch are
    unknown relations (a mask over past+seq, a TorchScript export's numbered axes): try them all
    equal to past+seq, to seq, to past, then to 1; with and without a past."""
    unknown = [d for d in _dim_names(fn) if d not in base]
    out = []
    for past in (base["past"], 0):
        b = {**base, "past": past}
        for rel in ("total", "seq", "past", "one"):
            val = {"total": b["seq"] + past, "seq": b["seq"], "past": past, "one": 1}[rel]
            out.append({**b, **{d: val for d in unknown}, "?": val})
            if not unknown:
                break
    uniq = []
    for c in out:
        if c not in uniq:
            uniq.append(c)
    return uniq


def _input_bytes(fn: Function, dims: dict) -> int:
    total = 0
    for p in fn.params:
        shape = _concrete_shape(p.type.shape, dims)
        total += int(np.prod(shape, dtype=np.float64)) * max(p.type.dtype.np.itemsize, 1)
    return total


def _compare(ref: dict, got: dict, rtol: float) -> str | None:
    for k in ref:
        if k not in got:
            return f"output {k}: missing from the raised graph"
        a, b = np.asarray(ref[k]), np.asarray(got[k])
        if a.shape != b.shape:
            return f"output {k}: shape {list(b.shape)} vs {list(a.shape)}"
        if a.dtype == object or b.dtype == object:
            if not np.array_equal(a, b):
                return f"output {k}: values differ"
            continue
        a, b = a.astype(np.float64), b.astype(np.float64)
        if not np.array_equal(np.isnan(a), np.isnan(b)) or not np.array_equal(np.isinf(a), np.isinf(b)) \
                or not np.array_equal(a[np.isinf(a)], b[np.isinf(b)]):
            return f"output {k}: NaN/inf in different places"
        fin = np.isfinite(a)
        if not fin.any():
            continue
        err = float(np.max(np.abs(a[fin] - b[fin])))
        scale = float(np.max(np.abs(a[fin])))
        if err > rtol * max(scale, 1e-6):
            return f"output {k}: raised graph differs by {err:.3g} (scale {scale:.3g})"
    return None


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return f"{type(e).__name__}: {s.splitlines()[0][:300] if s else ''}"


def differential_check(module: Module, raised: Module, rtol: float = 1e-4) -> str | None:
    """None when the raised module computes what the primitive one does on drawn inputs, else why not
    (a mismatch, an exception in the raised graph, or inputs that could not be drawn). Runs every
    function at small sizes and, when the graph compares positions against a constant (a sliding
    window), again past that length."""
    from ..ir.interp import interpret

    vocab = _vocab_hint(module)
    for fn in module.functions:
        window = _window_hint(fn, module)
        sizes = [dict(CHECK_DIMS)]
        if window is not None:
            # beyond the window: through the past when there is one, else through seq
            names = _dim_names(fn)
            if "past" in names:
                sizes.append({**CHECK_DIMS, "past": window + 2})
            else:
                sizes.append({**CHECK_DIMS, "seq": window + 3})
        for size in sizes:
            ran, last = False, None
            for dims in _dim_candidates(fn, size)[:MAX_DRAWS]:
                need = _input_bytes(fn, dims)
                if need > CHECK_INPUT_BYTES:
                    last = f"inputs would take {need / 2**20:.0f} MiB (check budget {CHECK_INPUT_BYTES >> 20} MiB)"
                    continue
                inputs = random_inputs(fn, dims=dims, vocab=vocab, module=module)
                try:
                    with np.errstate(all="ignore"):
                        ref = interpret(module, inputs, fn.name)
                except Exception as e:  # these inputs do not suit the graph: draw others
                    last = f"the primitive graph cannot run on drawn inputs ({_first_line(e)})"
                    continue
                ran = True
                try:
                    with np.errstate(all="ignore"):
                        got = interpret(raised, inputs, fn.name)
                except Exception as e:
                    return f"@{fn.name}: the raised graph fails where the primitive one runs ({_first_line(e)})"
                sized = ", ".join(f"{k}={v}" for k, v in dims.items() if k in _dim_names(fn))
                msg = _compare(ref, got, rtol)
                if msg:
                    return f"@{fn.name}{' (' + sized + ')' if sized else ''}: {msg}"
                break
            if not ran:
                return f"@{fn.name}: check could not run: {last}"
    return None


def raise_module(module: Module, check: bool = True, rtol: float = 1e-4) -> Module:
    """Raise patterns; with `check`, keep the raised module only if `differential_check` passes, else
    keep the primitive one and say why in meta["raising"] (with a warning). A module where nothing was
    raised is returned as it came (meta["raised"] = {}), without running anything."""
    from ..ir.verify import verify

    fns, total = [], {}
    consts = dict(module.constants)
    for fn in module.functions:
        r = _Raiser(module.replace(constants=consts), fn)
        new_fn, counts = r.run()
        fns.append(new_fn)
        for k, v in counts.items():
            total[k] = total.get(k, 0) + v
        consts = r.consts
    if not total:
        return module.replace(meta={**module.meta, "raised": {}})
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
        problem = differential_check(module, raised, rtol)
        if problem:
            warnings.warn(f"pattern raising not kept ({problem}); keeping the primitive graph")
            return module.replace(meta={**module.meta, "raising": f"failed check: {problem}"})
    return raised
