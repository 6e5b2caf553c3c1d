"""`ternc deploy`: bundle contents, checksums, refusals, archives; the jetson-orin bundle's binaries."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from ternc.backends.deploy import bundle as B

from .conftest import make_bundle

REPO = Path(B.__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def a64_bundle(onnx_export, tmp_path_factory):
    return make_bundle(onnx_export, tmp_path_factory, "aarch64-linux", tar=True)


def test_aarch64_bundle_contents(a64_bundle):
    meta = json.loads((a64_bundle / "bundle.json").read_text())
    on_disk = {p.relative_to(a64_bundle).as_posix() for p in a64_bundle.rglob("*") if p.is_file()}
    assert on_disk - {"bundle.json"} == set(meta["files"])
    for rel, info in meta["files"].items():
        assert B.sha256_file(a64_bundle / rel) == info["sha256"], rel
    assert (a64_bundle / "run.py").read_bytes() == B.RUNNER.read_bytes()
    for rel in B.ternc_runtime_files():  # ternc's runtime modules, verbatim; packages with empty markers
        assert (a64_bundle / "ternc" / rel).read_bytes() == (B.TERNC_ROOT / rel).read_bytes(), rel
    assert "backends/tvm/runtime.py" in B.ternc_runtime_files()
    assert (a64_bundle / "ternc/__init__.py").read_bytes() == b""
    # runtime only, for the board: no compiler library, aarch64 ELF code, the board's CPython ABI
    assert not any("libtvm_compiler" in f or f.startswith("tvm/3rdparty") for f in meta["files"])
    assert B.elf_arch(a64_bundle / "tvm/lib/libtvm_runtime.so") == "aarch64"
    assert B.elf_arch(a64_bundle / "artifact/lib/model.so") == "aarch64"
    assert (a64_bundle / "tvm_ffi/core.cpython-311-aarch64-linux-gnu.so").exists()
    assert not (a64_bundle / "tvm/lib/libtvm_runtime_cuda.so").exists()
    assert {w["package"] for w in meta["wheels"]} == {"apache-tvm", "apache-tvm-ffi", "typing_extensions"}
    assert meta["board"]["python"] == "3.11" and meta["artifact_target"]["name"] == "aarch64"
    rt_mb = sum(f["bytes"] for k, f in meta["files"].items() if B.is_runtime_file(k)) / 1e6
    assert rt_mb < 40, rt_mb
    g = json.loads((a64_bundle / "golden/golden.json").read_text())
    assert len(g["prompts"]) == len(g["tokens"]) == 3 and all(len(t) == len(p) + g["n_new"]
                                                               for p, t in zip(g["prompts"], g["tokens"]))


def _run_py(bundle, *args):
    return subprocess.run([sys.executable, str(bundle / "run.py"), *args], capture_output=True, text=True, timeout=300)


def test_run_py_refuses_another_machine_and_tampering(a64_bundle, tmp_path):
    r = _run_py(a64_bundle, "--verify")  # checksums pass, then the architecture check refuses x86_64
    assert r.returncode == 2 and "bundle for board aarch64-linux (aarch64), but this machine is" in r.stderr
    bad = tmp_path / "bad"
    shutil.copytree(a64_bundle, bad)
    w = bad / "artifact" / "weights.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 1
    w.write_bytes(bytes(data))
    (bad / "golden" / "prefill_logits.npy").unlink()
    r = _run_py(bad, "--verify")
    assert r.returncode == 2
    assert "checksum mismatch for artifact/weights.safetensors" in r.stderr
    assert "missing golden/prefill_logits.npy" in r.stderr


def test_tar_archive_is_the_bundle_and_deterministic(a64_bundle, tmp_path):
    tar = a64_bundle.with_name(a64_bundle.name + ".tar.gz")
    with tarfile.open(tar) as tf:
        names = {m.name for m in tf.getmembers() if m.isfile()}
        assert all(m.mtime == 0 for m in tf.getmembers())
    meta = json.loads((a64_bundle / "bundle.json").read_text())
    assert names == {f"bundle/{f}" for f in [*meta["files"], "bundle.json"]}
    again = tmp_path / "again.tar.gz"
    B._tar_gz(a64_bundle, again)
    assert again.read_bytes() == tar.read_bytes()


def test_refusals_leave_the_output_alone(a64_bundle, cpu_artifact, tmp_path):
    from ternc.backends.deploy.boards import BOARDS

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(B.DeployError, match="compiled for target 'cpu'"):
        B.build_bundle(cpu_artifact, BOARDS["aarch64-linux"], mine, golden=None)
    with pytest.raises(B.DeployError, match="exists and is not a ternc bundle"):
        B.build_bundle(a64_bundle / "artifact", BOARDS["aarch64-linux"], mine, golden=None)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_fatbin_parser_rejects_garbage():
    with pytest.raises(B.DeployError, match="not an nvcc fatbin"):
        B.fatbin_archs(b"\x7fELF" + bytes(60))


@pytest.mark.slow
def test_jetson_orin_bundle_has_sm87_fatbins_and_aarch64_host_code(onnx_export, tmp_path_factory):
    if shutil.which("nvcc") is None and not Path("/usr/local/cuda/bin/nvcc").exists():
        pytest.skip("nvcc not installed")
    bundle = make_bundle(onnx_export, tmp_path_factory, "jetson-orin")
    meta = json.loads((bundle / "bundle.json").read_text())
    t = meta["artifact_target"]
    assert (t["name"], t["arch"], t["cuda_arch"]) == ("cuda", "aarch64", "sm_87") and t["nvcc"]
    assert B.elf_arch(bundle / "artifact/lib/model.so") == "aarch64"
    fatbins = sorted((bundle / "artifact/cuda").glob("*.fatbin"))
    assert fatbins and all(("cubin", "sm_87") in B.fatbin_archs(f.read_bytes()) for f in fatbins)
    assert all(sm == "sm_87" for f in fatbins for _, sm in B.fatbin_archs(f.read_bytes()))
    assert B.elf_arch(bundle / "tvm/lib/libtvm_runtime_cuda.so") == "aarch64"
    assert (bundle / "tvm_ffi/core.cpython-310-aarch64-linux-gnu.so").exists()
    assert meta["board"]["python"] == "3.10"
