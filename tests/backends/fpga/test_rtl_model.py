"""Whole-model RTL: `ternc compile --target kv260 --engine 3,4,8` -> the artifact's generated top in
Verilator through cocotb, driven by the board's host driver (KV260Driver over CocotbTransport); tokens
and logits must equal the interpreter's after the kv260 pipeline (``program="full"``), or the
functional executor's on the same program (``embed``/``prefix`` plumbing programs).

Default suite: ONE tiny run (tiny BitNet, small engine, 2-token prompt, prefill + 1 decode step). The
other models and longer runs are marked slow."""

from __future__ import annotations

import json

import pytest

from ternc.backends.fpga.isa import Opcode
from ternc.backends.fpga.schedule import EngineConfig
from ternc.backends.fpga.top import built_opcodes
from ternc.sim.rtl import have_simulator, simulate_rtl

pytestmark = pytest.mark.skipif(not have_simulator("verilator"), reason="needs Verilator")

ENG = EngineConfig(3, 4, 8)
CTX = 16


def _art(module, out, context=CTX):
    from ternc.backends.fpga.build import build_artifact

    return build_artifact(module, out, context=context, engine=ENG, synth=False, rtl=True)


def _compile(path, passes=None):
    import ternc
    from ternc.passes.pipeline import KV260_PIPELINE, compile

    return compile(ternc.load(str(path)), passes=[*(passes or []), *KV260_PIPELINE], report=False)[0]


def _full_program_built(art_path) -> bool:
    from ternc.backends.fpga.build import load_artifact

    ops = {int(i.op) for i in load_artifact(art_path).program.instrs} - {int(Opcode.END), int(Opcode.LM_HEAD)}
    return ops <= built_opcodes()


@pytest.fixture(scope="module")
def bitnet_art(onnx_export, tmp_path_factory):
    return _art(_compile(onnx_export("tiny-bitnet", False)), tmp_path_factory.mktemp("rtl") / "bitnet")


def test_tiny_bitnet_rtl(bitnet_art):
    """The default model on the generated top: the full program when every controller is built,
    else (during integration) the prefix up to the first missing one, vs the executor."""
    program = "full" if _full_program_built(bitnet_art) else "prefix"
    rep = simulate_rtl(bitnet_art, [1, 2], 2, program=program)
    assert rep.exact, rep.text()
    assert len(rep.calls) == 2 and all(c["CYCLES"] > 0 and c["INSTRS"] > 2 for c in rep.calls)
    assert rep.calls[0]["CYC_LINEAR"] > 0 and rep.calls[0]["CYC_NORM"] > 0
    assert all(c["RD_BEATS"] > c["WR_BEATS"] > 0 for c in rep.calls)
    rc = json.loads((bitnet_art / "report.json").read_text())["rtl_cycles"]
    assert rc["program"] == program and rc["exact"] and rc["prefill_cycles"] == rep.calls[0]["CYCLES"]


@pytest.mark.slow
def test_tiny_bitnet_embed_program_pauses(bitnet_art):
    """EMBED + host LM head with random pauses on every AXI channel (plumbing under backpressure)."""
    rep = simulate_rtl(bitnet_art, [5, 250, 3], 3, program="embed", pause=0.3, write_report=False)
    assert rep.exact, rep.text()


@pytest.mark.slow
@pytest.mark.parametrize("name,arch,passes", [
    ("llama", "llama", ["quantize-ternary"]),
    ("bitnet-kv4", "tiny-bitnet", ["quantize-kv{bits=4}"]),
])
def test_models_rtl_full(onnx_export, tmp_path, name, arch, passes):
    with_past = arch == "llama"
    art = _art(_compile(onnx_export(arch, with_past), passes), tmp_path / name)
    if not _full_program_built(art):
        pytest.skip("the composed top lacks controllers for part of the program (see built_opcodes)")
    rep = simulate_rtl(art, [3, 1, 4, 1], 4, program="full")
    assert rep.exact, rep.text()
