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


def _appends(ex: Executor, calls: list[list[int]]):
    """Run every call but the last; step through the last one and yield (instr, ddr before, ddr after,
    n, pos) for each of its KV_APPEND instructions."""
    pos = 0
    for ids in calls[:-1]:
        ex.run(ids, pos)
        pos += len(ids)
    ids = np.asarray(calls[-1], np.int64)
    ex.i32(ex.mm["symbols"]["ids:0"], ids.size)[:] = ids
    ex.n, ex.pos = ids.size, pos
    for ins in ex.program.instrs:
        if ins.op == isa.Opcode.END:
            return
        before = ex.ddr.copy() if ins.op == isa.Opcode.KV_APPEND else None
        ex.step(ins)
        if before is not None:
            yield ins, before, ex.ddr.copy(), ids.size, pos


def _calls_until(ex: Executor, calls: list[list[int]], which: int):
    for i, case in enumerate(_appends(ex, calls)):
        if i == which:
            return case
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


@pytest.mark.parametrize("which", [0, pytest.param(1, marks=pytest.mark.slow)])   # K; V (slow)
def test_quantized_prefill_crosses_a_group(kv4, which):
    """9 prompt tokens, group 6, residual 2: tokens 0..5 are quantized by the prefill."""
    ex = _executor(kv4)
    ins, before, after, n, pos = _calls_until(ex, [[5, 6, 7, 8, 9, 1, 2, 3, 4]], which)
    assert ins["quant"] and bool(ins.flags & isa.Flag.VALUES) == (which == 1)
    _check(ins, before, after, n, pos, seed=11 + which)
    _exact_cycles(ins, before, n, pos)


DECODE_CALLS = [[5, 6, 7, 8, 9, 1, 2, 3, 4], [10], [11], [12], [13], [14]]   # the last call: pos 13, seq 14


def _decode_group_cases(module, count):
    """Decode at pos 13 (seq 14, group 6, residual 2): group [6, 12) joins the span."""
    cases = list(_appends(_executor(module), DECODE_CALLS))[:count]
    for ins, *_ in cases:
        assert ins["quant"]
    return cases


def test_quantized_decode_completes_a_group(kv4):
    _check(*_decode_group_cases(kv4, 2)[1], seed=20)          # layer 0, V (K: the slow test)


def test_quantized_append_without_new_group(kv4):
    """Decode at pos 12 (seq 13): the span does not grow, only the row is appended."""
    ins, before, after, n, pos = _calls_until(_executor(kv4), DECODE_CALLS[:-1], 1)
    assert (n, pos) == (1, 12)
    _check(ins, before, after, n, pos, seed=3)
    assert _exact_cycles(ins, before, n, pos) < 200


def _with_quant(ex_case, bits, gs, res, sinks):
    """The same instruction with other quantization fields, the executor's result for them."""
    ins, before, _, n, pos = ex_case
    q = isa.Instr(ins.op, {**ins.fields, "quant": isa.pack_kvquant(bits, gs, res, sinks)}, ins.epilogue, ins.flags)
    return q, before


def _expected(module, calls, which, q, before):
    ex = _executor(module)
    list(_appends(ex, calls))     # the executor's state (n, pos) for the last call
    ex.ddr[:] = before
    ex.step(q)
    return ex.ddr.copy()


def test_quantized_keys_with_sinks_and_other_group(kv4):
    """Keys, group 5, residual 1, 3 sinks, 2 bits, at seq 14: groups [3, 8) and [8, 13) of the span."""
    case = _calls_until(_executor(kv4), DECODE_CALLS, 0)
    q, before = _with_quant(case, 2, 5, 1, 3)
    after = _expected(kv4, DECODE_CALLS, 0, q, before)
    _check(q, before, after, case[3], case[4], seed=7)


def test_bad_instructions_raise_error_and_write_nothing(kv4):
    ins, before, _, n, pos = _calls_until(_executor(kv4), DECODE_CALLS, 1)
    hkv, _, d = isa.unpack_heads(ins["heads"])
    bad = [{**ins.fields, "heads": isa.pack_heads(hkv, hkv, 40)},                  # head_dim != 42
           {**ins.fields, "quant": isa.pack_kvquant(4, 9, 2, 0)},                  # group > max_group 8
           {**ins.fields, "quant": isa.pack_kvquant(4, 4, 2, 0)},                  # V groups of 4 do not tile 42
           {**ins.fields, "quant": isa.pack_kvquant(9, 6, 2, 0)}]                  # 9 bits
    for fields in bad:
        mem = before.copy()
        res = _run_rtl(isa.Instr(ins.op, fields, flags=ins.flags).words(), mem, n, pos, 1, 0.8)
        assert res["error"] == 1 and res["cycles"] < 10
        assert np.array_equal(mem, before)


@pytest.mark.slow
@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_decode_every_layer_slow(onnx_export, bits):
    """Every KV_APPEND of the group-completing decode step, 4 and 8 bits, with cycle checks."""
    module = _compile(onnx_export, bits)
    for k, case in enumerate(_decode_group_cases(module, 4)):
        _check(*case, seed=40 + k, p=0.6)
        ins, before, _, n, pos = case
        _exact_cycles(ins, before, n, pos)


@pytest.mark.slow
def test_quantized_values_other_fields_slow(kv4):
    """Values with group 7, no residual, 1 sink, 8 bits at seq 14: groups [1, 8) and [8, 14)."""
    case = _calls_until(_executor(kv4), DECODE_CALLS, 1)
    q, before = _with_quant(case, 8, 7, 0, 1)
    after = _expected(kv4, DECODE_CALLS, 1, q, before)
    _check(q, before, after, case[3], case[4], seed=9)
    _exact_cycles(q, before, case[3], case[4])
