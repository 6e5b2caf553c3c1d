"""LinearCtl (hw/ctl_linear.py) on real compiled programs: every LINEAR instruction runs on the
controller in Amaranth's simulator against sim/memport_tb.py's DDR (random valid/ready), and the DDR
it leaves is byte-for-byte the functional executor's after that instruction (backends/fpga/executor.py).
A small engine (G 3, 4 tables, 8 columns) and small weight buffers force column groups (double
buffered) and partial last tiles (tiny-bitnet: hidden 168, N = 84 -> 11 tiles of 8, the last 4 wide)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from ternc.backends.fpga import isa
from ternc.backends.fpga.executor import Executor
from ternc.backends.fpga.images import build_images
from ternc.backends.fpga.schedule import EngineConfig, schedule
from ternc.hw.ctl_linear import LinearCtl
from ternc.passes.pipeline import KV260_PIPELINE, compile
from ternc.sim.memport_tb import run_instr, serve_reads, serve_writes

ENG = EngineConfig(3, 4, 8)
CTX = 16
IDS = [3, 1, 4]


def _program(module):
    plan = schedule(module, CTX, ENG)
    im = build_images(module, plan, ENG)
    ex = Executor(plan.program, im.memmap.to_json(), im.consts, im.weights, im.lm_head, ENG, CTX)
    ex.i32(im.memmap.symbols["ids:0"], len(IDS))[:] = IDS
    ex.n, ex.pos = len(IDS), 0
    return plan.program, ex


@pytest.fixture(scope="module")
def bitnet_run(onnx_export):
    import ternc

    m = compile(ternc.load(str(onnx_export("tiny-bitnet", False))), passes=KV260_PIPELINE, report=False)[0]
    return _program(m)


@pytest.fixture(scope="module")
def llama_run(onnx_export):
    import ternc

    m = compile(ternc.load(str(onnx_export("llama", True))), passes=["quantize-ternary", *KV260_PIPELINE],
                report=False)[0]
    return _program(m)


def run_on_ctl(dut: LinearCtl, mem: np.ndarray, ins: isa.Instr, n_tok: int, pos: int = 0, p: float = 0.8,
               seed: int = 1, latency: int = 4) -> dict:
    """Run one instruction on the controller against ``mem`` (modified in place); returns cycles/error."""
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for i in range(dut.READ_PORTS):
        sim.add_process(serve_reads(getattr(dut, f"rd{i}"), mem, random.Random(seed + i), p, latency))
    sim.add_process(serve_writes(dut.wr, mem, random.Random(seed + 10), p))
    res: dict = {}
    sim.add_testbench(run_instr(dut.ctl, ins.words(), n_tok, pos, res))
    sim.run()
    return res


def _linears(program):
    return [(i, ins) for i, ins in enumerate(program.instrs) if ins.op == isa.Opcode.LINEAR]


def _check_upto(program, ex, dut, pick, p=0.8):
    """Step the executor through the program; on each picked LINEAR run the controller on a copy of
    the DDR first and compare. Returns [(index, epilogue, K, N, cycles)]."""
    out = []
    for idx, ins in enumerate(program.instrs):
        if ins.op == isa.Opcode.END:
            break
        if ins.op == isa.Opcode.LINEAR and pick(idx, ins):
            mem = ex.ddr.copy()
            if ins.epilogue == isa.Epilogue.ROPE:
                res = run_on_ctl(dut, mem, ins, ex.n, ex.pos, p)
                assert res["error"] == 1 and (mem == ex.ddr).all()
            else:
                res = run_on_ctl(dut, mem, ins, ex.n, ex.pos, p, seed=idx)
                ex.step(ins)
                assert res["error"] == 0
                bad = np.flatnonzero(mem != ex.ddr)
                assert bad.size == 0, f"instr {idx} {ins.text()}: {bad.size} bytes differ, first at {bad[:4]}"
                k, n = isa.unpack_kn(ins["kn"])
                out.append((idx, ins.epilogue.name, k, n, res["cycles"]))
            continue
        ex.step(ins)
    return out
