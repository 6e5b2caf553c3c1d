"""hw/ctl_rope.RopeCtl runs the ROPE instructions of real compiled programs (tiny-bitnet: q 4 x 42 and
k 2 x 42 words per row, table rows of 84 bytes, not beat-aligned; the tiny Llama: d = 16) in Amaranth's
simulator behind random-valid/ready DDR ports, in place as the schedule emits them: a prefill of 5
tokens and a decode step at pos 5, bit-exact with the functional executor (the whole DDR is
compared); cycles match RopeCtl.cycles."""

from __future__ import annotations

import json

import pytest

from ternc.backends.fpga.isa import Opcode, unpack_heads
from ternc.backends.fpga.schedule import EngineConfig
from ternc.hw.ctl_rope import RopeCtl
from ternc.passes.pipeline import KV260_PIPELINE, compile
from ternc.sim.ctl_bench import assert_same_ddr, compile_program, program_states, run_controller

ENG = EngineConfig(3, 4, 8)
CTX = 16


@pytest.fixture(scope="module")
def programs(onnx_export):
    import ternc

    bitnet = compile(ternc.load(str(onnx_export("tiny-bitnet", False))), passes=KV260_PIPELINE, report=False)[0]
    llama = compile(ternc.load(str(onnx_export("llama", True))), passes=["quantize-ternary", *KV260_PIPELINE],
                    report=False)[0]
    return {"bitnet": compile_program(bitnet, ENG, CTX), "llama": compile_program(llama, ENG, CTX)}


def _check(programs, name, every=False, p=0.7, prompt=(3, 1, 4, 1, 5), calls=(5, 1), decode=1):
    plan, im = programs[name]
    rows, seen = [], set()
    for i, st in enumerate(program_states(plan, im, ENG, CTX, list(prompt), decode, {Opcode.ROPE})):
        h, _, d = unpack_heads(st.instr["heads"])
        key = (h, st.n_tokens)
        if st.n_tokens not in calls or (not every and key in seen):   # default: q and k once per call
            continue
        seen.add(key)
        assert st.instr["src"] == st.instr["dst"]
        dut = RopeCtl(max_width=256, max_head_dim=64)
        got, res = run_controller(dut, st, seed=i, p=p)
        assert res["error"] == 0
        assert_same_ddr(got, st)
        assert (got != st.ddr).any()        # it rotated something
        rows.append({"instr": st.index, "heads": h, "d": d, "n": st.n_tokens, "pos": st.pos,
                     "cycles": res["cycles"], "model": dut.cycles(h, d, st.n_tokens)})
    return rows


@pytest.mark.parametrize("name", ["bitnet", "llama"])
def test_rope_ctl_bit_exact_on_program(programs, name):
    rows = _check(programs, name)
    assert {(r["heads"], r["n"]) for r in rows} == {(4, 5), (2, 5), (4, 1), (2, 1)}


def test_rope_ctl_cycles_at_full_rate(programs):
    rows = _check(programs, "bitnet", p=1.0)
    print("RopeCtl cycles", json.dumps(rows))
    for r in rows:
        assert abs(r["cycles"] - r["model"]) <= 0.02 * r["model"] + 3, r


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bitnet", "llama"])
def test_rope_ctl_every_instruction(programs, name):
    rows = _check(programs, name, every=True, decode=3)   # decode at pos 5, 6, 7: table rows at 4 offsets
    assert {r["pos"] for r in rows} == {0, 5, 6, 7}


def test_rope_ctl_refuses_what_it_cannot_hold(programs):
    plan, im = programs["bitnet"]
    st = next(program_states(plan, im, ENG, CTX, [3, 1], 0, {Opcode.ROPE}))
    for dut in (RopeCtl(max_width=64), RopeCtl(max_head_dim=32)):
        got, res = run_controller(dut, st)
        assert res["error"] == 1 and res["cycles"] < 10
        assert (got == st.ddr).all() and not res["writes"]
