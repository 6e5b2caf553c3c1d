"""hw/ctl_attn.AttnCtl runs the ATTN instructions of real compiled programs (tiny-bitnet: d = 42, GQA 4/2;
the tiny Llama: d = 16, GQA 4/2) in Amaranth's simulator behind random-valid/ready DDR ports: a
prefill of 5 tokens (causal, T = 1..5 per row) and a decode step at pos 5, bit-exact with the
functional executor (the whole DDR is compared); cycles match AttnCtl.cycles."""

from __future__ import annotations

import json

import pytest

from ternc.backends.fpga.isa import Flag, Opcode, unpack_heads
from ternc.backends.fpga.schedule import EngineConfig
from ternc.hw.ctl_attn import AttnCtl
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


def _check(programs, name, lanes, every=False, p=0.7, prompt=(3, 1, 4, 1, 5), calls=(5, 1), decode=1):
    plan, im = programs[name]
    rows, seen = [], set()
    for i, st in enumerate(program_states(plan, im, ENG, CTX, list(prompt), decode, {Opcode.ATTN})):
        if st.n_tokens not in calls or (not every and st.n_tokens in seen):   # default: layer 0 per call
            continue
        seen.add(st.n_tokens)
        hq, hkv, d = unpack_heads(st.instr["heads"])
        assert st.instr.flags & Flag.CAUSAL
        dut = AttnCtl(d, lanes, max_ctx=CTX)
        got, res = run_controller(dut, st, seed=i, p=p)
        assert res["error"] == 0
        assert_same_ddr(got, st)
        rows.append({"instr": st.index, "d": d, "lanes": lanes, "hq": hq, "hkv": hkv, "n": st.n_tokens,
                     "pos": st.pos, "cycles": res["cycles"], "model": dut.cycles(hq, st.n_tokens, st.pos)})
    return rows


@pytest.mark.parametrize("name,lanes", [("bitnet", 4), ("llama", 4)])
def test_attn_ctl_bit_exact_on_program(programs, name, lanes):
    rows = _check(programs, name, lanes)
    assert {(r["n"], r["pos"]) for r in rows} == {(5, 0), (1, 5)}


def test_attn_ctl_cycles_at_full_rate(programs):
    rows = _check(programs, "bitnet", 4, p=1.0, calls=(1,))
    print("AttnCtl cycles", json.dumps(rows))
    assert len(rows) == 1
    for r in rows:
        assert abs(r["cycles"] - r["model"]) <= 0.01 * r["model"] + 3, r


@pytest.mark.slow
@pytest.mark.parametrize("name,lanes", [("bitnet", 2), ("bitnet", 4), ("llama", 4), ("llama", 8), ("llama", 3)])
def test_attn_ctl_every_instruction(programs, name, lanes):
    rows = _check(programs, name, lanes, every=True, decode=2)
    assert {r["pos"] for r in rows} == {0, 5, 6}


def test_attn_ctl_refuses_what_it_cannot_run(programs):
    plan, im = programs["llama"]
    st = next(program_states(plan, im, ENG, CTX, [3, 1], 0, {Opcode.ATTN}))
    for dut in (AttnCtl(32, 4, CTX), AttnCtl(16, 4, max_ctx=1)):   # wrong head_dim; context too long
        got, res = run_controller(dut, st)
        assert res["error"] == 1 and res["cycles"] < 10
        assert (got == st.ddr).all() and not res["writes"]
