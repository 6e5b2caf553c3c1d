"""Run and time an artifact on a remote board over TVM RPC (`tvm.rpc`: tracker + server).

`connect(addr, key)`: with a key, `addr` is a tracker and the session comes from a server
registered under that key; without one, `addr` is a server. Every wait is bounded: the TCP
connect, the wait for a server to register with the tracker, the tracker's answer, and the
session itself (`session_timeout`: the server ends it after that many seconds).
`remote_runner` uploads the library, copies the weights to the remote device once, and runs
entries there (`ternc.generate` drives it like a local artifact); `bench_artifact` times prefill and
one decode step with TVM's `time_evaluator` on the (remote) device.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import numpy as np

from ..artifact import ArtifactError, read_manifest


class RemoteError(RuntimeError):
    pass


def parse_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise RemoteError(f"--remote expects HOST:PORT, got {addr!r}")
    return host, int(port)


def _reachable(host: str, port: int, what: str, timeout: float) -> None:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        raise RemoteError(f"cannot reach the {what} at {host}:{port} ({e}); is it running and reachable from here?") \
            from None


def _bounded(fn, seconds: float, what: str):
    """Run a blocking tvm.rpc call with a deadline (a daemon thread: tvm's socket calls have none)."""
    box: dict = {}

    def call():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001  (re-raised in the caller's thread)
            box["error"] = e

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        raise RemoteError(f"{what}: no answer within {seconds:.0f}s")
    if "error" in box:
        raise RemoteError(f"{what}: {box['error']}") from box["error"]
    return box["value"]


def tracker_keys(summary: dict) -> dict[str, int]:
    """{key: free servers} from a tracker summary."""
    return {k: int(v.get("free", 0)) for k, v in (summary.get("queue_info") or {}).items()}


def connect(addr: str, key: str | None = None, timeout: float = 60.0, session_timeout: float = 600.0):
    """An RPC session on the remote board (see the module docstring for what is bounded)."""
    from tvm import rpc

    host, port = parse_addr(addr)
    if key is None:
        _reachable(host, port, "RPC server", min(timeout, 10.0))
        return _bounded(lambda: rpc.connect(host, port, session_timeout=session_timeout), timeout,
                        f"RPC server {host}:{port}")
    _reachable(host, port, "RPC tracker", min(timeout, 10.0))
    tracker = _bounded(lambda: rpc.connect_tracker(host, port), timeout, f"RPC tracker {host}:{port}")
    deadline = time.monotonic() + timeout
    while True:
        keys = tracker_keys(_bounded(tracker.summary, timeout, f"RPC tracker {host}:{port} summary"))
        if keys.get(key, 0) > 0:
            break
        if time.monotonic() > deadline:
            seen = ", ".join(f"{k!r} ({n} free)" for k, n in sorted(keys.items())) or "none"
            raise RemoteError(f"no RPC server registered with the tracker at {host}:{port} under key {key!r} within "
                              f"{timeout:.0f}s (keys registered: {seen}). On the board run: python3 run.py "
                              f"--rpc-server --tracker {host}:{port} --key {key}")
        time.sleep(0.5)
    left = max(deadline - time.monotonic(), 5.0)
    return _bounded(lambda: tracker.request(key, session_timeout=session_timeout, max_retry=1), left,
                    f"session for key {key!r} from tracker {host}:{port}")


def remote_runner(artifact: str | Path, session):
    """The artifact's Runner (`.meta`, `.run`) executing on the RPC session's device."""
    from ..tvm.runtime import TVMRunner

    try:
        manifest = read_manifest(artifact)
    except ArtifactError as e:
        raise RemoteError(str(e)) from e
    return TVMRunner(Path(artifact), manifest, session=session)


def _device_args(runner, entry: str, inputs: dict) -> list:
    """`entry`'s arguments on the runner's device (inputs, then weights), for time_evaluator."""
    import tvm

    from ..tvm.runtime import DeviceTensor

    sig = runner.entries[entry]
    out = []
    for spec in sig["inputs"]:
        a = inputs[spec["name"]]
        out.append(a.tensor if isinstance(a, DeviceTensor) else
                   tvm.runtime.tensor(np.ascontiguousarray(np.asarray(a).astype(spec["dtype"])), runner.device))
    return out + [runner.weights[w] for w in sig["weights"]]


def vocab_size(runner) -> int:
    """The logits width, from one single-token prefill (signatures leave output shapes symbolic)."""
    dec = runner.meta["decoder"]
    return int(np.asarray(runner.run(dec["prefill"], {dec["input_ids"]: np.array([[0]], np.int64)})[dec["logits"]]).shape[-1])


def bench_artifact(runner, prompt_len: int, number: int = 3, repeat: int = 3) -> dict:
    """Prefill of a `prompt_len`-token prompt and one decode step after it, timed where the runner's device is (the
    remote board for an RPC runner) by TVM's time_evaluator: mean of `number` calls, best of
    `repeat`; network time excluded."""
    from ...ir.decoder import DecoderSpec, decode_feeds

    dec = DecoderSpec.from_meta(runner.meta["decoder"])
    vocab = vocab_size(runner)
    prompt = [(7 * i + 3) % vocab for i in range(prompt_len)]
    ids = np.array([prompt], np.int64)
    res = runner.run(dec.prefill, {dec.input_ids: ids})

    def timed(entry, inputs):
        runner.vm.save_function(entry, f"{entry}_timed", *_device_args(runner, entry, inputs))
        r = runner.vm.time_evaluator(f"{entry}_timed", runner.device, number=number, repeat=repeat)()
        return min(r.results)

    t_prefill = timed(dec.prefill, {dec.input_ids: ids})
    nxt = np.array([[int(np.argmax(np.asarray(res[dec.logits])[0, -1]))]], np.int64)
    t_decode = timed(dec.decode, decode_feeds(dec, res, nxt))
    return {"device": str(runner.device), "prompt_tokens": len(prompt), "prefill_s": t_prefill,
            "prefill_tok_s": len(prompt) / t_prefill, "decode_step_s": t_decode, "decode_tok_s": 1.0 / t_decode,
            "decode_past_tokens": len(prompt), "number": number, "repeat": repeat,
            "timer": "tvm time_evaluator on the runner's device"}
