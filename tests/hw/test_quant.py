"""ActQuantizer (hw/quant.py) bit-exact against ir/hw_numerics.quantize_act_fx, Amaranth simulator."""

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from ternc.hw.quant import ActQuantizer
from ternc.hw.tlmm import act_beats
from ternc.ir import hw_numerics as h
from ternc.sim.amaranth_tb import collect, drive


@pytest.mark.parametrize("group,tables,lanes", [(3, 2, 3), (3, 3, 9), (2, 2, 1)])
def test_quantizer_bit_exact_with_replay(group, tables, lanes):
    rng = np.random.default_rng(lanes)
    chunk = group * tables
    ks = [chunk * 2 + 1, chunk, 5]
    toks = []
    for i, k in enumerate(ks):
        x = h.to_fx(rng.normal(size=k) * rng.uniform(0.01, 100))
        toks.append(x)
    toks[1][:] = 0                      # all-zero token: amax clamps to 1
    toks[2][:] = [h.FX_MIN + 1, h.FX_MAX, 1, -1, 0]
    passes = [2, 1, 3]
    dut = ActQuantizer(group, tables, max_chunks=8, lanes=lanes)
    beats, expect, scales = [], [], []
    for x, p in zip(toks, passes):
        n_chunks = -(-len(x) // chunk)
        padded = np.zeros(n_chunks * chunk, np.int64)
        padded[: len(x)] = x
        words = padded.reshape(-1, lanes)
        for j, wv in enumerate(words):
            beats.append({"data": [int(v) for v in wv], "last": int(j == len(words) - 1), "passes": p})
        q, amax = h.quantize_act_fx(x)
        expect += act_beats(q, group, tables) * p
        scales += [int(amax[0])] * p
    out, sc = [], []
    r = random.Random(lanes)

    async def src(ctx):
        await drive(ctx, dut.inp, beats, r, 0.7)

    async def sc_sink(ctx):
        await collect(ctx, dut.scale, len(scales), sc, r, 0.5)

    async def snk(ctx):
        await collect(ctx, dut.act, len(expect), out, r, 0.6)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(src, background=True)
    sim.add_testbench(sc_sink, background=True)
    sim.add_testbench(snk)
    sim.run()
    got = [{"data": [o.data[i] for i in range(chunk)], "last": o.last} for o in out]
    assert got == expect
    assert [s.amax for s in sc] == scales


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_quantizer_capacity_covers_2b4t():
    dut = ActQuantizer(3, 28)
    assert dut.max_k >= 6912
    dut.check_k(6912)
    with pytest.raises(ValueError, match="K=20000"):
        dut.check_k(20000)


@pytest.mark.slow
def test_quantizer_2b4t_down_projection_k():
    """Review fix: the default (TeLLMe-sized) quantizer runs K = 6,912 (BitNet-2B4T down_proj:
    83 chunks of 84) bit-exact (it used to stop at 64 chunks = 5,376)."""
    g, t, lanes, k = 3, 28, 3, 6912
    dut = ActQuantizer(g, t, lanes=lanes)
    rng = np.random.default_rng(0)
    x = h.to_fx(rng.normal(size=k) * 3.0)
    x[6911] = h.to_fx(40.0)  # the amax sits in the very last chunk
    chunk = g * t
    padded = np.zeros(-(-k // chunk) * chunk, np.int64)
    padded[:k] = x
    words = padded.reshape(-1, lanes)
    beats = [{"data": [int(v) for v in wv], "last": int(j == len(words) - 1), "passes": 1}
             for j, wv in enumerate(words)]
    q, amax = h.quantize_act_fx(x)
    expect = act_beats(q, g, t)
    out, sc = [], []
    r = random.Random(0)

    async def src(ctx):
        await drive(ctx, dut.inp, beats, r, 1.0)

    async def sc_sink(ctx):
        await collect(ctx, dut.scale, 1, sc, r, 1.0)

    async def snk(ctx):
        await collect(ctx, dut.act, len(expect), out, r, 1.0)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(src, background=True)
    sim.add_testbench(sc_sink, background=True)
    sim.add_testbench(snk)
    sim.run()
    assert len(expect) == 83
    got = [{"data": [o.data[i] for i in range(chunk)], "last": o.last} for o in out]
    assert got == expect
    assert sc[0].amax == int(amax[0])
