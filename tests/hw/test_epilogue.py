"""Epilogue (hw/epilogue.py) bit-exact against ir/hw_numerics.py in Amaranth's simulator."""

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from ternc.hw.epilogue import Epilogue
from ternc.ir import hw_numerics as h
from ternc.ir.semantics import ternary_matmul_i32
from ternc.sim.amaranth_tb import collect, drive


def _vectors(columns, n, rng):
    """Realistic accumulators from the integer contract plus edge rows."""
    k = 300
    x = rng.normal(size=(n, k)) * rng.uniform(0.1, 8, size=(n, 1))
    q, amax = h.quantize_act_fx(h.to_fx(x))
    w = rng.integers(-1, 2, size=(columns, k)).astype(np.int8)
    acc = ternary_matmul_i32(q, w).astype(np.int64)
    acc[0, 0], acc[0, 1] = 2 ** 31 - 1, -(2 ** 31)  # saturation
    acc[1] = 0
    ws = [h.encode_wscale(v) for v in rng.uniform(0.005, 0.5, size=n)]
    ms = [h.dq_factor(amax[i], *ws[i]) for i in range(n)]
    mm = np.array([int(a[0][0]) for a in ms])
    ss = np.array([int(a[1][0]) for a in ms])
    ss[2] = 10   # clamped shift (F >= 2)
    return acc, mm, ss


@pytest.mark.parametrize("op", ["none", "residual_add", "relu2", "gated_silu", "gated_relu2", "rope", "silu_mul",
                                "relu2_mul"])
def test_epilogue_bit_exact(op):
    columns, n = 6, 10
    rng = np.random.default_rng(len(op))
    acc, mm, ss = _vectors(columns, n, rng)
    y = h.dequantize_fx(acc, mm[:, None], ss[:, None]).astype(np.int64)
    half = columns // 2
    aux = [{"m": int(mm[i]), "s": int(ss[i])} for i in range(n)]
    if op == "none":
        ref = y
    elif op == "residual_add":
        res = h.to_fx(rng.normal(size=(n, columns)) * 100)
        res[3, :] = h.FX_MAX
        for i in range(n):
            aux[i]["res"] = [int(v) for v in res[i]]
        ref = h.add_fx(y, res)
    elif op == "relu2":
        ref = h.relu2_fx(y)
    elif op == "gated_silu":
        ref = h.silu_gate_fx(y[:, :half], y[:, half:])
    elif op == "gated_relu2":
        ref = h.relu2_gate_fx(y[:, :half], y[:, half:])
    elif op in ("silu_mul", "relu2_mul"):
        up = _up_values(rng, n, columns)
        for i in range(n):
            aux[i]["up"] = [int(v) for v in up[i]]
        ref = (h.silu_gate_fx if op == "silu_mul" else h.relu2_gate_fx)(y, up)
    else:
        cs, sn = h.rope_table(np.arange(n) * 13, 2 * half, theta=500000.0)
        for i in range(n):
            aux[i]["cos"] = [int(v) for v in cs[i]]
            aux[i]["sin"] = [int(v) for v in sn[i]]
        r0, r1 = h.rope_fx(y[:, :half], y[:, half:], cs, sn)
        ref = np.concatenate([r0, r1], axis=1)
    dut = Epilogue(columns, op)
    out = []
    r = random.Random(1)

    async def a(ctx):
        await drive(ctx, dut.acc, [[int(v) for v in row] for row in acc], r, 0.7)

    async def b(ctx):
        await drive(ctx, dut.aux, aux, r, 0.7)

    async def c(ctx):
        await collect(ctx, dut.out, n, out, r, 0.6)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(a, background=True)
    sim.add_testbench(b, background=True)
    sim.add_testbench(c)
    sim.run()
    got = np.array([[o[i] for i in range(dut.n_out)] for o in out], dtype=np.int64)
    assert np.array_equal(got, np.asarray(ref, np.int64)), (got, ref)


def _up_values(rng, n, columns):
    """FX up-projection values with the edges: saturating products, zero, negative extremes."""
    up = h.to_fx(rng.normal(size=(n, columns)) * 20)
    up[0, :3] = [h.FX_MAX, h.FX_MIN, 0]
    up[4, :] = h.FX_MIN
    return up


def test_epilogue_runtime_op_select():
    """One datapath for the linear controller's ops: ``sel`` changes beat by beat (random), every beat
    bit-exact with the op it was sent with."""
    ops = ("none", "residual_add", "silu_mul", "relu2_mul")
    columns, n = 4, 24
    rng = np.random.default_rng(11)
    acc, mm, ss = _vectors(columns, n, rng)
    y = h.dequantize_fx(acc, mm[:, None], ss[:, None]).astype(np.int64)
    vec = _up_values(rng, n, columns)
    sel = rng.integers(0, len(ops), n)
    ref = np.stack([{0: lambda a, b: a, 1: h.add_fx, 2: h.silu_gate_fx, 3: h.relu2_gate_fx}[int(k)](y[i], vec[i])
                    for i, k in enumerate(sel)])
    dut = Epilogue(columns, ops)
    aux = [{"m": int(mm[i]), "s": int(ss[i]), "res": [int(v) for v in vec[i]], "up": [int(v) for v in vec[i]]}
           for i in range(n)]
    out, r = [], random.Random(3)

    async def a(ctx):
        for i in range(n):   # acc and sel move together; aux comes on its own stream
            while r.random() > 0.7:
                ctx.set(dut.acc.valid, 0)
                await ctx.tick()
            ctx.set(dut.acc.payload, [int(v) for v in acc[i]])
            ctx.set(dut.sel, int(sel[i]))
            ctx.set(dut.acc.valid, 1)
            while True:
                _, _, ready = await ctx.tick().sample(dut.acc.ready)
                if ready:
                    break
        ctx.set(dut.acc.valid, 0)

    async def b(ctx):
        await drive(ctx, dut.aux, aux, r, 0.7)

    async def c(ctx):
        await collect(ctx, dut.out, n, out, r, 0.6)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(a, background=True)
    sim.add_testbench(b, background=True)
    sim.add_testbench(c)
    sim.run()
    got = np.array([[o[i] for i in range(columns)] for o in out], dtype=np.int64)
    assert np.array_equal(got, ref), (got, ref, sel)


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_epilogue_rejects_bad_config():
    with pytest.raises(ValueError):
        Epilogue(5, "rope")
    with pytest.raises(ValueError):
        Epilogue(4, "gelu")
    with pytest.raises(ValueError, match="output width"):
        Epilogue(4, ("none", "gated_silu"))
