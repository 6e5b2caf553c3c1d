"""`ternc run/bench --remote`: an artifact run through a TVM RPC tracker + server on loopback
(127.0.0.1 only), and the clear, bounded errors when the tracker or a server is missing."""

from __future__ import annotations

import sys
import time

import pytest

import ternc
from ternc.backends.deploy import remote as R

from .conftest import free_port, start, stop, wait_port


@pytest.fixture
def server(tracker, tmp_path):
    """A host RPC server (TVM runtime only) registered with the tracker under key 'ternc-test'."""
    port = free_port()
    log = tmp_path / "server.log"
    proc = start([sys.executable, "-m", "tvm.exec.rpc_server", "--tracker", f"127.0.0.1:{tracker}", "--key",
                  "ternc-test", "--host", "127.0.0.1", "--port", str(port), "--port-end", str(port + 1)], log,
                 env={"TVM_USE_RUNTIME_LIB": "1"})
    try:
        wait_port(port, proc, log)
        yield tracker
    finally:
        stop(proc)


def test_generate_and_bench_through_tracker(server, cpu_artifact, default_module):
    session = R.connect(f"127.0.0.1:{server}", "ternc-test", timeout=120)
    runner = R.remote_runner(cpu_artifact, session)
    assert "remote" in str(runner.device)
    prompt = [3, 17, 42, 99, 5, 64, 1]
    assert ternc.generate(runner, [prompt], 8).tolist() == ternc.generate(default_module, [prompt], 8).tolist()
    r = R.bench_artifact(runner, 8, number=1, repeat=1)
    assert r["prefill_s"] > 0 and r["decode_step_s"] > 0 and "remote" in r["device"]


def test_unregistered_key_is_a_bounded_clear_error(tracker):
    t0 = time.monotonic()
    with pytest.raises(R.RemoteError, match="no RPC server registered .* under key 'nobody' within 2s.*--rpc-server"):
        R.connect(f"127.0.0.1:{tracker}", "nobody", timeout=2)
    assert time.monotonic() - t0 < 30


def test_nothing_listening_is_a_clear_error():
    port = free_port()
    with pytest.raises(R.RemoteError, match=f"cannot reach the RPC tracker at 127.0.0.1:{port}"):
        R.connect(f"127.0.0.1:{port}", "k", timeout=2)
    with pytest.raises(R.RemoteError, match=f"cannot reach the RPC server at 127.0.0.1:{port}"):
        R.connect(f"127.0.0.1:{port}", None, timeout=2)
    with pytest.raises(R.RemoteError, match="HOST:PORT"):
        R.connect("localhost", None)


def test_cli_remote_error_exit(cpu_artifact):
    import subprocess

    port = free_port()
    r = subprocess.run([sys.executable, "-m", "ternc.cli", "run", str(cpu_artifact), "--remote", f"127.0.0.1:{port}",
                        "--key", "k", "--timeout", "2", "--prompt-ids", "1,2"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 1 and f"cannot reach the RPC tracker at 127.0.0.1:{port}" in r.stderr
