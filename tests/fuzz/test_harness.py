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


def test_time_budget_stops_a_long_run_and_reports_the_count(zygote, monkeypatch, tmp_path):
    """TERNC_FUZZ_SECONDS: a 10,000-case run on a shared machine stops when its budget is spent and
    reports how many cases ran (none of them bad), instead of being killed without figures."""
    import json

    from hypothesis import strategies as st

    from .harness import fuzz

    monkeypatch.setenv("TERNC_FUZZ_SECONDS", "3")
    monkeypatch.setenv("TERNC_FUZZ_REPORT", str(tmp_path))
    # a space hypothesis cannot exhaust in 3 s (it stops early on a small one)
    s = fuzz("budget", st.builds(lambda t, i: {"spec": t if i % 2 else f"fold{{bogus={i}}}"},
                                     st.sampled_from(["dce", "cse"]), st.integers(0, 10**9)),
             "pass_spec", 10_000, seed=1, zygote=zygote)
    assert 0 < s["cases"] < 10_000 and s["bad"] == 0
    assert s["stopped"].startswith("time budget of 3 s spent after")
    assert json.loads((tmp_path / "budget.json").read_text())["cases"] == s["cases"]
