"""Calibration of the dataflow simulator's unit models against the units' RTL.

There is no whole-accelerator top yet (no sequencer), so calibration is per unit: each generated
unit runs in Amaranth's simulator at full rate (every input valid, every output ready) on a tiny
configuration, and the cycles from its first accepted input to its last output are compared with
the simulator's formula for the same work (the same functions ``sim/dataflow.py`` charges per
instruction). Units and what is compared:

* linear pipeline (hw/pipeline.TLMMPipeline: quantizer -> TLMM core -> DqFactor -> epilogue),
  weights preloaded in its weight buffer: cycles for N tokens of one LINEAR (quantizer phases,
  one beat per cycle per tile, fill latency) vs ``linear_compute + linear_latency``;
* RMSNorm unit (hw/norm.RMSNorm): cycles for N tokens vs ``norm_compute``;
* decode attention unit (hw/attention.DecodeAttention): cycles for H heads of T keys vs
  ``attn_compute``.

DDR and the host are not calibrated here (no board); the AXI masters' measured 1.00 beat/cycle
(README, hw section) is what the DDR model assumes per port.

``python -m ternc.sim.calibrate`` rewrites ``sim/calibration.json``; tests/sim/test_dataflow.py
re-measures and checks |error| <= 5%.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

from . import dataflow as df

LINEAR_CASES = [  # (tables, columns, K, N, tokens)
    (2, 4, 24, 8, 3),
    (3, 4, 45, 12, 2),
    (2, 8, 60, 16, 2),
]
NORM_CASES = [(4, 20, 3), (4, 44, 2), (4, 70, 2)]        # (lanes, K, tokens)
ATTN_CASES = [(32, 4, 12, 2), (32, 4, 24, 2), (16, 4, 40, 2)]   # (head_dim, lanes, T, heads)


def _run(dut, benches, sink):
    from amaranth.sim import Simulator

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for b in benches:
        sim.add_testbench(b, background=True)
    sim.add_testbench(sink)
    sim.run()


def measure_linear(tables: int, columns: int, k: int, n_rows: int, tokens: int) -> int:
    from ternc.hw.pipeline import TLMMPipeline
    from ternc.hw.tlmm import weight_beats
    from ternc.ir import hw_numerics as h
    from ternc.sim.amaranth_tb import collect, drive

    g = 3
    rng = np.random.default_rng(k * 7 + n_rows)
    x = h.to_fx(rng.normal(size=(tokens, k)))
    w = rng.integers(-1, 2, size=(n_rows, k)).astype(np.int8)
    tiles = [weight_beats(w[i * columns:(i + 1) * columns], g, tables, columns) for i in range(-(-n_rows // columns))]
    nb = len(tiles[0])
    depth = 1 << max(1, (len(tiles) * nb - 1).bit_length())
    dut = TLMMPipeline(g, tables, columns, "none", wbuf_depth=depth, ram_style=None, max_chunks=nb, quant_lanes=3)
    load = [{"data": b, "first": int(i == 0 and j == 0)} for i, tb in enumerate(tiles) for j, b in enumerate(tb)]
    cmds = [{"base": ti * nb, "count": nb} for _ in range(tokens) for ti in range(len(tiles))]
    xb = []
    for tok in range(tokens):
        padded = np.zeros(nb * g * tables, np.int64)
        padded[:k] = x[tok]
        words = padded.reshape(-1, 3)
        xb += [{"data": [int(v) for v in wv], "last": int(j == len(words) - 1), "passes": len(tiles)}
               for j, wv in enumerate(words)]
    ws = h.encode_wscale(0.05)
    wait = len(load) + 8
    xlog, ylog, out = [], [], []
    r = random.Random(0)

    async def weights(ctx):
        ctx.set(dut.ws_m, ws[0])
        ctx.set(dut.ws_s, ws[1])
        await drive(ctx, dut.load, load, r, 1.0)
        await drive(ctx, dut.cmd, cmds, r, 1.0)

    async def acts(ctx):
        await ctx.tick().repeat(wait)
        await drive(ctx, dut.x, xb, r, 1.0, log=xlog)

    async def sink(ctx):
        await collect(ctx, dut.y, tokens * len(tiles), out, r, 1.0, log=ylog)

    _run(dut, [weights, acts], sink)
    return int(ylog[-1] - (xlog[0] + wait) + 1)


def model_linear(tables: int, columns: int, k: int, n_rows: int, tokens: int) -> float:
    cfg = df.SimConfig(group=3, tables=tables, columns=columns, wbuf_depth=1 << 16)
    compute, latency = df.linear_compute(cfg, k, n_rows, tokens, passes=1)
    return compute + latency


def measure_norm(lanes: int, k: int, tokens: int) -> int:
    from ternc.hw.norm import RMSNorm
    from ternc.ir import hw_numerics as h
    from ternc.sim.amaranth_tb import collect, drive

    rng = np.random.default_rng(k)
    x = h.to_fx(rng.normal(size=(tokens, k))).astype(np.int64)
    gamma = h.to_fx(rng.normal(size=k) * 0.5 + 1).astype(np.int64)
    nb = -(-k // lanes)
    pad = lambda v: np.concatenate([v, np.zeros(nb * lanes - k, np.int64)])  # noqa: E731
    inp = [{"data": [int(v) for v in pad(x[t])[j * lanes:(j + 1) * lanes]], "last": int(j == nb - 1)}
           for t in range(tokens) for j in range(nb)]
    gam = [{"data": [int(v) for v in pad(gamma)[j * lanes:(j + 1) * lanes]]} for _ in range(tokens) for j in range(nb)]
    inv_k, eps_q = h.norm_consts(k, 1e-5)
    dut = RMSNorm(lanes, max_k=128)
    ilog, olog, out = [], [], []
    r = random.Random(0)

    async def src(ctx):
        ctx.set(dut.inv_k, inv_k)
        ctx.set(dut.eps_q, eps_q)
        await drive(ctx, dut.inp, inp, r, 1.0, log=ilog)

    async def gsrc(ctx):
        await drive(ctx, dut.gamma, gam, r, 1.0)

    async def sink(ctx):
        await collect(ctx, dut.out, len(inp), out, r, 1.0, log=olog)

    _run(dut, [src, gsrc], sink)
    return int(olog[-1] - ilog[0] + 1)


def model_norm(lanes: int, k: int, tokens: int) -> float:
    return df.norm_compute(df.SimConfig(norm_lanes=lanes), k, tokens)


def measure_attn(d: int, lanes: int, t: int, heads: int) -> int:
    from ternc.hw.attention import DecodeAttention
    from ternc.ir import hw_numerics as h
    from ternc.sim.amaranth_tb import collect, drive

    rng = np.random.default_rng(t)
    w = d // lanes
    scale = int(h.to_fx(1 / np.sqrt(d)))
    qb, kvb = [], []
    for _ in range(heads):
        q = h.to_fx(rng.normal(size=d)).astype(np.int64)
        kk = h.to_fx(rng.normal(size=(t, d))).astype(np.int64)
        vv = h.to_fx(rng.normal(size=(t, d))).astype(np.int64)
        qb += [{"data": [int(v) for v in q[i * lanes:(i + 1) * lanes]], "last": int(i == w - 1)} for i in range(w)]
        for mat in (kk, vv):
            kvb += [{"data": [int(v) for v in row[i * lanes:(i + 1) * lanes]]} for row in mat for i in range(w)]
    dut = DecodeAttention(d, lanes, max_ctx=64)
    qlog, olog, out = [], [], []
    r = random.Random(0)

    async def qsrc(ctx):
        ctx.set(dut.n_ctx, t)
        ctx.set(dut.scale, scale)
        await drive(ctx, dut.q, qb, r, 1.0, log=qlog)

    async def kvsrc(ctx):
        await drive(ctx, dut.kv, kvb, r, 1.0)

    async def sink(ctx):
        await collect(ctx, dut.out, w * heads, out, r, 1.0, log=olog, timeout=10 ** 6)

    _run(dut, [qsrc, kvsrc], sink)
    return int(olog[-1] - qlog[0] + 1)


def model_attn(d: int, lanes: int, t: int, heads: int) -> float:
    return heads * df.attn_compute(df.SimConfig(attn_lanes=lanes), d, t_sum=t, rows=1)


UNITS = {
    "linear pipeline": (LINEAR_CASES, measure_linear, model_linear, "G=3 T={} C={} K={} N={} tokens={}"),
    "RMSNorm": (NORM_CASES, measure_norm, model_norm, "lanes={} K={} tokens={}"),
    "decode attention": (ATTN_CASES, measure_attn, model_attn, "d={} lanes={} T={} heads={}"),
}


def run(units=None) -> list[dict]:
    rows = []
    for name, (cases, meas, model, fmt) in UNITS.items():
        if units and name not in units:
            continue
        for case in cases:
            rtl = meas(*case)
            mod = model(*case)
            rows.append({"unit": name, "config": fmt.format(*case), "rtl": rtl, "model": round(mod, 1),
                         "error": round((mod - rtl) / rtl, 4)})
    return rows


def main() -> int:
    rows = run()
    p = Path(__file__).with_name("calibration.json")
    p.write_text(json.dumps({"source": "Amaranth simulator, full rate, first input -> last output "
                                       "(python -m ternc.sim.calibrate)", "rows": rows}, indent=1) + "\n")
    for r in rows:
        print(f"{r['unit']:18s} {r['config']:36s} RTL {r['rtl']:7d}  model {r['model']:9.1f}  {100 * r['error']:+.2f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
