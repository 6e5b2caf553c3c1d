"""`prune-prefill{keep=0.5,schedule=linear,first_layer=1,revive=true}`: LazyLLM-style progressive
prompt pruning, with revival of pruned tokens from an aux cache (LazyLLM, Fu et al. 2024).

Prefill: layer l processes the active prompt positions A_l (A_0 = all; A_l = A_{l-1} for
l < first_layer). After layer l's attention, the last prompt token's attention over A_l (mean over
query heads) ranks A_l and the top keep_count(l+1) positions form A_{l+1} (kvevict.lazyllm_select:
nested sets, the last token always kept); keep_count = kvevict.lazyllm_keep_counts(seq_len,
schedule), where schedule is kvevict.lazyllm_schedule(n_layers, keep, first_layer) ("linear": 1.0
then linearly down to `keep` at the last layer) or "step" (1.0 before first_layer, `keep` from it on).

Revival (revive=true, the default; LazyLLM's aux cache). Explicit decoder state (DecoderSpec.state,
carried by decode_feeds like the KV cache), for every layer l >= the first pruned layer:
  past.{l}.pos    i64[n_l]          the positions of layer l's KV-cache entries (cache order)
  past.{l}.aux_h  f32[1, a_l, H]    hidden states entering layer l of the tokens parked there
  past.{l}.aux_pos i64[a_l]         their positions (ascending)
Prefill parks the tokens pruned exactly before layer l (their residual stream entering l) in aux_l.
A decode step computes at each layer l the "rows": the new token plus the tokens revived at l.
Layer l's KVEvict{policy=lazyllm} appends the rows' K/V (RoPE at their own positions) to cache l and
attends over the cache with a causal mask by position; then the newest token's attention over cache
l selects, with the prefill rule applied to the current sequence length, the top keep_count(l+1)
tokens (kvevict.lazyllm_next_rows). The selected ones lacking KV at l+1 are this layer's other rows
(their output continues) and members of aux_{l+1} (revived: their parked hidden state is
concatenated to the rows entering l+1); unselected rows are parked in aux_{l+1}. Cached tokens are
never evicted and a token is computed at most once per layer over the whole generation, so cache l
holds at most prompt + generated tokens. Only the new token's row produces logits. When nothing is
revived a step computes what the no-revival decode computes (same rows, same cache).

revive=false: decode is left unchanged. A token pruned before layer p then has KV only for layers
< p for the rest of generation, and decode attends to the kept tokens there.

IR form: every layer from first_layer-1 on becomes KVEvict{policy=lazyllm, layer, schedule}
(semantics in ir/interp.py) taking its cache positions, its row positions and, except the last
layer, the next layer's aux positions; it returns the present positions and (take, park) indices
into concat(rows, aux). The residual stream entering layer l+1 is concat(rows of l, aux_{l+1}) and
Gather'ed by take (rows of l+1) and park (the new aux_{l+1}); positions the same way; RoPE cos/sin
are computed for all positions 0..T-1 in decode and Gather'ed at each layer's row positions (the
prefill's cos/sin already cover the prompt). LOSSY: measured in tests and bench/kv_quality.py.
Positions stay correct because layer 0 is never pruned (first_layer >= 1): the new tokens'
positions start at layer 0's cache length. Batch 1. The TVM backend has no lowering for KVEvict.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir.core import Function, Module, Node, Value, dce_function
from ..ir.decoder import StateKind, StateTensor
from ..ir.enums import KVPolicy
from ..ir.graph import Builder, Graph, rename_inputs
from ..ir.kvevict import lazyllm_schedule
from ..ir.ops import Op
from ..ir.types import DType, TensorType
from .base import PassResult, fresh, used_names
from .quantize_kv import KVPassError, decoder_spec


@dataclass(frozen=True)
class PrunePrefillOptions:
    keep: float = 0.5
    schedule: str = "linear"
    first_layer: int = 1
    revive: bool = True

    def __post_init__(self):
        if not 0.0 < self.keep <= 1.0:
            raise ValueError(f"keep must be in (0, 1], got {self.keep}")
        if self.schedule not in ("linear", "step"):
            raise ValueError(f"schedule must be linear or step, got {self.schedule!r}")
        if self.first_layer < 1:
            raise ValueError(f"first_layer must be >= 1 (layer 0 is never pruned), got {self.first_layer}")

    def fractions(self, n_layers: int) -> tuple[float, ...]:
        if self.first_layer > n_layers:
            raise ValueError(f"first_layer {self.first_layer} > n_layers {n_layers}")
        if self.schedule == "linear":
            return tuple(float(x) for x in lazyllm_schedule(n_layers, self.keep, min(self.first_layer, n_layers)))
        return tuple(1.0 if i < self.first_layer else float(self.keep) for i in range(n_layers))


_NORMS = {Op.RMSNorm, Op.LayerNorm}
_UNIT_DIMS = {Op.Unsqueeze, Op.Squeeze, Op.Reshape, Op.Identity}


def _position_vector(g: Graph, ropes: list[list[Node]]) -> str:
    """The 1-D integer position vector that RoPE's cos/sin are computed from (Range output, or
    Range + past length): the integer input of the Cast that feeds cos/sin, minus unit dims. Checked
    to feed nothing but RoPE cos/sin, so it can be replaced by positions 0..T-1."""
    fn, prod, users, types = g.fn, g.prod, g.users, g.types
    cast = None
    v = ropes[0][0].inputs[1]
    for _ in range(64):
        n = prod.get(v)
        if n is None:
            break
        if n.op == Op.Cast and types[n.inputs[0]].dtype.is_int:
            cast = n
            break
        v = n.inputs[0]
    if cast is None:
        raise KVPassError("prune-prefill: cannot find the integer positions RoPE's cos/sin are computed from")
    v = cast.inputs[0]
    while prod.get(v) is not None and prod[v].op in _UNIT_DIMS:
        v = prod[v].inputs[0]
    t = types.get(v)
    if t is None or not t.dtype.is_int or t.shape is None or len(t.shape) != 1:
        raise KVPassError(f"prune-prefill: rotary positions %{v} are not a 1-D integer vector ({t})")
    rope_cs = {id(r): r for rs in ropes for r in rs}
    stack, seen = [v], set()
    while stack:
        x = stack.pop()
        if x in seen:
            continue
        seen.add(x)
        for u in users.get(x, []):
            if id(u) in rope_cs:
                if u.inputs[0] == x:
                    raise KVPassError(f"prune-prefill: positions %{v} reach RoPE's data input")
                continue
            if u.op in (Op.Attention, Op.KVEvict) or not u.outputs:
                raise KVPassError(f"prune-prefill: positions %{v} feed {u.label}, not only RoPE cos/sin")
            stack.extend(o.name for o in u.outputs)
    if fn.results and any(r in seen for r in fn.results):
        raise KVPassError(f"prune-prefill: positions %{v} reach a result")
    return v


def _rewrite(fn: Function, consts: dict, taken: set, *, ids: str, fractions, first: int, decode: bool,
             state: dict | None) -> Function:
    """Rewrite prefill (decode=False) or decode (decode=True) for pruning; `state` (revive) maps
    layer -> {pos_in, pos_out, h_in, h_out, p_in, p_out} names (the *_in are decode parameters)."""
    if decode and not state:
        raise ValueError("decode is only rewritten with revival state")
    g = Graph(fn)
    types = g.types
    b = Builder(consts, taken)
    attn = [n for n in fn.nodes if n.op == Op.Attention]
    L = len(attn)
    resid, ropes = [], []
    for a in attn:
        norm = g.back_to(a.inputs[0], _NORMS)
        r = [g.back_to(a.inputs[i], {Op.RoPE}) for i in (0, 1)]
        if norm is None or None in r:
            raise KVPassError(f"prune-prefill: cannot find the norm / RoPE of {a.label}; unsupported layer form")
        resid.append(norm.inputs[0])
        ropes.append(r)
    final_norm = g.back_to(fn.results[0], _NORMS)
    if final_norm is None:
        raise KVPassError(f"prune-prefill: cannot find the final norm before @{fn.name}'s logits")
    resid_final = final_norm.inputs[0]

    i64 = lambda shape: TensorType(DType.I64, shape)  # noqa: E731

    zero, one = b.const("lazy.zero", np.array(0, np.int64)), b.const("lazy.one", np.array(1, np.int64))
    head = []

    def emit(op, inputs, base, ttype, into=None, **attrs):
        return b.emit(head if into is None else into, op, inputs, base, ttype, **attrs)

    n_new = emit(Op.Squeeze, [emit(Op.Shape, [ids], "lazy.new1d", i64((1,)), start=1, end=2)], "lazy.new", i64(()))
    if decode:
        past_k0 = attn[0].inputs[3] if len(attn[0].inputs) > 3 else ""
        if not past_k0:
            raise KVPassError(f"prune-prefill: @{fn.name}'s first Attention has no past KV input")
        past_len = emit(Op.Squeeze, [emit(Op.Shape, [past_k0], "lazy.past1d", i64((1,)), start=2, end=3)],
                        "lazy.past", i64(()))
    else:
        past_len = zero
    total = emit(Op.Add, [past_len, n_new], "lazy.total", i64(()))
    new_pos = emit(Op.Range, [past_len, total, one], "lazy.new_pos", i64(("seq",)))
    full_pos = emit(Op.Range, [zero, past_len, one], "lazy.cached_pos", i64(("past",)))
    subst: dict[str, str] = {}
    if decode:  # cos/sin for every position 0..T-1, gathered per layer below
        pvec = _position_vector(g, ropes)
        all_pos = emit(Op.Range, [zero, total, one], "lazy.all_pos", i64(("total",)))
        if types[pvec].dtype != DType.I64:
            all_pos = emit(Op.Cast, [all_pos], "lazy.all_pos_cast", TensorType(types[pvec].dtype, ("total",)),
                           to=types[pvec].dtype.value)
        subst[pvec] = all_pos

    empty_pos = b.const("lazy.no_pos", np.zeros(0, np.int64))
    rows_pos = {first - 1: new_pos}  # positions of the rows each layer computes
    take, park = {}, {}
    new_attn, after = {}, {}  # id(attention) -> KVEvict; value -> nodes to emit right after it
    for l in range(first - 1, L):
        a = attn[l]
        last = l == L - 1
        past_pos = full_pos if l == first - 1 else (state[l]["pos_in"] if decode else "")
        ins = list(a.inputs) + [""] * (5 - len(a.inputs)) + [past_pos, rows_pos[l]]
        if not last:
            ins.append(state[l + 1]["p_in"] if decode else empty_pos)
        pp = state[l]["pos_out"] if (state and l >= first) else b.fresh(f"lazy.pos.{l}")
        outs = list(a.outputs) + [Value(pp, i64(("kv",)))]
        if not last:
            take[l], park[l] = b.fresh(f"lazy.take.{l + 1}"), b.fresh(f"lazy.park.{l + 1}")
            outs += [Value(take[l], i64((f"n{l + 1}",))), Value(park[l], i64((f"a{l + 1}",)))]
        new_attn[id(a)] = Node.make(Op.KVEvict, ins, outs, a.origin, **a.attr_dict, policy=KVPolicy.LAZYLLM.value, layer=l,
                                    schedule=fractions)
        if last:
            continue
        # positions of layer l+1's rows and of its new aux cache
        seq = after.setdefault(a.outputs[0].name, [])
        cat = rows_pos[l]
        if decode:
            cat = emit(Op.Concat, [rows_pos[l], state[l + 1]["p_in"]], f"lazy.cand_pos.{l + 1}", i64(("c",)),
                       into=seq, axis=0)
        rows_pos[l + 1] = emit(Op.Gather, [cat, take[l]], f"lazy.rows_pos.{l + 1}", i64((f"n{l + 1}",)),
                               into=seq, axis=0)
        if state:
            seq.append(Node.make(Op.Gather, [cat, park[l]], [Value(state[l + 1]["p_out"], i64(("aux",)))], axis=0))
        # the residual stream entering layer l+1: rows of l (+ aux_{l+1}) -> gathered by take / park
        x = resid[l + 1]
        xt = types[x]
        seq = after.setdefault(x, [])
        src = x
        if decode:
            src = emit(Op.Concat, [x, state[l + 1]["h_in"]], f"{x}.cand", TensorType(xt.dtype, None), into=seq,
                       axis=1)
        subst[x] = emit(Op.Gather, [src, take[l]], f"{x}.lazy{l + 1}", TensorType(xt.dtype, None), into=seq,
                        axis=1)
        if state:
            seq.append(Node.make(Op.Gather, [src, park[l]],
                                 [Value(state[l + 1]["h_out"], TensorType(xt.dtype, (1, "aux", xt.shape[-1])))],
                                 axis=1))
    if decode:  # logits only for the new tokens' rows (the revived rows of the last layer are skipped)
        seq = after.setdefault(resid_final, [])
        is_new = emit(Op.GreaterOrEqual, [rows_pos[L - 1], past_len], "lazy.is_new", TensorType(DType.BOOL, None),
                      into=seq)
        nz = emit(Op.NonZero, [is_new], "lazy.new_rows2d", i64((1, "n")), into=seq)
        flat = b.const("lazy.flat", np.array([-1], np.int64))
        idx = emit(Op.Reshape, [nz, flat], "lazy.new_rows", i64(("n",)), into=seq)
        subst[resid_final] = emit(Op.Gather, [resid_final, idx], f"{resid_final}.new_rows",
                                  TensorType(types[resid_final].dtype, None), into=seq, axis=1)

    # RoPE cos/sin: layer l >= first at its row positions; in decode, layers < first at the new positions
    rope_pos = {}
    for l in range(L):
        if l >= first:
            rope_pos.update({id(r): (l, rows_pos[l]) for r in ropes[l]})
        elif decode:
            rope_pos.update({id(r): (l, new_pos) for r in ropes[l]})
    cs_made: dict[tuple[int, str], str] = {}
    nodes = list(head)
    for n in fn.nodes:
        n = new_attn.get(id(n), n)
        lp = rope_pos.get(id(n))
        if lp is not None:
            l, pos = lp
            ins = list(n.inputs)
            for j in (1, 2):
                c = ins[j]
                if (l, c) not in cs_made:
                    cs_made[(l, c)] = emit(Op.Gather, [subst.get(c, c), pos], f"{c}.lazy{l}",
                                           TensorType(types[c].dtype, None), into=nodes, axis=-2)
                ins[j] = cs_made[(l, c)]
            n = Node(n.op, tuple(ins), n.outputs, n.attrs, n.origin)
        n = rename_inputs(n, subst)
        nodes.append(n)
        for o in n.outputs:
            nodes.extend(after.get(o.name, []))
    params, results = fn.params, fn.results
    if state:
        lay = sorted(state)
        if decode:
            params = params + tuple(v for l in lay for v in (
                Value(state[l]["pos_in"], i64(("kv",))),
                Value(state[l]["h_in"], TensorType(types[resid[l]].dtype, (1, "aux", types[resid[l]].shape[-1]))),
                Value(state[l]["p_in"], i64(("aux",)))))
        results = results + tuple(state[l][k] for l in lay for k in ("pos_out", "h_out", "p_out"))
    return dce_function(fn.with_nodes(nodes, params=params, results=results))


def run(module: Module, opts: PrunePrefillOptions = PrunePrefillOptions()) -> PassResult:
    dec = decoder_spec(module, "prune-prefill")
    if dec.state:
        raise KVPassError("prune-prefill: the decoder already carries extra state (another pass's); not composable")
    pre = module.func(dec.prefill)
    L = sum(n.op == Op.Attention for n in pre.nodes)
    if L < 2:
        raise KVPassError("prune-prefill: needs >= 2 Attention layers in prefill")
    fractions = opts.fractions(L)
    first = next((i for i, f in enumerate(fractions) if f < 1.0), L)
    if first == L:
        return PassResult(module, {"pruned_layers": 0, "schedule": list(fractions)})
    taken = used_names(module)
    consts = dict(module.constants)
    state = None
    if opts.revive:
        state = {l: {k: fresh(f"{io}.{l}.{what}", taken) for k, io, what in (
            ("pos_in", "past", "pos"), ("pos_out", "present", "pos"), ("h_in", "past", "aux_h"),
            ("h_out", "present", "aux_h"), ("p_in", "past", "aux_pos"), ("p_out", "present", "aux_pos"))}
            for l in range(first, L)}
    kw = dict(ids=dec.input_ids, fractions=fractions, first=first, state=state)
    fns = {dec.prefill: _rewrite(pre, consts, taken, decode=False, **kw)}
    if opts.revive:
        fns[dec.decode] = _rewrite(module.func(dec.decode), consts, taken, decode=True, **kw)
    meta = dict(module.meta)
    info = dict(keep=opts.keep, schedule=opts.schedule, first_layer=opts.first_layer, fractions=list(fractions),
                revival=bool(opts.revive))
    if state:
        meta = dec.with_state([StateTensor(state[l][a], state[l][b], kind, l) for l in sorted(state)
                               for a, b, kind in (("pos_in", "pos_out", StateKind.POSITIONS),
                                                  ("h_in", "h_out", StateKind.AUX_HIDDEN),
                                                  ("p_in", "p_out", StateKind.AUX_POSITIONS))]).into(meta)
        # cache positions per layer (eval.py counts the rows each decode step computes from them)
        info["positions"] = {str(l): state[l]["pos_out"] for l in sorted(state)}
        info["aux_positions"] = {str(l): state[l]["p_out"] for l in sorted(state)}
    meta["prune_prefill"] = info
    out = module.replace(functions=tuple(fns.get(f.name, f) for f in module.functions), constants=consts, meta=meta)
    return PassResult(out, {"pruned_layers": L - first, "schedule": list(fractions), "revive": bool(opts.revive),
                            "projection_work_fraction": float(np.mean(fractions))})
