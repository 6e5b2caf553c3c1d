"""quantize-kv: KIVI-style KV quantization pass (fake-quant state; exact bookkeeping, measured error)."""

from __future__ import annotations

import numpy as np
import pytest

import ternc
from ternc.ir import kvquant
from ternc.ir.interp import kv_fake_quant_append
from ternc.ir.ops import Op
from ternc.ir.verify import verify
from ternc.passes import quantize_kv
from ternc.passes.eval import run_decoder
from ternc.passes.registry import parse_spec

CFGS = [
    kvquant.KVQuantConfig(bits=2, group_size=4, residual=3, sinks=0),
    kvquant.KVQuantConfig(bits=4, group_size=8, residual=0, sinks=2),
    kvquant.KVQuantConfig(bits=8, group_size=4, residual=5, sinks=1, rotate=True),
    kvquant.KVQuantConfig(bits=2, group_size=16, residual=4, sinks=4, rotate=True),
]


@pytest.mark.parametrize("cfg", CFGS, ids=str)
def test_append_equals_quantizing_the_whole_cache(cfg, rng):
    """The carried state after any prefill/decode schedule == dequantize(quantize(all exact tokens))."""
    k_all = rng.normal(size=(1, 2, 70, 16)).astype(np.float32)
    v_all = rng.normal(size=(1, 2, 70, 16)).astype(np.float32)
    chunks = [5] + [1] * 30 + [7, 2] + [1] * 26
    past_k = past_v = None
    pos, changed = 0, 0
    for c in chunks:
        prev = None if past_k is None else past_k.copy()
        past_k, past_v = kv_fake_quant_append(past_k, past_v, k_all[:, :, pos:pos + c], v_all[:, :, pos:pos + c], cfg)
        pos += c
        want_k, want_v = kvquant.dequantize_kv(kvquant.quantize_kv(k_all[:, :, :pos], v_all[:, :, :pos], cfg))
        np.testing.assert_array_equal(past_k, want_k)
        np.testing.assert_array_equal(past_v, want_v)
        if prev is not None:
            # tokens already quantized are never touched again
            _, stop = kvquant.quantized_span(prev.shape[2], cfg)
            np.testing.assert_array_equal(past_k[:, :, :stop], prev[:, :, :stop])
        changed += int(not np.array_equal(past_k, k_all[:, :, :pos]))
    assert changed > 0  # quantization really happened


@pytest.fixture(scope="module")
def llama(onnx_export):
    return ternc.load(onnx_export("llama", False))


def _opts(**kw):
    return quantize_kv.QuantizeKVOptions(**{"group": 8, "residual": 4, **kw})


def test_rewrites_decoder_attention_only(llama):
    r = quantize_kv.run(llama, _opts(bits=4))
    verify(r.module)
    assert r.stats["rewritten"] == 4  # 2 layers x (prefill, decode)
    for name in ("prefill", "decode"):
        ops = [n.op for n in r.module.func(name).nodes]
        assert Op.Attention not in ops and ops.count(Op.KVQuantAttention) == 2
    assert r.module.func("main") == llama.func("main")
    dec = llama.meta["decoder"]
    want = kvquant.kv_bytes_per_token(kvquant.KVQuantConfig(bits=4, group_size=8, residual=4),
                                      dec["kv_heads"], dec["head_dim"], dec["n_layers"])
    assert r.module.meta["kv_bytes_per_token"] == want == r.stats["kv_bytes_per_token_after"]
    assert r.stats["kv_bytes_per_token_before"] == 2 * 2 * 2 * 16 * 4  # f32 K and V, 2 layers, 2 heads
    with pytest.raises(ValueError, match="do not compose"):
        quantize_kv.run(r.module, _opts())  # already rewritten


def test_registry_spec():
    (info, opts), = parse_spec("quantize-kv{bits=4,group=16,residual=8,sinks=2,rotate=true}")
    assert info.name == "quantize-kv" and not info.lossless
    assert opts.config() == kvquant.KVQuantConfig(4, 16, 8, 2, True)
    with pytest.raises(ValueError):
        parse_spec("quantize-kv{bits=3}")


def test_model_cache_state_is_the_quantized_exact_cache(llama):
    """Layer 0's K/V do not depend on attention, so after prefill + decode steps the carried layer-0
    cache must equal quantizing the unquantized model's layer-0 cache (same schedule) in one go."""
    ids = np.random.default_rng(1).integers(0, 128, 45)
    cfg = kvquant.KVQuantConfig(bits=2, group_size=8, residual=4, sinks=2, rotate=True)
    q = quantize_kv.run(llama, _opts(bits=2, sinks=2, rotate=True)).module
    last = {}
    run_decoder(llama, ids, prefix=20, on_step=lambda s, r: last.update(base=r))
    run_decoder(q, ids, prefix=20, on_step=lambda s, r: last.update(quant=r))
    k, v = last["base"]["present.0.key"], last["base"]["present.0.value"]
    want_k, want_v = kvquant.dequantize_kv(kvquant.quantize_kv(k, v, cfg))
    np.testing.assert_array_equal(last["quant"]["present.0.key"], want_k)
    np.testing.assert_array_equal(last["quant"]["present.0.value"], want_v)
    assert not np.array_equal(want_k, k)


def test_error_shrinks_with_bits_and_8bit_generation_matches(llama):
    """Measured: teacher-forced logits error vs the unquantized model for 8/4/2 bits."""
    ids = np.random.default_rng(2).integers(0, 128, 48)
    base = run_decoder(llama, ids, prefix=24)
    err = {}
    for bits in (8, 4, 2):
        logits = run_decoder(quantize_kv.run(llama, _opts(bits=bits)).module, ids, prefix=24)
        err[bits] = float(np.abs(logits - base).max() / np.abs(base).max())
    assert 0 < err[8] < err[4] < err[2], err
    assert err[8] < 2e-3, err  # measured ~1e-4 on this model
    prompt = ids[None, :30]
    want = ternc.generate(llama, prompt, 12)
    got = ternc.generate(quantize_kv.run(llama, _opts(bits=8)).module, prompt, 12)
    np.testing.assert_array_equal(got, want)


def test_rejects_non_decoder_and_bad_head_dim(llama):
    with pytest.raises(ValueError, match="decoder"):
        quantize_kv.run(llama.replace(meta={}), _opts())
    with pytest.raises(ValueError):
        quantize_kv.run(llama, quantize_kv.QuantizeKVOptions(group=12))  # head_dim 16 % 12


def test_kv_passes_refuse_to_compose(llama):
    from ternc.passes import evict_kv, prune_prefill

    pruned = prune_prefill.run(llama, prune_prefill.PrunePrefillOptions(keep=0.5)).module
    for run, opts in ((quantize_kv.run, _opts()), (evict_kv.run, evict_kv.EvictKVOptions(budget=8))):
        with pytest.raises(ValueError, match="do not compose"):
            run(pruned, opts)
    with pytest.raises(ValueError, match="do not compose"):
        prune_prefill.run(evict_kv.run(llama, evict_kv.EvictKVOptions(budget=8)).module,
                          prune_prefill.PrunePrefillOptions())
