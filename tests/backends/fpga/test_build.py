"""kv260 backend: ISA encoding, weight images vs the engine's beat layout, the functional executor
token- and logit-exact against the interpreter after the kv260 pipeline, and the artifact."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ternc.backends.artifact import ArtifactError
from ternc.backends.fpga import isa
from ternc.backends.fpga.build import build_artifact, load_artifact
from ternc.backends.fpga.images import build_images, ternary_from_image, weight_image
from ternc.backends.fpga.executor import Executor
from ternc.backends.fpga.schedule import EngineConfig, ScheduleError, schedule
from ternc.backends.fpga.top import ResourceError
from ternc.backends.fpga.verify import reference, simulate
from ternc.ir import packing
from ternc.passes.pipeline import KV260_PIPELINE, compile

CTX = 32


@pytest.fixture(scope="module")
def kv260_bitnet(onnx_export):
    import ternc

    return compile(ternc.load(str(onnx_export("tiny-bitnet", False))), passes=KV260_PIPELINE, report=False)[0]


@pytest.fixture(scope="module")
def kv260_llama(onnx_export):
    """Tiny Llama (SiLU gates, GQA 4/2, hidden 64: not a multiple of the engine's 84) made ternary."""
    import ternc

    m = ternc.load(str(onnx_export("llama", True)))
    return compile(m, passes=["quantize-ternary", *KV260_PIPELINE], report=False)[0]


def test_isa_roundtrip_and_field_checks():
    p = isa.Program([isa.Instr(isa.Opcode.LINEAR, {"src": 64, "dst": 4096, "kn": isa.pack_kn(168, 84),
                                                   "ws": isa.pack_scale(150000, 30)}, isa.Epilogue.ROPE),
                     isa.Instr(isa.Opcode.ATTN, {"heads": isa.pack_heads(4, 2, 42)}, flags=isa.Flag.CAUSAL),
                     isa.Instr(isa.Opcode.END)])
    blob = p.encode()
    assert len(blob) == 3 * isa.INSTR_BYTES
    q = isa.Program.decode(blob)
    assert [(i.op, i.epilogue, i.flags, i.fields) for i in q.instrs] == \
        [(i.op, i.epilogue, i.flags, {k: i.fields.get(k, 0) for k in isa.FIELDS[i.op]}) for i in p.instrs]
    with pytest.raises(isa.ISAError, match="unknown opcode"):
        isa.Program.decode(b"\x7f" + bytes(31))
    with pytest.raises(isa.ISAError, match="does not fit"):
        isa.Instr(isa.Opcode.EMBED, {"dst": 1 << 32})
    with pytest.raises(isa.ISAError, match="unknown fields"):
        isa.Instr(isa.Opcode.END, {"src": 0})


@pytest.mark.parametrize("n,k", [(16, 84), (37, 100), (5, 3)])
def test_weight_image_is_the_engine_beat_layout(n, k):
    """Beats built from packed TL2 bytes == hw/tlmm.weight_beats through the Amaranth layout."""
    from amaranth.lib import data  # noqa: F401
    from ternc.hw.tlmm import weight_beat_layout, weight_beats

    eng = EngineConfig(3, 28, 16)
    w = np.random.default_rng(n * k).integers(-1, 2, (n, k)).astype(np.int8)
    parts = packing.pack(w, "tl2")
    img = weight_image(parts["nibbles"], parts["signs"], k, eng)
    layout = weight_beat_layout(3, 28, 16)
    chunks = -(-k // 84)
    want = []
    for tile in range(-(-n // 16)):
        for beat in weight_beats(w[tile * 16:(tile + 1) * 16], 3, 28, 16):
            v = layout.const(beat).as_value().value
            want.append(np.frombuffer(int(v).to_bytes(eng.image_beat_bytes, "little"), np.uint8))
    assert eng.image_beat_bytes == 288   # 280-byte engine beats padded to whole 16-byte DDR beats
    assert img.shape == (-(-n // 16) * chunks, eng.image_beat_bytes)
    np.testing.assert_array_equal(img, np.stack(want))
    np.testing.assert_array_equal(ternary_from_image(img, n, k, eng), w)


def _exact(module, prompt, n):
    eng = EngineConfig()
    plan = schedule(module, CTX, eng)
    im = build_images(module, plan, eng)
    ex = Executor(plan.program, im.memmap.to_json(), im.consts, im.weights, im.lm_head, eng, CTX)
    toks, logits = ex.generate(prompt, n)
    ref_toks, ref_logits = reference(module, prompt, n)
    assert [int(t) for t in toks[0]] == ref_toks
    assert len(logits) == len(ref_logits) == n
    for a, b in zip(logits, ref_logits):
        np.testing.assert_array_equal(a, b)
    return plan


def test_executor_equals_interpreter_default_model(kv260_bitnet):
    plan = _exact(kv260_bitnet, [1, 2, 3], 6)
    ops = [i.op for i in plan.program.instrs]
    assert ops.count(isa.Opcode.ATTN) == 2 and ops[-1] == isa.Opcode.END
    eps = {i.epilogue for i in plan.program.instrs if i.op == isa.Opcode.LINEAR}
    assert eps == {isa.Epilogue.NONE, isa.Epilogue.RESIDUAL, isa.Epilogue.GATE_RELU2}
    # q and k: LINEAR (NONE) then ROPE in place on its rows, per layer
    ropes = [(j, i) for j, i in enumerate(plan.program.instrs) if i.op == isa.Opcode.ROPE]
    assert len(ropes) == 4
    for j, r in ropes:
        prev = plan.program.instrs[j - 1]
        assert prev.op == isa.Opcode.LINEAR and prev["dst"] == r["src"] == r["dst"]
        assert isa.unpack_heads(r["heads"])[2] == 42 and r["table"] > 0


def test_executor_equals_interpreter_llama_silu_gqa_unaligned(kv260_llama):
    plan = _exact(kv260_llama, [5, 17, 99, 3], 5)
    assert any(i.epilogue == isa.Epilogue.GATE_SILU for i in plan.program.instrs)
    assert plan.hidden == 64 and plan.kv_heads == 2


def test_schedule_refuses_float_numerics(onnx_export):
    import ternc

    m = compile(ternc.load(str(onnx_export("tiny-bitnet", False))),
                passes=[p for p in KV260_PIPELINE if p != "hw-numerics"], report=False)[0]
    with pytest.raises(ScheduleError, match="hardware numerics"):
        schedule(m, CTX)


def test_artifact_roundtrip_checksums_and_budget(kv260_bitnet, tmp_path):
    art = build_artifact(kv260_bitnet, tmp_path / "art", context=CTX, rtl=False)
    man = json.loads((art / "manifest.json").read_text())
    assert man["target"]["name"] == "kv260"
    for f in ("program.bin", "memmap.json", "images/weights.bin", "regmap.json", "include/ternc_kv260_regs.h"):
        assert f in man["files"]
    assert "#define TERNC_KV260_STATUS_OFFSET 0x010u" in (art / "include/ternc_kv260_regs.h").read_text()
    rep = simulate(art, [7, 8], 3)
    assert rep.exact, rep.text()
    # corrupt an image: loading names the file
    p = art / "images" / "weights.bin"
    p.chmod(0o644)
    b = bytearray(p.read_bytes())
    b[5] ^= 1
    p.write_bytes(bytes(b))
    with pytest.raises(ArtifactError, match="weights.bin"):
        load_artifact(art)
    # over budget: ResourceError naming the resource and unit, nothing written
    with pytest.raises(ResourceError, match="quantizer chunks .* unit 'ActQuantizer'"):
        build_artifact(kv260_bitnet, tmp_path / "small", context=CTX, rtl=False,
                       engine=EngineConfig(1, 1, 16))
    assert not (tmp_path / "small").exists()


def test_budget_check_names_resource_and_unit():
    from ternc.backends.fpga.top import UnitResources, check_budget

    units = [UnitResources("linear engine", "yosys", {"LUT": 90_000, "URAM": 40}),
             UnitResources("attention unit", "yosys", {"LUT": 30_000, "URAM": 2})]
    with pytest.raises(ResourceError, match="LUT 120000 used > 117120 available .*'linear engine'"):
        check_budget(units, {"LUT": 117_120, "URAM": 64})
    assert check_budget(units[:1], {"LUT": 117_120, "URAM": 64}) == {"LUT": 90_000, "URAM": 40}


def test_driver_register_protocol_on_the_model_transport(kv260_bitnet, tmp_path):
    """The host driver (loads images, drives the registers, runs the LM head) == the interpreter."""
    from ternc.backends.fpga.driver import KV260Driver

    art = build_artifact(kv260_bitnet, tmp_path / "art", context=CTX, rtl=False)
    ids, logits = KV260Driver(art).generate([4, 9, 1], 4)
    ref_ids, ref_logits = reference(kv260_bitnet, [4, 9, 1], 4)
    assert ids == ref_ids
    for a, b in zip(logits, ref_logits):
        np.testing.assert_array_equal(a, b)


def test_runner_interface_generates_like_the_interpreter(kv260_bitnet, tmp_path):
    """`ternc.generate` on the artifact's Runner (prefill/decode entries, explicit past KV)."""
    import ternc
    from ternc.backends.fpga.build import load_runner

    art = build_artifact(kv260_bitnet, tmp_path / "art", context=CTX, rtl=False)
    got = ternc.generate(load_runner(art), [[3, 1, 4]], max_new_tokens=5)
    ref_ids, _ = reference(kv260_bitnet, [3, 1, 4], 5)
    assert got.reshape(-1).tolist() == ref_ids


@pytest.mark.parametrize("bits", [8, 4])
def test_executor_equals_interpreter_quantize_kv(onnx_export, bits):
    """quantize-kv under hw-numerics: KIVI groups on KV words, in place in the DDR cache."""
    import ternc

    m = ternc.load(str(onnx_export("tiny-bitnet", False)))
    spec = [*KV260_PIPELINE[:-1], f"quantize-kv{{bits={bits},group=6,residual=2}}", "hw-numerics"]
    hw = compile(m, passes=spec, report=False)[0]
    plan = _exact(hw, [5, 6, 7, 8, 9], 9)   # 13 tokens: the span grows during decode
    assert all(i["quant"] for i in plan.program.instrs if i.op == isa.Opcode.KV_APPEND)
    # and it differs from the unquantized cache (the test would notice quantization being skipped)
    plain = compile(m, passes=KV260_PIPELINE, report=False)[0]
    assert not np.array_equal(reference(hw, [5, 6, 7, 8, 9], 9)[1][-1], reference(plain, [5, 6, 7, 8, 9], 9)[1][-1])
