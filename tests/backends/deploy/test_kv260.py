"""kv260 bundles: contents, the runner over the model transport (tokens = the IR interpreter's),
corrupt files, transports that are not available, the CMA and .hwh checks of the board transport,
and (slow) the TVM aarch64 LM-head kernel under qemu against numpy."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

CTX = 64


@pytest.fixture(scope="module")
def kv260_art(onnx_export, tmp_path_factory):
    import ternc
    from ternc.backends.fpga.build import build_artifact

    module = ternc.compile(str(onnx_export("tiny-bitnet", False)), target="kv260", context=CTX).module
    return build_artifact(module, tmp_path_factory.mktemp("kv") / "art", context=CTX, rtl=False,
                          pipeline_desc="default:kv260"), module


@pytest.fixture(scope="module")
def kv260_bundle(kv260_art, tmp_path_factory):
    """Python 3.11: the emulated arm64 root's (the board default is PYNQ's 3.10)."""
    import shutil

    from ternc.backends.deploy.wheels import WheelError
    from ternc.backends.tvm.build import AARCH64_CC
    from ternc.deploy import deploy_to

    if shutil.which(AARCH64_CC) is None:
        pytest.skip(f"{AARCH64_CC} not installed")
    out = tmp_path_factory.mktemp("kvb") / "bundle"
    try:
        deploy_to(str(kv260_art[0]), "kv260", str(out), python="3.11", log=lambda m: None)
    except WheelError as e:
        pytest.skip(f"runtime wheels unavailable: {str(e)[:200]}")
    return out


def run_py(bundle, *args, python=sys.executable, timeout=600):
    return subprocess.run([python, str(bundle / "run.py"), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=bundle.parent)


def test_bundle_contents(kv260_bundle, kv260_art):
    from ternc.backends.deploy.bundle import elf_arch

    b = json.loads((kv260_bundle / "bundle.json").read_text())
    assert b["runner"] == "kv260" and b["board"]["name"] == "kv260" and b["transports"] == ["pynq", "model", "rtl"]
    mm = json.loads((kv260_art[0] / "memmap.json").read_text())
    assert b["ddr_window_bytes"] == mm["total_bytes"]
    assert b["bitstream"]["bit"] == "hw/ternc_kv260.bit" and b["bitstream"]["hwh"] == "hw/ternc_kv260.hwh"
    k = b["lm_head_kernel"]
    assert (k["vocab"], k["hidden"]) == np.load(kv260_art[0] / "images/lm_head.npy").shape
    assert elf_arch(kv260_bundle / k["file"]) == "aarch64"
    for f in ("artifact/regmap.json", "artifact/include/ternc_kv260_regs.h", "artifact/program.bin",
              "artifact/memmap.json", "ternc/backends/fpga/driver.py", "hw/BOARD.md", "tvm/lib/libtvm_runtime.so"):
        assert f in b["files"], f
    assert not any(f.startswith(("ternc/hw/", "ternc/backends/tvm/", "ternc/passes/")) for f in b["files"])
    assert "tvm/lib/libtvm_compiler.so" not in b["files"]
    doc = (kv260_bundle / "hw" / "BOARD.md").read_text()
    assert "ternc_kv260.hwh" in doc and "same stem" in doc and f"{mm['total_bytes']:,} bytes" in doc


def test_board_modules_import_without_compiler(kv260_bundle):
    """The bundle's ternc/ (driver, loader, executor, IR numerics) imports with numpy only."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import ternc.backends.fpga.board_runner; "
            "bad = [m for m in ('amaranth', 'tvm', 'onnx', 'torch') if m in sys.modules]; "
            "assert not bad, bad; print(ternc.__file__)")
    r = subprocess.run([sys.executable, "-S", "-c", code, str(kv260_bundle)], capture_output=True, text=True,
                       env={"PYTHONPATH": str(__import__("numpy").__file__).rsplit("/numpy/", 1)[0]})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith(str(kv260_bundle))


def test_verify_and_generate_over_model_transport(kv260_bundle, kv260_art):
    import ternc

    r = run_py(kv260_bundle, "--verify", "--transport", "model")
    assert r.returncode == 0 and "VERIFY PASS" in r.stdout, r.stdout + r.stderr
    assert "kv260 driver over the model transport" in r.stderr
    r = run_py(kv260_bundle, "--prompt-ids", "5,9,200", "-n", "6", "--transport", "model")
    assert r.returncode == 0, r.stderr
    want = ternc.generate(kv260_art[1], [[5, 9, 200]], 6)[0].tolist()
    assert [int(t) for t in r.stdout.strip().split(",")] == want


def test_unavailable_transports_and_bad_input(kv260_bundle):
    r = run_py(kv260_bundle, "--verify", "--transport", "rtl")
    if "no RTL transport" in r.stderr:    # until fpga-top's cocotb transport is in this ternc
        assert r.returncode == 2
    r = run_py(kv260_bundle, "--verify", "--transport", "pynq")
    assert r.returncode == 2 and ("this machine is" in r.stderr or "ternc_kv260.bit" in r.stderr), r.stderr
    r = run_py(kv260_bundle, "--prompt-ids", "1,999", "--transport", "model")
    assert r.returncode == 2 and "outside the vocabulary" in r.stderr, r.stderr


def test_corrupt_file_is_named(kv260_bundle, tmp_path):
    import shutil

    b = tmp_path / "b"
    shutil.copytree(kv260_bundle, b, symlinks=True)
    p = b / "artifact" / "images" / "weights.bin"
    p.chmod(0o644)
    data = bytearray(p.read_bytes())
    data[100] ^= 0x10
    p.write_bytes(bytes(data))
    r = run_py(b, "--verify", "--transport", "model")
    assert r.returncode == 2 and "checksum mismatch for artifact/images/weights.bin" in r.stderr, r.stderr


def test_cma_check_names_bytes(tmp_path):
    from ternc.backends.fpga.driver import DriverError, check_cma, cma_free_bytes

    mi = tmp_path / "meminfo"
    mi.write_text("MemTotal:  4000000 kB\nCmaTotal:  262144 kB\nCmaFree:   131072 kB\n")
    assert cma_free_bytes(str(mi)) == 131072 * 1024
    with pytest.raises(DriverError, match=r"needs 268,435,456 bytes \(256.0 MiB\).*only 134,217,728 bytes"):
        check_cma(256 << 20, str(mi))
    assert check_cma(100 << 20, str(mi)) == 131072 * 1024
    mi.write_text("MemTotal:  4000000 kB\n")
    assert cma_free_bytes(str(mi)) is None and check_cma(1 << 40, str(mi)) is None   # pynq.allocate decides


def test_pynq_transport_needs_bit_and_matching_hwh(tmp_path):
    from ternc.backends.fpga.driver import DriverError, PynqTransport

    with pytest.raises(DriverError, match="no bitstream"):
        PynqTransport(str(tmp_path / "ternc_kv260.bit"), 1 << 20)
    (tmp_path / "ternc_kv260.bit").write_bytes(b"\0" * 16)
    (tmp_path / "other.hwh").write_text("<xml/>")
    with pytest.raises(DriverError, match=r"ternc_kv260.hwh missing.*same name"):
        PynqTransport(str(tmp_path / "ternc_kv260.bit"), 1 << 20)


def test_refuses_tvm_artifact_for_kv260(cpu_artifact, tmp_path):
    from ternc.backends.deploy.bundle import DeployError
    from ternc.deploy import deploy_to

    with pytest.raises(DeployError, match="compiled for target 'cpu'.*kv260"):
        deploy_to(str(cpu_artifact), "kv260", str(tmp_path / "b"), log=lambda m: None)


def _emulated_python():
    from ternc.backends.deploy.emulate import EmulationUnavailable, python_command

    try:
        return python_command()
    except EmulationUnavailable as e:
        pytest.skip(str(e))


@pytest.mark.slow
def test_lm_head_kernel_under_qemu_equals_numpy(kv260_bundle):
    """The bundled aarch64 TVM kernel, run by the emulated board's Python with the bundled runtime-only
    TVM, against numpy on the artifact's LM-head weight."""
    py = _emulated_python()
    code = ("import sys, numpy as np; sys.path.insert(0, sys.argv[1]); "
            "from ternc.backends.fpga.lm_head import TvmLmHead; "
            "w = np.load(sys.argv[1] + '/artifact/images/lm_head.npy'); "
            "x = np.random.default_rng(0).standard_normal((5, w.shape[1])).astype(np.float32); "
            "y = TvmLmHead(sys.argv[1] + '/lm_head/lm_head.so', w)(x); "
            "ref = x.astype(np.float64) @ w.T.astype(np.float64); "
            "print(float(np.abs(y - ref).max() / np.abs(ref).max()), y.shape)")
    r = subprocess.run([*py, "-c", code, str(kv260_bundle)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    err = float(r.stdout.split()[0])
    assert err < 1e-5, r.stdout


@pytest.mark.slow
def test_verify_under_qemu_with_tvm_lm_head(kv260_bundle):
    py = _emulated_python()
    r = subprocess.run([*py, str(kv260_bundle / "run.py"), "--verify", "--transport", "model", "--lm-head", "tvm"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0 and "VERIFY PASS" in r.stdout, r.stdout + r.stderr[-2000:]
    assert "LM head: tvm kernel" in r.stderr


@pytest.fixture(scope="module")
def kv260_rtl_bundle(kv260_art, tmp_path_factory):
    """An artifact with the composed top's Verilog (small engine 3 x 4 x 8 for the simulator) in a bundle."""
    from ternc.backends.fpga.build import build_artifact
    from ternc.backends.fpga.schedule import EngineConfig
    from ternc.deploy import deploy_to
    from ternc.sim.rtl import have_simulator

    if not have_simulator("verilator"):
        pytest.skip("verilator not installed")
    d = tmp_path_factory.mktemp("kvrtl")
    art = build_artifact(kv260_art[1], d / "art", context=CTX, rtl=True, synth=False, engine=EngineConfig(3, 4, 8))
    out = d / "bundle"
    deploy_to(str(art), "kv260", str(out), log=lambda m: None, lm_head_kernel=False)
    return out


@pytest.mark.slow
def test_rtl_transport_runs_the_bundles_driver_on_the_top(kv260_rtl_bundle, kv260_art):
    """`run.py --transport rtl`: the bundle's own driver (its ternc/ copy) drives the composed top in
    Verilator through cocotb; the full program's tokens equal the interpreter's (after the kv260
    pipeline), and the EMBED + host-LM-head plumbing program's equal the functional executor's."""
    import os

    import ternc
    from ternc.backends.fpga.board_runner import embed_only_program
    from ternc.backends.fpga.executor import Executor
    from ternc.backends.fpga.runtime import load_artifact

    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}

    def rtl(*args):
        r = subprocess.run([sys.executable, str(kv260_rtl_bundle / "run.py"), "--transport", "rtl", *args],
                           capture_output=True, text=True, timeout=3600, env=env)
        assert r.returncode == 0, r.stderr[-3000:]
        assert f"driven by {kv260_rtl_bundle / 'ternc' / 'backends' / 'fpga' / 'driver.py'}" in r.stderr
        return [int(t) for t in r.stdout.strip().split(",")]

    assert rtl("--prompt-ids", "1,2", "-n", "2") == ternc.generate(kv260_art[1], [[1, 2]], 2)[0].tolist()
    art = load_artifact(kv260_rtl_bundle / "artifact")
    ex = Executor(embed_only_program(art), art.memmap, art.consts, art.weights, art.lm_head, art.engine, art.context)
    want = [int(t) for t in ex.generate([3, 17, 42], 3)[0][0]]
    assert rtl("--prompt-ids", "3,17,42", "-n", "3", "--rtl-program", "embed") == want
