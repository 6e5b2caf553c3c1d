"""Per-instruction benches for the controllers (hw/ctl_*.py) on real compiled programs.

``program_states`` runs the functional executor (backends/fpga/executor.py) through a call and yields,
before each instruction, the instruction with a copy of DDR; ``run_controller`` runs one controller on
that copy in Amaranth's simulator behind sim/memport_tb.py's random-valid/ready ports. A test then
compares the whole DDR the controller leaves with the executor's after the same instruction (so a
controller that writes one byte outside its destination fails too).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from amaranth.sim import Simulator

from ternc.backends.fpga.executor import Executor
from ternc.backends.fpga.images import build_images
from ternc.backends.fpga.isa import Instr, Opcode
from ternc.backends.fpga.schedule import EngineConfig, schedule
from ternc.sim.memport_tb import run_instr, serve_reads, serve_writes


@dataclass
class State:
    index: int          # instruction index in the program
    instr: Instr
    n_tokens: int
    pos: int
    ddr: np.ndarray     # DDR before the instruction (a copy)
    want: np.ndarray    # DDR after the executor ran it


def compile_program(module, engine: EngineConfig, context: int):
    plan = schedule(module, context, engine)
    im = build_images(module, plan, engine)
    return plan, im


def program_states(plan, im, engine: EngineConfig, context: int, prompt: list[int], decode: int,
                   ops: set[Opcode]):
    """States of the instructions with opcode in ``ops``: the prefill call of ``prompt`` (pos 0), then
    ``decode`` single-token calls (pos = len(prompt), ...) with greedy next tokens."""
    ex = Executor(plan.program, im.memmap.to_json(), im.consts, im.weights, im.lm_head, engine, context)
    calls = [(list(prompt), 0)]
    for i in range(decode):
        calls.append((None, len(prompt) + i))
    logits = None
    for ids, pos in calls:
        if ids is None:
            ids = [int(np.argmax(logits[0, -1]))]
        n = len(ids)
        ex.i32(im.memmap.symbols["ids:0"], n)[:] = ids
        ex.n, ex.pos = n, pos
        for idx, ins in enumerate(plan.program.instrs):
            if ins.op == Opcode.END:
                break
            before = ex.ddr.copy() if ins.op in ops else None
            out = ex.step(ins)
            if out is not None:
                logits = out
            if before is not None:
                yield State(idx, ins, n, pos, before, ex.ddr.copy())


def run_controller(dut, state: State, seed: int = 0, p: float = 0.7, latency: int = 4,
                   timeout: int = 2_000_000) -> tuple[np.ndarray, dict]:
    """Run ``dut`` on ``state.instr`` with DDR ``state.ddr`` (copied); returns (DDR after, result)
    where result has ``cycles`` (start to idle), ``error``, ``reads``/``writes`` (per-port command logs)."""
    mem = state.ddr.copy()
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    rng = random.Random(seed)
    res: dict = {"reads": {}, "writes": []}
    for i in range(dut.READ_PORTS):
        log = res["reads"].setdefault(f"rd{i}", [])
        sim.add_process(serve_reads(getattr(dut, f"rd{i}"), mem, random.Random(rng.random()), p, latency, log))
    sim.add_process(serve_writes(dut.wr, mem, random.Random(rng.random()), p, res["writes"]))
    sim.add_testbench(run_instr(dut.ctl, state.instr.words(), state.n_tokens, state.pos, res, timeout))
    sim.run()
    return mem, res


def assert_same_ddr(got: np.ndarray, state: State) -> None:
    bad = np.flatnonzero(got != state.want)
    if bad.size:
        a = int(bad[0])
        raise AssertionError(f"instruction {state.index} ({state.instr.text()}), n={state.n_tokens} "
                             f"pos={state.pos}: {bad.size} DDR bytes differ, first at {a:#x} "
                             f"(got {got[a]}, want {state.want[a]}, before {state.ddr[a]})")
