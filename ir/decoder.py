"""The decoder contract: which entry points, inputs, outputs and carried state make a KV-cache decoder.

A decoder LM module (built by `frontend.decoder.make_decoder`) has two entry points:

  @prefill(input_ids[1, seq])                      -> (logits, present.{i}.key, present.{i}.value ..., state ...)
  @decode(input_ids[1, seq], past.{i}.key, past.{i}.value ..., state ...)
                                                   -> (logits, present.{i}.key, present.{i}.value ..., state ...)

KV tensors are [batch, kv_heads, tokens, head_dim]. Each decode step feeds every output named by a
`present` back as the input named by its `past` (`decode_feeds`). KV passes may add further carried
tensors (`state`: evict-kv's seen-token count and H2O scores, prune-prefill's revival aux cache),
each with a kind and its layer.

`DecoderSpec` is the typed view of `module.meta["decoder"]`; `from_meta`/`to_meta` convert, and
`to_meta` keeps the JSON layout the artifact manifests and backends read (`state` stays a list of
[past, present] pairs; kinds and layers go beside it in `state_info`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import numpy as np

from .types import DType, TensorType


class DecoderSpecError(ValueError):
    """meta["decoder"] is missing or malformed."""


class StateKind(str, enum.Enum):
    """What a carried (past -> present) tensor holds."""
    KEY = "key"                    # [B, kv_heads, tokens, head_dim]
    VALUE = "value"                # [B, kv_heads, tokens, head_dim]
    SEEN_TOKENS = "seen_tokens"    # evict-kv: i64[1], tokens seen so far (rotary positions)
    H2O_SCORES = "h2o_scores"      # evict-kv h2o: f32[1, kv_heads, kept], accumulated attention
    POSITIONS = "positions"        # prune-prefill revival: i64[kv], the cache rows' token positions
    AUX_HIDDEN = "aux_hidden"      # prune-prefill revival: [1, aux, hidden], pruned tokens' hidden states
    AUX_POSITIONS = "aux_positions"  # prune-prefill revival: i64[aux], their positions
    EXTRA = "extra"                # state written by an older ternc without kind information


@dataclass(frozen=True)
class StateTensor:
    """One carried tensor: decode reads `past`; prefill and decode write `present`."""
    past: str
    present: str
    kind: StateKind
    layer: int | None = None


@dataclass(frozen=True)
class DecoderSpec:
    prefill: str
    decode: str
    input_ids: str
    logits: str
    kv: tuple[tuple[StateTensor, StateTensor], ...]  # per layer: (key, value)
    kv_heads: int | None = None
    head_dim: int | None = None
    kv_dtype: str = "f32"
    state: tuple[StateTensor, ...] = ()  # carried beyond the KV cache, added by KV passes
    kv_budget: int | None = None         # evict-kv's cache budget (tokens per layer)
    extra: Mapping[str, Any] = field(default_factory=dict)  # unknown keys, kept through a round trip

    # ---------------------------------------------------------------- views
    @property
    def n_layers(self) -> int:
        return len(self.kv)

    @property
    def entries(self) -> tuple[str, str]:
        return (self.prefill, self.decode)

    @property
    def past(self) -> list[list[str]]:
        return [[k.past, v.past] for k, v in self.kv]

    @property
    def present(self) -> list[list[str]]:
        return [[k.present, v.present] for k, v in self.kv]

    @property
    def carried(self) -> tuple[StateTensor, ...]:
        """Every tensor decode takes from the previous step: the KV cache, then `state`."""
        return tuple(t for pair in self.kv for t in pair) + self.state

    def kv_type(self, dtype: DType | None = None) -> TensorType:
        """The type of one past K/V tensor ([1, kv_heads, "past", head_dim])."""
        return TensorType(dtype or DType(self.kv_dtype), (1, self.kv_heads or "kv_heads", "past",
                                                           self.head_dim or "head_dim"))

    def with_state(self, state: list[StateTensor] | tuple[StateTensor, ...], **kw) -> "DecoderSpec":
        return replace(self, state=tuple(state), **kw)

    # ---------------------------------------------------------------- meta
    @classmethod
    def of(cls, module) -> "DecoderSpec | None":
        """The module's decoder spec, or None for modules without decoder entry points."""
        meta = module.meta.get("decoder")
        return cls.from_meta(meta) if meta else None

    @classmethod
    def from_meta(cls, d: Mapping[str, Any]) -> "DecoderSpec":
        missing = [k for k in ("prefill", "decode", "input_ids", "logits", "past", "present") if k not in d]
        if missing:
            raise DecoderSpecError(f"meta['decoder'] lacks {', '.join(missing)}")
        past, present = d["past"], d["present"]
        if len(past) != len(present) or any(len(p) != 2 for p in list(past) + list(present)):
            raise DecoderSpecError(f"meta['decoder']: past and present must be equally many [key, value] pairs, "
                                   f"got {len(past)} and {len(present)}")
        if "n_layers" in d and d["n_layers"] is not None and int(d["n_layers"]) != len(past):
            raise DecoderSpecError(f"meta['decoder']: n_layers {d['n_layers']} but {len(past)} past pairs")
        kv = tuple((StateTensor(pk, ok, StateKind.KEY, i), StateTensor(pv, ov, StateKind.VALUE, i))
                   for i, ((pk, pv), (ok, ov)) in enumerate(zip(past, present)))
        pairs = d.get("state") or []
        info = d.get("state_info") or [{"kind": StateKind.EXTRA.value, "layer": None}] * len(pairs)
        if len(info) != len(pairs):
            raise DecoderSpecError(f"meta['decoder']: {len(pairs)} state pairs but {len(info)} state_info entries")
        state = tuple(StateTensor(si, so, StateKind(i["kind"]), i.get("layer")) for (si, so), i in zip(pairs, info))
        known = {"prefill", "decode", "input_ids", "logits", "past", "present", "n_layers", "kv_heads", "head_dim",
                 "kv_dtype", "state", "state_info", "kv_budget"}
        return cls(d["prefill"], d["decode"], d["input_ids"], d["logits"], kv,
                   kv_heads=_opt_int(d.get("kv_heads")), head_dim=_opt_int(d.get("head_dim")),
                   kv_dtype=d.get("kv_dtype") or "f32", state=state, kv_budget=_opt_int(d.get("kv_budget")),
                   extra={k: v for k, v in d.items() if k not in known})

    def to_meta(self) -> dict[str, Any]:
        d = {"prefill": self.prefill, "decode": self.decode, "input_ids": self.input_ids, "logits": self.logits,
             "past": self.past, "present": self.present, "n_layers": self.n_layers, "kv_heads": self.kv_heads,
             "head_dim": self.head_dim, "kv_dtype": self.kv_dtype, **self.extra}
        if self.state:
            d["state"] = [[t.past, t.present] for t in self.state]
            d["state_info"] = [{"kind": t.kind.value, "layer": t.layer} for t in self.state]
        if self.kv_budget is not None:
            d["kv_budget"] = self.kv_budget
        return d

    def into(self, meta: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of a module's meta with this spec as its "decoder"."""
        return {**meta, "decoder": self.to_meta()}


def _opt_int(x) -> int | None:
    return None if x is None else int(x)


def decode_feeds(spec: DecoderSpec, results: Mapping[str, Any], next_ids) -> dict:
    """Inputs of the next `decode` step: the new token ids and every carried tensor (the KV cache and
    any KV pass's state) from the previous step's results."""
    feeds = {spec.input_ids: np.asarray(next_ids, dtype=np.int64)}
    for t in spec.carried:
        feeds[t.past] = results[t.present]
    return feeds
