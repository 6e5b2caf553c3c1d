"""The fuzz harness sees what it must report: crashes, hangs, memory, non-ternc exceptions."""

from __future__ import annotations

import os
import time

import numpy as np

from ternc.frontend.onnx_import import FrontendError

from .harness import run_isolated


def _ok(_):
    return None


def _ternc(_):
    raise FrontendError("refused")


def _other(_):
    raise KeyError("raw")


def _abort(_):
    os.abort()


def _hang(_):
    time.sleep(60)


def _alloc(n):
    return int(np.ones(n, np.uint8).sum())


def test_outcomes_are_classified():
    assert run_isolated(_ok, None).kind == "ok"
    assert run_isolated(_ternc, None).kind == "ternc"
    out = run_isolated(_other, None)
    assert out.kind == "other" and "KeyError" in out.detail
    out = run_isolated(_abort, None)
    assert out.kind == "crash" and "SIGABRT" in out.detail
    out = run_isolated(_hang, None, timeout=1)
    assert out.kind == "hang"


def test_memory_is_measured_and_bounded():
    out = run_isolated(_alloc, 200 << 20, memory=100 << 20)
    assert out.kind == "memory" and out.rss_added >= 150 << 20
    out = run_isolated(_alloc, 8 << 30, memory=100 << 20)  # beyond the address-space cap: fails fast
    assert out.kind == "other" and "MemoryError" in out.detail
