"""`ternc simulate ART`: run the artifact's program on the functional executor (its DDR images,
ir/hw_numerics only) and check tokens and logits against the interpreter running the artifact's own
post-pipeline module. Exact equality is the pass criterion; any difference is reported by call."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .build import load_artifact


@dataclass
class SimReport:
    tokens: list
    ref_tokens: list
    logits_equal: list = field(default_factory=list)
    max_abs_diff: list = field(default_factory=list)
    seconds: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)

    @property
    def exact(self) -> bool:
        return self.tokens == self.ref_tokens and all(self.logits_equal)

    def text(self) -> str:
        lines = [f"accelerator (functional executor): {self.tokens}",
                 f"interpreter (kv260 pipeline):      {self.ref_tokens}",
                 f"logits equal per call: {sum(self.logits_equal)}/{len(self.logits_equal)} "
                 f"(max |diff| {max(self.max_abs_diff, default=0):g})",
                 f"instructions executed: {self.counts}",
                 f"time: executor {self.seconds.get('executor', 0):.2f}s, "
                 f"interpreter {self.seconds.get('interpreter', 0):.2f}s",
                 "RESULT: " + ("token- and logit-exact" if self.exact else "MISMATCH")]
        return "\n".join(lines)


def reference(module, prompt_ids, n: int):
    """Greedy generation by the interpreter: (tokens, logits per call)."""
    from ...ir.interp import interpret

    dec = module.meta["decoder"]
    ids = list(prompt_ids)
    res = interpret(module, {dec["input_ids"]: np.asarray([ids], np.int64)}, dec["prefill"])
    logits = [res[dec["logits"]]]
    for i in range(n):
        nxt = int(np.argmax(logits[-1][0, -1]))
        ids.append(nxt)
        if i == n - 1:
            break
        res = interpret(module, _decode_feeds(dec, res, nxt), dec["decode"])
        logits.append(res[dec["logits"]])
    return ids, logits


def _decode_feeds(dec: dict, results: dict, token: int) -> dict:
    """The next decode call's inputs (frontend.decoder.decode_feeds' contract; backends/ may not import
    frontend/): the token, each layer's present KV as its past, and declared carried state."""
    feeds = {dec["input_ids"]: np.asarray([[token]], np.int64)}
    for (pk, pv), (ok, ov) in zip(dec["past"], dec["present"]):
        feeds[pk], feeds[pv] = results[ok], results[ov]
    for si, so in dec.get("state", []):
        feeds[si] = results[so]
    return feeds


def simulate(path, prompt_ids, n: int = 8) -> SimReport:
    art = load_artifact(path)
    ex = art.executor()
    t0 = time.time()
    toks, logits = ex.generate(prompt_ids, n)
    t1 = time.time()
    ref_toks, ref_logits = reference(art.module(), prompt_ids, n)
    t2 = time.time()
    rep = SimReport([int(v) for v in toks[0]], ref_toks, seconds={"executor": t1 - t0, "interpreter": t2 - t1},
                    counts=dict(ex.counts))
    for a, b in zip(logits, ref_logits):
        if a.ndim == 3 and b.ndim == 3 and b.shape[1] < a.shape[1]:
            a = a[:, -b.shape[1]:]   # prefill entries that return only the last token's logits
        rep.logits_equal.append(bool(a.shape == b.shape and np.array_equal(a, b)))
        rep.max_abs_diff.append(float(np.max(np.abs(a - b))) if a.shape == b.shape else float("inf"))
    return rep
