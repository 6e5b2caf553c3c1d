"""Block and engine tests of hw/tlmm.py in Amaranth's own simulator (fast), plus generated-RTL
quality (determinism, verilator lint) and the resource-budget check."""

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from ternc.hw import synth
from ternc.hw.tlmm import (TablePrecompute, TLMMCore, TLMMEngine, WeightBuffer, act_beat_layout,
                           act_beats, weight_beat_layout, weight_beats)
from ternc.ir import hw_numerics as hwn
from ternc.ir.semantics import ternary_matmul_i32
from ternc.sim.amaranth_tb import collect, drive


def _run(dut, procs):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for p, bg in procs:
        sim.add_testbench(p, background=bg)
    sim.run()


@pytest.mark.parametrize("group", [2, 3, 4])
def test_table_precompute_matches_shared_table(group):
    tables = 3
    dut = TablePrecompute(group, tables)
    rng = np.random.default_rng(group)
    acts = rng.integers(-128, 128, size=(12, group * tables))
    acts[0] = -128
    acts[1] = 127
    beats = [{"data": [int(v) for v in a], "last": int(i % 3 == 2)} for i, a in enumerate(acts)]
    out = []
    r = random.Random(group)

    async def src(ctx):
        await drive(ctx, dut.act, beats, r, 0.7)

    async def snk(ctx):
        await collect(ctx, dut.tables, len(beats), out, r, 0.6)

    _run(dut, [(src, True), (snk, False)])
    for a, o, b in zip(acts, out, beats):
        for t in range(tables):
            ref = hwn.tlg_table(a[t * group:(t + 1) * group], group)
            got = [o.table[t][i] for i in range(hwn.tlg_num_indices(group))]
            assert got == list(ref)
        assert o.last == b["last"]
    if group == 3:  # the 13 non-zero entries for G = 3 (TL2)
        assert hwn.tlg_num_indices(3) == 14


def _engine_case(group, tables, columns, x, w, p_valid, p_ready, seed, pad=None):
    dut = TLMMEngine(group, tables, columns)
    n_tiles = -(-w.shape[0] // columns)
    tiles = [weight_beats(w[i * columns:(i + 1) * columns], group, tables, columns) for i in range(n_tiles)]
    ab, wb = [], []
    for tok in range(x.shape[0]):
        beats = act_beats(x[tok], group, tables, pad=pad)
        for tb in tiles:
            ab += beats
            wb += tb
    out = []
    r = random.Random(seed)
    n = x.shape[0] * n_tiles

    async def a(ctx):
        await drive(ctx, dut.act, ab, r, p_valid)

    async def b(ctx):
        await drive(ctx, dut.wgt, wb, r, p_valid)

    async def c(ctx):
        await collect(ctx, dut.out, n, out, r, p_ready)

    _run(dut, [(a, True), (b, True), (c, False)])
    got = np.array([[o[i] for i in range(columns)] for o in out], dtype=np.int64)
    got = got.reshape(x.shape[0], n_tiles * columns)[:, : w.shape[0]]
    return got


@pytest.mark.parametrize("group,tables,columns,k", [(3, 3, 4, 20), (3, 2, 3, 7), (2, 3, 2, 13), (3, 1, 1, 4)])
def test_engine_random_backpressure(group, tables, columns, k):
    rng = np.random.default_rng(k)
    x = rng.integers(-128, 128, size=(3, k)).astype(np.int8)
    w = rng.integers(-1, 2, size=(2 * columns + 1, k)).astype(np.int8)
    w[0] = 0
    pad = rng.integers(-128, 128, size=group * tables)  # garbage tail activations must not leak
    got = _engine_case(group, tables, columns, x, w, 0.6, 0.5, seed=k, pad=pad)
    assert np.array_equal(got, ternary_matmul_i32(x, w))


def test_engine_edges_max_accumulation():
    g, t, c = 3, 3, 4
    k = 5 * g * t - 2
    x = np.stack([np.full(k, -128), np.full(k, 127), np.zeros(k)]).astype(np.int8)
    w = np.stack([np.full(k, -1), np.full(k, 1), np.zeros(k), np.where(np.arange(k) % 2, 1, -1)]).astype(np.int8)
    got = _engine_case(g, t, c, x, w, 1.0, 1.0, seed=0)
    ref = ternary_matmul_i32(x, w)
    assert ref[0, 0] == 128 * k and ref[0, 1] == -128 * k
    assert np.array_equal(got, ref)


def test_engine_stall_free_steady_state():
    """With both inputs valid and out ready, a chunk is accepted every cycle, across pass boundaries."""
    g, t, c = 3, 2, 2
    dut = TLMMEngine(g, t, c)
    rng = np.random.default_rng(5)
    k, passes = 4 * g * t, 5
    x = rng.integers(-128, 128, size=(passes, k)).astype(np.int8)
    w = rng.integers(-1, 2, size=(c, k)).astype(np.int8)
    ab = [b for p in range(passes) for b in act_beats(x[p], g, t)]
    wb = weight_beats(w, g, t, c) * passes
    accepted = {"act": [], "wgt": []}
    out = []

    def feeder(name, port, beats):
        async def feed(ctx):
            ctx.set(port.valid, 1)
            cyc, i = 0, 0
            while i < len(beats):
                ctx.set(port.payload, beats[i])
                _, _, ready = await ctx.tick().sample(port.ready)
                if ready:
                    accepted[name].append(cyc)
                    i += 1
                cyc += 1
            ctx.set(port.valid, 0)
        return feed

    async def snk(ctx):
        await collect(ctx, dut.out, passes, out, random.Random(0), 1.0)

    _run(dut, [(feeder("act", dut.act, ab), True), (feeder("wgt", dut.wgt, wb), True), (snk, False)])
    # act chunks and their weight beats enter together (joined), on consecutive cycles.
    assert accepted["act"] == list(range(len(ab)))
    assert accepted["wgt"] == accepted["act"]
    got = np.array([[o[i] for i in range(c)] for o in out])
    assert np.array_equal(got, ternary_matmul_i32(x, w))
    assert dut.macs_per_cycle == g * t * c


def test_weight_buffer_replay_backpressure():
    from amaranth import unsigned
    dut = WeightBuffer(unsigned(20), depth=16, bank_width=8)
    rng = random.Random(3)
    words = [rng.randrange(1 << 20) for _ in range(12)]
    cmds = [(0, 12), (3, 4), (10, 2), (5, 1), (0, 0), (7, 5)]
    expect = [words[b + i] for b, n in cmds for i in range(n)]
    out = []

    async def load(ctx):
        await drive(ctx, dut.load, [{"data": w, "first": int(i == 0)} for i, w in enumerate(words)], rng, 0.7)
        await drive(ctx, dut.cmd, [{"base": b, "count": n} for b, n in cmds], rng, 0.7)

    async def snk(ctx):
        await collect(ctx, dut.rd, len(expect), out, rng, 0.5)

    _run(dut, [(load, True), (snk, False)])
    assert [int(v) for v in out] == expect


def test_weight_beat_packing_uses_tl2():
    from ternc.ir.packing import tl2_encode
    rng = np.random.default_rng(0)
    w = rng.integers(-1, 2, size=(3, 10)).astype(np.int8)
    beats = weight_beats(w, 3, 2, 4)
    idx, sgn = tl2_encode(w)
    assert len(beats) == 2
    for c in range(4):
        for tri in range(4):
            f = beats[tri // 2][c][tri % 2]
            if c < 3 and tri < idx.shape[1]:
                assert (f["index"], f["sign"]) == (idx[c, tri], sgn[c, tri])
            else:
                assert (f["index"], f["sign"]) == (0, 0)
    # Layout round trip through the Amaranth layout (the bit format on the wire).
    wl = weight_beat_layout(3, 2, 4)
    bits = wl.const(beats[0]).as_value().value
    back = wl.from_bits(bits)
    assert back[1][0].index == beats[0][1][0]["index"] and back[1][0].sign == beats[0][1][0]["sign"]
    al = act_beat_layout(3, 2)
    assert al.size == 6 * 8 + 1


def _weight_beats_from_unpacked(w_t, group, tables, columns):
    """The beat encoding as hw/tlmm.weight_beats built it before it read packed bytes (from the
    unpacked matrix through hw_numerics.tlg_encode): the reference the packed path must equal."""
    from ternc.ir import hw_numerics as hwn

    n_rows, k = w_t.shape
    index, sign = hwn.tlg_encode(w_t, group)
    n = -(-k // (group * tables))
    idx = np.zeros((columns, n * tables), dtype=np.int64)
    sgn = np.zeros((columns, n * tables), dtype=np.int64)
    idx[:n_rows, : index.shape[1]] = index
    sgn[:n_rows, : sign.shape[1]] = sign
    return [[[{"index": int(idx[c, j * tables + t]), "sign": int(sgn[c, j * tables + t])}
              for t in range(tables)] for c in range(columns)] for j in range(n)]


@pytest.mark.parametrize("n,k,tables,columns", [(1, 1, 1, 1), (3, 10, 2, 4), (16, 200, 28, 16), (5, 84, 28, 16),
                                                (7, 85, 4, 8), (8, 9, 3, 8)])
def test_weight_beats_read_from_packed_tl2_equal_the_unpacked_encoding(n, k, tables, columns):
    """weight_beats (G = 3) is built from the TL2 PACKED bytes (ir/packing.TL2.tlmm_weight_beats, the
    FPGA backend's path from IR constants) and is bit-identical to the encoding of the unpacked matrix."""
    from ternc.ir import packing

    w = np.random.default_rng(n * 1000 + k).integers(-1, 2, size=(n, k)).astype(np.int8)
    want = _weight_beats_from_unpacked(w, 3, tables, columns)
    assert weight_beats(w, 3, tables, columns) == want
    assert packing.TL2.tlmm_weight_beats(packing.pack(w, "tl2"), k, tables, columns) == want
    with pytest.raises(ValueError, match="columns"):
        packing.TL2.tlmm_weight_beats(packing.pack(w, "tl2"), k, tables, n - 1 if n > 1 else 0)


def test_verilog_is_deterministic():
    a = synth.to_verilog(TLMMCore(3, 2, 2, wbuf_depth=32, ram_style="block"), "tlmm_core")
    b = synth.to_verilog(TLMMCore(3, 2, 2, wbuf_depth=32, ram_style="block"), "tlmm_core")
    c = synth.to_verilog(TLMMCore(3, 2, 3, wbuf_depth=32, ram_style="block"), "tlmm_core")
    assert a == b
    assert a != c
    assert "ram_style" in a
    for name, make in _lint_designs().items():
        if name != "tlmm_core":
            assert synth.to_verilog(make(), name) == synth.to_verilog(make(), name)


def test_verilog_is_deterministic_across_processes():
    """Same bytes from a fresh interpreter (no dependence on hash seeds or object ids)."""
    import hashlib
    import os
    import subprocess
    import sys
    code = ("import hashlib; from ternc.hw.synth import to_verilog; from ternc.hw.tlmm import TLMMCore; "
            "print(hashlib.sha256(to_verilog(TLMMCore(3, 2, 2, wbuf_depth=32), 'tlmm_core').encode()).hexdigest())")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout.strip() for seed in ("1", "2")}
    here = hashlib.sha256(synth.to_verilog(TLMMCore(3, 2, 2, wbuf_depth=32), "tlmm_core").encode()).hexdigest()
    assert outs == {here}


def test_check_fit_names_overflowing_resource():
    ok = synth.check_fit({"LUT": 1000, "FF": 10, "DSP": 0, "BRAM": 0, "URAM": 2})
    assert ok["URAM"] == pytest.approx(2 / 64)
    with pytest.raises(synth.ResourceError) as ei:
        synth.check_fit({"LUT": 200_000, "FF": 10, "DSP": 0, "BRAM": 0, "URAM": 80})
    msg = str(ei.value)
    assert "LUT" in msg and "URAM" in msg and "FF" not in msg and "KV260" in msg
    assert set(ei.value.overflows) == {"LUT", "URAM"}


def _lint_designs():
    from ternc.hw.attention import DecodeAttention
    from ternc.hw.axi import AxiDma
    from ternc.hw.ctl_linear import LinearCtl
    from ternc.hw.epilogue import Epilogue
    from ternc.hw.norm import RMSNorm
    from ternc.hw.quant import ActQuantizer
    from ternc.hw.regfile import AxiLiteRegFile, default_accel_regmap
    return {
        "tlmm_core": lambda: TLMMCore(3, 3, 4, wbuf_depth=64, ram_style="ultra"),
        "epilogue_silu": lambda: Epilogue(4, "gated_silu"),
        "epilogue_rope": lambda: Epilogue(4, "rope"),
        "epilogue_linear": lambda: Epilogue(4, LinearCtl.OPS),
        "ctl_linear": lambda: LinearCtl(3, 4, 8, wbuf_depth=48, max_chunks=16, ram_style="block"),
        "act_quant": lambda: ActQuantizer(3, 2, max_chunks=8, lanes=3),
        "rmsnorm": lambda: RMSNorm(4, 64),
        "decode_attn": lambda: DecodeAttention(8, 4, 16),
        "axi_dma": lambda: AxiDma(40, 64),
        "regfile": lambda: AxiLiteRegFile(default_accel_regmap()),
    }


@pytest.mark.rtl
@pytest.mark.parametrize("name", ["tlmm_core", "epilogue_silu", "epilogue_rope", "epilogue_linear", "ctl_linear",
                                  "act_quant", "rmsnorm", "decode_attn", "axi_dma", "regfile"])
def test_verilator_lint_clean(name, tmp_path):
    from ternc.sim.rtl import have_simulator, lint
    if not have_simulator("verilator"):
        pytest.skip("verilator not installed")
    p = tmp_path / f"{name}.v"
    p.write_text(synth.to_verilog(_lint_designs()[name](), name))
    r = lint(p, name)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.rtl
def test_lint_catches_a_real_problem(tmp_path):
    """The waivers are not a blanket: a multi-driven signal still fails the lint."""
    from ternc.sim.rtl import have_simulator, lint
    if not have_simulator("verilator"):
        pytest.skip("verilator not installed")
    bad = tmp_path / "bad.v"
    bad.write_text("module bad(input clk, input a, output reg y);\n"
                   "  always @(posedge clk) y <= a;\n  always @(negedge clk) y <= ~a;\nendmodule\n")
    assert lint(bad, "bad").returncode != 0


@pytest.mark.rtl
def test_small_synth_fits_and_tiny_budget_overflows(tmp_path):
    """Real yosys synth_xilinx of a tiny core: fits the KV260, overflows a made-up tiny device."""
    p = tmp_path / "core.v"
    p.write_text(synth.to_verilog(TLMMCore(3, 2, 2, wbuf_depth=512, ram_style="block"), "tlmm_core"))
    res = synth.synth_xilinx(p, "tlmm_core")["resources"]
    assert res["LUT"] > 50 and res["FF"] > 50 and res["BRAM"] >= 0.5
    synth.check_fit(res)
    with pytest.raises(synth.ResourceError, match="LUT"):
        synth.check_fit(res, {"LUT": 50, "FF": 10**6}, device="tiny")


def test_weight_buffer_wraps_at_non_power_of_two_depth():
    """Review regression: TLMMCore(3, 5, 3, wbuf_depth=48), 48 beats loaded, cmd(base=46, count=5),
    K = 74 (5 chunks of 15): the pass reads beats 46, 47, 0, 1, 2 (it used to wrap at 64)."""
    g, t, c, depth, k = 3, 5, 3, 48, 74
    rng = np.random.default_rng(46)
    x = rng.integers(-128, 128, size=(2, k)).astype(np.int8)
    w = rng.integers(-1, 2, size=(c, k)).astype(np.int8)
    beats = weight_beats(w, g, t, c)
    assert len(beats) == 5
    filler = weight_beats(rng.integers(-1, 2, size=(c, 43 * g * t)).astype(np.int8), g, t, c)
    image = beats[2:] + filler + beats[:2]  # the pass starts at word 46 and wraps to 0
    assert len(image) == depth
    dut = TLMMCore(g, t, c, wbuf_depth=depth, ram_style=None)
    out = []
    r = random.Random(4)

    async def wl(ctx):
        await drive(ctx, dut.load, [{"data": b, "first": int(i == 0)} for i, b in enumerate(image)], r, 0.8)
        await drive(ctx, dut.cmd, [{"base": 46, "count": 5}] * 2, r, 0.8)

    async def acts(ctx):
        await ctx.tick().repeat(60)  # after the load
        await drive(ctx, dut.act, act_beats(x[0], g, t) + act_beats(x[1], g, t), r, 0.8)

    async def snk(ctx):
        await collect(ctx, dut.out, 2, out, r, 0.7)

    _run(dut, [(wl, True), (acts, True), (snk, False)])
    got = np.array([[o[i] for i in range(c)] for o in out])
    assert np.array_equal(got, ternary_matmul_i32(x, w))


def test_weight_buffer_load_wraps_too():
    from amaranth import unsigned
    dut = WeightBuffer(unsigned(12), depth=5, bank_width=8)
    rng = random.Random(5)
    words = [rng.randrange(1 << 12) for _ in range(7)]  # 7 writes into 5 words: 5, 6 overwrite 0, 1
    mem = list(words[:5])
    mem[0], mem[1] = words[5], words[6]
    cmds = [(3, 5), (4, 1), (0, 10)]
    expect = [mem[(b + i) % 5] for b, n in cmds for i in range(n)]
    out = []

    async def load(ctx):
        await drive(ctx, dut.load, [{"data": w, "first": int(i == 0)} for i, w in enumerate(words)], rng, 0.7)
        await drive(ctx, dut.cmd, [{"base": b, "count": n} for b, n in cmds], rng, 0.7)

    async def snk(ctx):
        await collect(ctx, dut.rd, len(expect), out, rng, 0.5)

    _run(dut, [(load, True), (snk, False)])
    assert [int(v) for v in out] == expect


def test_engine_ready_does_not_depend_on_out_ready():
    """Credits, not a stall chain: with the sink never ready, the engine still takes non-last chunks
    and exactly ``out_depth`` pass-ending chunks, then stops; the results come out intact later."""
    g, t, c = 3, 2, 2
    dut = TLMMEngine(g, t, c)
    rng = np.random.default_rng(9)
    k = g * t  # one chunk per pass: every chunk ends a pass
    n = dut.out_depth + 3
    x = rng.integers(-128, 128, size=(n, k)).astype(np.int8)
    w = rng.integers(-1, 2, size=(c, k)).astype(np.int8)
    ab = [b for p in range(n) for b in act_beats(x[p], g, t)]
    wb = weight_beats(w, g, t, c) * n
    log, out = [], []

    async def a(ctx):
        await drive(ctx, dut.act, ab, random.Random(0), 1.0, log=log)

    async def b(ctx):
        await drive(ctx, dut.wgt, wb, random.Random(1), 1.0)

    async def snk(ctx):
        ctx.set(dut.out.ready, 0)
        await ctx.tick().repeat(40)
        assert len(log) == dut.out_depth  # stopped on credits, not earlier, not later
        await collect(ctx, dut.out, n, out, random.Random(2), 1.0)

    _run(dut, [(a, True), (b, True), (snk, False)])
    got = np.array([[o[i] for i in range(c)] for o in out])
    assert np.array_equal(got, ternary_matmul_i32(x, w))


def test_engine_latency_matches_docstring():
    g, t, c = 3, 5, 2
    dut = TLMMEngine(g, t, c)
    x = np.arange(g * t, dtype=np.int8)
    w = np.ones((c, g * t), np.int8)
    seen = {}

    async def a(ctx):
        ctx.set(dut.act.payload, act_beats(x, g, t)[0])
        ctx.set(dut.wgt.payload, weight_beats(w, g, t, c)[0])
        ctx.set(dut.act.valid, 1)
        ctx.set(dut.wgt.valid, 1)
        await ctx.tick()  # accepted on this edge
        ctx.set(dut.act.valid, 0)
        ctx.set(dut.wgt.valid, 0)
        ctx.set(dut.out.ready, 1)
        for cyc in range(1, 30):
            await ctx.delay(1e-9)
            if ctx.get(dut.out.valid):
                seen["lat"] = cyc
                break
            await ctx.tick()

    _run(dut, [(a, False)])
    assert seen["lat"] == dut.latency


def test_logic_depth_model_on_a_hand_netlist():
    """FF -> LUT -> CARRY4 -> CARRY4 -> LUT -> FF, plus a shorter FF -> LUT -> FF branch."""
    from ternc.hw.timing import DELAY_NS, logic_depth

    def cell(t, ins, outs):
        conns = {**{f"I{i}": [b] for i, b in enumerate(ins)}, **{f"O{i}": [b] for i, b in enumerate(outs)}}
        dirs = {**{f"I{i}": "input" for i in range(len(ins))}, **{f"O{i}": "output" for i in range(len(outs))}}
        return {"type": t, "connections": conns, "port_directions": dirs}

    cells = {"ff0": {"type": "FDRE", "connections": {"D": [9], "Q": [2]},
                     "port_directions": {"D": "input", "Q": "output"}},
             "l1": cell("LUT4", [2], [3]), "c1": cell("CARRY4", [3], [4]), "c2": cell("CARRY4", [4], [5]),
             "l2": cell("LUT6", [5, 2], [6]), "l3": cell("LUT2", [2], [7]),
             "ff1": {"type": "FDRE", "connections": {"D": [6], "Q": [8]},
                     "port_directions": {"D": "input", "Q": "output"}}}
    d = logic_depth({"modules": {"top": {"cells": cells}}}, "top")
    want = 2 * DELAY_NS["LUT"] + 2 * DELAY_NS["CARRY"] + DELAY_NS["clk_overhead"]
    assert d["lut_levels"] == 2 and d["carry_cells"] == 2 and d["carry8_cells"] == 1
    assert d["est_ns"] == pytest.approx(round(want, 2))
    assert d["fmax_mhz"] == round(1000 / round(want, 2), 0)
