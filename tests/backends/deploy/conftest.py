"""Shared: a bundle of the default model for a board (built by `driver.deploy_to`, the `ternc
deploy` flow), skipping cleanly when PyPI (for the board's runtime wheels) or the cross compiler
is unavailable."""

from __future__ import annotations

import shutil

import pytest

pytest.importorskip("tvm")


def make_bundle(onnx_export, tmp_path_factory, board: str, **kw):
    from ternc.backends.deploy.wheels import WheelError
    from ternc.backends.tvm.build import AARCH64_CC
    from ternc.deploy import deploy_to

    if shutil.which(AARCH64_CC) is None:
        pytest.skip(f"{AARCH64_CC} not installed (apt-get install gcc-aarch64-linux-gnu)")
    out = tmp_path_factory.mktemp(f"bundle-{board}") / "bundle"
    try:
        deploy_to(str(onnx_export("tiny-bitnet", False)), board, str(out), log=lambda m: None, **kw)
    except WheelError as e:
        pytest.skip(f"runtime wheels for {board} unavailable (PyPI unreachable?): {str(e)[:200]}")
    return out


def golden_tokens(bundle):
    import json

    return json.loads((bundle / "golden" / "golden.json").read_text())


@pytest.fixture(scope="session")
def default_module(onnx_export):
    """The default model through the cpu pipeline (the module artifacts are built from)."""
    import ternc

    return ternc.compile(onnx_export("tiny-bitnet", False), target="cpu", context=64).module


@pytest.fixture(scope="session")
def cpu_artifact(default_module, tmp_path_factory):
    from ternc.backends.tvm import build_artifact

    return build_artifact(default_module, "cpu", tmp_path_factory.mktemp("art") / "cpu", pipeline="test").path


def start(cmd, log, env=None):
    """A background process in its own session (killed as a group by `stop`)."""
    import os
    import subprocess

    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **(env or {})})


def stop(proc):
    import os
    import signal

    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc, log, seconds: float = 120.0) -> None:
    import socket
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}): {open(log).read()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {seconds}s: {open(log).read()[-2000:]}")


@pytest.fixture
def tracker(tmp_path):
    """A TVM RPC tracker on loopback: (port, process)."""
    import sys

    port = free_port()
    log = tmp_path / "tracker.log"
    proc = start([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port),
                  "--port-end", str(port + 1)], log)
    try:
        wait_port(port, proc, log)
        yield port
    finally:
        stop(proc)
