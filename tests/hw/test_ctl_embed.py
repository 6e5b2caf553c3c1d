"""EmbedCtl (hw/ctl_embed.py) on a compiled program's EMBED instruction in Amaranth's simulator with random
valid/ready (sim/memport_tb.py): DDR after the controller equals DDR after the functional executor's
step, byte for byte; an out-of-range id raises ``error`` and writes nothing."""

from __future__ import annotations

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from ternc.backends.fpga.executor import Executor
from ternc.backends.fpga.images import build_images
from ternc.backends.fpga.isa import Opcode
from ternc.backends.fpga.schedule import EngineConfig, schedule
from ternc.hw.ctl_embed import EmbedCtl
from ternc.passes.pipeline import KV260_PIPELINE, compile
from ternc.sim.memport_tb import run_instr, serve_reads, serve_writes

ENG = EngineConfig(3, 4, 8)


@pytest.fixture(scope="module")
def embed_setup(onnx_export):
    import ternc

    mod = compile(ternc.load(str(onnx_export("tiny-bitnet", False))), passes=KV260_PIPELINE, report=False)[0]
    plan = schedule(mod, 16, ENG, "host")
    img = build_images(mod, plan, ENG)
    ex = Executor(plan.program, img.memmap.to_json(), img.consts, img.weights, img.lm_head, ENG, 16)
    ins = next(i for i in plan.program.instrs if i.op == Opcode.EMBED)
    return ex, ins, int(img.lm_head.shape[0])


def _run(ctl, mem, ins, n, seed):
    sim = Simulator(ctl)
    sim.add_clock(1e-8)
    sim.add_process(serve_reads(ctl.rd0, mem, random.Random(seed), p=0.7))
    sim.add_process(serve_writes(ctl.wr, mem, random.Random(seed + 1), p=0.7))
    res = {}
    sim.add_testbench(run_instr(ctl.ctl, ins.words(), n, 0, res, timeout=200_000))
    sim.run()
    return res


@pytest.mark.parametrize("ids", [[1, 2, 3], [255, 0, 7, 7, 128]])
def test_embed_rows_bit_exact_with_the_executor(embed_setup, ids):
    ex, ins, vocab = embed_setup
    ex.i32(ex.mm["symbols"]["ids:0"], len(ids))[:] = ids
    ex.n, ex.pos = len(ids), 0
    mem = ex.ddr.copy()
    ex.step(ins)
    res = _run(EmbedCtl(vocab), mem, ins, len(ids), seed=len(ids))
    assert res["error"] == 0
    assert np.array_equal(mem, ex.ddr)
    assert res["cycles"] > len(ids) * ins["width"] // 4      # at least one cycle per row beat


@pytest.mark.parametrize("bad", [256, -1])
def test_embed_id_out_of_range_is_an_error(embed_setup, bad):
    ex, ins, vocab = embed_setup
    ex.i32(ex.mm["symbols"]["ids:0"], 2)[:] = [bad, 3]
    mem = ex.ddr.copy()
    before = mem.copy()
    res = _run(EmbedCtl(vocab), mem, ins, 2, seed=9)
    assert res["error"] == 1
    assert np.array_equal(mem, before)      # the fault stops before any row is written
