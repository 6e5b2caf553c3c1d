"""evict-kv: StreamingLLM / H2O fixed-budget eviction (budget held exactly; selection checked)."""

from __future__ import annotations

import numpy as np
import pytest

import ternc
from ternc.ir import kvevict
from ternc.ir.core import Node, Value
from ternc.ir.decoder import DecoderSpec, StateKind
from ternc.ir.interp import attention_probs
from ternc.ir.ops import Op
from ternc.ir.prims import IMPLS
from ternc.ir.types import DType, TensorType
from ternc.ir.verify import verify
from ternc.passes import evict_kv
from ternc.passes.eval import run_decoder
from ternc.passes.registry import parse_spec


@pytest.fixture(scope="module")
def llama(onnx_export):
    return ternc.load(onnx_export("llama", False))


def _collect(module, ids, prefix):
    steps = []
    logits = run_decoder(module, ids, prefix=prefix, on_step=lambda s, r: steps.append(r))
    return logits, steps


@pytest.mark.parametrize("policy", ["streaming", "h2o"])
def test_budget_at_least_sequence_is_exact(llama, policy):
    ids = np.random.default_rng(0).integers(0, 128, 30)
    base, _ = _collect(llama, ids, 10)
    m = evict_kv.run(llama, evict_kv.EvictKVOptions(policy=policy, budget=30, sinks=4)).module
    verify(m)
    got, steps = _collect(m, ids, 10)
    np.testing.assert_array_equal(got, base)  # bit-identical: no token ever evicted
    assert int(steps[-1]["present.seen_tokens"][0]) == 30


@pytest.mark.parametrize("policy,kw", [("streaming", {}), ("h2o", {"recent": 3}), ("h2o", {"sinks": 0})])
def test_budget_held_exactly(llama, policy, kw):
    ids = np.random.default_rng(1).integers(0, 128, 40)
    budget, prefix = 12, 5
    m = evict_kv.run(llama, evict_kv.EvictKVOptions(policy=policy, budget=budget, **kw)).module
    _, steps = _collect(m, ids, prefix)
    dec = DecoderSpec.of(m)
    for s, res in enumerate(steps):
        n = min(prefix + s, budget)
        for ok, ov in dec.present:
            assert res[ok].shape[2] == n and res[ov].shape[2] == n
        for t in dec.state[1:]:
            assert res[t.present].shape == (1, 2, n)
        assert int(res["present.seen_tokens"][0]) == prefix + s
    kinds = [(t.kind, t.layer) for t in dec.state]
    assert kinds == [(StateKind.SEEN_TOKENS, None)] + ([(StateKind.H2O_SCORES, 0), (StateKind.H2O_SCORES, 1)]
                                                       if policy == "h2o" else [])


def test_streaming_keeps_sinks_and_window_with_true_positions(llama):
    """Layer-0 K/V depend only on the token and its position: the evicted cache must be the
    unevicted cache at kvevict.streaming_keep's indices (checks selection and RoPE positions)."""
    ids = np.random.default_rng(2).integers(0, 128, 33)
    m = evict_kv.run(llama, evict_kv.EvictKVOptions(policy="streaming", budget=10, sinks=3)).module
    _, base_steps = _collect(llama, ids, 4)
    _, steps = _collect(m, ids, 4)
    keep = kvevict.streaming_keep(33, 3, 7)
    for name in ("present.0.key", "present.0.value"):
        np.testing.assert_allclose(steps[-1][name], base_steps[-1][name][:, :, keep], rtol=1e-5, atol=1e-6)
    # and the streaming module without sinks differs from it (sinks matter)
    m0 = evict_kv.run(llama, evict_kv.EvictKVOptions(policy="streaming", budget=10, sinks=0)).module
    _, steps0 = _collect(m0, ids, 4)
    np.testing.assert_allclose(steps0[-1]["present.0.key"],
                               base_steps[-1]["present.0.key"][:, :, kvevict.streaming_keep(33, 0, 10)], rtol=1e-5,
                               atol=1e-6)


def _h2o_node(budget, recent, sinks, hq=4, hkv=2):
    t = TensorType(DType.F32, None)
    outs = [Value(n, t) for n in ("o", "pk", "pv", "acc")]
    return Node.make(Op.KVEvict, ["q", "k", "v", "past_k", "past_v", "past_acc"], outs, policy="h2o", budget=budget,
                     recent=recent, sinks=sinks, scale=0.25, causal=1)


def test_h2o_keeps_the_heaviest_tokens(rng):
    """Op level: token 3's key aligns with every query so it collects the most attention; it must
    survive while lighter old tokens go. The kept set and carried scores follow kvevict exactly."""
    d, hkv, hq = 16, 2, 4
    past_k = rng.normal(size=(1, hkv, 9, d)).astype(np.float32) * 0.1
    past_v = rng.normal(size=(1, hkv, 9, d)).astype(np.float32)
    direction = np.ones(d, np.float32)
    past_k[:, :, 3] = direction * 2.0
    acc = np.zeros((1, hkv, 9), np.float32)
    acc[:, :, 3] = 5.0
    q = (direction * 2.0 + rng.normal(size=(1, hq, 1, d))).astype(np.float32)
    k = rng.normal(size=(1, hkv, 1, d)).astype(np.float32) * 0.1
    v = rng.normal(size=(1, hkv, 1, d)).astype(np.float32)
    node = _h2o_node(budget=6, recent=3, sinks=1)
    out, pk, pv, new_acc = IMPLS[Op.KVEvict](node, [q, k, v, past_k, past_v, acc])
    k_all = np.concatenate([past_k, k], 2)
    p = attention_probs(q, k_all, 0.25, True)
    grouped = kvevict.group_query_scores(p[:, :, 0, :], hkv)
    want_acc = np.concatenate([acc, np.zeros((1, hkv, 1), np.float32)], 2) + grouped
    keep = kvevict.h2o_keep(want_acc, 6, 3, 1)
    assert keep.shape == (1, hkv, 6)
    assert (keep == 3).any(-1).all() and (keep == 0).any(-1).all()  # heavy hitter and sink kept
    assert set(range(7, 10)) <= set(keep[0, 0].tolist())  # recent window
    np.testing.assert_array_equal(pk, kvevict.gather_tokens(k_all, keep))
    np.testing.assert_allclose(new_acc, np.take_along_axis(want_acc, keep, 2), rtol=1e-6)
    # the output is attention over the full (pre-eviction) cache
    attn = Node.make(Op.Attention, ["q", "k", "v", "pk", "pv"], [Value("o", TensorType(DType.F32, None))],
                     scale=0.25, causal=1)
    ref = IMPLS[Op.Attention](attn, [q, k, v, past_k, past_v])[0]
    np.testing.assert_array_equal(out, ref)


def test_h2o_state_is_threaded_through_decode(llama):
    ids = np.random.default_rng(3).integers(0, 128, 24)
    m = evict_kv.run(llama, evict_kv.EvictKVOptions(policy="h2o", budget=8, sinks=2, recent=2)).module
    _, steps = _collect(m, ids, 3)
    # accumulated attention only grows for kept tokens: each step adds non-negative mass, total mass
    # of a fresh step is (query heads per group) per KV head, so the carried sum grows
    sums = [float(r["present.0.h2o"].sum()) for r in steps]
    assert all(b > 0 for b in sums)
    assert sums[-1] > sums[0]


def test_options_and_spec():
    (info, opts), = parse_spec("evict-kv{policy=h2o,budget=64,sinks=4}")
    assert opts.resolved_recent() == 30 and not info.lossless
    assert evict_kv.EvictKVOptions(budget=64, sinks=4).resolved_recent() == 60
    for bad in (dict(policy="lru"), dict(budget=4, sinks=4), dict(policy="streaming", budget=10, recent=3),
                dict(policy="h2o", budget=10, sinks=4, recent=7)):
        with pytest.raises(ValueError):
            evict_kv.EvictKVOptions(**bad)


def test_explicit_past_export_form(onnx_export):
    """Exports with explicit past inputs (decode = the exported graph): same guarantees."""
    m = ternc.load(onnx_export("llama", True))
    ids = np.random.default_rng(4).integers(0, 128, 20)
    base, _ = _collect(m, ids, 4)
    full = evict_kv.run(m, evict_kv.EvictKVOptions(policy="h2o", budget=20, sinks=2)).module
    np.testing.assert_array_equal(_collect(full, ids, 4)[0], base)
    small = evict_kv.run(m, evict_kv.EvictKVOptions(policy="streaming", budget=6, sinks=2)).module
    _, steps = _collect(small, ids, 4)
    assert [s["present.1.key"].shape[2] for s in steps] == [min(4 + i, 6) for i in range(len(steps))]
