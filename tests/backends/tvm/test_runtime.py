"""The artifact runner's input validation, thread safety and environment hygiene (issue 14, items 1-3, 10)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

import ternc  # noqa: E402
from ternc.backends import artifact as A  # noqa: E402
from ternc.backends.tvm.runtime import RunnerInputError  # noqa: E402

CONTEXT = 48


@pytest.fixture(scope="module")
def art(onnx_export, tmp_path_factory):
    out = tmp_path_factory.mktemp("rt") / "llama-cpu"
    r = subprocess.run([sys.executable, "-m", "ternc.cli", "compile", str(onnx_export("llama", False)), "--target",
                        "cpu", "--context", str(CONTEXT), "-o", str(out)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def runner(art):
    return ternc.load_artifact(art)


def _kv(runner, past: int, fill=0.0):
    dec = runner.meta["decoder"]
    shape = (1, dec["kv_heads"], past, dec["head_dim"])
    return {n: np.full(shape, fill, np.float32) for pair in dec["past"] for n in pair}


def test_vocab_recorded(runner, tiny_llama):
    assert runner.meta["decoder"]["vocab_size"] == 128


@pytest.mark.parametrize("entry", ["prefill", "decode"])
def test_empty_sequence_is_refused(runner, entry):
    feeds = {"input_ids": np.zeros((1, 0), np.int64)}
    if entry == "decode":
        feeds.update(_kv(runner, 2))
    with pytest.raises(RunnerInputError, match="empty"):
        runner.run(entry, feeds)


@pytest.mark.parametrize("bad", [128, 300, 2**40, -1])
def test_out_of_vocabulary_ids_are_refused(runner, bad):
    with pytest.raises(RunnerInputError, match=f"token id {bad} .*vocabulary of 128"):
        runner.run("prefill", {"input_ids": np.array([[1, bad, 2]], np.int64)})


def test_id_dtypes(runner):
    ref = runner.run("prefill", {"input_ids": np.array([[1, 127, 2]], np.int64)})["logits"]
    for dt in (np.uint64, np.int32, np.uint8):  # integer ids that fit are converted, same logits
        got = runner.run("prefill", {"input_ids": np.array([[1, 127, 2]], dt)})["logits"]
        np.testing.assert_array_equal(got, ref)
    with pytest.raises(RunnerInputError, match="outside int64"):
        runner.run("prefill", {"input_ids": np.array([[2**63 + 5]], np.uint64)})
    for arr in (np.array([[True, False]]), np.array([[1.0, 2.0]])):
        with pytest.raises(RunnerInputError, match=f"dtype {arr.dtype}, expected int64"):
            runner.run("prefill", {"input_ids": arr})


def test_context_length(runner):
    runner.run("prefill", {"input_ids": np.ones((1, CONTEXT), np.int64)})
    with pytest.raises(RunnerInputError, match=f"exceed the context of {CONTEXT}"):
        runner.run("prefill", {"input_ids": np.ones((1, CONTEXT + 1), np.int64)})
    with pytest.raises(RunnerInputError, match=f"{CONTEXT} cached \\+ 1 new"):
        runner.run("decode", {"input_ids": np.ones((1, 1), np.int64), **_kv(runner, CONTEXT)})


def test_shape_and_names(runner):
    with pytest.raises(RunnerInputError, match="dim past is 3 elsewhere but 2"):
        kv = _kv(runner, 3)
        kv["past.1.value"] = kv["past.1.value"][:, :, :2]
        runner.run("decode", {"input_ids": np.ones((1, 1), np.int64), **kv})
    with pytest.raises(RunnerInputError, match="unknown inputs \\['x'\\]"):
        runner.run("prefill", {"input_ids": np.ones((1, 1), np.int64), "x": 1})
    with pytest.raises(RunnerInputError, match="non-finite"):
        runner.run("decode", {"input_ids": np.ones((1, 1), np.int64), **_kv(runner, 2, np.nan)})


def test_shared_runner_across_threads(runner):
    """One runner, 4 threads x 3 generates: the VM calls are serialized by the runner's lock, so every
    thread gets the single-threaded tokens (unlocked, this corrupted VM registers or crashed)."""
    prompts = [[3, 17, 42], [5, 9], [100, 1, 2, 3], [7]]
    ref = [ternc.generate(runner, [p], 8) for p in prompts]
    got, errors = {}, []

    def work(i):
        try:
            for k in range(3):
                got[i, k] = ternc.generate(runner, [prompts[i]], 8)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(got) == 12
    for (i, _k), out in got.items():
        np.testing.assert_array_equal(out, ref[i])


def test_load_artifact_leaves_environment_alone(art, onnx_export):
    """TVM_USE_RUNTIME_LIB must not leak to the caller (nor to its children), and a compile in the
    same process afterwards is a clear error, not an AttributeError from tvm."""
    script = textwrap.dedent(f"""
        import contextlib, io, json, os, subprocess, sys
        import ternc
        from ternc.cli import main
        ternc.load_artifact({str(art)!r})
        child = subprocess.run([sys.executable, "-c", "import os; print(os.environ.get('TVM_USE_RUNTIME_LIB'))"],
                               capture_output=True, text=True).stdout.strip()
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = main(["compile", {str(onnx_export("llama", False))!r}, "--target", "cpu", "-o", "/nonexistent/x"])
        print(json.dumps({{"env": os.environ.get("TVM_USE_RUNTIME_LIB"), "child": child, "rc": rc,
                          "err": err.getvalue()}}))
    """)
    env = {k: v for k, v in os.environ.items() if k != "TVM_USE_RUNTIME_LIB"}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["env"] is None and out["child"] == "None"
    assert out["rc"] != 0 and "without its compiler library" in out["err"], out["err"]
