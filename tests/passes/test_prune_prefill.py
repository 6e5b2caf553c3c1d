"""prune-prefill: LazyLLM-style progressive prompt pruning, with and without aux-cache revival
(selection, shapes, the computed-once invariant, exactness when nothing is pruned, measured error)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ternc
from ternc.ir.decoder import DecoderSpec, StateKind, decode_feeds
from ternc.ir.graph import Graph
from ternc.ir import kvevict, parse
from ternc.ir.interp import Interpreter, attention_probs
from ternc.ir.ops import Op
from ternc.ir.verify import VerifyError, verify
from ternc.passes import prune_prefill
from ternc.passes.eval import evaluate, run_decoder
from ternc.passes.registry import parse_spec

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def llama(onnx_export):
    return ternc.load(onnx_export("llama", False))


@pytest.fixture(scope="module")
def qat():
    """The tiny trained ternary model (3 layers, byte level; tests/fixtures/tiny_qat.safetensors):
    trained attention, and 3 layers so revived rows continue from one pruned layer to the next."""
    from ternc.models import tiny_qat

    return tiny_qat.load_module(), tiny_qat.eval_ids()


def _pp(module, **kw):
    return prune_prefill.run(module, prune_prefill.PrunePrefillOptions(**kw)).module


def _prefill(module, ids, observe=None):
    dec = DecoderSpec.of(module)
    return Interpreter(module, observe).run(dec.prefill, {dec.input_ids: np.asarray(ids)[None]})


def test_keep_everything_is_exact(llama):
    """keep=0.95 of 10 tokens rounds up to all 10 at every layer: bit-identical logits and caches."""
    ids = np.random.default_rng(0).integers(0, 128, 10)
    for revive in (False, True):
        m = _pp(llama, keep=0.95, revive=revive)
        verify(m)
        assert sum(n.op == Op.KVEvict for n in m.func("prefill").nodes) == 2
        a, b = _prefill(llama, ids), _prefill(m, ids)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.parametrize("revive", [False, True])
def test_nothing_pruned_decodes_exactly(llama, revive):
    """Prompt 10 + 9 decode steps at keep=0.95: ceil(0.95 T) = T for T <= 19, so no token is ever
    pruned; prefill and every decode step equal the unpruned decoder (revival's position-masked
    attention, all-position RoPE table and row gathers change no number)."""
    ids = np.random.default_rng(5).integers(0, 128, 19)
    assert _pp(llama, keep=1.0, revive=revive) is llama  # nothing to prune: the module is returned as is
    m = _pp(llama, keep=0.95, revive=revive)
    assert m.meta["prune_prefill"]["revival"] is revive and bool(DecoderSpec.of(m).state) is revive
    if revive:  # the revival state of layer 1 (the first pruned one), with kinds
        assert [(t.kind, t.layer) for t in DecoderSpec.of(m).state] == [
            (StateKind.POSITIONS, 1), (StateKind.AUX_HIDDEN, 1), (StateKind.AUX_POSITIONS, 1)]
    np.testing.assert_allclose(run_decoder(m, ids, prefix=10), run_decoder(llama, ids, prefix=10), rtol=0, atol=1e-6)


def test_selection_follows_last_token_attention(llama):
    ids = np.random.default_rng(1).integers(0, 128, 20)
    env = {}
    _prefill(llama, ids, lambda n, outs: env.update({o.name: v for o, v in zip(n.outputs, outs)}))
    fn = llama.func("prefill")
    a0 = next(n for n in fn.nodes if n.op == Op.Attention)
    q = env[a0.inputs[0]]
    k = env[a0.inputs[1]]
    p = attention_probs(q, k, a0.attr("scale"), True)
    counts = kvevict.lazyllm_keep_counts(20, kvevict.lazyllm_schedule(2, 0.4, 1))
    want = kvevict.lazyllm_select(p[:, :, -1, :], np.arange(20)[None], int(counts[1]))[0]

    m = _pp(llama, keep=0.4)
    got = {}
    res = _prefill(m, ids, lambda n, outs: got.update({n.attr("layer"): outs}) if n.op == Op.KVEvict else None)
    np.testing.assert_array_equal(got[1][3], want)  # layer 1's positions = the selection at layer 0
    np.testing.assert_array_equal(got[0][4], want)  # take: indices into layer 0's rows (= positions here)
    np.testing.assert_array_equal(np.sort(np.concatenate([got[0][4], got[0][5]])), np.arange(20))
    assert want.size == 8 and want[-1] == 19
    # layer 0 keeps the whole prompt, layer 1 only the selected tokens; logits only for kept rows
    assert res["present.0.key"].shape[2] == 20 and res["present.1.key"].shape[2] == 8
    assert res["logits"].shape[1] == 8
    # the pruned tokens are parked with their hidden state entering layer 1 (= layer 0's output)
    parked = np.setdiff1d(np.arange(20), want)
    np.testing.assert_array_equal(res["present.1.aux_pos"], parked)
    norm1 = Graph(fn).back_to([n for n in fn.nodes if n.op == Op.Attention][1].inputs[0], {Op.RMSNorm})
    np.testing.assert_allclose(res["present.1.aux_h"], env[norm1.inputs[0]][:, parked], rtol=1e-5, atol=1e-6)
    # layer 1's K/V come from layer 0's output, which saw the whole prompt: the pruned layer-1 cache
    # is the unpruned one at the kept positions (original RoPE positions), up to float rounding
    full = env["present.1.key"]
    np.testing.assert_allclose(res["present.1.key"], full[:, :, want], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(res["present.1.value"], env["present.1.value"][:, :, want], rtol=1e-4, atol=1e-5)
    # and the last token's logits differ from the unpruned prefill (pruned attention in layer 1)
    assert np.abs(res["logits"][0, -1] - env["logits"][0, -1]).max() > 1e-4


def test_lazyllm_op_masks_by_position_and_selects(rng):
    """Op level: a decode-time layer whose cache is out of position order (tokens revived earlier
    were appended late) and whose rows are two revived tokens plus the new one. Each row attends to
    exactly the cached tokens at positions <= its own (checked against a per-row softmax), and
    (take, park) follow kvevict.lazyllm_next_rows on the newest row's attention."""
    from ternc.ir.core import Node, Value
    from ternc.ir.prims import IMPLS
    from ternc.ir.types import DType, TensorType

    hq, hkv, d = 4, 2, 8
    past_pos, rows_pos, aux_pos = np.array([0, 1, 2, 7, 9, 4]), np.array([3, 5, 10]), np.array([6, 8])
    q = rng.normal(size=(1, hq, 3, d)).astype(np.float32)
    k, v = (rng.normal(size=(1, hkv, 3, d)).astype(np.float32) for _ in range(2))
    past_k, past_v = (rng.normal(size=(1, hkv, 6, d)).astype(np.float32) for _ in range(2))
    t = TensorType(DType.F32, None)
    node = Node.make(Op.KVEvict, ["q", "k", "v", "pk", "pv", "pp", "rp", "ap"],
                     [Value(n, t) for n in ("o", "k2", "v2", "pos", "take", "park")], policy="lazyllm", layer=1,
                     schedule=(1.0, 0.8, 0.5), scale=0.3, causal=1)
    out, k2, v2, pos, take, park = IMPLS[Op.KVEvict](node, [q, k, v, past_k, past_v, past_pos, rows_pos, aux_pos])
    all_pos = np.concatenate([past_pos, rows_pos])
    np.testing.assert_array_equal(pos, all_pos)
    np.testing.assert_array_equal(k2, np.concatenate([past_k, k], 2))
    probs = np.zeros((hq, 3, 9))
    for h in range(hq):
        for i, p_i in enumerate(rows_pos):
            vis = all_pos <= p_i
            s = (k2[0, h // 2, vis] @ q[0, h, i]) * 0.3
            w = np.exp(s - s.max())
            w /= w.sum()
            probs[h, i, vis] = w
            np.testing.assert_allclose(out[0, h, i], w @ v2[0, h // 2, vis], rtol=1e-5, atol=1e-6)
    count = int(kvevict.lazyllm_keep_counts(11, (1.0, 0.8, 0.5))[2])
    want = kvevict.lazyllm_next_rows(probs[None, :, -1], all_pos, rows_pos, aux_pos, count)
    np.testing.assert_array_equal(take, want[0])
    np.testing.assert_array_equal(park, want[1])
    assert take.size + park.size == 5
    # the last layer of the schedule selects nothing: 4 outputs
    last = node.with_attrs(layer=2)
    assert len(IMPLS[Op.KVEvict](last, [q, k, v, past_k, past_v, past_pos, rows_pos])) == 4


def test_decode_without_revival_and_measured_quality(llama):
    ids = np.random.default_rng(2).integers(0, 128, 40)
    base = evaluate(llama, ids, prefix=32)
    m = _pp(llama, keep=0.5, revive=False)
    assert m.func("decode") == llama.func("decode")
    steps = []
    run_decoder(m, ids, prefix=32, on_step=lambda s, r: steps.append(r))
    assert [r["present.1.key"].shape[2] for r in steps] == [16 + s for s in range(len(steps))]
    assert [r["present.0.key"].shape[2] for r in steps] == [32 + s for s in range(len(steps))]
    e = evaluate(m, ids, prefix=32, reference=base["top1"])
    # measured (random-weight tiny model): PPL moves < 5 %, agreement >= 50 %
    assert abs(e["ppl"] / base["ppl"] - 1) < 0.05, (e["ppl"], base["ppl"])
    assert e["top1_agreement"] >= 0.5
    assert e["decode_attention_flops"] < base["decode_attention_flops"] and e["revived_token_layers"] == 0
    flops = kvevict.lazyllm_prefill_flops([np.arange(32), np.sort(np.arange(32)[-16:])], 64, 96, 4, 2, 16)
    assert flops < kvevict.lazyllm_prefill_flops([np.arange(32)] * 2, 64, 96, 4, 2, 16)


def _trace(module, ids, prefix):
    """Decode teacher-forced; per call (prefill, then each step) and layer, the positions that layer
    computed (the rows of its KVEvict), plus every step's results."""
    calls, steps = [], []

    def observe(node, outs):
        if node.op == Op.KVEvict:
            if node.attr("layer") == 0 or not calls:
                calls.append({})
            calls[-1][int(node.attr("layer"))] = np.asarray(outs[3][-outs[0].shape[2]:])

    run_decoder(module, ids, prefix, observe=observe, on_step=lambda s, r: steps.append(r))
    return calls, steps


def test_revival_revives_and_computes_each_token_once_per_layer(qat):
    base, text = qat
    prompt, n = 64, 24
    ids = text[:prompt + n]
    m = _pp(base, keep=0.3)
    verify(m)
    calls, steps = _trace(m, ids, prompt)
    n_layers = DecoderSpec.of(m).n_layers
    assert n_layers == 3 and len(calls) == 1 + n and all(len(c) == n_layers for c in calls)
    revived = {l: 0 for l in range(n_layers)}
    for l in range(n_layers):
        computed = np.concatenate([c[l] for c in calls])
        # each token is computed at most once per layer over the whole generation ...
        assert np.unique(computed).size == computed.size, f"layer {l} computed a token twice"
        # ... and has KV at a layer exactly when it was computed there
        np.testing.assert_array_equal(np.sort(steps[-1][f"present.{l}.pos"] if l else np.arange(prompt + n)),
                                      np.sort(computed))
        revived[l] = computed.size - calls[0][l].size - n
    assert revived[0] == 0 and revived[1] > 0 and revived[2] > 0
    # a step where a token revived at layer 1 continues to layer 2 without being in aux_2
    assert any(np.intersect1d(c[1][:-1], c[2][:-1]).size
               and not np.isin(np.intersect1d(c[1][:-1], c[2][:-1]), prev["present.2.aux_pos"]).all()
               for c, prev in zip(calls[1:], steps[:-1]))
    aux_sizes = []
    for s, res in enumerate(steps):
        total = prompt + s
        caches = [np.arange(total)] + [res[f"present.{l}.pos"] for l in (1, 2)]
        for l in (1, 2):
            pos, aux = caches[l], res[f"present.{l}.aux_pos"]
            assert pos.size == res[f"present.{l}.key"].shape[2] <= total  # never above prompt + steps
            assert np.unique(pos).size == pos.size
            assert set(pos.tolist()) <= set(caches[l - 1].tolist())  # nested: KV at l => KV at l-1
            # every token of cache l-1 lacking KV at l is parked in aux_l (and only those)
            np.testing.assert_array_equal(aux, np.setdiff1d(caches[l - 1], pos))
            assert res[f"present.{l}.aux_h"].shape == (1, aux.size, 128)
        aux_sizes.append(sum(res[f"present.{l}.aux_pos"].size for l in (1, 2)))
    assert min(aux_sizes[1:]) < aux_sizes[0]  # the aux cache shrinks: tokens were revived
    # eval counts the same revived work
    e = evaluate(m, ids, prefix=prompt)
    assert e["revived_token_layers"] == sum(revived.values())
    assert e["kv_tokens_final"][0] == prompt + n and max(e["kv_tokens_final"]) <= prompt + n


def test_revived_hidden_state_resumes_where_it_was_parked(qat):
    """Layer 1 of a decode step by hand: the aux hidden state of a revived token is exactly what the
    prefill computed as that token's input to layer 1 (its output of layer 0)."""
    base, text = qat
    ids = text[:48]
    m = _pp(base, keep=0.3)
    env = {}
    res = _prefill(m, ids, lambda n, outs: env.update({o.name: v for o, v in zip(n.outputs, outs)}))
    full = {}
    _prefill(base, ids, lambda n, outs: full.update({o.name: v for o, v in zip(n.outputs, outs)}))
    fn = base.func("prefill")
    attn = [n for n in fn.nodes if n.op == Op.Attention]
    norm1 = Graph(fn).back_to(attn[1].inputs[0], {Op.RMSNorm})
    aux = res["present.1.aux_pos"]
    assert aux.size == 48 - int(np.ceil(0.65 * 48))
    np.testing.assert_allclose(res["present.1.aux_h"][0], full[norm1.inputs[0]][0, aux], rtol=1e-5, atol=1e-5)


def test_no_revival_step_equals_the_no_revival_decode(qat):
    """With the aux caches emptied nothing can be revived: a revival decode step then computes what
    the no-revival decode computes from the same caches (same logits and K/V)."""
    base, text = qat
    ids = text[:41]
    m, m0 = _pp(base, keep=0.3), _pp(base, keep=0.3, revive=False)
    dec, dec0 = DecoderSpec.of(m), DecoderSpec.of(m0)
    pre, pre0 = _prefill(m, ids[:40]), _prefill(m0, ids[:40])
    for k in pre0:
        np.testing.assert_array_equal(pre[k], pre0[k])  # same prefill
    feeds = decode_feeds(dec, pre, ids[None, 40:41])
    for t in dec.state:
        if t.kind in (StateKind.AUX_HIDDEN, StateKind.AUX_POSITIONS):
            feeds[t.past] = feeds[t.past][:, :0] if feeds[t.past].ndim == 3 else feeds[t.past][:0]
    got = Interpreter(m).run(dec.decode, feeds)
    want = Interpreter(m0).run(dec0.decode, decode_feeds(dec0, pre0, ids[None, 40:41]))
    np.testing.assert_allclose(got["logits"], want["logits"], rtol=0, atol=1e-6)
    for ok, ov in dec.present:
        np.testing.assert_allclose(got[ok], want[ok], rtol=0, atol=1e-6)
    # with the aux caches in place the same step does revive (and its logits move)
    full = Interpreter(m).run(dec.decode, decode_feeds(dec, pre, ids[None, 40:41]))
    assert full["present.1.pos"].size > got["present.1.pos"].size
    assert np.abs(full["logits"] - want["logits"]).max() > 1e-4


def test_revival_reduces_error(qat):
    """Logit error vs the unpruned model over 32 decode steps after a 96-byte prompt, tiny QAT model.
    Measured (mean / max |dlogit|, top-1 agreement): keep 0.5 without revival 0.070 / 0.354 / 0.969,
    with revival 0.012 / 0.136 / 1.000; keep 0.2: 0.107 / 0.798 / 0.844 vs 0.017 / 0.212 / 1.000."""
    base, text = qat
    ids = text[:128]
    ref = run_decoder(base, ids, prefix=96)[1:]  # decode steps (prefill logits are the same for both)
    top1 = ref.argmax(-1)
    for keep in (0.5, 0.2):
        err = {}
        for revive in (False, True):
            got = run_decoder(_pp(base, keep=keep, revive=revive), ids, prefix=96)[1:]
            d = np.abs(got - ref)
            err[revive] = (float(d.mean()), float(d.max()), float((got.argmax(-1) == top1).mean()))
        msg = f"keep={keep}: (mean, max |dlogit|, top-1 agreement) no revival {err[False]}, revival {err[True]}"
        assert err[True][0] <= 0.5 * err[False][0] and err[True][1] <= err[False][1], msg
        assert err[True][2] >= err[False][2], msg


@pytest.mark.parametrize("kw,state_layers", [(dict(first_layer=2), [2]), (dict(schedule="step"), [1, 2])])
def test_first_layer_and_step_schedule(qat, kw, state_layers):
    """Layers before first_layer stay plain Attention (RoPE at the new positions in decode); state
    exists exactly for the pruned layers; revival still beats no revival."""
    base, text = qat
    ids = text[:100]
    ref = run_decoder(base, ids, prefix=64)[1:]
    m, m0 = _pp(base, keep=0.3, **kw), _pp(base, keep=0.3, revive=False, **kw)
    verify(m)
    assert sorted(int(l) for l in m.meta["prune_prefill"]["positions"]) == state_layers
    n_plain = sum(n.op == Op.Attention for n in m.func("decode").nodes)
    assert n_plain == min(state_layers) - 1
    steps = []
    got = run_decoder(m, ids, prefix=64, on_step=lambda s, r: steps.append(r))[1:]
    for s, res in enumerate(steps):
        for l in state_layers:
            assert res[f"present.{l}.pos"].size + res[f"present.{l}.aux_pos"].size <= 64 + s
    err = np.abs(got - ref).mean()
    err0 = np.abs(run_decoder(m0, ids, prefix=64)[1:] - ref).mean()
    assert err < err0, (err, err0)


def test_text_round_trip_and_verify(llama):
    m = _pp(llama, keep=0.5)
    text = str(m)
    assert "policy = \"lazyllm\"" in text and "past.1.aux_h" in text
    again = parse(text, {k: c.data for k, c in m.constants.items()})
    assert str(again) == text
    verify(again)
    ids = np.random.default_rng(3).integers(0, 128, 30)
    np.testing.assert_array_equal(run_decoder(again, ids, prefix=20), run_decoder(m, ids, prefix=20))
    # the verifier checks the lazyllm form: a selecting layer without (take, park) is rejected
    fn = m.func("decode")
    bad = [n for n in fn.nodes if n.op == Op.KVEvict and n.attr("layer") == 0][0]
    broken = type(bad)(bad.op, bad.inputs, bad.outputs[:4], bad.attrs, bad.origin)
    mb = m.replace(functions=tuple(f.with_nodes([broken if n is bad else n for n in f.nodes]) if f is fn else f
                                   for f in m.functions))
    with pytest.raises(VerifyError, match="6 outputs"):
        verify(mb)


def test_generate_and_cli_eval_generate(llama, onnx_export, tmp_path):
    m = ternc.compile(llama, passes="prune-prefill{keep=0.5}").module
    prompt = [int(t) for t in np.random.default_rng(4).integers(0, 128, 24)]
    toks = ternc.generate(m, [prompt], 8)
    assert toks.shape == (1, 32)
    exe = [sys.executable, "-m", "ternc.cli"]
    path = tmp_path / "pp.ternc"
    subprocess.run([*exe, "compile", onnx_export("llama", False), "--target", "reference", "--passes",
                    "prune-prefill{keep=0.5}", "-o", path], check=True, capture_output=True, timeout=300)
    r = subprocess.run([*exe, "generate", path, "--prompt-ids", ",".join(map(str, prompt)), "-n", "8"],
                       check=True, capture_output=True, text=True, timeout=300)
    np.testing.assert_array_equal([int(t) for t in r.stdout.strip().split(",")], toks[0])
    ids = ",".join(str(t) for t in np.random.default_rng(6).integers(0, 128, 40))
    r = subprocess.run([*exe, "eval", onnx_export("llama", False), "--ids", ids, "--prefix", "30", "--passes",
                        "prune-prefill{keep=0.5}"], check=True, capture_output=True, text=True, timeout=300)
    rows = [ln for ln in r.stdout.splitlines() if ln.startswith("| prune-prefill")]
    assert len(rows) == 1 and float(rows[0].split("|")[4]) > 0


def test_tvm_backend_refuses_with_a_clear_error(llama, tmp_path):
    """The TVM backend does not lower LazyLLM's KVEvict: compiling for cpu stops with a LoweringError
    naming the op's policy (streaming eviction is lowered; lazyllm is not)."""
    pytest.importorskip("tvm")
    from ternc.backends.tvm.lowering import LoweringError

    with pytest.raises(LoweringError, match="no lowering for .*KVEvict with KV eviction policy 'lazyllm' \(only streaming and h2o lower\)"):
        ternc.compile(llama, target="cpu", passes="prune-prefill{keep=0.5}", out=tmp_path / "art")
    assert not (tmp_path / "art").exists()


def test_options_and_schedule():
    (info, opts), = parse_spec("prune-prefill{keep=0.25,schedule=step,first_layer=2}")
    assert opts.fractions(4) == (1.0, 1.0, 0.25, 0.25) and not info.lossless and opts.revive
    (_, opts), = parse_spec("prune-prefill{keep=0.5,revive=false}")
    assert not opts.revive
    assert prune_prefill.PrunePrefillOptions(keep=0.5).fractions(3) == (1.0, 0.75, 0.5)
    for bad in (dict(keep=0), dict(schedule="cosine"), dict(first_layer=0)):
        with pytest.raises(ValueError):
            prune_prefill.PrunePrefillOptions(**bad)


def test_explicit_past_export_form(onnx_export):
    """Exports with past inputs (decode = the exported graph, positions = Range + past length)."""
    m = ternc.load(onnx_export("llama", True))
    ids = np.random.default_rng(7).integers(0, 128, 19)
    np.testing.assert_allclose(run_decoder(_pp(m, keep=0.95), ids, prefix=10), run_decoder(m, ids, prefix=10),
                               rtol=0, atol=1e-6)
    steps = []
    run_decoder(_pp(m, keep=0.3), ids, prefix=12, on_step=lambda s, r: steps.append(r))
    assert steps[0]["present.1.pos"].size == 4 and steps[-1]["present.1.pos"].size > 4 + len(steps) - 1
