"""hw/ctl_kv.py KvAppendCtl in Amaranth's simulator, one KV_APPEND instruction of a real compiled program
at a time: the executor runs the program up to the instruction, the controller runs it on a copy of
the executor's DDR through sim/memport_tb.py (random valid/ready), and the whole DDR image must equal
the executor's after the same instruction (bit-exact: the cache rows, their pad words, the quantized
groups, and nothing else written)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from ternc.backends.fpga import isa
from ternc.backends.fpga.executor import Executor
from ternc.backends.fpga.images import build_images
from ternc.backends.fpga.schedule import EngineConfig, schedule
from ternc.hw.ctl_kv import KvAppendCtl, cycle_model
from ternc.passes.pipeline import KV260_PIPELINE, compile
from ternc.sim.memport_tb import run_instr, serve_reads, serve_writes

CTX = 32
ENG = EngineConfig(3, 4, 8)    # the schedule/images take the engine; KV_APPEND does not use it
GROUP = 6                      # tiny-bitnet's d = 42: V groups of min(6, 42) channels tile a head


def _compile(onnx_export, kv_bits: int | None):
    import ternc

    m = ternc.load(str(onnx_export("tiny-bitnet", False)))
    spec = list(KV260_PIPELINE)
    if kv_bits:
        spec = [*KV260_PIPELINE[:-1], f"quantize-kv{{bits={kv_bits},group={GROUP},residual=2}}", "hw-numerics"]
    return compile(m, passes=spec, report=False)[0]


def _executor(module) -> Executor:
    plan = schedule(module, CTX, ENG)
    im = build_images(module, plan, ENG)
    return Executor(plan.program, im.memmap.to_json(), im.consts, im.weights, im.lm_head, ENG, CTX)


def _calls_until(ex: Executor, calls: list[list[int]], which: int):
    """Run every call but the last; in the last one step up to KV_APPEND number `which` and yield
    (instr, ddr before, ddr after, n, pos) for it."""
    pos = 0
    for ids in calls[:-1]:
        ex.run(ids, pos)
        pos += len(ids)
    ids = np.asarray(calls[-1], np.int64)
    ex.i32(ex.mm["symbols"]["ids:0"], ids.size)[:] = ids
    ex.n, ex.pos = ids.size, pos
    seen = 0
    for ins in ex.program.instrs:
        if ins.op == isa.Opcode.KV_APPEND:
            if seen == which:
                before = ex.ddr.copy()
                ex.step(ins)
                return ins, before, ex.ddr.copy(), ids.size, pos
            seen += 1
        ex.step(ins)
    raise AssertionError(f"no KV_APPEND number {which}")


def _run_rtl(words: list[int], mem: np.ndarray, n: int, pos: int, seed: int, p: float,
             head_dim: int = 42, max_group: int = 8) -> dict:
    dut = KvAppendCtl(head_dim, max_group)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_process(serve_reads(dut.rd0, mem, random.Random(seed), p=p))
    sim.add_process(serve_writes(dut.wr, mem, random.Random(seed + 1), p=p))
    res: dict = {}
    sim.add_testbench(run_instr(dut.ctl, words, n, pos, res))
    sim.run()
    return res


def _check(ins, before, after, n, pos, seed=1, p=0.8):
    mem = before.copy()
    res = _run_rtl(ins.words(), mem, n, pos, seed, p)
    assert res["error"] == 0
    diff = np.flatnonzero(mem != after)
    assert diff.size == 0, f"{diff.size} bytes differ from the executor, first at {diff[:4]}"
    assert not np.array_equal(before, after)   # the instruction wrote something
    return res


@pytest.fixture(scope="module")
def plain(onnx_export):
    return _compile(onnx_export, None)


@pytest.fixture(scope="module")
def kv4(onnx_export):
    return _compile(onnx_export, 4)


def _exact_cycles(ins, before, n, pos):
    """Cycles with an always-ready memory vs the documented formula (module doc / cycle_model)."""
    res = _run_rtl(ins.words(), before.copy(), n, pos, 0, 1.0)
    hkv, _, d = isa.unpack_heads(ins["heads"])
    q = isa.unpack_kvquant(ins["quant"]) if ins["quant"] else None
    model = cycle_model(n, pos, hkv, d, q, bool(ins.flags & isa.Flag.VALUES))
    print(f"KV_APPEND n={n} pos={pos} quant={q} values={bool(ins.flags & isa.Flag.VALUES)}: "
          f"{res['cycles']} cycles, model {model}")
    assert abs(res["cycles"] - model) <= 0.05 * model
    return res["cycles"]


@pytest.mark.parametrize("which", [0, 1])          # layer 0: K, then V
def test_append_prefill_and_decode_plain(plain, which):
    ex = _executor(plain)
    _check(*_calls_until(ex, [[1, 2, 3]], which))
    ex = _executor(plain)
    ins, before, after, n, pos = _calls_until(ex, [[1, 2, 3], [7]], which)
    assert n == 1 and pos == 3
    _check(ins, before, after, n, pos, seed=5)
    _exact_cycles(ins, before, n, pos)


def test_quantized_prefill_crosses_a_group(kv4):
    """9 prompt tokens, group 6, residual 2: tokens 0..5 are quantized by the prefill (K and V)."""
    for which in (0, 1):
        ex = _executor(kv4)
        ins, before, after, n, pos = _calls_until(ex, [[5, 6, 7, 8, 9, 1, 2, 3, 4]], which)
        assert ins["quant"] and bool(ins.flags & isa.Flag.VALUES) == (which == 1)
        _check(ins, before, after, n, pos, seed=11 + which)
        _exact_cycles(ins, before, n, pos)


@pytest.mark.slow
@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_decode_completes_a_group(onnx_export, bits):
    """Decode at pos 13 (seq 14): group [6, 12) joins the span; every other decode step only appends."""
    ex = _executor(_compile(onnx_export, bits))
    calls = [[5, 6, 7, 8, 9, 1, 2, 3, 4], [10], [11], [12], [13], [14]]
    for which in (0, 1, 2, 3):      # layers 0 and 1, K and V
        e = _executor(_compile(onnx_export, bits)) if which else ex
        _check(*_calls_until(e, calls, which), seed=which)
