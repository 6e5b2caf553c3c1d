"""KV-cache quantization numerics: error bounds, full-precision parts, rotation, byte accounting."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ternc.ir.kvquant import (
    KVQuantConfig,
    dequantize_kv,
    dequantize_span,
    fp_kv_bytes_per_token,
    hadamard,
    kv_bytes_per_token,
    kv_cache_bytes,
    quantize_kv,
    quantized_span,
)


def make_kv(b=2, h=3, s=200, d=64, seed=0, dtype=np.float16):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((b, h, s, d)).astype(dtype), rng.standard_normal((b, h, s, d)).astype(dtype))


def rel_rms(x_hat, x):
    x = x.astype(np.float32)
    return float(np.sqrt(np.mean((x_hat - x) ** 2) / np.mean(x**2)))


def span_error(k, v, cfg):
    q = quantize_kv(k, v, cfg)
    k_hat, v_hat = dequantize_kv(q)
    start, stop = quantized_span(k.shape[2], cfg)
    sl = slice(start, stop)
    return rel_rms(k_hat[:, :, sl], k[:, :, sl]), rel_rms(v_hat[:, :, sl], v[:, :, sl])


def test_error_shrinks_with_bits():
    k, v = make_kv()
    errors = {bits: span_error(k, v, KVQuantConfig(bits=bits, group_size=32, residual=16)) for bits in (2, 4, 8)}
    assert max(errors[8]) < 0.01  # ~range/255: tiny
    assert 0.05 < min(errors[2]) and max(errors[2]) < 0.5  # 3 levels of resolution: coarse but bounded
    for kind in (0, 1):
        assert errors[2][kind] > errors[4][kind] > errors[8][kind]


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("rotate", [False, True])
def test_elementwise_error_within_half_a_step(bits, rotate):
    k, v = make_kv(s=150, d=96, seed=bits)  # 96 = 12 * 8 exercises the Paley Hadamard
    k[..., 7] *= 30  # an outlier channel
    cfg = KVQuantConfig(bits=bits, group_size=32, residual=20, sinks=3, rotate=rotate)
    q = quantize_kv(k, v, cfg)
    start, stop = quantized_span(150, cfg)
    rot = hadamard(96) if rotate else np.eye(96, dtype=np.float32)
    k_ref = k[:, :, start:stop].astype(np.float32) @ rot
    v_ref = v[:, :, start:stop].astype(np.float32) @ rot
    k_mid, v_mid = dequantize_span(q, rotated=True)
    k_step = np.repeat(q.k_scale.astype(np.float32), cfg.group_size, axis=2)
    v_step = np.repeat(q.v_scale.astype(np.float32), cfg.value_group(96), axis=3)
    assert (np.abs(k_mid - k_ref) <= 0.5 * k_step * (1 + 1e-3) + 1e-5).all()
    assert (np.abs(v_mid - v_ref) <= 0.5 * v_step * (1 + 1e-3) + 1e-5).all()
    assert q.k_codes.max() <= cfg.qmax and q.v_codes.max() <= cfg.qmax
    # fp16 zero rounded down and scale rounded up: every group's range is covered, nothing clips.
    k_zero = np.repeat(q.k_zero.astype(np.float32), cfg.group_size, axis=2)
    v_zero = np.repeat(q.v_zero.astype(np.float32), cfg.value_group(96), axis=3)
    assert (k_ref >= k_zero).all() and (k_ref <= k_zero + cfg.qmax * k_step).all()
    assert (v_ref >= v_zero).all() and (v_ref <= v_zero + cfg.qmax * v_step).all()


@settings(max_examples=40, deadline=None)
@given(
    seq_len=st.integers(0, 90),
    bits=st.sampled_from([2, 4, 8]),
    group_size=st.sampled_from([1, 4, 8, 16, 32]),
    residual=st.integers(0, 20),
    sinks=st.integers(0, 6),
    rotate=st.booleans(),
    seed=st.integers(0, 2**16),
    magnitude=st.sampled_from([1e-3, 1.0, 300.0]),
)
def test_quantize_kv_property(seq_len, bits, group_size, residual, sinks, rotate, seed, magnitude):
    cfg = KVQuantConfig(bits=bits, group_size=group_size, residual=residual, sinks=sinks, rotate=rotate)
    rng = np.random.default_rng(seed)
    k = (rng.standard_normal((1, 2, seq_len, 32)) * magnitude).astype(np.float32)
    v = (rng.standard_normal((1, 2, seq_len, 32)) * magnitude).astype(np.float32)
    q = quantize_kv(k, v, cfg)
    start, stop = quantized_span(seq_len, cfg)
    assert q.n_quantized == stop - start and (stop - start) % group_size == 0
    assert seq_len - stop >= min(residual, seq_len - start)
    k_hat, v_hat = dequantize_kv(q)
    np.testing.assert_array_equal(k_hat[:, :, :start], k[:, :, :start])
    np.testing.assert_array_equal(v_hat[:, :, stop:], v[:, :, stop:])
    k_mid, v_mid = dequantize_span(q, rotated=True)
    rot = hadamard(32) if rotate else np.eye(32, dtype=np.float32)
    k_step = np.repeat(q.k_scale.astype(np.float32), group_size, axis=2)
    v_step = np.repeat(q.v_scale.astype(np.float32), cfg.value_group(32), axis=3)
    tol = 1e-5 * magnitude  # f32 rounding slack (rotation, reconstruction)
    assert (np.abs(k_mid - k[:, :, start:stop] @ rot) <= 0.5 * k_step + tol).all()
    assert (np.abs(v_mid - v[:, :, start:stop] @ rot) <= 0.5 * v_step + tol).all()
    assert q.storage_bytes() == kv_cache_bytes(cfg, seq_len, kv_heads=2, head_dim=32, n_layers=1)


def test_statistics_axes_are_kivi():
    # Keys: one scale per (token group, channel); values: one scale per (token, channel group).
    k, v = make_kv(b=1, h=1, s=96, d=64)
    cfg = KVQuantConfig(bits=2, group_size=32, residual=0)
    q = quantize_kv(k, v, cfg)
    assert q.k_scale.shape == (1, 1, 3, 64) and q.v_scale.shape == (1, 1, 96, 2)
    k_group = k[0, 0, 32:64, 5].astype(np.float32)
    zero = float(q.k_zero[0, 0, 1, 5])
    assert zero <= k_group.min() and zero == pytest.approx(k_group.min(), abs=1e-3)
    v_group = v[0, 0, 40, 32:64].astype(np.float32)
    assert float(q.v_scale[0, 0, 40, 1]) == pytest.approx((v_group.max() - v_group.min()) / 3, rel=2e-3)


def test_constant_groups_are_exact():
    k = np.full((1, 1, 64, 32), 1.5, np.float16)
    q = quantize_kv(k, k, KVQuantConfig(bits=2, group_size=32, residual=0))
    k_hat, v_hat = dequantize_kv(q)
    np.testing.assert_array_equal(k_hat, k.astype(np.float32))
    np.testing.assert_array_equal(v_hat, k.astype(np.float32))


@pytest.mark.parametrize("rotate", [False, True])
def test_sinks_and_recent_window_are_exact(rotate):
    k, v = make_kv(s=137)
    cfg = KVQuantConfig(bits=2, group_size=32, residual=24, sinks=4, rotate=rotate)
    start, stop = quantized_span(137, cfg)
    assert (start, stop) == (4, 4 + 96)  # 133 - 24 = 109 -> 3 whole groups
    assert 137 - stop >= cfg.residual and 137 - stop < cfg.residual + cfg.group_size
    k_hat, v_hat = dequantize_kv(quantize_kv(k, v, cfg))
    for hat, ref in ((k_hat, k), (v_hat, v)):
        np.testing.assert_array_equal(hat[:, :, :start], ref[:, :, :start].astype(np.float32))
        np.testing.assert_array_equal(hat[:, :, stop:], ref[:, :, stop:].astype(np.float32))
        assert not np.array_equal(hat[:, :, start:stop], ref[:, :, start:stop].astype(np.float32))


@pytest.mark.parametrize("seq_len", [0, 1, 3, 4, 20, 35, 36, 67, 68])
def test_quantized_span_edges(seq_len):
    cfg = KVQuantConfig(bits=4, group_size=32, residual=0, sinks=4)
    start, stop = quantized_span(seq_len, cfg)
    assert start == min(4, seq_len)
    assert (stop - start) % 32 == 0 and 0 <= seq_len - stop < 32
    k, v = make_kv(b=1, h=1, s=seq_len, d=32)
    k_hat, v_hat = dequantize_kv(quantize_kv(k, v, cfg))
    assert k_hat.shape == k.shape and v_hat.shape == v.shape


def test_streaming_prefix_consistency():
    # Appending tokens never changes codes already produced: quantization is a per-group function.
    k, v = make_kv(s=230)
    cfg = KVQuantConfig(bits=2, group_size=32, residual=16, sinks=2, rotate=True)
    short, long = quantize_kv(k[:, :, :120], v[:, :, :120], cfg), quantize_kv(k, v, cfg)
    nq = short.n_quantized
    assert 0 < nq < long.n_quantized
    for name in ("k_codes", "v_codes", "v_scale", "v_zero"):
        np.testing.assert_array_equal(getattr(long, name)[:, :, :nq], getattr(short, name))
    np.testing.assert_array_equal(long.k_scale[:, :, : nq // 32], short.k_scale)


@pytest.mark.parametrize("n", [1, 2, 4, 8, 12, 20, 24, 40, 64, 96, 128, 160, 256])
def test_hadamard_orthonormal(n):
    h = hadamard(n)
    np.testing.assert_allclose(h @ h.T, np.eye(n), atol=1e-5)
    np.testing.assert_allclose(np.abs(h), 1 / np.sqrt(n), rtol=1e-6)


@pytest.mark.parametrize("n", [0, 3, 6, 7, 36, 100])
def test_hadamard_unsupported_sizes(n):
    with pytest.raises(ValueError, match="Hadamard"):
        hadamard(n)


def test_rotation_helps_values_with_an_outlier_channel():
    # Values are quantized per token across channels: one huge channel stretches every token's
    # range. The Hadamard rotation spreads it over all channels, so the error drops.
    k, v = make_kv(s=288, d=64, seed=4)
    v[..., 5] *= 25
    for bits in (2, 4):
        plain = KVQuantConfig(bits=bits, group_size=64, residual=32)
        _, v_err_plain = span_error(k, v, plain)
        _, v_err_rot = span_error(k, v, dataclasses.replace(plain, rotate=True))
        assert v_err_rot < 0.75 * v_err_plain


def test_rotation_preserves_attention():
    # Scores against the rotated span with rotated queries equal scores in the original basis.
    k, v = make_kv(b=1, h=2, s=160, d=128)
    cfg = KVQuantConfig(bits=4, group_size=32, residual=32, rotate=True)
    q = quantize_kv(k, v, cfg)
    k_rot, v_rot = dequantize_span(q, rotated=True)
    k_orig, v_orig = dequantize_span(q)
    query = np.random.default_rng(1).standard_normal((1, 2, 1, 128)).astype(np.float32)
    h = hadamard(128)
    scores_rot = (query @ h) @ np.swapaxes(k_rot, -1, -2)
    scores = query @ np.swapaxes(k_orig, -1, -2)
    np.testing.assert_allclose(scores_rot, scores, rtol=1e-4, atol=1e-4)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    np.testing.assert_allclose((probs @ v_rot) @ h.T, probs @ v_orig, rtol=1e-4, atol=1e-5)


def test_bytes_accounting_matches_arrays():
    for cfg, d in (
        (KVQuantConfig(bits=2, group_size=32, residual=32, sinks=4), 64),
        (KVQuantConfig(bits=4, group_size=128, residual=0, sinks=0, rotate=True), 96),  # value group = 96
        (KVQuantConfig(bits=8, group_size=16, residual=5, sinks=1), 32),
    ):
        k, v = make_kv(b=2, h=3, s=181, d=d)
        q = quantize_kv(k, v, cfg)
        assert q.storage_bytes() == kv_cache_bytes(cfg, 181, kv_heads=3, head_dim=d, n_layers=1, batch=2)
        # In steady state one more full group costs group_size * kv_bytes_per_token.
        grow = kv_cache_bytes(cfg, 181 + cfg.group_size, 3, d, 5) - kv_cache_bytes(cfg, 181, 3, d, 5)
        assert grow == pytest.approx(cfg.group_size * kv_bytes_per_token(cfg, 3, d, 5))


def test_bytes_per_token_hand_count():
    # 2-bit, group 32, head_dim 128: K = 32 B codes + 2 * 2 B * 128/32 = 48 B; V = 32 B + 2 * 2 B * 4 = 48 B.
    cfg = KVQuantConfig(bits=2, group_size=32)
    assert kv_bytes_per_token(cfg, kv_heads=1, head_dim=128, n_layers=1) == 96
    assert fp_kv_bytes_per_token(kv_heads=1, head_dim=128, n_layers=1) == 512
    # BitNet b1.58 2B4T: 5 KV heads, head_dim 128, 30 layers.
    assert kv_bytes_per_token(cfg, 5, 128, 30) == 96 * 150
    assert kv_bytes_per_token(KVQuantConfig(bits=8, group_size=128), 1, 128, 1) == 256 + 4 + 4


def test_config_and_input_validation():
    with pytest.raises(ValueError, match="bits"):
        KVQuantConfig(bits=3)
    with pytest.raises(ValueError):
        KVQuantConfig(group_size=0)
    with pytest.raises(ValueError, match="value group"):
        KVQuantConfig(group_size=48).value_group(64)
    k, v = make_kv(s=10, d=32)
    with pytest.raises(ValueError):
        quantize_kv(k, v[:, :, :5], KVQuantConfig())
    k[0, 0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="finite"):
        quantize_kv(k, v, KVQuantConfig())
    with pytest.raises(ValueError, match="fp16"):
        quantize_kv(np.full((1, 1, 4, 32), 1e6, np.float32), np.zeros((1, 1, 4, 32), np.float32), KVQuantConfig())
    with pytest.raises(dataclasses.FrozenInstanceError):
        KVQuantConfig().bits = 4  # type: ignore[misc]
