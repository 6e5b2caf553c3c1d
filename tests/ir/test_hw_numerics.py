"""The hardware number formats (ir/hw_numerics.py) against the float contract (ir/semantics.py)."""

import numpy as np
import pytest

from ternc.ir import hw_numerics as h
from ternc.ir import semantics as S


@pytest.mark.parametrize("group", [1, 2, 3, 4])
def test_tlg_roundtrip_and_table(group):
    rng = np.random.default_rng(group)
    w = rng.integers(-1, 2, size=(4, 11)).astype(np.int8)
    idx, sgn = h.tlg_encode(w, group)
    assert idx.max() < h.tlg_num_indices(group)
    v = np.where(sgn != 0, -idx.astype(np.int64), idx)
    back = h.tlg_digits(v, group).reshape(4, -1)[:, :11]
    assert np.array_equal(back, w)
    # A lookup table gives the exact dot product: the TLMM identity the hardware relies on.
    x = rng.integers(-128, 128, size=idx.shape[1] * group).astype(np.int64)
    acc = np.zeros(4, np.int64)
    for t in range(idx.shape[1]):
        tab = h.tlg_table(x[t * group:(t + 1) * group], group)
        acc += np.where(sgn[:, t] != 0, -tab[idx[:, t]], tab[idx[:, t]])
    xq = x[:11].astype(np.int8)
    w_pad = np.zeros((4, idx.shape[1] * group), np.int8)
    w_pad[:, :11] = w
    assert np.array_equal(acc, S.ternary_matmul_i32(x.astype(np.int8), w_pad))
    del xq


def test_quantizer_disagreement_rate_vs_semantics():
    """quantize_act_fx (integer reciprocal, round half up) vs semantics.quantize_act (float32, half even).

    Measured: ~1e-5 of elements differ, always by exactly 1 LSB (rounding ties / float32 rounding)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2000, 256)) * rng.uniform(0.01, 50, size=(2000, 1))
    x[:, 0] *= 20  # outlier channel
    xr = h.to_fx(x)
    q_hw, amax = h.quantize_act_fx(xr)
    q_sw, a_scale = S.quantize_act(h.from_fx(xr).astype(np.float32))
    diff = q_hw.astype(np.int64) - q_sw
    rate = np.mean(diff != 0)
    assert np.abs(diff).max() <= 1
    assert rate < 1e-4, rate
    # amax is the same quantity semantics uses (up to the FX grid)
    np.testing.assert_allclose(127.0 / a_scale, amax / 65536.0, rtol=1e-6)
    # Plain N(0, 1) tokens: the rate quoted in hw_numerics' docstring (3 / 256,000).
    x = np.random.default_rng(0).normal(size=(1000, 256)).astype(np.float32)
    xr = h.to_fx(x)
    q_hw, _ = h.quantize_act_fx(xr)
    q_sw, _ = S.quantize_act(h.from_fx(xr))
    diff = q_hw.astype(np.int64) - q_sw
    assert np.abs(diff).max() <= 1
    assert np.count_nonzero(diff) / diff.size < 1e-4


def test_quantizer_edges():
    x = np.array([[0, 0, 0], [1, -1, 0], [h.FX_MIN + 1, h.FX_MAX, 0], [-65536, 65536, 32768]], np.int64)
    q, amax = h.quantize_act_fx(x)
    assert q.tolist() == [[0, 0, 0], [127, -127, 0], [-127, 127, 0], [-127, 127, 64]]
    assert amax[:, 0].tolist() == [1, 1, h.FX_MAX, 65536]
    recip, s = h.quant_recip(np.array([1, 2 ** 31 - 1, 3]))
    assert (recip < 2 ** h.RECIP_BITS).all() and (recip >= 127 * 2 ** 16).all()


def test_dequantize_fx_tracks_float_contract():
    rng = np.random.default_rng(2)
    k = 1536
    x = rng.normal(size=(8, k)).astype(np.float32)
    w_t = rng.integers(-1, 2, size=(64, k)).astype(np.int8)
    w_scale = 0.0371
    xr = h.to_fx(x)
    q, amax = h.quantize_act_fx(xr)
    acc = S.ternary_matmul_i32(q, w_t)
    m, s = h.dq_factor(amax, *h.encode_wscale(w_scale))
    assert ((m >= 2 ** 17) & (m < 2 ** 18)).all()
    y_hw = h.from_fx(h.dequantize_fx(acc, m, s))
    a_scale = (127.0 / (amax / 65536.0)).astype(np.float32)
    y_ref = S.dequantize(acc, a_scale, w_scale)
    np.testing.assert_allclose(y_hw, y_ref, rtol=2e-5, atol=2 / 65536)


def test_dequantize_saturates():
    out = h.dequantize_fx(np.array([2 ** 31 - 1, -(2 ** 31)]), np.array([2 ** 18 - 1] * 2), np.array([17, 17]))
    assert out.tolist() == [h.FX_MAX, h.FX_MIN]


def test_elementwise_accuracy():
    xs = np.linspace(-12, 12, 4001)
    xr = h.to_fx(xs)
    silu = h.from_fx(h.silu_fx(xr))
    ref = xs / (1 + np.exp(-xs))
    assert np.max(np.abs(silu - ref)) < 0.03 * np.maximum(1, np.abs(xs)).max() / 12 + 0.02
    relu2 = h.from_fx(h.relu2_fx(xr))
    np.testing.assert_allclose(relu2, np.maximum(xs, 0) ** 2, atol=2e-4, rtol=1e-4)
    g, u = xr[::7], xr[::-7][: len(xr[::7])]
    np.testing.assert_allclose(h.from_fx(h.silu_gate_fx(g, u)),
                               h.from_fx(h.silu_fx(g)) * h.from_fx(u), atol=1e-4)
    assert h.add_fx(np.array([h.FX_MAX]), np.array([5])).tolist() == [h.FX_MAX]
    assert h.relu2_fx(np.array([h.FX_MAX])).tolist() == [h.FX_MAX]
    assert h.sigmoid_fx(np.array([-(9 << 16), 9 << 16])).tolist() == [0, 65536]


def test_rope_fx_matches_float_rotation():
    dim = 64
    pos = np.arange(0, 300, 37)
    c, s = h.rope_table(pos, dim, theta=10000.0)
    assert c.dtype == np.int16 and c.shape == (len(pos), dim // 2)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(len(pos), dim)) * 4
    xr = h.to_fx(x)
    y0, y1 = h.rope_fx(xr[:, : dim // 2], xr[:, dim // 2:], c, s)
    inv = 1.0 / 10000.0 ** (np.arange(0, dim, 2) / dim)
    ang = pos[:, None] * inv[None]
    r0 = x[:, : dim // 2] * np.cos(ang) - x[:, dim // 2:] * np.sin(ang)
    r1 = x[:, : dim // 2] * np.sin(ang) + x[:, dim // 2:] * np.cos(ang)
    np.testing.assert_allclose(h.from_fx(y0), r0, atol=2e-3)
    np.testing.assert_allclose(h.from_fx(y1), r1, atol=2e-3)
