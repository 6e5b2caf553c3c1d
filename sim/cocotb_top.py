"""cocotb bench of the composed accelerator (hw/top.py, Verilog module ``accelerator``): the board's
host driver (backends/fpga/driver.py ``KV260Driver`` over ``CocotbTransport``) runs in a
``cocotb.task.bridge`` thread against the RTL.

DDR: one ``bytearray`` shared by cocotbext-axi RAM models on the HP ports (``AxiRam`` on HP0's read +
write channels, ``AxiRamRead`` on HP1/HP2), addressed modulo its size; the DDR window's base is a
multiple of that size. Host: cocotbext-axi ``AxiLiteMaster`` on ``axil_``.

The spec (JSON file named by env TOP_SPEC, written by sim/rtl.py) selects what runs:

* ``kind: "generate"``: load an artifact (``artifact``; ``program``: hex of an encoded program that
  replaces the artifact's, e.g. an EMBED-only plumbing program), prefill ``prompt`` then ``n - 1``
  decode steps (greedy, LM head on the host as on the board); writes ``logits_<i>.npy`` per call into
  ``out_dir`` and returns tokens, the counters per call and the simulated cycles.
* ``kind: "cases"``: register-level cases for the sequencer tests: per case, DDR writes, register
  writes, CLEAR + CTRL, wait for STATUS done/error, then STATUS, ERROR_CODE, PC, counters and DDR
  read-backs (the pytest side asserts).

``pause``: probability that each RAM channel pauses in a cycle (backpressure on every AXI channel).
Results go to the JSON list named by env TOP_OUT.
"""

from __future__ import annotations

import json
import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, RisingEdge


def _pauser(rng: random.Random, p: float):
    while True:
        yield int(rng.random() < p)


async def _setup(dut, spec):
    from cocotbext.axi import AxiBus, AxiLiteBus, AxiLiteMaster, AxiRam, AxiRamRead, AxiReadBus, AxiWriteBus

    Clock(dut.clk, 4, unit="ns").start()      # 250 MHz
    dut.rst.value = 1
    for _ in range(3):
        await RisingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.rst.value = 0
    size = 1 << max(12, (int(spec["ddr_bytes"]) - 1).bit_length())
    mem = bytearray(size)
    rams = [AxiRam(AxiBus(AxiWriteBus.from_prefix(dut, "hp0_wr_axi_"), AxiReadBus.from_prefix(dut, "hp0_rd_axi_")),
                   dut.clk, dut.rst, size=size, mem=mem)]
    for i in (1, 2):
        rams.append(AxiRamRead(AxiReadBus.from_prefix(dut, f"hp{i}_rd_axi_"), dut.clk, dut.rst, size=size, mem=mem))
    axil = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "axil_"), dut.clk, dut.rst)
    p = float(spec.get("pause", 0.0))
    if p > 0:
        rng = random.Random(int(spec.get("seed", 1)))
        chans = [rams[0].write_if.aw_channel, rams[0].write_if.w_channel, rams[0].write_if.b_channel,
                 rams[0].read_if.ar_channel, rams[0].read_if.r_channel]
        for r in rams[1:]:
            chans += [r.ar_channel, r.r_channel]
        for ch in chans:
            ch.set_pause_generator(_pauser(random.Random(rng.random()), p))
    return mem, axil


def _write(res):
    out = os.environ.get("TOP_OUT")
    if out:
        prev = json.load(open(out)) if os.path.exists(out) else []
        prev.append(res)
        with open(out, "w") as f:
            json.dump(prev, f, indent=1)


def _spec():
    return json.load(open(os.environ["TOP_SPEC"]))


@cocotb.test()
async def test_top(dut):
    import numpy as np

    from ternc.backends.fpga.driver import R, CocotbTransport, KV260Driver

    spec = _spec()
    mem, axil = await _setup(dut, spec)
    tr = CocotbTransport(axil, mem, dut.clk, poll_cycles=int(spec.get("poll_cycles", 64)),
                         max_cycles=int(spec.get("max_cycles", 50_000_000)))

    def generate():
        from ternc.backends.fpga.isa import Program

        drv = KV260Driver(spec["artifact"], tr, timeout_s=float("inf"))
        if spec.get("program"):
            drv.program = Program.decode(bytes.fromhex(spec["program"]))
        ids = [int(i) for i in spec["prompt"]]
        calls = []
        logits = drv.run(ids, 0)
        calls.append(drv.counters())
        np.save(os.path.join(spec["out_dir"], "logits_0.npy"), logits, allow_pickle=False)
        for i in range(int(spec["n"])):
            ids.append(int(np.argmax(logits[0, -1])))
            if i == int(spec["n"]) - 1:
                break
            logits = drv.run([ids[-1]], len(ids) - 1)
            calls.append(drv.counters())
            np.save(os.path.join(spec["out_dir"], f"logits_{i + 1}.npy"), logits, allow_pickle=False)
        import sys

        # which driver ran the RTL (a deploy bundle's own copy under `run.py --transport rtl`)
        return {"kind": "generate", "tokens": ids, "calls": calls,
                "driver": sys.modules[KV260Driver.__module__].__file__}

    def cases():
        results = []
        for case in spec["cases"]:
            for off, hexdata in case.get("writes", []):
                tr.write_ddr(off, bytes.fromhex(hexdata))
            for name, v in case.get("regs", {}).items():
                tr.write_reg(R[name], v)
            tr.write_reg(R["DDR_BASE_LO"], tr.base & 0xFFFFFFFF)
            tr.write_reg(R["DDR_BASE_HI"], tr.base >> 32)
            tr.write_reg(R["CLEAR"], 1)
            tr.write_reg(R["CTRL"], 1)
            polls = 0
            while True:
                st = tr.read_reg(R["STATUS"])
                if st & 0b110 or polls > case.get("max_polls", 2000):
                    break
                tr.idle()
                polls += 1
            from ternc.backends.fpga.regmap import COUNTERS, REGMAP

            res = {"status": st, "error_code": tr.read_reg(R["ERROR_CODE"]), "pc": tr.read_reg(R["PC"]),
                   "counters": {c: tr.read_reg(R[f"PERF_{c}"]) for c in COUNTERS},
                   "consts": {r.name: tr.read_reg(r.offset) for r in REGMAP.regs if r.kind == "const"},
                   "regs": {r.name: tr.read_reg(r.offset) for r in REGMAP.regs if r.kind == "rw"},
                   "reads": [tr.read_ddr(off, n).hex() for off, n in case.get("reads", [])]}
            results.append(res)
        return {"kind": "cases", "results": results}

    fn = {"generate": generate, "cases": cases}[spec["kind"]]
    from cocotb.task import bridge

    res = await bridge(fn)()
    from cocotb.simtime import get_sim_time

    res["sim_cycles"] = int(get_sim_time("ns")) // 4
    _write(res)
