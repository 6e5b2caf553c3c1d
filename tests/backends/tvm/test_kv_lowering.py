"""TVM lowering of the KV-cache passes: quantize-kv (KIVI fake-quant, ir/kvquant.py, with and without
Hadamard rotation) and evict-kv (StreamingLLM, H2O) run in the compiled artifact with the
interpreter's numerics: the quantizer bit-exact, tokens equal."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

import ternc  # noqa: E402
from ternc.ir.decoder import DecoderSpec, decode_feeds  # noqa: E402
from ternc.ir.interp import kv_fake_quant_append  # noqa: E402
from ternc.ir.kvquant import KVQuantConfig, quantized_span  # noqa: E402

from .conftest import N_NEW  # noqa: E402


def _run_fake_quant(x: np.ndarray, n_past: int, cfg: KVQuantConfig, keys: bool) -> np.ndarray:
    from tvm import te

    from ternc.backends.tvm.lowering.kv import _kv_fake_quant_te

    xp = te.placeholder(x.shape, "float32", name="x")
    out = _kv_fake_quant_te(xp, n_past, dict(bits=cfg.bits, group_size=cfg.group_size, residual=cfg.residual,
                                              sinks=cfg.sinks), keys)
    f = tvm.compile(te.create_prim_func([xp, out]), target="llvm")
    res = tvm.runtime.tensor(np.zeros(x.shape, np.float32))
    f(tvm.runtime.tensor(x), res)
    return res.numpy()


@pytest.mark.parametrize("bits,group,residual,sinks,n_past,n", [
    (2, 4, 4, 0, 0, 23), (4, 8, 3, 2, 0, 40), (8, 16, 0, 0, 16, 48), (2, 2, 2, 1, 9, 19), (2, 4, 4, 0, 21, 22),
    (4, 8, 8, 30, 0, 20)])
def test_fake_quant_kernel_is_bit_exact(bits, group, residual, sinks, n_past, n, rng):
    """The TE kernel equals kv_fake_quant_append to the bit on keys and values, including constant
    groups (scale 0), zeros, negative and tiny values."""
    cfg = KVQuantConfig(bits=bits, group_size=group, residual=residual, sinks=sinks)
    x = rng.standard_normal((1, 2, n, 16)).astype(np.float32) * 3
    x[0, 0, :, 5] = 0.75                                   # constant channel: scale 0, exact
    x[0, 1, :, 3] = rng.standard_normal(n).astype(np.float32) * 1e-6   # tiny values: fp16 subnormals
    x[0, 1, 4] = -2.5                                      # a constant token row (values)
    want_k, want_v = kv_fake_quant_append(x[:, :, :n_past] if n_past else None, x[:, :, :n_past] if n_past else None,
                                          x[:, :, n_past:], x[:, :, n_past:], cfg)
    got_k = _run_fake_quant(x, n_past, cfg, keys=True)
    got_v = _run_fake_quant(x, n_past, cfg, keys=False)
    np.testing.assert_array_equal(got_k, want_k)
    np.testing.assert_array_equal(got_v, want_v)
    start, stop = quantized_span(n, cfg)
    lo = max(quantized_span(n_past, cfg)[1], start)
    assert (~np.isclose(want_k, x)).any() == (stop > lo)  # rows join the span exactly when expected
    np.testing.assert_array_equal(got_k[:, :, :lo], x[:, :, :lo])
    np.testing.assert_array_equal(got_k[:, :, stop:], x[:, :, stop:])


def _same_caches(m, runner, prompt_ids, steps: int, cache_len: int | None = None, also_state: bool = False):
    """Prefill then greedy decode steps on the interpreter and the compiled runner side by side: each
    layer's carried K/V agree within the float-path bound (1e-4 relative), of length `cache_len`."""
    dec = DecoderSpec.of(m)
    ri = ternc.interpret(m, {dec.input_ids: prompt_ids}, dec.prefill)
    rt = runner.run(dec.prefill, {dec.input_ids: prompt_ids})
    for _ in range(steps):
        names = [o for pair in dec.present for o in pair]
        for o in names + ([t.present for t in dec.state] if also_state else []):
            got, ref = np.asarray(rt[o]), ri[o]
            assert got.shape == ref.shape and (cache_len is None or o not in names or ref.shape[2] == cache_len)
            assert np.max(np.abs(got - ref)) <= 1e-4 * np.max(np.abs(ref)) + 1e-6
        nxt = np.array([[int(np.argmax(ri[dec.logits][0, -1]))]])
        ri = ternc.interpret(m, decode_feeds(dec, ri, nxt), dec.decode)
        rt = runner.run(dec.decode, decode_feeds(dec, rt, nxt))


@pytest.mark.parametrize("spec", ["quantize-kv{bits=2,group=4,residual=4}", "quantize-kv{bits=4,group=8,residual=3,sinks=2}"])
def test_quantize_kv_artifact_tokens_equal_interpreter(tiny_llama, prompt, spec):
    from ternc.backends.tvm.build import compile_runner
    from ternc.passes.pipeline import compile as run_passes

    m, _ = run_passes(tiny_llama, target="cpu", passes="fold," + spec)
    runner = compile_runner(m, "cpu")
    long_prompt = np.concatenate([prompt, prompt + 1], axis=1)  # 14 tokens: quantized groups in prefill
    np.testing.assert_array_equal(ternc.generate(runner, long_prompt, N_NEW + 6), ternc.generate(m, long_prompt, N_NEW + 6))
    _same_caches(m, runner, long_prompt, steps=5)  # the carried caches hold the same fake-quantized values


def test_rotated_quantize_kv_tokens_equal_interpreter(tiny_llama, prompt):
    """rotate=1 (Hadamard before quantization): tokens equal the interpreter's. The carried caches
    agree up to a code flipped at a rounding boundary (the rotations are float32 matmuls whose
    summation order differs from numpy's): measured and bounded by one quantization step."""
    from ternc.backends.tvm.build import compile_runner
    from ternc.passes.pipeline import compile as run_passes

    m, _ = run_passes(tiny_llama, target="cpu", passes="fold,quantize-kv{bits=4,group=4,residual=4,rotate=1}")
    runner = compile_runner(m, "cpu")
    dec = DecoderSpec.of(m)
    long_prompt = np.concatenate([prompt, prompt + 1], axis=1)
    np.testing.assert_array_equal(ternc.generate(runner, long_prompt, N_NEW + 6), ternc.generate(m, long_prompt, N_NEW + 6))
    ri = ternc.interpret(m, {dec.input_ids: long_prompt}, dec.prefill)
    rt = runner.run(dec.prefill, {dec.input_ids: long_prompt})
    for o in (o for pair in dec.present for o in pair):
        got, ref = np.asarray(rt[o]), ri[o]
        close = np.isclose(got, ref, rtol=1e-4, atol=1e-5)
        assert close.mean() > 0.99, close.mean()
        assert np.max(np.abs(got - ref)) <= 0.25 * np.max(np.abs(ref))  # at most a 4-bit step or so


def test_streaming_eviction_artifact_tokens_equal_interpreter(tiny_llama, prompt):
    """evict-kv{policy=streaming}: the compiled cache keeps sinks + the recent window like the
    interpreter (cache length held at the budget), and tokens agree."""
    from ternc.backends.tvm.build import compile_runner
    from ternc.passes.pipeline import compile as run_passes

    m, _ = run_passes(tiny_llama, target="cpu", passes="fold,evict-kv{policy=streaming,budget=8,sinks=2}")
    runner = compile_runner(m, "cpu")
    long_prompt = np.concatenate([prompt, prompt + 1], axis=1)
    np.testing.assert_array_equal(ternc.generate(runner, long_prompt, 10), ternc.generate(m, long_prompt, 10))
    _same_caches(m, runner, long_prompt, steps=4, cache_len=8)


@pytest.mark.parametrize("spec", ["evict-kv{policy=h2o,budget=8,sinks=2}", "evict-kv{policy=h2o,budget=9,sinks=0,recent=3}"])
def test_h2o_eviction_artifact_tokens_equal_interpreter(tiny_llama, prompt, spec):
    """evict-kv{policy=h2o}: accumulated-attention state, per-head heavy hitters + sinks + recent,
    held at the budget; tokens, caches and the carried scores match the interpreter."""
    from ternc.backends.tvm.build import compile_runner
    from ternc.passes.pipeline import compile as run_passes

    m, _ = run_passes(tiny_llama, target="cpu", passes="fold," + spec)
    runner = compile_runner(m, "cpu")
    long_prompt = np.concatenate([prompt, prompt + 1], axis=1)
    np.testing.assert_array_equal(ternc.generate(runner, long_prompt, 10), ternc.generate(m, long_prompt, 10))
    budget = int(spec.split("budget=")[1].split(",")[0])
    _same_caches(m, runner, long_prompt, steps=4, cache_len=budget, also_state=True)


def test_rotation_on_cuda_is_refused_by_name(tiny_llama):
    from ternc.backends.tvm.build import compile_module
    from ternc.backends.tvm.lowering import LoweringError
    from ternc.passes.pipeline import compile as run_passes

    m, _ = run_passes(tiny_llama, "fold,quantize-kv{bits=2,group=4,residual=4,rotate=1}")
    with pytest.raises(LoweringError, match="rotate=1.*CPU targets only"):
        compile_module(m, "cuda")
