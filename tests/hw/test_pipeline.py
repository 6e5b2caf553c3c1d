"""End-to-end fused linear (quantize -> TLMM -> dequantize -> op) in Amaranth's simulator, bit-exact
against ir/hw_numerics.py + ir/semantics.py."""

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from ternc.hw.pipeline import DqFactor, TLMMPipeline
from ternc.hw.tlmm import weight_beats
from ternc.ir import hw_numerics as h
from ternc.ir.semantics import ternary_matmul_i32
from ternc.sim.amaranth_tb import collect, drive


def test_dq_factor_block():
    dut = DqFactor()
    rng = np.random.default_rng(0)
    amax = [1, 2 ** 31 - 1, 65536, 12345] + [int(v) for v in rng.integers(1, 2 ** 31, 8)]
    ws = h.encode_wscale(0.0421)
    out = []
    r = random.Random(0)

    async def src(ctx):
        ctx.set(dut.ws_m, ws[0])
        ctx.set(dut.ws_s, ws[1])
        await drive(ctx, dut.scale, [{"amax": a} for a in amax], r, 0.7)

    async def snk(ctx):
        await collect(ctx, dut.factor, len(amax), out, r, 0.6)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(src, background=True)
    sim.add_testbench(snk)
    sim.run()
    m_ref, s_ref = h.dq_factor(np.array(amax), *ws)
    assert [(o.m, o.s) for o in out] == list(zip(m_ref.tolist(), s_ref.tolist()))


@pytest.mark.parametrize("op", ["residual_add", "gated_silu"])
def test_pipeline_end_to_end(op):
    g, t, c = 3, 2, 4
    rng = np.random.default_rng(7)
    k, n_rows = 23, 8  # K not a multiple of G*T; two column tiles
    chunk = g * t
    x = h.to_fx(rng.normal(size=(2, k)) * np.array([[3.0], [0.2]]))
    w = rng.integers(-1, 2, size=(n_rows, k)).astype(np.int8)
    ws = h.encode_wscale(0.037)
    dut = TLMMPipeline(g, t, c, op, wbuf_depth=32, ram_style=None, max_chunks=8, quant_lanes=3)
    tiles = [weight_beats(w[i * c:(i + 1) * c], g, t, c) for i in range(n_rows // c)]
    nb = len(tiles[0])
    load = [{"data": b, "first": int(i == 0 and j == 0)} for i, tb in enumerate(tiles) for j, b in enumerate(tb)]
    n_tok, n_tiles = x.shape[0], len(tiles)
    cmds = [{"base": ti * nb, "count": nb} for _ in range(n_tok) for ti in range(n_tiles)]
    xb = []
    for tok in range(n_tok):
        padded = np.zeros(nb * chunk, np.int64)
        padded[:k] = x[tok]
        words = padded.reshape(-1, 3)
        xb += [{"data": [int(v) for v in wv], "last": int(j == len(words) - 1), "passes": n_tiles}
               for j, wv in enumerate(words)]
    # Golden model, only shared definitions.
    q, amax = h.quantize_act_fx(x)
    acc = ternary_matmul_i32(q, w).astype(np.int64)
    mm, ss = h.dq_factor(amax, *ws)
    y = h.dequantize_fx(acc, mm, ss).astype(np.int64)  # [tok, n_rows]
    aux = []
    ref = []
    for tok in range(n_tok):
        for ti in range(n_tiles):
            yt = y[tok, ti * c:(ti + 1) * c]
            if op == "residual_add":
                res = h.to_fx(rng.normal(size=c))
                aux.append({"res": [int(v) for v in res]})
                ref.append(h.add_fx(yt, res))
            else:
                ref.append(h.silu_gate_fx(yt[: c // 2], yt[c // 2:]))
    out = []
    r = random.Random(3)

    async def weights(ctx):
        ctx.set(dut.ws_m, ws[0])
        ctx.set(dut.ws_s, ws[1])
        await drive(ctx, dut.load, load, r, 0.8)
        await drive(ctx, dut.cmd, cmds, r, 0.8)

    async def acts(ctx):
        await drive(ctx, dut.x, xb, r, 0.8)

    async def auxs(ctx):
        await drive(ctx, dut.aux, aux, r, 0.8)

    async def snk(ctx):
        await collect(ctx, dut.y, len(ref), out, r, 0.6)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(weights, background=True)
    sim.add_testbench(acts, background=True)
    if op == "residual_add":
        sim.add_testbench(auxs, background=True)
    sim.add_testbench(snk)
    sim.run()
    got = np.array([[o[i] for i in range(dut.y.payload.shape().length)] for o in out], dtype=np.int64)
    assert np.array_equal(got, np.array(ref, dtype=np.int64))
