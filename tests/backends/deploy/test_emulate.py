"""Proof without a board: the aarch64-linux bundle on an emulated arm64 machine (qemu-user-static +
Debian arm64 python3/numpy from `.ci/setup-arm64-emu`), and an aarch64 RPC server under qemu that
runs a cross-compiled library for `ternc run --remote`."""

from __future__ import annotations

import json
import subprocess

import pytest

import ternc
from ternc.backends.deploy import emulate
from ternc.backends.deploy import remote as R

from .conftest import free_port, make_bundle, start, stop

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def qemu_python():
    try:
        return emulate.python_command()
    except emulate.EmulationUnavailable as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def a64_bundle(qemu_python, onnx_export, tmp_path_factory):
    return make_bundle(onnx_export, tmp_path_factory, "aarch64-linux")


def test_bundle_verifies_under_emulation(qemu_python, a64_bundle, tmp_path):
    r = subprocess.run([*qemu_python, str(a64_bundle / "run.py"), "--verify", "--json", str(tmp_path / "v.json")],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0 and "VERIFY PASS" in r.stdout, r.stdout + r.stderr
    res = json.loads((tmp_path / "v.json").read_text())
    assert res["pass"] and not res["libtvm_compiler_loaded"] and res["prefill_logits_max_rel_err"] < 1e-4


def test_emulated_tokens_equal_the_interpreter(qemu_python, a64_bundle, onnx_export):
    prompt = [5, 9, 200, 31]
    r = subprocess.run([*qemu_python, str(a64_bundle / "run.py"), "--prompt-ids", ",".join(map(str, prompt)),
                        "-n", "12"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    module = ternc.compile(onnx_export("tiny-bitnet", False), target="aarch64").module
    want = ternc.generate(module, [prompt], 12)[0].tolist()
    assert [int(t) for t in r.stdout.strip().split(",")] == want


def test_aarch64_rpc_server_under_qemu(qemu_python, a64_bundle, tracker, tmp_path, onnx_export):
    port = free_port()
    log = tmp_path / "qemu-server.log"
    proc = start([*qemu_python, str(a64_bundle / "run.py"), "--rpc-server", "--tracker", f"127.0.0.1:{tracker}",
                  "--key", "arm64-qemu", "--host", "127.0.0.1", "--port", str(port)], log)
    try:
        session = R.connect(f"127.0.0.1:{tracker}", "arm64-qemu", timeout=300)
        runner = R.remote_runner(a64_bundle / "artifact", session)
        prompt = [3, 17, 42, 99, 5, 64, 1]
        got = ternc.generate(runner, [prompt], 8)[0].tolist()
        golden = json.loads((a64_bundle / "golden/golden.json").read_text())
        assert got == golden["tokens"][0][:len(prompt) + 8]
    finally:
        stop(proc)
