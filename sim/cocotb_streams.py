"""Generic cocotb bench for stream units: drives every input stream with its beats (random valid),
collects every output stream (random ready), compares with the expected beats, records cycles.

The host side (``sim/rtl.run_stream_bench``) computes the beats with the unit's Amaranth layouts and
the expected outputs with ``ir/hw_numerics.py``; this module only moves integers. Env:
STREAM_SPEC (JSON: ``inputs`` {port: [int]}, ``outputs`` {port: [int]}, ``signals`` {name: int},
``p_valid``, ``p_ready``, ``seed``, ``timeout``), BENCH_OUT (results JSON).
Results: ``ok``, per output ``mismatches`` (first 5: index, got, want), ``cycles`` (reset release to
the last output beat), per port ``first``/``last`` transfer cycles and ``beats``.
"""

from __future__ import annotations

import json
import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, RisingEdge, with_timeout

from ternc.sim.cocotb_tlmm import Cycle, sink, source


@cocotb.test()
async def test_streams(dut):
    spec = json.load(open(os.environ["STREAM_SPEC"]))
    out_path = os.environ.get("BENCH_OUT")
    seed = int(spec.get("seed", 1))
    Clock(dut.clk, 10, unit="ns").start()
    for name in spec["inputs"]:
        getattr(dut, f"{name}__valid").value = 0
    for name in spec["outputs"]:
        getattr(dut, f"{name}__ready").value = 0
    for name, v in spec.get("signals", {}).items():
        getattr(dut, name).value = v
    dut.rst.value = 1
    for _ in range(3):
        await RisingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.rst.value = 0
    cyc = Cycle(dut.clk)
    cocotb.start_soon(cyc.run())
    logs = {}
    for i, (name, beats) in enumerate(sorted(spec["inputs"].items())):
        logs[name] = []
        cocotb.start_soon(source(dut, name, beats, random.Random(seed * 101 + i), spec.get("p_valid", 1.0),
                                 cyc, logs[name]))
    got = {}
    sinks = []
    for i, (name, beats) in enumerate(sorted(spec["outputs"].items())):
        got[name], logs[name] = [], []
        sinks.append(cocotb.start_soon(sink(dut, name, len(beats), random.Random(seed * 211 + i),
                                            spec.get("p_ready", 1.0), cyc, got[name], logs[name])))
    timeout = int(spec.get("timeout", 200_000))
    for s in sinks:
        await with_timeout(s, timeout * 10, "ns")
    res = {"ok": True, "cycles": cyc.n, "ports": {}}
    for name, want in spec["outputs"].items():
        bad = [(i, g, w) for i, (g, w) in enumerate(zip(got[name], want)) if g != w]
        res["ok"] &= not bad and len(got[name]) == len(want)
        res["ports"][name] = {"mismatches": bad[:5], "n_bad": len(bad)}
    for name, lg in logs.items():
        res["ports"].setdefault(name, {}).update(beats=len(lg), first=lg[0] if lg else None,
                                                 last=lg[-1] if lg else None)
    res["label"] = spec.get("label", "")
    if out_path:
        prev = json.load(open(out_path)) if os.path.exists(out_path) else []
        prev.append(res)
        json.dump(prev, open(out_path, "w"), indent=1)
    assert res["ok"], res
