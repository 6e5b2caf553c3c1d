"""Quality evaluation of a decoder module: perplexity and top-1 agreement, teacher-forced.

`evaluate(module, token_ids, prefix=1, reference=None)` prefills token_ids[:prefix], then decodes
the rest ONE TOKEN PER STEP with the KV cache (teacher forcing: the fed token is the text's, not the
prediction), exactly as generation would, so KV quantization, eviction (budget held across steps)
and prefill pruning act as they do in generation. Positions prefix-1 .. N-2 predict tokens
prefix .. N-1:

  ppl             exp(mean NLL of the text's next tokens), from log-softmax of the logits in f64
  top1_agreement  fraction of those positions where argmax(logits) equals the reference's argmax
                  (`reference`: another module, or the `top1` list of an earlier evaluate)
  top1            this run's argmax per position (pass it as `reference` to later runs)
  kv_tokens_max   largest per-layer cache length carried between steps
  kv_tokens_final per-layer cache lengths after the last step
  decode_attention_flops  sum over decode steps and layers of kvevict.attention_flops (query heads
                  x head_dim) over the (query, key) pairs each step attends: the new token and its
                  layer's cache; with prune-prefill revival also the revived rows (causal by position,
                  from the per-layer positions in meta["prune_prefill"]["positions"])
  revived_token_layers  prune-prefill revival: (token, layer) computations beyond the new tokens over
                  all decode steps (0 for every other module)

`run_decoder` is the driver. Besides present -> past it carries the DecoderSpec's `state` (added by
evict-kv and prune-prefill revival) through ir.decoder.decode_feeds, the feed builder api.generate uses.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

from ..ir.core import Module
from ..ir.decoder import DecoderSpec, decode_feeds
from ..ir.ops import Op


def _attention_heads(module: Module) -> tuple[int, int]:
    """(query heads, head_dim) from the decode function's first attention-like node."""
    fn = module.func(DecoderSpec.of(module).decode)
    types = fn.value_types()
    for n in fn.nodes:
        if n.op in (Op.Attention, Op.KVQuantAttention, Op.KVEvict):
            t = types[n.inputs[0]]
            return int(t.shape[1]), int(t.shape[3])
    raise ValueError("decode has no attention node")


def run_decoder(module: Module, token_ids, prefix: int = 1,
                observe: Callable | None = None, on_step: Callable[[int, dict], None] | None = None) -> np.ndarray:
    """Teacher-forced decoding; returns logits [N - prefix + 1, vocab] for positions prefix-1 .. N-1.

    `observe(node, outputs)` goes to the interpreter (prefill and decode); `on_step(step, results)`
    is called after prefill (step 0) and each decode step with that step's results."""
    from ..ir.interp import Interpreter

    dec = DecoderSpec.of(module)
    if not dec:
        raise ValueError(f"module @{module.name} has no decoder entry points")
    ids = np.asarray(token_ids, dtype=np.int64).reshape(1, -1)
    if not 1 <= prefix <= ids.shape[1]:
        raise ValueError(f"prefix must be in 1..{ids.shape[1]}, got {prefix}")
    interp = Interpreter(module, observe)
    res = interp.run(dec.prefill, {dec.input_ids: ids[:, :prefix]})
    if on_step:
        on_step(0, res)
    logits = [res[dec.logits][0, -1]]
    for t in range(prefix, ids.shape[1]):
        res = interp.run(dec.decode, decode_feeds(dec, res, ids[:, t:t + 1]))
        if on_step:
            on_step(t - prefix + 1, res)
        logits.append(res[dec.logits][0, -1])
    return np.stack(logits)


def evaluate(module: Module, token_ids: Sequence[int], prefix: int = 1, reference: Any = None,
             observe: Callable | None = None, keep_logits: bool = False) -> dict:
    """{ppl, nll, n_tokens, top1_agreement (None without reference), top1, nll_per_token,
    kv_tokens_max, kv_tokens_final, decode_attention_flops, revived_token_layers} (see the module doc);
    with keep_logits also "logits" [positions, vocab] (what run_decoder returns)."""
    from ..ir.kvevict import attention_flops, attention_pairs

    ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
    dec = DecoderSpec.of(module)
    hq, hd = _attention_heads(module)
    positions = {int(l): name for l, name in ((module.meta.get("prune_prefill") or {}).get("positions") or {}).items()}
    kv_max, flops, revived, prev = [0], [0], [0], [[]]

    def on_step(step, res):
        lens = [int(res[k.present].shape[2]) for k, _v in dec.kv]
        kv_max[0] = max(kv_max[0], *lens)
        if step >= 1:  # this decode step (one token): per layer, its rows attend to the cache
            for layer, n_prev in enumerate(prev[0]):
                if layer in positions:
                    pos = np.asarray(res[positions[layer]])
                    rows = pos[n_prev:]  # the new token and the tokens revived at this layer
                    revived[0] += rows.size - 1
                    flops[0] += attention_flops(attention_pairs(rows, pos), hq, hd)
                else:
                    flops[0] += attention_flops(n_prev + 1, hq, hd)
        prev[0] = lens

    logits = run_decoder(module, ids, prefix, observe, on_step)
    pred = logits[:-1]  # positions prefix-1 .. N-2 predict tokens prefix .. N-1
    target = ids[prefix:]
    lp = pred.astype(np.float64)
    lp = lp - lp.max(-1, keepdims=True)
    lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
    nll_tok = -lp[np.arange(target.size), target]
    nll = float(nll_tok.mean()) if target.size else float("nan")
    top1 = pred.argmax(-1)
    agree = None
    if reference is not None:
        if isinstance(reference, Module):
            reference = evaluate(reference, ids, prefix)["top1"]
        ref = np.asarray(reference)
        if ref.shape != top1.shape:
            raise ValueError(f"reference top1 has {ref.shape[0]} positions, this run {top1.shape[0]}")
        agree = float((ref == top1).mean())
    return {"ppl": math.exp(nll), "nll": nll, "n_tokens": int(target.size), "top1_agreement": agree,
            "top1": top1.tolist(), "nll_per_token": nll_tok.tolist(), "kv_tokens_max": kv_max[0],
            "kv_tokens_final": list(prev[0]), "decode_attention_flops": flops[0],
            "revived_token_layers": revived[0], **({"logits": logits} if keep_logits else {})}
