"""Token eviction (StreamingLLM, H2O) and prefill pruning (LazyLLM) selection numerics.

Pure numpy functions that DEFINE which tokens a pass keeps; the interpreter and kernels gather with
the indices these return. Every selection returns token indices sorted ascending (int64), so a
gathered cache keeps the original token order (and RoPE positions stay those of the kept tokens).

Tie-breaking everywhere: among equal scores the lower token index (the older token) wins. Scores
are compared exactly, so results are deterministic for identical inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# --------------------------------------------------------------------------------------------
# StreamingLLM
# --------------------------------------------------------------------------------------------


def streaming_keep(seq_len: int, sinks: int, window: int) -> np.ndarray:
    """Indices kept by StreamingLLM: the first `sinks` tokens plus the most recent `window` tokens.

    When seq_len <= sinks + window everything is kept; otherwise exactly sinks + window indices.
    """
    if seq_len < 0 or sinks < 0 or window < 0:
        raise ValueError(f"seq_len, sinks, window must be >= 0, got {seq_len}, {sinks}, {window}")
    if seq_len <= sinks + window:
        return np.arange(seq_len, dtype=np.int64)
    return np.concatenate([np.arange(sinks), np.arange(seq_len - window, seq_len)]).astype(np.int64)


# --------------------------------------------------------------------------------------------
# H2O (heavy hitters + recent window)
# --------------------------------------------------------------------------------------------


def _top_indices(scores: np.ndarray, count: int) -> np.ndarray:
    """Indices of the `count` largest scores along the last axis (ties -> lower index), sorted ascending."""
    if count <= 0:
        return np.zeros(scores.shape[:-1] + (0,), dtype=np.int64)
    order = np.argsort(-scores, axis=-1, kind="stable")  # stable: equal scores keep index order
    return np.sort(order[..., :count], axis=-1).astype(np.int64)


def group_query_scores(scores: np.ndarray, kv_heads: int) -> np.ndarray:
    """Sum [B, q_heads, S] scores over each GQA group -> [B, kv_heads, S] (query head h uses KV head
    h // (q_heads // kv_heads), the Hugging Face repeat_kv convention)."""
    b, q_heads, s = scores.shape
    if q_heads % kv_heads:
        raise ValueError(f"query heads {q_heads} not a multiple of kv heads {kv_heads}")
    return scores.reshape(b, kv_heads, q_heads // kv_heads, s).sum(axis=2)


def h2o_accumulate(acc_scores: np.ndarray, attn_probs: np.ndarray) -> np.ndarray:
    """New accumulated scores: acc [B, H, S_old] + column sums of attn_probs [B, H, q_len, S].

    Tokens new in this step (S > S_old) start from 0. Returns a new array (the state is explicit).
    """
    acc_scores, attn_probs = np.asarray(acc_scores, np.float32), np.asarray(attn_probs, np.float32)
    s_old, s = acc_scores.shape[-1], attn_probs.shape[-1]
    if s < s_old:
        raise ValueError(f"attention covers {s} tokens but the accumulator has {s_old}")
    out = attn_probs.sum(axis=2)
    out[..., :s_old] += acc_scores
    return out


def h2o_keep(
    acc_scores: np.ndarray, budget: int, recent: int, sinks: int = 0, per_head: bool = True
) -> np.ndarray:
    """Indices kept by H2O: `recent` newest tokens + `sinks` first tokens + heavy hitters (highest
    accumulated attention among the rest), `budget` tokens in total.

    acc_scores: [B, H, S] accumulated attention, one row per head the cache is stored for (pass
    `group_query_scores(...)` for GQA caches). per_head=True (H2O's choice): each head keeps its own
    set -> [B, H, budget]. per_head=False: scores are summed over heads and one set is shared ->
    [B, 1, budget] (one gather for all heads). When S <= budget everything is kept -> [B, H|1, S].
    Requires sinks + recent <= budget.
    """
    acc_scores = np.asarray(acc_scores)
    if acc_scores.ndim != 3:
        raise ValueError(f"acc_scores must be [batch, heads, seq], got shape {acc_scores.shape}")
    if budget < 0 or recent < 0 or sinks < 0 or sinks + recent > budget:
        raise ValueError(f"need 0 <= sinks + recent <= budget, got sinks={sinks} recent={recent} budget={budget}")
    if np.isnan(acc_scores).any():
        raise ValueError("acc_scores contain NaN")
    scores = acc_scores if per_head else acc_scores.sum(axis=1, keepdims=True)
    b, h, s = scores.shape
    if s <= budget:
        return np.broadcast_to(np.arange(s, dtype=np.int64), (b, h, s)).copy()
    forced = np.zeros(s, dtype=bool)
    forced[:sinks] = True
    forced[s - recent :] = True
    # Forced tokens get +inf so they always win; equal heavy scores still resolve to the lower index.
    ranked = np.where(forced, np.inf, scores.astype(np.float64))
    return _top_indices(ranked, budget)


def gather_tokens(x: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Gather kept tokens: x [B, H, S, ...] with keep [B, H or 1, n] -> [B, H, n, ...]."""
    x, keep = np.asarray(x), np.asarray(keep)
    keep = np.broadcast_to(keep, x.shape[:2] + keep.shape[2:])
    idx = keep.reshape(keep.shape + (1,) * (x.ndim - 3))
    return np.take_along_axis(x, idx, axis=2)


# --------------------------------------------------------------------------------------------
# LazyLLM (dynamic prefill pruning with an aux cache)
# --------------------------------------------------------------------------------------------
#
# Semantics ternc implements (passes/prune_prefill.py; the KVEvict{policy=lazyllm} op in ir/interp.py):
#   * Prefill: layer l processes the active token set A_l (A_0 = all prompt tokens). After layer l's
#     attention, the last prompt token's attention over A_l, averaged over heads, scores A_l;
#     A_{l+1} = the top keep_count(l+1) of A_l (progressive: A_{l+1} is a subset of A_l) and the
#     last token is always kept (it produces the first output token). keep_count = lazyllm_keep_counts
#     of the sequence length.
#   * A token t dropped before layer p = pruned_at[t] has KV only for layers < p. Its hidden state
#     entering layer p (the output of layer p-1) is parked in layer p's aux cache (with its position).
#   * Revival (decode, `lazyllm_next_rows`): at each step, layer l computes "rows": the new token(s)
#     plus tokens revived at l. Their K/V are appended to layer l's cache (positions recorded, causal
#     mask by position). Then the newest token's attention over the whole cache of l (mean over
#     heads) selects the top keep_count(l+1) of the current sequence length, exactly the prefill
#     rule. Selected tokens without KV at l+1 are the rows of l (they continue) and the selected
#     members of l+1's aux cache (revived: their parked hidden state enters l+1); unselected rows are
#     parked in l+1's aux cache. A token thus resumes from where it was pruned, one layer at a time
#     (a token pruned at p needs selection at p, p+1, ... to regain KV there), and is computed at
#     most once per layer over the whole generation. Cached tokens are never evicted: the cache of
#     layer l holds at most prompt + generated tokens. `pruned_at_layer` / `revival_layers` give the
#     prefill-time view of this bookkeeping (how far each token has to go to have KV at a layer).


def lazyllm_schedule(n_layers: int, final_keep: float, first_prune_layer: int = 1) -> np.ndarray:
    """Per-layer fraction of the prompt processed: 1.0 up to `first_prune_layer`, then decreasing
    linearly to `final_keep` at the last layer (progressive: later layers keep fewer). [n_layers] f64."""
    if not 0.0 < final_keep <= 1.0:
        raise ValueError(f"final_keep must be in (0, 1], got {final_keep}")
    if not 1 <= first_prune_layer <= n_layers:
        raise ValueError(f"first_prune_layer must be in 1..{n_layers}, got {first_prune_layer}")
    keep = np.ones(n_layers, dtype=np.float64)
    steps = n_layers - first_prune_layer
    if steps:
        keep[first_prune_layer:] = 1.0 - (1.0 - final_keep) * np.arange(1, steps + 1) / steps
    return keep


def lazyllm_keep_counts(seq_len: int, schedule: Sequence[float]) -> np.ndarray:
    """Tokens processed at each layer: ceil(fraction * seq_len), at least 1, non-increasing."""
    fractions = np.asarray(schedule, dtype=np.float64)
    if (fractions <= 0).any() or (fractions > 1).any():
        raise ValueError("schedule fractions must be in (0, 1]")
    counts = np.maximum(np.ceil(fractions * seq_len - 1e-9).astype(np.int64), 1)
    return np.minimum.accumulate(counts)


def lazyllm_select(last_token_attn: np.ndarray, active: np.ndarray, keep_count: int) -> np.ndarray:
    """Next layer's active set: the top `keep_count` of `active` by the last token's attention.

    last_token_attn: [B, heads, n_active] attention of the last prompt token over the active tokens
    (in `active` order) at this layer; active: [B, n_active] ascending prompt indices whose last
    entry is the last prompt token (always kept). Returns [B, min(keep_count, n_active)] ascending
    prompt indices, a subset of `active`.
    """
    attn, active = np.asarray(last_token_attn), np.asarray(active, dtype=np.int64)
    if attn.ndim != 3 or active.ndim != 2 or attn.shape[::2] != active.shape:
        raise ValueError(f"expected attn [B, heads, n] and active [B, n], got {attn.shape} and {active.shape}")
    if keep_count < 1:
        raise ValueError(f"keep_count must be >= 1, got {keep_count}")
    score = attn.astype(np.float64).mean(axis=1)
    score[:, -1] = np.inf  # the last token drives generation
    picked = _top_indices(score, min(keep_count, active.shape[1]))  # positions within `active`
    return np.take_along_axis(active, picked, axis=1)


def lazyllm_next_rows(
    last_token_attn: np.ndarray, cache_pos: np.ndarray, rows_pos: np.ndarray, aux_pos: np.ndarray, keep_count: int
) -> tuple[np.ndarray, np.ndarray]:
    """One LazyLLM layer transition with revival: which tokens layer l+1 computes, which are parked.

    last_token_attn: [1, heads, n] attention of the newest token over layer l's cache (after this
    step's rows were appended), in cache order; cache_pos: [n] the cache's token positions (unique,
    any order; the newest token has the largest); rows_pos: [r] ascending positions of the rows
    layer l computed this step (in the cache; the last is the newest token); aux_pos: [a] ascending
    positions parked in layer l+1's aux cache (in l's cache, disjoint from the rows and from l+1's
    cache). Selection = lazyllm_select over the cache sorted by position (ties -> older token) with
    `keep_count`. With cand = concat(rows_pos, aux_pos):
      take: indices into cand of the selected candidates, ordered by position (the rows of l+1:
            continuing rows and revived aux entries; the newest token last);
      park: indices into cand of the others, ordered by position (layer l+1's new aux cache).
    Selected cache tokens that are not candidates already have KV at l+1 and need nothing.
    """
    attn = np.asarray(last_token_attn)
    cache_pos = np.asarray(cache_pos, np.int64).reshape(-1)
    rows_pos = np.asarray(rows_pos, np.int64).reshape(-1)
    aux_pos = np.asarray(aux_pos, np.int64).reshape(-1)
    if attn.ndim != 3 or attn.shape[0] != 1 or attn.shape[2] != cache_pos.size:
        raise ValueError(f"expected attention [1, heads, {cache_pos.size}], got {attn.shape}")
    if rows_pos.size == 0 or rows_pos[-1] != cache_pos.max():
        raise ValueError("the last row must be the newest token of the cache")
    order = np.argsort(cache_pos, kind="stable")
    selected = lazyllm_select(attn[:, :, order], cache_pos[order][None], keep_count)[0]
    cand = np.concatenate([rows_pos, aux_pos])
    by_pos = np.argsort(cand, kind="stable")
    chosen = np.isin(cand[by_pos], selected)
    return by_pos[chosen].astype(np.int64), by_pos[~chosen].astype(np.int64)


def pruned_at_layer(active_per_layer: Sequence[np.ndarray], seq_len: int) -> np.ndarray:
    """First layer each prompt token is absent from: [B, seq_len] int64 (n_layers if never pruned).

    active_per_layer[l]: [B, n_l] indices processed at layer l (nested, as lazyllm_select makes).
    The aux cache holds token t's hidden state entering layer pruned_at[t].
    """
    n_layers = len(active_per_layer)
    batch = np.asarray(active_per_layer[0]).shape[0] if n_layers else 1
    pruned_at = np.full((batch, seq_len), n_layers, dtype=np.int64)
    for layer in range(n_layers - 1, -1, -1):
        present = np.zeros((batch, seq_len), dtype=bool)
        np.put_along_axis(present, np.asarray(active_per_layer[layer], dtype=np.int64), True, axis=1)
        pruned_at = np.where(present, pruned_at, layer)
    return pruned_at


def revival_layers(pruned_at: np.ndarray, layer: int) -> np.ndarray:
    """Full transformer layers to run per token so it has KV at `layer`: max(0, layer - pruned_at).
    (Layers pruned_at .. layer-1 from the aux-cache hidden state; then its K/V projection at `layer`.
    Under revival each of those layers is run at most once, when the token is selected there.)"""
    return np.maximum(0, layer - np.asarray(pruned_at, dtype=np.int64))


# --------------------------------------------------------------------------------------------
# FLOP accounting (multiply and add each count 1; softmax, norms, RoPE excluded)
# --------------------------------------------------------------------------------------------


def attention_pairs(q_positions: np.ndarray, k_positions: np.ndarray, causal: bool = True) -> int:
    """Number of (query, key) pairs attended: with causal, pairs with k_pos <= q_pos."""
    q_pos = np.sort(np.asarray(q_positions, dtype=np.int64).ravel())
    k_pos = np.sort(np.asarray(k_positions, dtype=np.int64).ravel())
    if not causal:
        return int(q_pos.size * k_pos.size)
    return int(np.searchsorted(k_pos, q_pos, side="right").sum())


def attention_flops(n_pairs: int, n_heads: int, head_dim: int) -> int:
    """FLOPs of QK^T and PV over `n_pairs` (query, key) pairs: 2 * 2 * head_dim per pair per head."""
    return 4 * int(n_pairs) * n_heads * head_dim


def decode_attention_flops(kv_len: int, n_heads: int, head_dim: int, n_layers: int = 1) -> int:
    """One decode step attending to `kv_len` cached tokens (after eviction: the kept count)."""
    return attention_flops(kv_len, n_heads, head_dim) * n_layers


def linear_flops(
    n_tokens: int, hidden: int, ffn: int, n_heads: int, kv_heads: int, head_dim: int, gated: bool = True
) -> int:
    """Projection FLOPs of one decoder layer for `n_tokens` tokens (q, k, v, o and the FFN)."""
    qkvo = hidden * head_dim * (2 * n_heads + 2 * kv_heads)
    mlp = hidden * ffn * (3 if gated else 2)
    return 2 * int(n_tokens) * (qkvo + mlp)


def lazyllm_prefill_flops(
    active_per_layer: Sequence[np.ndarray],
    hidden: int,
    ffn: int,
    n_heads: int,
    kv_heads: int,
    head_dim: int,
    gated: bool = True,
) -> int:
    """Prefill FLOPs of ONE sequence when layer l processes only active_per_layer[l] ([n_l] or
    [1, n_l] positions): projections for those tokens plus causal attention among them (original
    positions). Pass np.arange(S) for every layer to get the unpruned baseline."""
    total = 0
    for active in active_per_layer:
        active = np.asarray(active)
        if active.ndim > 2 or (active.ndim == 2 and active.shape[0] != 1):
            raise ValueError(f"one sequence at a time: expected [n] or [1, n] positions, got {active.shape}")
        pos = active.ravel()
        total += linear_flops(pos.size, hidden, ffn, n_heads, kv_heads, head_dim, gated)
        total += attention_flops(attention_pairs(pos, pos), n_heads, head_dim)
    return total


def flops_saved(baseline: int, pruned: int) -> dict[str, float]:
    """{'baseline', 'pruned', 'saved', 'saved_fraction', 'speedup'} for reports."""
    saved = baseline - pruned
    return {
        "baseline": float(baseline),
        "pruned": float(pruned),
        "saved": float(saved),
        "saved_fraction": saved / baseline if baseline else 0.0,
        "speedup": baseline / pruned if pruned else float("inf"),
    }
