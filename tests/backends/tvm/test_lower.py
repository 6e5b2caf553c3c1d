"""IR -> Relax/TensorIR lowering: compiled prefill/decode match the IR interpreter.

Float models: logits within 1e-4 relative (max |diff| / max |ref|), KV outputs likewise, and greedy
tokens identical. Ternary models (every supported packing format): the same, through the TIR kernels.
"""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

import ternc  # noqa: E402
from ternc.ir.decoder import DecoderSpec, decode_feeds  # noqa: E402
from ternc.backends.tvm.build import compile_runner  # noqa: E402
from ternc.backends.tvm.lowering import LoweringError, lower_module  # noqa: E402
from ternc.ir.core import Function, Module, Node, Value  # noqa: E402
from ternc.ir.ops import Op  # noqa: E402
from ternc.ir.types import DType, TensorType  # noqa: E402

from .conftest import N_NEW  # noqa: E402
from .helpers import ternarize  # noqa: E402

REL_TOL = 1e-4


def _rel_err(got, ref):
    return float(np.max(np.abs(got - ref)) / max(np.max(np.abs(ref)), 1e-30))


def _check_prefill_decode(module, runner, prompt):
    dec = DecoderSpec.of(module)
    ids = {dec.input_ids: prompt}
    ref = ternc.interpret(module, ids, dec.prefill)
    got = runner.run(dec.prefill, ids)
    assert set(got) == set(ref)
    for name in ref:
        assert got[name].shape == ref[name].shape, name
        assert _rel_err(got[name], ref[name]) < REL_TOL, (name, _rel_err(got[name], ref[name]))
    # one decode step on the interpreter's KV state
    feeds = decode_feeds(dec, ref, [[7]])
    ref_d = ternc.interpret(module, feeds, dec.decode)
    got_d = runner.run(dec.decode, feeds)
    for name in ref_d:
        assert got_d[name].shape == ref_d[name].shape, name
        assert _rel_err(got_d[name], ref_d[name]) < REL_TOL, (name, _rel_err(got_d[name], ref_d[name]))
    toks_ref = ternc.generate(module, prompt, N_NEW)
    toks = ternc.generate(runner, prompt, N_NEW)
    np.testing.assert_array_equal(toks, toks_ref)
    return _rel_err(got[dec.logits], ref[dec.logits])


def test_float_llama(tiny_llama, prompt):
    _check_prefill_decode(tiny_llama, compile_runner(tiny_llama), prompt)


def test_float_bitnet(tiny_bitnet, prompt):
    _check_prefill_decode(tiny_bitnet, compile_runner(tiny_bitnet), prompt)


def test_float_llama_explicit_past(tiny_llama_kv, prompt):
    """Exports with past_key_values inputs: prefill binds empty (zero-length) past constants."""
    _check_prefill_decode(tiny_llama_kv, compile_runner(tiny_llama_kv), prompt)


FORMATS = ["t2", "i2", "tl1", "tl2", "tq1"]


def _formats_used(m):
    return {n.attr("format") for f in m.functions for n in f.nodes if n.op == Op.TernaryLinear}


@pytest.mark.parametrize("policy", ["dot", "dot16"])
def test_ternary_bitnet_all_formats_one_model(tiny_bitnet, prompt, policy):
    """Weights packed round-robin in all five formats in one model (one compile), int8 dot kernels
    with int32 or int16 lanes."""
    m = ternarize(tiny_bitnet, FORMATS)
    assert _formats_used(m) == set(FORMATS)
    runner = compile_runner(m, kernel_policy=policy)
    assert {g.name_hint.split("_")[2] for g in runner.built.lowered.mod.get_global_vars()
            if g.name_hint.startswith("ternc_tmm_")} == {policy}
    _check_prefill_decode(m, runner, prompt)


def test_ternary_lut_kernels_end_to_end(tiny_llama, prompt):
    """T-MAC style LUT kernels (tl2 and tl1 weights) in a Llama."""
    m = ternarize(tiny_llama, ["tl2", "tl1"])
    _check_prefill_decode(m, compile_runner(m, kernel_policy="lut"), prompt)


def test_real_cpu_pipeline_on_qat_bitnet(onnx_export, prompt):
    """The repo's tiny QAT BitNet through the real `cpu` pass pipeline (fold, raise-ternary, ...,
    pack-ternary{format=i2}) and this backend: tokens equal the interpreter's on the same module."""
    pytest.importorskip("torch")
    from ternc.passes.pipeline import TVM_PIPELINE, compile as run_passes

    m, _ = run_passes(ternc.load(str(onnx_export("tiny-bitnet", False))), TVM_PIPELINE)
    assert _formats_used(m) == {"i2"}
    _check_prefill_decode(m, compile_runner(m, kernel_policy="dot"), prompt)


def test_a_new_packing_format_needs_only_the_registry_and_a_decoder(tiny_bitnet, prompt, monkeypatch):
    """What README "Adding a packing format" promises: a layout registered in ir/packing.py plus a
    TIR decoder in kernels/decode.py is packed by pack-ternary, run by the interpreter and compiled
    by the TVM backend (tokens equal the interpreter's), with nothing else touched."""
    from ternc.backends.tvm import kernels as K
    from ternc.backends.tvm.kernels.common import i32
    from ternc.ir import packing
    from ternc.passes.pipeline import compile as run_passes

    class Nibble(packing.TernaryFormat):  # toy layout: two weights per byte, code w + 1 per nibble
        name, parts, bits_per_weight = "nib4", (packing.Part("codes"),), 4.0

        def _row_bytes(self, k):
            return (-(-k // 2),)

        def capacity(self, k):
            return 2 * -(-k // 2)

        def _pack(self, w_t):
            c = np.zeros((w_t.shape[0], self.capacity(w_t.shape[1])), np.uint8) + 1
            c[:, :w_t.shape[1]] = w_t + 1
            return (c[:, 0::2] | (c[:, 1::2] << np.uint8(4)),)

        def _unpack(self, arrays, n, k):
            b = arrays["codes"]
            return (np.stack([b & 15, b >> 4], -1).reshape(n, -1)[:, :k].astype(np.int8) - 1).astype(np.int8)

    monkeypatch.setitem(packing.REGISTRY, "nib4", Nibble())
    monkeypatch.setitem(K.TIR_DECODERS, "nib4", K.TirDecoder(
        lambda parts, n, k: ((i32(parts[0][n, k // 2]) >> ((k % 2) * 4)) & 15) - 1))
    m, _ = run_passes(ternarize(tiny_bitnet, "t2"), target="reference", passes="pack-ternary{format=nib4}")
    assert _formats_used(m) == {"nib4"}
    _check_prefill_decode(m, compile_runner(m, kernel_policy="dot"), prompt)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_ternary_bitnet_each_format(tiny_bitnet, prompt, fmt):
    m = ternarize(tiny_bitnet, fmt)
    assert _formats_used(m) == {fmt}
    _check_prefill_decode(m, compile_runner(m, kernel_policy="dot"), prompt)


def test_dynamic_lengths(tiny_llama):
    """One compiled module serves any prompt length and past length (symbolic seq/past)."""
    runner = compile_runner(tiny_llama)
    dec = DecoderSpec.of(tiny_llama)
    for n in (1, 3, 12):
        ids = {dec.input_ids: (np.arange(n, dtype=np.int64).reshape(1, n) * 5) % 128}
        ref = ternc.interpret(tiny_llama, ids, dec.prefill)
        got = runner.run(dec.prefill, ids)
        assert _rel_err(got[dec.logits], ref[dec.logits]) < REL_TOL
        # decode with an empty (zero-length) past: the KV append kernel must not read the past
        feeds = dict(ids)
        for pk, pv in dec.past:
            feeds[pk] = feeds[pv] = np.zeros((1, 2, 0, 16), np.float32)
        ref_d = ternc.interpret(tiny_llama, feeds, dec.decode)
        got_d = runner.run(dec.decode, feeds)
        for name in ref_d:
            assert got_d[name].shape == ref_d[name].shape
            assert _rel_err(got_d[name], ref_d[name]) < REL_TOL, name


def test_tied_head_matmul_of_transposed_weight():
    """MatMul(x, Transpose(W)) (tied LM heads) runs as the dense kernel on W: no transpose is
    materialized, and results match the interpreter; Shape of the transpose still works."""
    from ternc.ir.core import Const

    rng = np.random.default_rng(0)
    x = Value("x", TensorType(DType.F32, (1, "seq", 8)))
    nodes = (
        Node.make(Op.Transpose, ["W"], [Value("wt", TensorType(DType.F32, (8, 100)))], perm=(1, 0)),
        Node.make(Op.MatMul, ["x", "wt"], [Value("y", TensorType(DType.F32, (1, "seq", 100)))]),
        Node.make(Op.Shape, ["wt"], [Value("s", TensorType(DType.I64, (2,)))]),
    )
    m = Module("m", (Function("main", (x,), nodes, ("y", "s")),),
               {"W": Const.of(rng.standard_normal((100, 8)).astype(np.float32))})
    low = lower_module(m, kernel_policy="dot")
    assert "permute_dims" not in low.mod.script()
    runner = compile_runner(m)
    xin = rng.standard_normal((1, 5, 8)).astype(np.float32)
    ref = ternc.interpret(m, {"x": xin})
    got = runner.run("main", {"x": xin})
    assert _rel_err(got["y"], ref["y"]) < REL_TOL
    np.testing.assert_array_equal(got["s"], ref["s"])


def test_linear_with_f16_weight():
    """Linear(x f32, W f16) (a tied f16 embedding as LM head): W widened in registers."""
    from ternc.ir.core import Const

    rng = np.random.default_rng(1)
    x = Value("x", TensorType(DType.F32, (1, "seq", 24)))
    node = Node.make(Op.Linear, ["x", "W"], [Value("y", TensorType(DType.F32, (1, "seq", 40)))])
    m = Module("m", (Function("main", (x,), (node,), ("y",)),),
               {"W": Const.of(rng.standard_normal((40, 24)).astype(np.float16))})
    assert "ternc_dense_k24_n40_float16" in lower_module(m).mod.script()
    xin = rng.standard_normal((1, 3, 24)).astype(np.float32)
    got = compile_runner(m).run("main", {"x": xin})["y"]
    assert _rel_err(got, ternc.interpret(m, {"x": xin})["y"]) < REL_TOL


def _one_node_module(op, **attrs):
    x = Value("x", TensorType(DType.F32, (2, 3)))
    y = Value("y", TensorType(DType.F32, (2, 3)))
    node = Node.make(op, ["x"], [y], origin="onnx_node_7", **attrs)
    return Module("m", (Function("main", (x,), (node,), ("y",)),))


def test_unsupported_op_names_the_node():
    m = _one_node_module(Op.Mish)
    with pytest.raises(LoweringError, match=r"no lowering for 1 op\(s\).*Mish \(1 node, first @main %y = Mish "
                                            r"\(from onnx_node_7\)\)"):
        lower_module(m)


def test_every_op_without_a_lowering_is_listed_before_building(monkeypatch):
    """Issue 15: the compile refuses before building, listing every op that does not lower (sorted,
    with counts), instead of failing on the first one midway."""
    x = Value("x", TensorType(DType.F32, (2, 3)))
    vals = [Value(f"v{i}", TensorType(DType.F32, (2, 3))) for i in range(4)]
    nodes = (Node.make(Op.Mish, ["x"], [vals[0]]), Node.make(Op.Relu, ["v0"], [vals[1]]),
             Node.make(Op.Mish, ["v1"], [vals[2]]), Node.make(Op.Softsign, ["v2"], [vals[3]]))
    m = Module("m", (Function("main", (x,), nodes, ("v3",)),))
    import tvm.relax as rx

    monkeypatch.setattr(rx, "BlockBuilder", None)  # nothing may be built before the refusal
    with pytest.raises(LoweringError, match=r"2 op\(s\).*: Mish \(2 nodes, first @main %v0 = Mish\); "
                                            r"Softsign \(1 node"):
        lower_module(m)


@pytest.mark.parametrize("sizes,dim", [(None, 7), ((2, 5), 7), (None, "seq"), ((1, "rest"), "seq")])
def test_split_lowers_like_the_interpreter(sizes, dim):
    """Split (Phi-3's fused qkv / gate_up) on static and symbolic dims, with and without sizes:
    equal to the interpreter (issue 15)."""
    from ternc.ir.core import Const

    rng = np.random.default_rng(0)
    x = Value("x", TensorType(DType.F32, (1, dim, 4)))
    consts, inputs, n_out = {}, ["x"], 3
    if sizes is not None:
        n_out = len(sizes)
        if "rest" in sizes:  # sizes computed from the symbolic length: [1, seq - 1]
            nodes = [Node.make(Op.Shape, ["x"], [Value("s", TensorType(DType.I64, (3,)))]),
                     Node.make(Op.Gather, ["s", "i1"], [Value("n", TensorType(DType.I64, (1,)))], axis=0),
                     Node.make(Op.Sub, ["n", "one"], [Value("r", TensorType(DType.I64, (1,)))]),
                     Node.make(Op.Concat, ["one", "r"], [Value("sz", TensorType(DType.I64, (2,)))], axis=0)]
            consts.update(i1=Const.of(np.array([1], np.int64)), one=Const.of(np.array([1], np.int64)))
        else:
            nodes = []
            consts["sz"] = Const.of(np.array(sizes, np.int64))
        inputs.append("sz")
    else:
        nodes = []
    outs = [Value(f"y{i}", TensorType(DType.F32, (1, "?", 4))) for i in range(n_out)]
    nodes.append(Node.make(Op.Split, inputs, outs, axis=1))
    m = Module("m", (Function("main", (x,), tuple(nodes), tuple(o.name for o in outs)),), consts)
    runner = compile_runner(m)
    for n in ([7] if dim == 7 else [1, 2, 7, 9]):
        xin = rng.standard_normal((1, n, 4)).astype(np.float32)
        ref = ternc.interpret(m, {"x": xin})
        got = runner.run("main", {"x": xin})
        for o in outs:
            np.testing.assert_array_equal(got[o.name], ref[o.name])


def test_failed_lowering_leaves_no_open_tvm_blocks(tmp_path):
    """A lowering error midway used to leave TVM's BlockBuilder with open blocks, and TVM printed
    "BlockBuilder destroyed with remaining blocks!" at exit (issue 15, Phi-3)."""
    import subprocess
    import sys

    script = tmp_path / "fail.py"
    script.write_text(
        "from ternc.backends.tvm.lowering import LoweringError, lower_module\n"
        "from ternc.ir.core import Const, Function, Module, Node, Value\n"
        "from ternc.ir.ops import Op\n"
        "from ternc.ir.types import DType, TensorType\n"
        "import numpy as np\n"
        "x = Value('x', TensorType(DType.F32, (4, 4)))\n"
        "y = Value('y', TensorType(DType.F32, (2, 4)))\n"
        "c = {k: Const.of(np.array([v], np.int64)) for k, v in dict(b=3, e=0, a=0, s=-1).items()}\n"
        "m = Module('m', (Function('main', (x,), (Node.make(Op.Slice, ['x', 'b', 'e', 'a', 's'], [y]),), ('y',)),), c)\n"
        "try:\n"
        "    lower_module(m)\n"
        "except LoweringError as e:\n"
        "    print('refused:', e)\n")
    import os

    env = dict(os.environ)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert "refused:" in r.stdout and "negative or symbolic step" in r.stdout, r.stdout + r.stderr
    assert "remaining blocks" not in r.stdout + r.stderr


def test_unsupported_ternary_format_is_clear(tiny_bitnet):
    m = ternarize(tiny_bitnet, "i2")
    fn = m.func("prefill")
    bad = [n.with_attrs(format="q9") if n.op == Op.TernaryLinear else n for n in fn.nodes]
    m2 = m.with_function(fn.with_nodes(bad))
    with pytest.raises(LoweringError, match=r"@prefill, node %\S+ = TernaryLinear.*format 'q9'"):
        lower_module(m2, entries=["prefill"], kernel_policy="dot")


def _host_has_vnni() -> bool:
    from .test_kernels import HOST_VNNI

    return HOST_VNNI


@pytest.mark.skipif(not _host_has_vnni(), reason="host CPU lacks avx512_vnni")
def test_ternary_i2_vnni_kernels_end_to_end(tiny_bitnet, prompt):
    """i2 weights through the AVX-512 VNNI kernel (activation permutation inside the kernel; the
    tiny model's K are not multiples of 256): prefill/decode/tokens match the interpreter."""
    m = ternarize(tiny_bitnet, "i2")
    runner = compile_runner(m, kernel_policy="vnni")
    assert {g.name_hint.split("_")[2] for g in runner.built.lowered.mod.get_global_vars()
            if g.name_hint.startswith("ternc_tmm_")} == {"vnni"}
    _check_prefill_decode(m, runner, prompt)


def test_foreign_mcpu_lowering_is_not_measured(tiny_bitnet, monkeypatch):
    """`auto` for a target CPU that is not this host's (here cascadelake, which has AVX-512 VNNI)
    must not run kernels here: i2 weights get the static default (vnni), nothing is measured."""
    from ternc.backends.tvm import kernels as K

    def boom(*a, **kw):
        raise AssertionError("measured kernels for a foreign target")

    monkeypatch.setattr(K, "measure_kinds", boom)
    host = str(tvm.target.codegen.llvm_get_system_cpu())
    mcpu = "cascadelake" if host != "cascadelake" else "icelake-server"
    low = lower_module(ternarize(tiny_bitnet, ["i2", "tl2"]), kernel_policy="auto",
                       target=tvm.target.Target({"kind": "llvm", "mcpu": mcpu}))
    names = {g.name_hint for g in low.mod.get_global_vars() if g.name_hint.startswith("ternc_tmm_")}
    assert {nm.split("_")[2] for nm in names if "_i2_" in nm} == {"vnni"}
    assert {nm.split("_")[2] for nm in names if "_tl2_" in nm} == {"dot"}
    assert not any("timings_us" in c for c in low.kernel_choices)  # recorded, not measured
