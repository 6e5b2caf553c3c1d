"""cocotb 2 bench for :class:`ternc.hw.tlmm.TLMMCore` (runs inside the simulator; see sim/rtl.py).

Configuration comes from environment variables set by the runner:
  TLMM_G, TLMM_T, TLMM_C, TLMM_DEPTH   core parameters (must match the built Verilog)
  TLMM_SEED                            RNG seed
  TLMM_P_VALID, TLMM_P_READY           probabilities of valid / ready per cycle (1.0 = no backpressure)
  TLMM_OUT                             JSON file the bench writes its measurements to
  TLMM_TOKENS                          tokens in the throughput workload (default 2)

Golden model: ``ir/semantics.ternary_matmul_i32`` on the same int8 activations and ternary weights;
beats are packed with the Amaranth layouts (``layout.const``) and ``hw/tlmm.act_beats`` /
``weight_beats`` (TL2 via ``ir/packing.py``).
"""

from __future__ import annotations

import json
import os
import random
import time

import cocotb
import numpy as np
from amaranth import signed
from amaranth.lib import data
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

from ternc.hw.tlmm import act_beat_layout, act_beats, weight_beat_layout, weight_beats
from ternc.ir.semantics import ternary_matmul_i32


def _cfg():
    e = os.environ
    return dict(G=int(e.get("TLMM_G", 3)), T=int(e.get("TLMM_T", 3)), C=int(e.get("TLMM_C", 4)),
                depth=int(e.get("TLMM_DEPTH", 64)), seed=int(e.get("TLMM_SEED", 1)),
                p_valid=float(e.get("TLMM_P_VALID", 1.0)), p_ready=float(e.get("TLMM_P_READY", 1.0)),
                out=e.get("TLMM_OUT"), tokens=int(e.get("TLMM_TOKENS", 2)))


class Cycle:
    def __init__(self, clk):
        self.n = 0
        self.clk = clk

    async def run(self):
        while True:
            await RisingEdge(self.clk)
            self.n += 1


async def source(dut, name, beats, rng, p_valid, cyc, log=None):
    """Drive int payloads on stream ``name``; valid idles at random, never drops before a transfer."""
    clk = dut.clk
    valid, payload, ready = (getattr(dut, f"{name}__{s}") for s in ("valid", "payload", "ready"))
    i = 0
    holding = False
    while i < len(beats):
        await FallingEdge(clk)
        if holding or rng.random() < p_valid:
            valid.value = 1
            payload.value = beats[i]
            holding = True
        else:
            valid.value = 0
        await ReadOnly()
        if holding and int(ready.value):
            if log is not None:
                log.append(cyc.n)
            i += 1
            holding = False
    await FallingEdge(clk)
    valid.value = 0


async def sink(dut, name, n, rng, p_ready, cyc, out, log=None):
    clk = dut.clk
    valid, payload, ready = (getattr(dut, f"{name}__{s}") for s in ("valid", "payload", "ready"))
    while len(out) < n:
        await FallingEdge(clk)
        r = rng.random() < p_ready
        ready.value = int(r)
        await ReadOnly()
        if r and int(valid.value):
            v = payload.value
            out.append(v.to_unsigned() if hasattr(v, "to_unsigned") else int(v))
            if log is not None:
                log.append(cyc.n)
    await FallingEdge(clk)
    ready.value = 0


def make_workload(cfg, rng: np.random.Generator, kind: str):
    """Returns (K, x_q [tokens, K] int8, w_t [N, K] int8, pad values for activation tails)."""
    G, T, C = cfg["G"], cfg["T"], cfg["C"]
    chunk = G * T
    if kind == "random":
        k = 2 * chunk + 5 if chunk > 6 else 3 * chunk + 2  # not a multiple of G*T nor of G
        x = rng.integers(-128, 128, size=(3, k)).astype(np.int8)
        w = rng.integers(-1, 2, size=(2 * C, k)).astype(np.int8)
        w[1] = 0  # an all-zero weight row
        x[2, :] = 0  # an all-zero activation token
        x[2, : min(3, k)] = (-128, 127, 1)[: min(3, k)]
    elif kind == "edges":
        k = 4 * chunk - 1
        x = np.stack([np.full(k, -128), np.full(k, 127), np.where(np.arange(k) % 2, 127, -128)]).astype(np.int8)
        w = np.zeros((C, k), np.int8)
        w[0] = -1          # max positive accumulation with -128: 128*K
        w[1 % C] = 1       # max negative
        if C > 2:
            w[2] = np.where(np.arange(k) % 2, 1, -1)
        if C > 3:
            w[3] = rng.integers(-1, 2, size=k)
    elif kind == "throughput":
        k = 16 * chunk
        x = rng.integers(-128, 128, size=(cfg["tokens"], k)).astype(np.int8)
        w = rng.integers(-1, 2, size=(2 * C, k)).astype(np.int8)
    else:
        raise ValueError(kind)
    pad = rng.integers(-128, 128, size=chunk)  # garbage in the tail lanes: must not matter
    return k, x, w, pad


async def run_workload(dut, cfg, kind):
    G, T, C = cfg["G"], cfg["T"], cfg["C"]
    rng = np.random.default_rng([cfg["seed"], ("random", "edges", "throughput").index(kind)])
    prng = random.Random(cfg["seed"])
    k, x, w, pad = make_workload(cfg, rng, kind)
    n_tiles = -(-w.shape[0] // C)
    wl = weight_beat_layout(G, T, C)
    al = act_beat_layout(G, T)
    tiles = [w[i * C:(i + 1) * C] for i in range(n_tiles)]
    wbeats = [weight_beats(t, G, T, C) for t in tiles]
    nb = len(wbeats[0])
    assert n_tiles * nb <= cfg["depth"], "workload does not fit the weight buffer"
    load = []
    for ti, tb in enumerate(wbeats):
        for j, b in enumerate(tb):
            load.append(dut_load_const(wl, b, first=(ti == 0 and j == 0)))
    cmds, acts = [], []
    for tok in range(x.shape[0]):
        beats = [al.const(b).as_value().value for b in act_beats(x[tok], G, T, pad=pad)]
        for ti in range(n_tiles):
            cmds.append(ti * nb | (nb << addr_bits(cfg["depth"])))
            acts.extend(beats)

    dut.act__valid.value = 0
    dut.cmd__valid.value = 0
    dut.load__valid.value = 0
    dut.out__ready.value = 0
    cyc = Cycle(dut.clk)
    cocotb.start_soon(cyc.run())
    dut.rst.value = 1
    for _ in range(3):
        await RisingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.rst.value = 0
    pv, pr = cfg["p_valid"], cfg["p_ready"]
    await source(dut, "load", load, prng, pv, cyc)
    act_log, out_log, out = [], [], []
    n_out = x.shape[0] * n_tiles
    t0 = time.perf_counter()
    c0 = cyc.n
    cocotb.start_soon(source(dut, "cmd", cmds, random.Random(cfg["seed"] + 1), pv, cyc))
    cocotb.start_soon(source(dut, "act", acts, random.Random(cfg["seed"] + 2), pv, cyc, act_log))
    await sink(dut, "out", n_out, random.Random(cfg["seed"] + 3), pr, cyc, out, out_log)
    wall = time.perf_counter() - t0
    cycles = cyc.n - c0

    ol = data.ArrayLayout(signed(32), C)
    got = np.array([[ol.from_bits(v)[c] for c in range(C)] for v in out], dtype=np.int64)
    got = got.reshape(x.shape[0], n_tiles * C)[:, : w.shape[0]]
    ref = ternary_matmul_i32(x, w).astype(np.int64)
    ok = bool(np.array_equal(got, ref))
    # Steady state: cycles from the second to the last accepted activation chunk (the first chunk
    # waits for the weight buffer's read latency once, at start-up).
    span = act_log[-1] - act_log[1] + 1 if len(act_log) > 1 else 1
    res = dict(kind=kind, ok=ok, K=int(k), tokens=int(x.shape[0]), N=int(w.shape[0]), chunks=len(acts),
               cycles=int(cycles), act_span_cycles=int(span), wall_s=wall,
               macs_per_cycle_steady=(len(acts) - 1) * G * T * C / span,
               useful_macs_per_cycle=x.shape[0] * w.shape[0] * k / cycles,
               sim_cycles_per_s=cycles / wall, max_abs=int(np.abs(ref).max()))
    if not ok:
        bad = np.argwhere(got != ref)[:5]
        res["mismatch"] = [(int(i), int(j), int(got[i, j]), int(ref[i, j])) for i, j in bad]
    return res


def addr_bits(depth: int) -> int:
    return max(1, (depth - 1).bit_length())


def dut_load_const(wl, beat, first: bool) -> int:
    width = wl.size
    return wl.const(beat).as_value().value | (int(first) << width)


def _write(cfg, res):
    if cfg["out"]:
        prev = json.load(open(cfg["out"])) if os.path.exists(cfg["out"]) else []
        prev.append(res)
        with open(cfg["out"], "w") as f:
            json.dump(prev, f, indent=1)


async def _start(dut):
    Clock(dut.clk, 10, unit="ns").start()


@cocotb.test()
async def test_random(dut):
    cfg = _cfg()
    await _start(dut)
    res = await run_workload(dut, cfg, "random")
    _write(cfg, res)
    assert res["ok"], res


@cocotb.test()
async def test_edges(dut):
    cfg = _cfg()
    await _start(dut)
    res = await run_workload(dut, cfg, "edges")
    _write(cfg, res)
    assert res["ok"], res


@cocotb.test()
async def test_throughput(dut):
    cfg = _cfg()
    await _start(dut)
    res = await run_workload(dut, cfg, "throughput")
    _write(cfg, res)
    assert res["ok"], res
    if cfg["p_valid"] >= 1.0 and cfg["p_ready"] >= 1.0:
        # Stall-free: one chunk accepted every cycle from the first to the last, across passes.
        assert res["act_span_cycles"] == res["chunks"] - 1, res
