"""The target table (targets.py) and the one compile path (ternc.compile -> CompileResult)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ternc
from ternc import targets as T
from ternc.ir.capabilities import UnsupportedError
from ternc.passes.pipeline import resolve

REPO = Path(__file__).resolve().parent.parent


def test_table_rows():
    assert list(T.TARGETS) == ["reference", "cpu", "aarch64", "cuda", "kv260"]
    for t in T.TARGETS.values():
        assert resolve(list(t.pipeline)) and t.description
    assert T.get("kv260").pipeline[-1] == "hw-numerics"
    with pytest.raises(T.TargetError, match="unknown target 'tpu'; choose one of reference, cpu, aarch64, cuda, kv260"):
        T.get("tpu")


def test_no_target_name_comparisons_outside_the_table():
    """Target differences are data (targets.py, backends/tvm/target.py): no `x == "cuda"` chains."""
    pat = re.compile(r"""[!=]=\s*["'](reference|cpu|aarch64|cuda|kv260)["']|["'](reference|cpu|aarch64|cuda|kv260)["']\s*[!=]=""")
    bad = []
    for p in REPO.rglob("*.py"):
        rel = p.relative_to(REPO).as_posix()
        # library code only: not tests/benches, hidden folders, or build outputs (pip's build/lib copy)
        if rel.startswith(("tests/", "bench/", "build/", "dist/", ".")) or "/." in rel:
            continue
        for i, line in enumerate(p.read_text().splitlines(), 1):
            if pat.search(line):
                bad.append(f"{rel}:{i}: {line.strip()}")
    assert not bad, "\n".join(bad)


def test_compile_without_out_returns_module_and_report(llama_module):
    res = ternc.compile(llama_module, passes="fold,cse,dce")
    assert res.target == "reference" and res.artifact is None and res.manifest is None
    assert [r.name for r in res.report.rows] == ["fold", "cse", "dce"]
    ids = np.array([[3, 4, 5]])
    np.testing.assert_array_equal(ternc.generate(res.module, ids, 4), ternc.generate(llama_module, ids, 4))
    with pytest.raises(TypeError, match="build options kernels need `out`"):
        ternc.compile(llama_module, kernels=[])


def test_reference_target_writes_a_module_file(llama_module, tmp_path):
    res = ternc.compile(llama_module, target="reference", out=tmp_path / "m.ternc", context=64)
    assert res.artifact == tmp_path / "m.ternc" and res.artifact.is_file()
    runner = ternc.load_artifact(res.artifact)
    assert runner.meta["max_context"] == 64
    ids = np.array([[3, 4, 5]])
    np.testing.assert_array_equal(ternc.generate(runner, ids, 4), ternc.generate(llama_module, ids, 4))
    with pytest.raises(ValueError, match="context must be a positive"):
        ternc.compile(llama_module, context=0)


def test_kv260_compiles_its_pipeline_and_refuses_float_linears(bitnet_module, tmp_path):
    """kv260's backend is the FPGA backend (tests/backends/fpga build, load and run its artifacts);
    this HF BitNet has float (not ternary) projections, which the TLMM engine cannot run: a clear
    error naming the node, before anything is written."""
    from ternc.backends.fpga.schedule import ScheduleError

    res = ternc.compile(bitnet_module, target="kv260")
    assert any(n.attr("numerics") == "fx" for n in res.module.func("prefill").nodes)
    with pytest.raises(ScheduleError, match="op Linear has no kv260 instruction"):
        ternc.compile(bitnet_module, target="kv260", out=tmp_path / "k", rtl=False)
    assert not (tmp_path / "k").exists()


HOLE = "fold,raise-ternary,pack-ternary,hw-numerics"  # issue 9: numerics="fx" on a TVM target


def test_tvm_targets_refuse_hw_numerics_before_building(bitnet_module, tmp_path, monkeypatch):
    """The TVM kernels compute in float: a module the hw-numerics pass marked is refused, naming the
    node and the attribute, before anything is lowered or written."""
    import ternc.backends.tvm as tvm_backend

    monkeypatch.setattr(tvm_backend, "build_artifact", lambda *a, **k: pytest.fail("build reached"))
    for target in ("cpu", "aarch64", "cuda"):
        with pytest.raises(UnsupportedError, match=rf"target '{target}' does not implement: @main: %\S+ = "
                                                   r"(RoPE|GatedAct|TernaryLinear) .*attribute numerics='fx'"):
            ternc.compile(bitnet_module, target=target, passes=HOLE, out=tmp_path / target)
        assert not (tmp_path / target).exists()
    # the same pipeline without hw-numerics is accepted by the check
    ok = ternc.compile(bitnet_module, target="cpu", passes=HOLE.rsplit(",", 1)[0])
    T.get("cpu").check(ok.module)


def test_tvm_lowering_refuses_too(bitnet_module):
    """Called directly (not through the table), the TVM lowering refuses the same way."""
    pytest.importorskip("tvm")
    from ternc.backends.tvm.lowering import lower_module

    marked = ternc.compile(bitnet_module, passes=HOLE).module
    with pytest.raises(UnsupportedError, match="TVM backend .*numerics='fx'"):
        lower_module(marked)


def test_cli_refuses_hw_numerics_on_cpu(tmp_path):
    exe = [sys.executable, "-m", "ternc.cli"]
    r = subprocess.run([*exe, "compile", "--target", "cpu", "--passes", HOLE, "-o", str(tmp_path / "art")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "UnsupportedError: target 'cpu' does not implement" in r.stderr and "numerics='fx'" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "art").exists()


def test_load_artifact_checks_the_target_name(tmp_path):
    from ternc.backends import artifact as A

    A.write_artifact(tmp_path / "a", {"name": "tpu"}, lambda f: ((f / "x").write_bytes(b"x"), {"roles": {}})[1])
    with pytest.raises(A.ArtifactError, match="unknown target 'tpu'; this ternc loads reference, cpu"):
        ternc.load_artifact(tmp_path / "a")
    A.write_artifact(tmp_path / "b", {"name": "kv260"}, lambda f: ((f / "x").write_bytes(b"x"), {"roles": {}})[1])
    with pytest.raises(A.ArtifactError, match="kv260 manifest lacks the 'program' role"):
        ternc.load_artifact(tmp_path / "b")


@pytest.fixture(scope="module")
def llama_module():
    pytest.importorskip("torch")
    from .conftest import cached_export

    return ternc.load(cached_export("llama", False))


@pytest.fixture(scope="module")
def bitnet_module():
    pytest.importorskip("torch")
    from .conftest import cached_export

    return ternc.load(cached_export("bitnet", False))
