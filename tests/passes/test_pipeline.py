"""compile(): pipelines per target, verification after every pass, the per-pass report."""

import pytest

import ternc
from ternc.ir import Node, VerifyError
from ternc.ir.core import Value
from ternc.ir.ops import Op
from ternc.ir.types import DType, TensorType
from ternc.passes.base import NoOptions, PassInfo, PassResult, kv_bytes_per_token
from ternc.passes.pipeline import KV260_PIPELINE, REFERENCE_PIPELINE, TVM_PIPELINE, compile, resolve
from ternc.passes.registry import SpecError


def test_every_pipeline_resolves():
    for pipeline in (REFERENCE_PIPELINE, TVM_PIPELINE, KV260_PIPELINE):
        assert resolve(pipeline)
    assert [i.name for i, _ in resolve(KV260_PIPELINE)][:2] == ["fold", "raise-ternary"]
    assert resolve(None) == []


def test_reference_is_exact_and_input_untouched(hp, llama, llama_inputs):
    before = str(llama)
    out, rep = compile(llama, REFERENCE_PIPELINE, report=False)
    assert str(llama) == before
    hp.assert_same_outputs(llama, out, llama_inputs)
    assert [r.name for r in rep.rows] == ["fold", "cse", "dce"]


def test_report_table(bitnet, capsys):
    out, rep = compile(bitnet, TVM_PIPELINE, target="cpu")
    table = capsys.readouterr().out
    assert "ternc compile: target cpu: fold,raise-ternary,cse,dce,pack-ternary{format=i2}" in table
    assert table.splitlines()[1].split() == ["pass", "nodes", "changed", "weights", "KV", "B/tok", "ms", "notes"]
    raise_row = rep.row("raise-ternary")
    assert raise_row.stats["raised"] == 42 and raise_row.removed > raise_row.added > 0
    pack = rep.row("pack-ternary")
    assert pack.weight_bytes_after < pack.weight_bytes_before
    assert rep.weight_bytes == (bitnet.weight_bytes, out.weight_bytes)
    # 2 (K,V) x 2 layers x 2 kv heads x 42 head dim x 4 bytes (f32)
    assert pack.kv_bytes_per_token_before == pack.kv_bytes_per_token_after == 2 * 2 * 2 * 42 * 4
    lines = []
    compile(bitnet, passes=["dce"], report=lines.append)
    assert len(lines) == 1 and "dce" in lines[0]


def test_kv_bytes_reads_meta_override(llama):
    assert kv_bytes_per_token(llama) == 2 * 2 * 2 * 16 * 4
    assert kv_bytes_per_token(llama.replace(meta={**llama.meta, "kv_bytes_per_token": 42.5})) == 42.5
    assert kv_bytes_per_token(llama.replace(meta={})) is None


def _breaker(module, opts):
    """A buggy pass: uses a value before defining it."""
    fn = module.functions[0]
    bad = Node.make(Op.Neg, ["nowhere"], [Value("oops", TensorType(DType.F32, None))])
    return PassResult(module.with_function(fn.with_nodes((bad,) + fn.nodes)))


def test_verify_after_each_pass_names_the_pass(llama, monkeypatch):
    broken = [(PassInfo("breaker", NoOptions, _breaker, "breaks the IR"), NoOptions())]
    with pytest.raises(VerifyError, match="IR invalid after pass 'breaker'.*nowhere"):
        compile(llama, passes=broken, report=False)
    compile(llama, passes=broken, report=False, verify_each=False)
    monkeypatch.setenv("TERNC_VERIFY", "0")
    compile(llama, passes=broken, report=False)


def test_pass_list_forms_and_api(llama, llama_inputs, hp):
    a, _ = compile(llama, passes=["fold", ("cse", {"constants": "false"}), "dce"], report=False)
    b = ternc.compile(llama, passes="fold,cse{constants=false},dce").module
    assert str(a) == str(b)
    with pytest.raises(SpecError, match="unknown option 'nope'"):
        compile(llama, passes=[("cse", {"nope": 1})], report=False)


def test_packing_before_any_ternary_linear_exists_is_an_error(bitnet, llama):
    """Issue 14: `pack-ternary` (or split-ternary) before raise-ternary packed nothing and said
    nothing. Now it is refused, naming the fix; after raise-ternary it runs, and on a float model the
    default pipeline (raise-ternary finding nothing) still goes through."""
    with pytest.raises(SpecError, match=r"'pack-ternary' has nothing to work on.*raise-ternary"):
        compile(bitnet, "pack-ternary{format=tl2},raise-ternary", report=False)
    with pytest.raises(SpecError, match=r"'split-ternary' has nothing to work on"):
        compile(bitnet, "split-ternary", report=False)
    out, rep = compile(bitnet, "fold,raise-ternary,pack-ternary{format=tl2}", report=False)
    assert rep.row("pack-ternary").stats["packed_nodes"] > 0
    packed, _ = compile(out, "pack-ternary{format=i2}", report=False)  # already ternary: fine
    compile(llama, TVM_PIPELINE, report=False)  # float: nothing to raise, nothing to pack, no error


def test_compile_reports_progress_per_step(llama, tmp_path):
    """Issue 15: long steps report progress; ternc.compile calls `progress` as each pass and the build
    start (the CLI's tqdm bar reads them)."""
    steps = []
    res = ternc.compile(llama, target="reference", passes="fold,cse,dce", out=tmp_path / "m.ternc",
                        progress=steps.append)
    assert steps == ["pass fold", "pass cse", "pass dce", "build for reference"]
    assert res.artifact.exists()
