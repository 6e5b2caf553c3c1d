"""RMSNorm unit (hw/norm.py) bit-exact against ir/hw_numerics.rmsnorm_fx: Amaranth simulator
(fast) and the cocotb stream bench on Verilator (random valid/ready, edge tokens, cycle counts)."""

import json
import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from ternc.hw.norm import RMSNorm
from ternc.ir import hw_numerics as h
from ternc.sim.amaranth_tb import collect, drive


def workload(lanes, k, n_tok, seed, eps=1e-5):
    """Tokens with edge cases: scaled normals, all-zero, an outlier channel, FX extremes, tiny."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_tok, k)) * rng.uniform(0.01, 50, size=(n_tok, 1))
    xr = h.to_fx(x).astype(np.int64)
    if n_tok > 1:
        xr[1] = 0                               # ms = eps only
    if n_tok > 2:
        xr[2, 3] = h.FX_MAX                      # outlier: sum of squares near saturation
        xr[2, 4] = h.FX_MIN
    if n_tok > 3:
        xr[3] = rng.integers(-3, 4, size=k)      # a few raw LSBs
    gamma = h.to_fx(rng.normal(size=k) * 0.7 + 1.0).astype(np.int64)
    ref = h.rmsnorm_fx(xr, gamma, eps).astype(np.int64)
    nb = -(-k // lanes)
    pad = lambda v: np.concatenate([v, np.zeros(nb * lanes - k, np.int64)])  # noqa: E731
    inp, gam, out = [], [], []
    for t in range(n_tok):
        xp, gp, rp = pad(xr[t]), pad(gamma), pad(ref[t])
        for j in range(nb):
            sl = slice(j * lanes, (j + 1) * lanes)
            inp.append({"data": [int(v) for v in xp[sl]], "last": int(j == nb - 1)})
            gam.append({"data": [int(v) for v in gp[sl]]})
            out.append({"data": [int(v) for v in rp[sl]], "last": int(j == nb - 1)})
    inv_k, eps_q = h.norm_consts(k, eps)
    return inp, gam, out, inv_k, eps_q


def test_norm_numerics_close_to_float():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 2560)) * 3
    g = rng.normal(size=2560) * 0.2 + 1
    y = h.from_fx(h.rmsnorm_fx(h.to_fx(x), h.to_fx(g), 1e-6))
    xq = h.from_fx(h.to_fx(x))
    ref = xq / np.sqrt(np.mean(xq * xq, -1, keepdims=True) + 1e-6) * g
    assert np.max(np.abs(y - ref)) < 1e-4


def test_norm_amaranth_bit_exact():
    lanes, k = 3, 23
    inp, gam, out, inv_k, eps_q = workload(lanes, k, 4, seed=2)
    dut = RMSNorm(lanes, max_k=32)
    got = []
    r = random.Random(0)

    async def src(ctx):
        ctx.set(dut.inv_k, inv_k)
        ctx.set(dut.eps_q, eps_q)
        await drive(ctx, dut.inp, inp, r, 0.7)

    async def gsrc(ctx):
        await drive(ctx, dut.gamma, gam, r, 0.7)

    async def snk(ctx):
        await collect(ctx, dut.out, len(out), got, r, 0.6)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(src, background=True)
    sim.add_testbench(gsrc, background=True)
    sim.add_testbench(snk)
    sim.run()
    g = [{"data": [o.data[i] for i in range(lanes)], "last": o.last} for o in got]
    assert g == out


@pytest.mark.rtl
@pytest.mark.parametrize("lanes,k,p", [(4, 70, 0.6), pytest.param(4, 576, 1.0, marks=pytest.mark.slow)])
def test_norm_verilator(lanes, k, p):
    from ternc.sim.rtl import beat_ints, have_simulator, run_stream_bench
    if not have_simulator("verilator"):
        pytest.skip("verilator not installed")
    n_tok = 4 if p < 1 else 2
    inp, gam, out, inv_k, eps_q = workload(lanes, k, n_tok, seed=k)
    proto = RMSNorm(lanes, max_k=1024)
    proto._MustUse__silence = True  # signature donor only
    spec = {"inputs": {"inp": beat_ints(proto.inp.payload.shape(), inp),
                       "gamma": beat_ints(proto.gamma.payload.shape(), gam)},
            "outputs": {"out": beat_ints(proto.out.payload.shape(), out)},
            "signals": {"inv_k": inv_k, "eps_q": eps_q}, "p_valid": p, "p_ready": p, "seed": k,
            "label": f"rmsnorm lanes={lanes} K={k}"}
    res = run_stream_bench(lambda: RMSNorm(lanes, max_k=1024), "rmsnorm", f"norm L{lanes} K1024",
                           ("hw/norm.py", "hw/stream_util.py", "ir/hw_numerics.py"), spec)
    assert res["ok"], res
    if p == 1.0:
        # Cycle count per token, measured: 2 * K/lanes + overhead (docstring).
        nb = -(-k // lanes)
        per_tok = (res["ports"]["out"]["last"] - res["ports"]["inp"]["first"] + 1) / n_tok
        print("RMSNorm cycles/token", json.dumps({"K": k, "lanes": lanes, "measured": per_tok,
                                                  "model": 2 * nb + RMSNorm.OVERHEAD}))
        assert abs(per_tok - (2 * nb + RMSNorm.OVERHEAD)) <= 2
