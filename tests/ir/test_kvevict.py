"""Token eviction / pruning selection: budgets, forced tokens, determinism, FLOP accounting."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ternc.ir.kvevict import (
    attention_flops,
    attention_pairs,
    decode_attention_flops,
    flops_saved,
    gather_tokens,
    group_query_scores,
    h2o_accumulate,
    h2o_keep,
    lazyllm_keep_counts,
    lazyllm_next_rows,
    lazyllm_prefill_flops,
    lazyllm_schedule,
    lazyllm_select,
    linear_flops,
    pruned_at_layer,
    revival_layers,
    streaming_keep,
)

# ---------------------------------------------------------------- StreamingLLM


@given(seq_len=st.integers(0, 300), sinks=st.integers(0, 8), window=st.integers(0, 64))
def test_streaming_keep_property(seq_len, sinks, window):
    keep = streaming_keep(seq_len, sinks, window)
    assert keep.dtype == np.int64
    assert len(keep) == min(seq_len, sinks + window)
    assert (np.diff(keep) > 0).all()  # sorted, unique
    kept = set(keep.tolist())
    assert set(range(min(sinks, seq_len))) <= kept
    assert set(range(max(0, seq_len - window), seq_len)) <= kept


def test_streaming_keep_example_and_errors():
    np.testing.assert_array_equal(streaming_keep(10, 2, 3), [0, 1, 7, 8, 9])
    with pytest.raises(ValueError):
        streaming_keep(10, -1, 3)


# ---------------------------------------------------------------- H2O


@settings(max_examples=80, deadline=None)
@given(
    seq_len=st.integers(1, 80),
    budget=st.integers(0, 40),
    recent=st.integers(0, 20),
    sinks=st.integers(0, 4),
    seed=st.integers(0, 2**16),
    coarse=st.booleans(),
)
def test_h2o_keep_property(seq_len, budget, recent, sinks, seed, coarse):
    if sinks + recent > budget:
        with pytest.raises(ValueError):
            h2o_keep(np.zeros((1, 1, seq_len)), budget, recent, sinks)
        return
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 3, (2, 3, seq_len)).astype(np.float32) if coarse else rng.random((2, 3, seq_len))
    keep = h2o_keep(scores, budget, recent, sinks)
    assert keep.shape == (2, 3, min(budget, seq_len))  # budget held exactly
    assert (np.diff(keep, axis=-1) > 0).all()
    if seq_len <= budget:
        return
    forced = set(range(sinks)) | set(range(seq_len - recent, seq_len))
    for b in range(2):
        for h in range(3):
            kept = set(keep[b, h].tolist())
            assert forced <= kept
            others = [t for t in range(seq_len) if t not in forced]
            heavy = [t for t in others if t in kept]
            dropped = [t for t in others if t not in kept]
            if heavy and dropped:
                s = scores[b, h]
                assert s[heavy].min() >= s[dropped].max()
                # Ties resolve to the older token: no dropped token ties a kept one at a lower index.
                boundary = s[heavy].min()
                tied_dropped = [t for t in dropped if s[t] == boundary]
                tied_kept = [t for t in heavy if s[t] == boundary]
                assert not tied_dropped or max(tied_kept) < min(tied_dropped)


def test_h2o_ties_are_deterministic():
    scores = np.ones((1, 2, 12), np.float32)
    keep = h2o_keep(scores, budget=6, recent=2, sinks=1)
    np.testing.assert_array_equal(keep, [[[0, 1, 2, 3, 10, 11]] * 2])
    np.testing.assert_array_equal(keep, h2o_keep(scores.copy(), budget=6, recent=2, sinks=1))


def test_h2o_per_head_vs_shared():
    scores = np.zeros((1, 2, 10), np.float32)
    scores[0, 0, 3] = 5.0  # head 0 loves token 3
    scores[0, 1, 6] = 4.0  # head 1 loves token 6
    scores[0, 1, 2] = 0.5
    per_head = h2o_keep(scores, budget=3, recent=2)
    np.testing.assert_array_equal(per_head, [[[3, 8, 9], [6, 8, 9]]])
    shared = h2o_keep(scores, budget=3, recent=2, per_head=False)
    np.testing.assert_array_equal(shared, [[[3, 8, 9]]])
    cache = np.arange(20, dtype=np.float32).reshape(1, 2, 10, 1)
    np.testing.assert_array_equal(gather_tokens(cache, shared)[..., 0], [[[3, 8, 9], [13, 18, 19]]])


def test_group_query_scores_gqa():
    scores = np.arange(24, dtype=np.float32).reshape(1, 4, 6)  # 4 query heads, 2 kv heads
    grouped = group_query_scores(scores, kv_heads=2)
    np.testing.assert_array_equal(grouped[0, 0], scores[0, 0] + scores[0, 1])
    np.testing.assert_array_equal(grouped[0, 1], scores[0, 2] + scores[0, 3])
    with pytest.raises(ValueError):
        group_query_scores(scores, kv_heads=3)


def test_h2o_decode_loop_holds_budget():
    # Simulated decode: accumulate, evict, gather the state; the cache never exceeds the budget and
    # the most recent token is always present.
    rng = np.random.default_rng(0)
    budget, recent = 8, 3
    positions = np.arange(5).reshape(1, 1, 5)
    acc = np.zeros((1, 1, 5), np.float32)
    for step in range(30):
        positions = np.concatenate([positions, [[[5 + step]]]], axis=-1)
        probs = rng.dirichlet(np.ones(positions.shape[-1]))[None, None, None, :]
        acc = h2o_accumulate(acc, probs)
        keep = h2o_keep(acc, budget, recent)
        acc, positions = gather_tokens(acc[..., None], keep)[..., 0], gather_tokens(positions[..., None], keep)[..., 0]
        assert positions.shape[-1] == min(budget, 6 + step)
        assert positions[0, 0, -1] == 5 + step
    assert (np.diff(positions[0, 0]) > 0).all()


def test_h2o_accumulate():
    acc = np.array([[[1.0, 2.0]]], np.float32)
    probs = np.array([[[[0.1, 0.2, 0.7], [0.3, 0.3, 0.4]]]], np.float32)
    np.testing.assert_allclose(h2o_accumulate(acc, probs), [[[1.4, 2.5, 1.1]]], rtol=1e-6)
    assert acc[0, 0, 0] == 1.0  # pure: input untouched


# ---------------------------------------------------------------- LazyLLM


def test_lazyllm_schedule_progressive():
    keep = lazyllm_schedule(24, final_keep=0.3, first_prune_layer=4)
    assert keep.shape == (24,) and (keep[:4] == 1.0).all() and keep[-1] == pytest.approx(0.3)
    assert (np.diff(keep) <= 0).all() and (np.diff(keep[4:]) < 0).all()
    counts = lazyllm_keep_counts(100, keep)
    assert counts[0] == 100 and counts[-1] == 30 and (np.diff(counts) <= 0).all()
    with pytest.raises(ValueError):
        lazyllm_schedule(24, final_keep=0.0)


def run_lazy_prefill(seq_len, n_layers, final_keep, seed=0, heads=4):
    rng = np.random.default_rng(seed)
    counts = lazyllm_keep_counts(seq_len, lazyllm_schedule(n_layers, final_keep, first_prune_layer=2))
    active = np.arange(seq_len).reshape(1, -1)
    per_layer = [active]
    for layer in range(1, n_layers):
        attn = rng.dirichlet(np.ones(active.shape[1]), size=(1, heads))  # last token's attention
        active = lazyllm_select(attn, active, counts[layer])
        per_layer.append(active)
    return counts, per_layer


def test_lazyllm_prefill_is_nested_and_exact():
    counts, per_layer = run_lazy_prefill(seq_len=57, n_layers=8, final_keep=0.25)
    for layer, active in enumerate(per_layer):
        assert active.shape == (1, counts[layer])
        assert active[0, -1] == 56  # the last prompt token is always processed
        assert (np.diff(active[0]) > 0).all()
        if layer:
            assert set(active[0].tolist()) <= set(per_layer[layer - 1][0].tolist())


def test_lazyllm_select_picks_top_mean_attention_with_ties():
    active = np.array([[0, 2, 3, 5, 9]])
    attn = np.array([[[0.1, 0.4, 0.1, 0.3, 0.1], [0.1, 0.2, 0.1, 0.5, 0.1]]])  # mean: .1 .3 .1 .4 .1
    np.testing.assert_array_equal(lazyllm_select(attn, active, 3), [[2, 5, 9]])
    np.testing.assert_array_equal(lazyllm_select(attn, active, 4), [[0, 2, 5, 9]])  # tie .1: oldest wins
    np.testing.assert_array_equal(lazyllm_select(attn, active, 10), active)
    with pytest.raises(ValueError):
        lazyllm_select(attn, active[:, :4], 2)


def test_lazyllm_next_rows_revives_continues_and_parks():
    # layer l's cache (in cache order, not sorted: 3 was revived earlier), newest token 6 last
    cache_pos = np.array([0, 1, 2, 5, 3, 6])
    attn = np.array([[[0.3, 0.25, 0.05, 0.05, 0.1, 0.25]]])  # by position 0..6: .3 .25 .05 .1 .05 (6: newest)
    rows_pos, aux_pos = np.array([3, 6]), np.array([1, 5])  # 3 computed at l this step; 1, 5 parked for l+1
    # keep 4: {6 (forced), 0, 1, 3}; 0 already has KV at l+1 (no candidate); 1 revived, 3 continues
    take, park = lazyllm_next_rows(attn, cache_pos, rows_pos, aux_pos, 4)
    cand = np.concatenate([rows_pos, aux_pos])
    np.testing.assert_array_equal(cand[take], [1, 3, 6])
    np.testing.assert_array_equal(cand[park], [5])
    # keep 5: 2 and 5 tie at .05, the older (2) wins; 2 has KV at l+1 already, 5 stays parked
    take, park = lazyllm_next_rows(attn, cache_pos, rows_pos, aux_pos, 5)
    np.testing.assert_array_equal(cand[take], [1, 3, 6])
    np.testing.assert_array_equal(cand[park], [5])
    take, park = lazyllm_next_rows(attn, cache_pos, rows_pos, aux_pos, 1)  # only the newest token
    np.testing.assert_array_equal(cand[take], [6])
    np.testing.assert_array_equal(cand[park], [1, 3, 5])
    with pytest.raises(ValueError):
        lazyllm_next_rows(attn, cache_pos, np.array([6, 3]), aux_pos, 4)  # the last row must be the newest


def test_pruned_at_and_revival():
    _, per_layer = run_lazy_prefill(seq_len=40, n_layers=6, final_keep=0.2, seed=3)
    pruned_at = pruned_at_layer(per_layer, 40)
    assert pruned_at.shape == (1, 40)
    for t in range(40):
        p = pruned_at[0, t]
        present = [t in set(a[0].tolist()) for a in per_layer]
        assert all(present[:p]) and not any(present[p:])  # KV exists exactly for layers < p
    assert pruned_at[0, 39] == 6  # never pruned
    work = revival_layers(pruned_at, layer=5)
    np.testing.assert_array_equal(work, np.maximum(0, 5 - pruned_at))
    assert work[0, 39] == 0 and work.max() == 5 - pruned_at.min()


# ---------------------------------------------------------------- FLOPs


def test_attention_pairs_and_flops():
    assert attention_pairs(np.arange(10), np.arange(10)) == 55
    assert attention_pairs(np.arange(10), np.arange(10), causal=False) == 100
    assert attention_pairs([9], np.arange(10)) == 10  # decode: last token sees all
    assert attention_pairs([2, 7], [0, 5, 6, 8]) == 1 + 3
    assert attention_flops(10, n_heads=2, head_dim=64) == 10 * 2 * 4 * 64
    full = decode_attention_flops(1000, 20, 128, n_layers=30)
    evicted = decode_attention_flops(len(streaming_keep(1000, 4, 196)), 20, 128, n_layers=30)
    report = flops_saved(full, evicted)
    assert report["saved_fraction"] == pytest.approx(0.8) and report["speedup"] == pytest.approx(5.0)


def test_linear_flops_hand_count():
    # hidden 4, ffn 8, 1 head of dim 4, 1 kv head: qkvo = 4*4*4 = 64, gated mlp = 3*32 = 96 MACs/token.
    assert linear_flops(3, hidden=4, ffn=8, n_heads=1, kv_heads=1, head_dim=4) == 2 * 3 * (64 + 96)


def test_lazyllm_prefill_flops_saving():
    dims = dict(hidden=256, ffn=512, n_heads=4, kv_heads=2, head_dim=64)
    counts, per_layer = run_lazy_prefill(seq_len=64, n_layers=8, final_keep=0.25, seed=1)
    baseline = lazyllm_prefill_flops([np.arange(64)] * 8, **dims)
    per_layer_full = linear_flops(64, **dims) + attention_flops(64 * 65 // 2, 4, 64)
    assert baseline == 8 * per_layer_full
    pruned = lazyllm_prefill_flops(per_layer, **dims)
    assert pruned < baseline
    linear_only = sum(linear_flops(int(c), **dims) for c in counts)
    assert linear_only < pruned  # attention still costs something
    with pytest.raises(ValueError):
        lazyllm_prefill_flops([np.zeros((2, 3), np.int64)], **dims)
