"""A compiled program's LINEAR instructions on the RTL linear engine (hw/pipeline.py, Amaranth's
simulator, random valid/ready): weight beats straight from the artifact's DDR image, activations from
the functional executor's DDR, outputs bit-equal to what the executor writes for that instruction.
(Epilogues NONE and RESIDUAL: RoPE and the gates need the lane-paired row order, not built yet.)"""

from __future__ import annotations

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from ternc.backends.fpga import isa
from ternc.backends.fpga.executor import Executor
from ternc.backends.fpga.images import build_images
from ternc.backends.fpga.schedule import EngineConfig, schedule
from ternc.hw.pipeline import TLMMPipeline
from ternc.ir import hw_numerics as hn
from ternc.passes.pipeline import KV260_PIPELINE, compile
from ternc.sim.amaranth_tb import collect, drive

ENG = EngineConfig(3, 2, 4)    # small engine: the simulator runs it in seconds


def _beats_as_fields(img: np.ndarray, eng: EngineConfig) -> list:
    """DDR beat bytes -> the nested {index, sign} lists of hw/tlmm.weight_beat_layout."""
    fb = hn.tlg_index_bits(eng.group) + 1
    bits = np.unpackbits(img, axis=-1, bitorder="little")[:, :eng.columns * eng.tables * fb].astype(np.int64)
    f = (bits.reshape(len(img), eng.columns, eng.tables, fb) << np.arange(fb)).sum(-1)
    mask = (1 << (fb - 1)) - 1
    return [[[{"index": int(v & mask), "sign": int(v >> (fb - 1))} for v in col] for col in beat] for beat in f]


def _run_rtl(ins: isa.Instr, ex: Executor, n_tok: int) -> np.ndarray:
    k, n = isa.unpack_kn(ins["kn"])
    op = {isa.Epilogue.NONE: "none", isa.Epilogue.RESIDUAL: "residual_add"}[ins.epilogue]
    chunk = ENG.group * ENG.tables
    nb = -(-(-(-k // 3)) // ENG.tables)              # beats (chunks) per column tile
    tiles = -(-n // ENG.columns)
    stride = ENG.image_beat_bytes
    img = ex.ddr[ins["weights"]:ins["weights"] + tiles * nb * stride].reshape(tiles * nb, stride)
    fields = _beats_as_fields(img, ENG)
    x = ex.rows(ins["src"], n_tok, k).astype(np.int64)
    ws_m, ws_s = isa.unpack_scale(ins["ws"])
    dut = TLMMPipeline(ENG.group, ENG.tables, ENG.columns, op, wbuf_depth=1 << (tiles * nb - 1).bit_length(),
                       ram_style=None, max_chunks=nb, quant_lanes=3)
    load = [{"data": b, "first": int(i == 0)} for i, b in enumerate(fields)]
    cmds = [{"base": ti * nb, "count": nb} for _ in range(n_tok) for ti in range(tiles)]
    xb = []
    for tok in range(n_tok):
        padded = np.zeros(nb * chunk, np.int64)
        padded[:k] = x[tok]
        words = padded.reshape(-1, 3)
        xb += [{"data": [int(v) for v in w], "last": int(j == len(words) - 1), "passes": tiles}
               for j, w in enumerate(words)]
    aux = []
    if op == "residual_add":
        res = ex.rows(ins["aux"], n_tok, n).astype(np.int64)
        for tok in range(n_tok):
            for ti in range(tiles):
                r = np.zeros(ENG.columns, np.int64)
                seg = res[tok, ti * ENG.columns:(ti + 1) * ENG.columns]
                r[:seg.size] = seg
                aux.append({"res": [int(v) for v in r]})
    out, rnd = [], random.Random(5)

    async def weights(ctx):
        ctx.set(dut.ws_m, ws_m)
        ctx.set(dut.ws_s, ws_s)
        await drive(ctx, dut.load, load, rnd, 0.8)
        await drive(ctx, dut.cmd, cmds, rnd, 0.8)

    async def acts(ctx):
        await drive(ctx, dut.x, xb, rnd, 0.8)

    async def auxs(ctx):
        await drive(ctx, dut.aux, aux, rnd, 0.8)

    async def sink(ctx):
        await collect(ctx, dut.y, n_tok * tiles, out, rnd, 0.7)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(weights, background=True)
    sim.add_testbench(acts, background=True)
    if aux:
        sim.add_testbench(auxs, background=True)
    sim.add_testbench(sink)
    sim.run()
    got = np.array([[o[i] for i in range(ENG.columns)] for o in out], np.int64).reshape(n_tok, tiles * ENG.columns)
    return got[:, :n]


@pytest.mark.rtl
def test_linear_instructions_on_the_rtl_engine(onnx_export):
    import ternc

    m = compile(ternc.load(str(onnx_export("tiny-bitnet", False))), passes=KV260_PIPELINE, report=False)[0]
    plan = schedule(m, 16, ENG)
    im = build_images(m, plan, ENG)
    ex = Executor(plan.program, im.memmap.to_json(), im.consts, im.weights, im.lm_head, ENG, 16)
    ids = np.array([3, 1, 4])
    ex.i32(im.memmap.symbols["ids:0"], ids.size)[:] = ids
    ex.n, ex.pos = ids.size, 0
    checked = set()
    for ins in plan.program.instrs:
        if ins.op == isa.Opcode.END:
            break
        if ins.op == isa.Opcode.LINEAR and ins.epilogue in (isa.Epilogue.NONE, isa.Epilogue.RESIDUAL) \
                and ins.epilogue not in checked:
            got = _run_rtl(ins, ex, ids.size)
            ex.step(ins)
            k, n = isa.unpack_kn(ins["kn"])
            np.testing.assert_array_equal(got, ex.rows(ins["dst"], ids.size, n))
            checked.add(ins.epilogue)
            continue
        ex.step(ins)
    assert checked == {isa.Epilogue.NONE, isa.Epilogue.RESIDUAL}
