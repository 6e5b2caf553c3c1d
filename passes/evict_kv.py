"""`evict-kv{policy=streaming|h2o,budget=N,sinks=4,recent=-1}`: fixed-budget KV-cache eviction.

Every Attention node of the decoder entry points becomes a KVEvict node (semantics in ir/interp.py,
selection in ir/kvevict.py): the step attends over past + new tokens, then the present cache keeps
at most `budget` tokens per layer and KV head (so a decode step attends to <= budget + 1 tokens):

  streaming  StreamingLLM: the first `sinks` tokens + the `budget - sinks` most recent.
  h2o        H2O: `sinks` first + `recent` most recent + heavy hitters (largest accumulated attention,
             summed over queries and the query heads of each GQA group), per KV head. The accumulated
             scores are explicit state: decode takes `past.{i}.h2o` [1, kv_heads, kept] and returns
             `present.{i}.h2o` (prefill returns it too). recent=-1: (budget - sinks) // 2.

RoPE: keys are cached post-RoPE with their ORIGINAL positions, and new tokens get their true
position (not StreamingLLM's in-cache position re-assignment). Since decode normally derives the
position from the past length (Shape of past.0.key), which eviction shrinks, the pass adds an
explicit position state `past.seen_tokens` i64[1] -> `present.seen_tokens` and substitutes it for
that Shape.

All extra carried tensors are listed in the DecoderSpec's `state` (meta["decoder"]["state"]);
drivers carry them output -> input like present -> past (ir.decoder.decode_feeds, used by
passes/eval.py and api.generate). LOSSY once the text exceeds the budget; exact (bit-identical to
no eviction) while seq <= budget.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ir.core import Module, Node, Value
from ..ir.decoder import StateKind, StateTensor
from ..ir.enums import KVPolicy
from ..ir.ops import Op
from ..ir.types import DType, TensorType
from .base import PassResult, fresh, used_names
from .quantize_kv import KVPassError, decoder_spec


EVICT_POLICIES = (KVPolicy.STREAMING, KVPolicy.H2O)  # lazyllm is prune-prefill's


@dataclass(frozen=True)
class EvictKVOptions:
    policy: str = KVPolicy.STREAMING.value
    budget: int = 256
    sinks: int = 4
    recent: int = -1  # streaming: must be budget - sinks if given; h2o: -1 -> (budget - sinks) // 2

    def __post_init__(self):
        if self.policy not in EVICT_POLICIES:
            raise ValueError(f"policy must be {' or '.join(p.value for p in EVICT_POLICIES)}, got {self.policy!r}")
        if self.budget < 1 or self.sinks < 0 or self.sinks >= self.budget:
            raise ValueError(f"need budget >= 1 and 0 <= sinks < budget, got budget={self.budget} sinks={self.sinks}")
        if self.policy == KVPolicy.STREAMING and self.recent not in (-1, self.budget - self.sinks):
            raise ValueError(f"streaming keeps sinks + (budget - sinks) recent tokens; recent={self.recent} "
                             f"must be -1 or {self.budget - self.sinks}")
        if self.policy == KVPolicy.H2O and self.resolved_recent() + self.sinks > self.budget:
            raise ValueError(f"h2o needs sinks + recent <= budget, got {self.sinks} + {self.recent} > {self.budget}")

    def resolved_recent(self) -> int:
        if self.recent >= 0:
            return self.recent
        return self.budget - self.sinks if self.policy == KVPolicy.STREAMING else (self.budget - self.sinks) // 2


def run(module: Module, opts: EvictKVOptions = EvictKVOptions()) -> PassResult:
    dec = decoder_spec(module, "evict-kv")
    if dec.state:
        raise KVPassError("evict-kv: the decoder already carries extra state (evict-kv applied twice?)")
    taken = used_names(module)
    past_names = {t.past for pair in dec.kv for t in pair}
    h2o = opts.policy == KVPolicy.H2O
    attrs = dict(policy=opts.policy, budget=opts.budget, sinks=opts.sinks, recent=opts.resolved_recent())
    seen_in, seen_out = fresh("past.seen_tokens", taken), fresh("present.seen_tokens", taken)
    acc_in = [fresh(f"past.{i}.h2o", taken) for i in range(dec.n_layers)] if h2o else []
    acc_out = [fresh(f"present.{i}.h2o", taken) for i in range(dec.n_layers)] if h2o else []
    ids = dec.input_ids
    i64_1 = TensorType(DType.I64, (1,))
    fns, rewritten = [], 0
    for fn in module.functions:
        if fn.name not in dec.entries:
            fns.append(fn)
            continue
        is_decode = fn.name == dec.decode
        nodes, layer, shape_subst = [], 0, 0
        for n in fn.nodes:
            if n.op == Op.Attention:
                if len(n.outputs) != 3:
                    raise KVPassError(f"evict-kv: @{fn.name} {n.label} has no present K/V outputs")
                ins = list(n.inputs) + [""] * (5 - len(n.inputs))
                outs = list(n.outputs)
                if h2o:
                    ins.append(acc_in[layer] if is_decode else "")
                    kv_t = n.outputs[1].type
                    outs.append(Value(acc_out[layer], TensorType(DType.F32, (kv_t.shape[0], kv_t.shape[1], "kept"))))
                n = Node.make(Op.KVEvict, ins, outs, n.origin, **n.attr_dict, **attrs)
                layer += 1
                rewritten += 1
            elif is_decode and n.op == Op.Shape and n.inputs[0] in past_names:
                if (n.attr("start"), n.attr("end")) != (2, 3):
                    raise KVPassError(f"evict-kv: @{fn.name} {n.label} reads the past's shape other than its "
                                      f"length; unsupported decoder form")
                n = Node(Op.Identity, (seen_in,), n.outputs, (), n.origin)
                shape_subst += 1
            nodes.append(n)
        cur = fresh(f"{fn.name}.new_tokens", taken)
        nodes.append(Node.make(Op.Shape, [ids], [Value(cur, i64_1)], start=1, end=2))
        if is_decode:
            nodes.append(Node.make(Op.Add, [seen_in, cur], [Value(seen_out, i64_1)]))
            params = fn.params + (Value(seen_in, i64_1),) + tuple(
                Value(a, TensorType(DType.F32, (1, int(dec.kv_heads), "kept"))) for a in acc_in)
        else:
            # prefill's own past (empty constants in explicit-past exports) has length 0
            nodes.append(Node(Op.Identity, (cur,), (Value(seen_out, i64_1),)))
            params = fn.params
        fns.append(fn.with_nodes(nodes, params=params, results=fn.results + (seen_out,) + tuple(acc_out)))
    if not rewritten:
        raise KVPassError("evict-kv: no Attention node in the decoder entry points")
    state = [StateTensor(seen_in, seen_out, StateKind.SEEN_TOKENS)]
    state += [StateTensor(a, b, StateKind.H2O_SCORES, layer) for layer, (a, b) in enumerate(zip(acc_in, acc_out))]
    meta = dec.with_state(state, kv_budget=opts.budget).into(module.meta)
    meta["kv_evict"] = dict(policy=opts.policy, budget=opts.budget, sinks=opts.sinks, recent=opts.resolved_recent())
    out = module.replace(functions=tuple(fns), meta=meta)
    return PassResult(out, {"rewritten": rewritten, "budget_tokens": opts.budget,
                            "position_state": shape_subst, "h2o_state_tensors": len(acc_in)})
