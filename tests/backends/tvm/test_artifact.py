"""Artifacts: build, verify, and run with the TVM runtime only (no compiler library)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

import ternc  # noqa: E402
from ternc.backends import artifact as A  # noqa: E402
from ternc.backends.tvm import build as B  # noqa: E402
from ternc.backends.tvm import runtime as R  # noqa: E402
from ternc.ir.decoder import DecoderSpec, decode_feeds  # noqa: E402

from .conftest import N_NEW  # noqa: E402
from .helpers import ternarize  # noqa: E402


@pytest.fixture(scope="module")
def ternary_model(tiny_bitnet):
    return ternarize(tiny_bitnet, ["tl2", "i2"])


@pytest.fixture(scope="module")
def built_artifact(ternary_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("art") / "bitnet-cpu"
    return B.build_artifact(ternary_model, "cpu", out, pipeline=["ternarize(test helper){format=tl2,i2}"],
                            kernel_policy="auto").path


def test_layout_and_manifest(built_artifact, ternary_model):
    man = json.loads((built_artifact / "manifest.json").read_text())
    assert man["format"] == A.FORMAT and man["format_version"] == A.FORMAT_VERSION
    assert man["ternc_version"] == ternc.__version__ and man["tvm_version"] == tvm.__version__
    assert man["roles"] == {"library": "lib/model.so", "weights": "weights.safetensors"}
    assert man["target"]["name"] == "cpu" and "llvm" in man["target"]["tvm"]
    assert man["pipeline"] == ["ternarize(test helper){format=tl2,i2}"]
    assert set(man["entries"]) == {"prefill", "decode"}
    assert man["entries"]["decode"]["inputs"][0]["name"] == "input_ids"
    assert man["model"]["meta"]["decoder"] == dict(ternary_model.meta)["decoder"]
    assert set(man["files"]) == {"lib/model.so", "weights.safetensors"}
    for rel, info in man["files"].items():
        assert A.sha256_file(built_artifact / rel) == info["sha256"]
    # kernel choice recorded per weight shape (decode: 1 token, prefill: 32 tokens); the timings that
    # decided it are in the unhashed report.json, not in the manifest (deterministic builds)
    choices = man["kernels"]["choices"]
    assert choices and {c["format"] for c in choices} == {"tl2", "i2"} and {c["m"] for c in choices} == {1, 32}
    assert all(set(c) == {"format", "k", "n", "m", "kind"} for c in choices)
    assert "created_unix" not in man and "compile_seconds" not in man
    from ternc.backends.tvm.build import make_target
    from ternc.backends.tvm.kernels import target_has_vnni

    i2_kinds = {"dot", "dot16"} | ({"vnni"} if target_has_vnni(make_target("cpu")) else set())  # AVX-512 VNNI host
    report = A.read_report(built_artifact)
    assert report["compile_seconds"] > 0 and "report.json" not in man["files"]
    chosen = {(c["format"], c["k"], c["n"], c["m"]): c["kind"] for c in choices}
    for c in report["kernel_timings"]:
        assert c["timings_us"][c["chosen"]] == min(c["timings_us"].values())  # ties survive rounding
        assert set(c["timings_us"]) == ({"dot", "dot16", "lut"} if c["format"] == "tl2" else i2_kinds)
        assert chosen[(c["format"], c["k"], c["n"], c["m"])] == c["chosen"]
    # weights: safetensors only, nothing pickled
    from safetensors.numpy import load_file

    w = load_file(str(built_artifact / "weights.safetensors"))
    for name in man["weights"]:
        np.testing.assert_array_equal(w[name], ternary_model.constants[name].data)
    assert not list(built_artifact.parent.glob(".bitnet-cpu.*"))


def test_runtime_only_subprocess_generates_interpreter_tokens(built_artifact, ternary_model, prompt, tmp_path):
    """Load the artifact in a fresh process with a copy of the tvm package that has no
    libtvm_compiler.so at all, and TVM_USE_RUNTIME_LIB=1; tokens must equal the interpreter's."""
    ref = ternc.generate(ternary_model, prompt, N_NEW)
    rt = R.bundle_runtime(tmp_path / "rt", with_ffi=False)
    assert not (rt / "tvm" / "lib" / "libtvm_compiler.so").exists()
    np.save(tmp_path / "prompt.npy", prompt)
    script = textwrap.dedent(f"""
        import os, sys, json
        import numpy as np
        assert "tvm" not in sys.modules
        import ternc
        runner = ternc.load_artifact({str(built_artifact)!r})
        import tvm
        assert tvm.__file__.startswith({str(rt)!r}), tvm.__file__
        assert os.environ.get("TVM_USE_RUNTIME_LIB") is None  # loading does not leak it to the caller
        toks = ternc.generate(runner, np.load({str(tmp_path / 'prompt.npy')!r}), {N_NEW})
        maps = open("/proc/self/maps").read()
        libs = sorted({{l.split()[-1].rsplit("/", 1)[-1] for l in maps.splitlines() if "libtvm" in l}})
        print(json.dumps({{"tokens": toks.tolist(), "libs": libs}}))
    """)
    env = dict(os.environ, PYTHONPATH=str(rt) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TVM_USE_RUNTIME_LIB", None)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert "libtvm_runtime.so" in res["libs"]
    assert not any("compiler" in lib for lib in res["libs"]), res["libs"]
    np.testing.assert_array_equal(np.array(res["tokens"]), ref)


def test_load_in_process_matches_interpreter_logits(built_artifact, ternary_model, prompt):
    runner = ternc.load_artifact(built_artifact)
    dec = DecoderSpec.of(ternary_model)
    ref = ternc.interpret(ternary_model, {"input_ids": prompt}, "prefill")["logits"]
    got = runner.run("prefill", {"input_ids": prompt})["logits"]
    assert np.max(np.abs(got - ref)) <= 1e-4 * np.max(np.abs(ref))
    with pytest.raises(ValueError, match="missing inputs"):
        runner.run("decode", {dec.input_ids: prompt})
    with pytest.raises(KeyError, match="no entry 'main'"):
        runner.run("main", {})


def test_kv_cache_stays_on_the_device_between_steps(built_artifact, ternary_model, prompt):
    """present KV outputs come back as DeviceTensor (no host copy per token) and feed the next step;
    the step's logits still equal the interpreter's."""
    from ternc.backends.tvm.runtime import DeviceTensor

    runner = ternc.load_artifact(built_artifact)
    dec = DecoderSpec.of(ternary_model)
    res = runner.run("prefill", {"input_ids": prompt})
    ref = ternc.interpret(ternary_model, {"input_ids": prompt}, "prefill")
    for ok, ov in dec.present:
        assert isinstance(res[ok], DeviceTensor) and isinstance(res[ov], DeviceTensor)
        np.testing.assert_allclose(np.asarray(res[ok]), ref[ok], rtol=1e-4, atol=1e-5)
    assert isinstance(res["logits"], np.ndarray)
    nxt = np.array([[int(np.argmax(ref["logits"][0, -1]))]])
    got = runner.run("decode", decode_feeds(dec, res, nxt))["logits"]
    want = ternc.interpret(ternary_model, decode_feeds(dec, ref, nxt), "decode")["logits"]
    assert np.max(np.abs(got - want)) <= 1e-4 * np.max(np.abs(want))


@pytest.fixture
def art_copy(built_artifact, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(built_artifact, dst)
    return dst


def test_checksum_mismatch_names_the_file(art_copy):
    p = art_copy / "weights.safetensors"
    data = bytearray(p.read_bytes())
    data[-1] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(A.ArtifactError, match=r"checksum mismatch for weights\.safetensors"):
        ternc.load_artifact(art_copy)


def test_missing_file(art_copy):
    (art_copy / "lib" / "model.so").unlink()
    with pytest.raises(A.ArtifactError, match=r"missing file lib/model\.so"):
        ternc.load_artifact(art_copy)


def test_missing_manifest(art_copy):
    (art_copy / "manifest.json").unlink()
    with pytest.raises(A.ArtifactError, match="missing manifest.json"):
        ternc.load_artifact(art_copy)


def test_other_format_version(art_copy):
    mf = art_copy / "manifest.json"
    man = json.loads(mf.read_text())
    man["format_version"] = 99
    man["ternc_version"] = "9.0.0"
    mf.write_text(json.dumps(man))
    with pytest.raises(A.ArtifactError, match=r"format version 99 \(written by ternc 9\.0\.0\).*reads version 2"):
        ternc.load_artifact(art_copy)


def test_other_tvm_version(art_copy):
    mf = art_copy / "manifest.json"
    man = json.loads(mf.read_text())
    man["tvm_version"] = "0.1.0"
    mf.write_text(json.dumps(man))
    with pytest.raises(A.ArtifactError, match=r"compiled with TVM 0\.1\.0"):
        ternc.load_artifact(art_copy)


def test_failed_build_leaves_nothing(tiny_llama, tmp_path, monkeypatch):
    """A failure while writing leaves neither the artifact nor a temp dir; an existing artifact survives."""
    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(B, "compile_module", lambda *a, **k: None)  # fail fast: no need to compile
    monkeypatch.setattr(B, "export", boom)
    out = tmp_path / "art"
    with pytest.raises(RuntimeError, match="disk full"):
        B.build_artifact(tiny_llama, "cpu", out)
    assert list(tmp_path.iterdir()) == []
    out.mkdir()
    (out / "manifest.json").write_text("{}")
    with pytest.raises(RuntimeError, match="disk full"):
        B.build_artifact(tiny_llama, "cpu", out)
    assert (out / "manifest.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_weights_load_without_safetensors_package(built_artifact, monkeypatch):
    """Deployment machines may lack `safetensors`: the runtime's own reader gives the same arrays."""
    from safetensors.numpy import load_file

    ref = load_file(str(built_artifact / "weights.safetensors"))
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)  # import -> ImportError
    got = R.load_safetensors(built_artifact / "weights.safetensors")
    assert set(got) == set(ref)
    for k in ref:
        assert got[k].dtype == ref[k].dtype
        np.testing.assert_array_equal(got[k], ref[k])


def _rehash(art, rel):
    mf = art / "manifest.json"
    man = json.loads(mf.read_text())
    man["files"][rel] = {"sha256": A.sha256_file(art / rel), "bytes": (art / rel).stat().st_size}
    mf.write_text(json.dumps(man))


def test_truncated_weights_with_a_matching_hash(art_copy, monkeypatch):
    """A truncated safetensors file whose manifest entry was re-hashed: an ArtifactError naming the
    file (both with the safetensors package and with the runtime's own reader)."""
    p = art_copy / "weights.safetensors"
    p.write_bytes(p.read_bytes()[:-100])
    _rehash(art_copy, "weights.safetensors")
    with pytest.raises(A.ArtifactError, match=r"weights\.safetensors: not a valid safetensors file"):
        ternc.load_artifact(art_copy)
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    with pytest.raises(A.ArtifactError, match=r"weights\.safetensors: not a valid safetensors file"):
        R.load_safetensors(p)


@pytest.mark.parametrize("edit, msg", [
    (lambda m: m.update(entries=[]), "key 'entries' must be dict, got list"),
    (lambda m: m.pop("weights"), "missing key 'weights'"),
    (lambda m: m["entries"]["decode"].update(inputs=None), r"entries\['decode'\]: key 'inputs' must be list"),
    (lambda m: m["entries"]["decode"]["inputs"][0].update(dtype="float99"), "unknown dtype 'float99'"),
    (lambda m: m["entries"]["decode"]["weights"].append("nope"), "weight 'nope' is not in the manifest's weights"),
    (lambda m: m["roles"].pop("library"), "roles lacks the 'library' file"),
])
def test_tvm_manifest_keys_are_validated(art_copy, edit, msg):
    mf = art_copy / "manifest.json"
    man = json.loads(mf.read_text())
    edit(man)
    mf.write_text(json.dumps(man))
    with pytest.raises(A.ArtifactError, match=msg):
        ternc.load_artifact(art_copy)


def test_cuda_runtime_without_driver_is_a_clear_error(monkeypatch):
    import ctypes

    def no_driver(*a, **k):
        raise OSError("libcuda.so.1: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", no_driver)
    with pytest.raises(R.RunnerError, match="needs an NVIDIA driver"):
        R._load_cuda_runtime()
