"""`prune-prefill{keep=0.5,schedule=linear,first_layer=1}`: LazyLLM-style progressive prompt pruning.

Rewrites the decoder's `prefill` entry (decode and main are unchanged). Layer l processes the active
prompt positions A_l (A_0 = all; A_l = A_{l-1} for l < first_layer). After layer l's attention, the
last prompt token's attention over A_l (mean over query heads) ranks A_l and the top
keep_count(l+1) positions form A_{l+1} (kvevict.lazyllm_select: nested sets, the last token always
kept); keep_count = kvevict.lazyllm_keep_counts(prompt_len, schedule), where schedule is
kvevict.lazyllm_schedule(n_layers, keep, first_layer) ("linear": 1.0 then linearly down to `keep`
at the last layer) or "step" (1.0 before first_layer, `keep` from it on).

IR form: layer l's Attention becomes KVEvict{policy=lazyllm, layer=l, schedule} with the active
positions as extra input and (rows, next_active) as extra outputs; the residual stream entering
layer l+1 is Gather'ed to `rows`, and layer l+1's RoPE cos/sin are Gather'ed at the kept absolute
positions (so kept tokens keep their original positions and causal order).

Simplification vs LazyLLM (stated): NO REVIVAL. A token pruned before layer p has KV only for layers
< p for the rest of generation: deeper layers' caches hold only the kept tokens, and decode steps
attend to them there. (LazyLLM re-selects at every step and revives pruned tokens from an aux cache
of hidden states, at most one computation per token and layer; ir/kvevict.pruned_at_layer /
revival_layers define that bookkeeping but this pass does not implement revival.) LOSSY: the error
is measured in tests and bench/kv_quality.py. Decode positions stay correct because layer 0 is never
pruned (first_layer >= 1) and decode reads the position from layer 0's cache length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir.core import Const, Module, Node, Value
from ..ir.kvevict import lazyllm_schedule
from ..ir.ops import Op
from ..ir.types import DType, TensorType
from .base import PassResult, fresh, used_names
from .quantize_kv import KVPassError, decoder_meta


@dataclass(frozen=True)
class PrunePrefillOptions:
    keep: float = 0.5
    schedule: str = "linear"
    first_layer: int = 1

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


def _back_to(fn_prod, start: str, ops: set) -> Node | None:
    """Nearest producer with op in `ops`, following first inputs back from value `start`."""
    v = start
    for _ in range(64):
        n = fn_prod.get(v)
        if n is None:
            return None
        if n.op in ops:
            return n
        v = n.inputs[0]
    return None


def run(module: Module, opts: PrunePrefillOptions = PrunePrefillOptions()) -> PassResult:
    dec = decoder_meta(module, "prune-prefill")
    fn = module.func(dec["prefill"])
    prod = fn.producers()
    attn = [n for n in fn.nodes if n.op == Op.Attention]
    L = len(attn)
    if L < 2:
        raise KVPassError("prune-prefill: needs >= 2 Attention layers in prefill")
    fractions = opts.fractions(L)
    first = next((i for i, f in enumerate(fractions) if f < 1.0), L)
    if first == L:
        return PassResult(module, {"pruned_layers": 0, "schedule": list(fractions)})
    taken = used_names(module)
    types = fn.value_types()
    consts = dict(module.constants)

    # per layer: the residual stream value entering it, and its RoPE nodes
    resid, ropes = [], []
    for a in attn:
        norm = _back_to(prod, a.inputs[0], {Op.RMSNorm, Op.LayerNorm})
        r = [_back_to(prod, a.inputs[i], {Op.RoPE}) for i in (0, 1)]
        if norm is None or None in r:
            raise KVPassError(f"prune-prefill: cannot find the norm / RoPE of {a.label}; unsupported layer form")
        resid.append(norm.inputs[0])
        ropes.append(r)

    # active_0 = arange(prompt_len)
    ids = dec["input_ids"]
    i64 = lambda shape: TensorType(DType.I64, shape)  # noqa: E731
    n1, n0 = fresh("lazy.len1d", taken), fresh("lazy.len", taken)
    c0, c1 = fresh("lazy.zero", taken), fresh("lazy.one", taken)
    consts[c0], consts[c1] = Const.of(np.array(0, np.int64)), Const.of(np.array(1, np.int64))
    active = {first - 1: fresh(f"lazy.active.{first - 1}", taken)}
    head = [Node.make(Op.Shape, [ids], [Value(n1, i64((1,)))], start=1, end=2),
            Node.make(Op.Squeeze, [n1], [Value(n0, i64(()))]),
            Node.make(Op.Range, [c0, n0, c1], [Value(active[first - 1], i64(("seq",)))])]
    rows = {}
    for l in range(first - 1, L - 1):
        rows[l + 1] = fresh(f"lazy.rows.{l + 1}", taken)
        active[l + 1] = fresh(f"lazy.active.{l + 1}", taken)

    new_attn = {}
    for l in range(first - 1, L - 1):
        a = attn[l]
        ins = list(a.inputs) + [""] * (5 - len(a.inputs)) + [active[l]]
        outs = list(a.outputs) + [Value(rows[l + 1], i64((f"n{l + 1}",))), Value(active[l + 1], i64((f"n{l + 1}",)))]
        new_attn[id(a)] = Node.make(Op.KVEvict, ins, outs, a.origin, **a.attr_dict, policy="lazyllm", layer=l,
                                    schedule=fractions)
    # residual stream entering layer l >= first: gathered to this layer's rows right after it is made
    gather_x, resid_subst = {}, {}
    for l in range(first, L):
        x = resid[l]
        gx = fresh(f"{x}.lazy{l}", taken)
        gather_x[x] = Node.make(Op.Gather, [x, rows[l]], [Value(gx, TensorType(types[x].dtype, None))], axis=1)
        resid_subst[x] = gx
    # RoPE cos/sin of layer l >= first: gathered at the layer's absolute positions
    rope_layer = {id(r): l for l in range(first, L) for r in ropes[l]}
    cs_made: dict[tuple[int, str], str] = {}
    nodes = list(head)
    for n in fn.nodes:
        n = new_attn.get(id(n), n)
        l = rope_layer.get(id(n))
        if l is not None:
            ins = list(n.inputs)
            for j in (1, 2):
                c = ins[j]
                if (l, c) not in cs_made:
                    gc = fresh(f"{c}.lazy{l}", taken)
                    nodes.append(Node.make(Op.Gather, [c, active[l]], [Value(gc, TensorType(types[c].dtype, None))],
                                           axis=-2))
                    cs_made[(l, c)] = gc
                ins[j] = cs_made[(l, c)]
            n = Node(n.op, tuple(ins), n.outputs, n.attrs, n.origin)
        if any(v in resid_subst for v in n.inputs):
            n = Node(n.op, tuple(resid_subst.get(v, v) for v in n.inputs), n.outputs, n.attrs, n.origin)
        nodes.append(n)
        for o in n.outputs:
            if o.name in gather_x:
                nodes.append(gather_x[o.name])
    new_fn = fn.with_nodes(nodes)
    meta = dict(module.meta)
    meta["prune_prefill"] = dict(keep=opts.keep, schedule=opts.schedule, first_layer=opts.first_layer,
                                 fractions=list(fractions), revival=False)
    out = module.replace(functions=tuple(new_fn if f.name == fn.name else f for f in module.functions),
                         constants=consts, meta=meta)
    return PassResult(out, {"pruned_layers": L - first, "schedule": list(fractions),
                            "projection_work_fraction": float(np.mean(fractions))})
