"""Decode attention unit (hw/attention.py) bit-exact against ir/hw_numerics.attention_decode_fx:
Amaranth simulator (small, varied context lengths) and the cocotb stream bench on Verilator
(random valid/ready, cycle counts), plus the numerics against float softmax attention."""

import json
import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from ternc.hw.attention import DecodeAttention
from ternc.ir import hw_numerics as h
from ternc.sim.amaranth_tb import collect, drive


def heads(d, ts, seed):
    """One (q, k, v) per context length in ``ts``, with edge cases."""
    rng = np.random.default_rng(seed)
    out = []
    for j, t in enumerate(ts):
        sc = [0.5, 3.0, 1.0, 8.0][j % 4]
        q = h.to_fx(rng.normal(size=d) * sc).astype(np.int64)
        k = h.to_fx(rng.normal(size=(t, d)) * sc).astype(np.int64)
        v = h.to_fx(rng.normal(size=(t, d)) * 2).astype(np.int64)
        if j == 1 and t > 2:
            k[1] = k[0]                      # tied scores
            v[2, :] = h.FX_MAX               # saturating output accumulator range
        if j == 3:
            q[:] = h.to_fx(50.0)             # far-apart scores: most p_t flush to 0
        out.append((q, k, v))
    return out


def beats(d, lanes, hs, scale):
    W = d // lanes
    qb, kvb, ob = [], [], []
    for q, k, v in hs:
        ref = h.attention_decode_fx(q, k, v, scale).astype(np.int64)
        qb += [{"data": [int(x) for x in q[w * lanes:(w + 1) * lanes]], "last": int(w == W - 1)} for w in range(W)]
        for mat in (k, v):
            kvb += [{"data": [int(x) for x in row[w * lanes:(w + 1) * lanes]]} for row in mat for w in range(W)]
        ob += [{"data": [int(x) for x in ref[w * lanes:(w + 1) * lanes]], "last": int(w == W - 1)} for w in range(W)]
    return qb, kvb, ob


def test_decode_numerics_close_to_float():
    rng = np.random.default_rng(3)
    d, t = 64, 100
    q, k, v = rng.normal(size=d) * 2, rng.normal(size=(t, d)) * 2, rng.normal(size=(t, d))
    scale = int(h.to_fx(1 / np.sqrt(d)))
    o = h.from_fx(h.attention_decode_fx(h.to_fx(q), h.to_fx(k), h.to_fx(v), scale))
    s = k @ q / np.sqrt(d)
    p = np.exp(s - s.max())
    ref = (p / p.sum()) @ v
    assert np.max(np.abs(o - ref)) < 5e-4


def test_exp_fx_table():
    x = -np.arange(0, 18 * 65536, 1013)
    e = h.exp_fx(x)
    assert np.max(np.abs(e / 65536 - np.exp(x / 65536))) < 4e-4
    assert h.exp_fx(np.array([-(2 ** 31)]))[0] == 0
    with pytest.raises(ValueError):
        h.exp_fx(np.array([1]))


def test_decode_attention_amaranth():
    d, lanes = 8, 4
    scale = int(h.to_fx(1 / np.sqrt(d)))
    ts = [5, 3, 1, 6]
    hs = heads(d, ts, seed=1)
    dut = DecodeAttention(d, lanes, max_ctx=8)
    W = d // lanes
    got = []
    r = random.Random(2)

    async def qsrc(ctx):
        ctx.set(dut.scale, scale)
        for (q, k, v), t in zip(hs, ts):
            qb, _, _ = beats(d, lanes, [(q, k, v)], scale)
            ctx.set(dut.n_ctx, t)
            await drive(ctx, dut.q, qb, r, 0.7)  # n_ctx is sampled with q's last beat

    async def kvsrc(ctx):
        _, kvb, _ = beats(d, lanes, hs, scale)
        await drive(ctx, dut.kv, kvb, r, 0.7)

    async def snk(ctx):
        await collect(ctx, dut.out, W * len(hs), got, r, 0.6)

    _, _, ob = beats(d, lanes, hs, scale)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(qsrc, background=True)
    sim.add_testbench(kvsrc, background=True)
    sim.add_testbench(snk)
    sim.run()
    g = [{"data": [o.data[i] for i in range(lanes)], "last": o.last} for o in got]
    assert g == ob


@pytest.mark.rtl
@pytest.mark.parametrize("t,p", [(37, 0.6), pytest.param(128, 1.0, marks=pytest.mark.slow)])
def test_decode_attention_verilator(t, p):
    from ternc.sim.rtl import beat_ints, have_simulator, run_stream_bench
    if not have_simulator("verilator"):
        pytest.skip("verilator not installed")
    d, lanes = 64, 4
    scale = int(h.to_fx(1 / np.sqrt(d)))
    n_heads = 3 if p < 1 else 2
    hs = heads(d, [t] * n_heads, seed=t)
    qb, kvb, ob = beats(d, lanes, hs, scale)
    proto = DecodeAttention(d, lanes, max_ctx=256)
    proto._MustUse__silence = True  # signature donor only
    spec = {"inputs": {"q": beat_ints(proto.q.payload.shape(), qb), "kv": beat_ints(proto.kv.payload.shape(), kvb)},
            "outputs": {"out": beat_ints(proto.out.payload.shape(), ob)},
            "signals": {"n_ctx": t, "scale": scale & 0xFFFFFFFF}, "p_valid": p, "p_ready": p, "seed": t,
            "label": f"decode attention d={d} lanes={lanes} T={t}", "timeout": 400000}
    res = run_stream_bench(lambda: DecodeAttention(d, lanes, max_ctx=256), "decode_attn", f"attn d{d} L{lanes} C256",
                           ("hw/attention.py", "ir/hw_numerics.py"), spec)
    assert res["ok"], res
    if p == 1.0:
        W = d // lanes
        per_head = (res["ports"]["out"]["last"] - res["ports"]["q"]["first"] + 1) / n_heads
        model = 2 * t * W + t + 4 * W + DecodeAttention.OVERHEAD
        print("DecodeAttention cycles/head", json.dumps({"T": t, "d": d, "lanes": lanes,
                                                         "measured": per_head, "model": model}))
        assert abs(per_head - model) <= 2
