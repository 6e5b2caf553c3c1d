"""prune-prefill: LazyLLM-style progressive prompt pruning (no revival; selection and shapes checked)."""

from __future__ import annotations

import numpy as np
import pytest

import ternc
from ternc.ir import kvevict
from ternc.ir.interp import Interpreter, attention_probs
from ternc.ir.ops import Op
from ternc.ir.verify import verify
from ternc.passes import prune_prefill
from ternc.passes.eval import evaluate, run_decoder
from ternc.passes.registry import parse_spec


@pytest.fixture(scope="module")
def llama(onnx_export):
    return ternc.load(onnx_export("llama", False))


def _prefill(module, ids, observe=None):
    dec = module.meta["decoder"]
    return Interpreter(module, observe).run(dec["prefill"], {dec["input_ids"]: np.asarray(ids)[None]})


def test_keep_everything_is_exact(llama):
    """keep=0.95 of 10 tokens rounds up to all 10 at every layer: bit-identical logits and caches."""
    ids = np.random.default_rng(0).integers(0, 128, 10)
    m = prune_prefill.run(llama, prune_prefill.PrunePrefillOptions(keep=0.95)).module
    verify(m)
    assert sum(n.op == Op.KVEvict for n in m.func("prefill").nodes) == 1
    a, b = _prefill(llama, ids), _prefill(m, ids)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


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

    m = prune_prefill.run(llama, prune_prefill.PrunePrefillOptions(keep=0.4)).module
    got = {}
    res = _prefill(m, ids, lambda n, outs: got.update(active=outs[4]) if n.op == Op.KVEvict else None)
    np.testing.assert_array_equal(got["active"], want)
    assert want.size == 8 and want[-1] == 19
    # layer 0 keeps the whole prompt, layer 1 only the selected tokens; logits only for kept rows
    assert res["present.0.key"].shape[2] == 20 and res["present.1.key"].shape[2] == 8
    assert res["logits"].shape[1] == 8
    # layer 1's K/V come from layer 0's output, which saw the whole prompt: the pruned layer-1 cache
    # is the unpruned one at the kept positions (original RoPE positions), up to float rounding
    full = env["present.1.key"]
    np.testing.assert_allclose(res["present.1.key"], full[:, :, want], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(res["present.1.value"], env["present.1.value"][:, :, want], rtol=1e-4, atol=1e-5)
    # and the last token's logits differ from the unpruned prefill (pruned attention in layer 1)
    assert np.abs(res["logits"][0, -1] - env["logits"][0, -1]).max() > 1e-4


def test_decode_after_pruning_and_measured_quality(llama):
    ids = np.random.default_rng(2).integers(0, 128, 40)
    base = evaluate(llama, ids, prefix=32)
    m = prune_prefill.run(llama, prune_prefill.PrunePrefillOptions(keep=0.5)).module
    steps = []
    run_decoder(m, ids, prefix=32, on_step=lambda s, r: steps.append(r))
    assert [r["present.1.key"].shape[2] for r in steps] == [16 + s for s in range(len(steps))]
    assert [r["present.0.key"].shape[2] for r in steps] == [32 + s for s in range(len(steps))]
    e = evaluate(m, ids, prefix=32, reference=base["top1"])
    # measured (random-weight tiny model): PPL moves < 5 %, agreement >= 50 %
    assert abs(e["ppl"] / base["ppl"] - 1) < 0.05, (e["ppl"], base["ppl"])
    assert e["top1_agreement"] >= 0.5
    assert e["decode_attention_flops"] < base["decode_attention_flops"]
    flops = kvevict.lazyllm_prefill_flops([np.arange(32), np.sort(np.arange(32)[-16:])], 64, 96, 4, 2, 16)
    assert flops < kvevict.lazyllm_prefill_flops([np.arange(32)] * 2, 64, 96, 4, 2, 16)


def test_options_and_schedule():
    (info, opts), = parse_spec("prune-prefill{keep=0.25,schedule=step,first_layer=2}")
    assert opts.fractions(4) == (1.0, 1.0, 0.25, 0.25) and not info.lossless
    assert prune_prefill.PrunePrefillOptions(keep=0.5).fractions(3) == (1.0, 0.75, 0.5)
    for bad in (dict(keep=0), dict(schedule="cosine"), dict(first_layer=0)):
        with pytest.raises(ValueError):
            prune_prefill.PrunePrefillOptions(**bad)
