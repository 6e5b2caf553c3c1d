"""sim/calibrate.py: the dataflow model's as-built controller models (sim/dataflow.ctl_*) against the
RTL within 5%: the controllers (hw/ctl_*.py in Amaranth's simulator on the instructions of real
compiled programs) and the composed top (hw/top.py in Verilator: its PERF counters per call). The
stored whole-top table (sim/calibration.json, README, `ternc simulate` report) carries the hash of
the Verilog it was measured on."""

from __future__ import annotations

import json

import pytest

from ternc.sim import calibrate as cal
from ternc.sim import dataflow as df

LIMIT = 0.05


def _stored() -> dict:
    return json.loads(df.Path(df.__file__).with_name("calibration.json").read_text())


def test_controllers_match_the_model_on_a_decode_call():
    """Every instruction of one decode call of tiny-bitnet but the two-pass gated FFN LINEARs (the
    slow test has them) on its controller: RTL cycles vs the model within 5%, and per unit."""
    from ternc.backends.fpga.isa import Epilogue

    rows = cal.measure_calls("tiny-bitnet", decode_only=True, log=lambda *_: None,
                             select=lambda i: i.epilogue not in (Epilogue.GATE_SILU, Epilogue.GATE_RELU2))["instructions"]
    assert {r["op"] for r in rows} == {"EMBED", "RMSNORM", "LINEAR", "ROPE", "KV_APPEND", "ATTN"}
    for r in rows:
        assert abs(r["error"]) <= LIMIT, r
    for u in cal.per_unit(rows):
        assert abs(u["error"]) <= LIMIT, u


def test_models_follow_the_controllers_own_formulas():
    """The dataflow's as-built functions equal the controllers' documented cycle models (LinearCtl's
    recurrence, KvAppendCtl's formula, PrefillAttnCtl's) on shapes the RTL runs never hit (several
    weight groups, quantized groups, long contexts), so a controller change that updates its formula
    shows up here."""
    from ternc.hw.ctl_attn import PrefillAttnCtl
    from ternc.hw.ctl_kv import cycle_model as kv_model
    from ternc.hw.ctl_linear import cycle_model as lin_model

    for depth in (4096, 64, 120):
        cfg = df.SimConfig(group=3, tables=4, columns=8, wbuf_depth=depth)
        for k, nn, n, ep in ((168, 84, 1, 0), (168, 336, 5, 4), (336, 168, 3, 1), (96, 64, 2, 3)):
            passes = 2 if ep in (3, 4) else 1
            for lat in (4, 50):
                assert df.ctl_linear(cfg, k, nn, n, passes, lat) == lin_model(k, nn, n, ep, 3, 4, 8, depth, lat)
    for q, values in (((4, 6, 2, 0), False), ((8, 7, 0, 1), True), ((2, 32, 32, 4), True)):
        assert df.ctl_kv_append(1, 45, 5, 64, q, values, 50) == kv_model(1, 45, 5, 64, q, values, 50)
    from ternc.hw.ctl_rope import RopeCtl

    r = RopeCtl(4096, 64)
    for heads, n in ((16, 1), (16, 64), (4, 5)):
        assert df.ctl_rope(df.SimConfig(), heads, 64, n, 4) == r.cycles(heads, 64, n)
    p = PrefillAttnCtl(64, 4, 1024, block=4)
    for hq, n, pos in ((16, 64, 0), (4, 7, 100), (8, 2, 0)):
        assert df.ctl_prefill_attn(df.SimConfig(attn_lanes=4, attn_block=4), hq, 64, n, pos, True, 4) == \
            p.cycles(hq, n, pos)


def test_stored_top_table_within_5_percent_for_this_verilog():
    """The recorded whole-top runs (three tiny configurations, prefill + decode): every counter within
    5% of the model as it computes today. The rows count only while the Verilog the top generates for
    each configuration is the one they were measured on (sha256 recorded); otherwise re-run
    `python -m ternc.sim.calibrate --skip-units --skip-controllers --top full`."""
    top = _stored().get("top")
    if top is None:
        pytest.skip("no whole-top calibration recorded")
    assert {r["config"] for r in top["rows"]} == set(cal.CONFIGS)
    stale = []
    for run in top["runs"]:
        if cal.top_source_digest(run["accelerator"]["config"]) != run["verilog_source_digest"]:
            stale.append(run["config"])
    if stale:
        pytest.skip(f"the top's Verilog changed since the recorded runs of {stale}: re-run the calibration")
    now = cal.top_model_rows(top)
    for r, m in zip(top["rows"], now):
        assert (r["config"], r["call"], r["counter"]) == (m["config"], m["call"], m["counter"])
        assert abs((m["model"] - r["rtl"]) / r["rtl"]) <= LIMIT, (r, m)


@pytest.mark.slow
def test_controller_calibration_all_configurations():
    """Every instruction of the prefill and decode calls of the three configurations, per unit."""
    got = cal.run_controllers(log=lambda *_: None)
    for r in got["per_unit"] + got["instructions"]:
        assert abs(r["error"]) <= LIMIT, r


@pytest.mark.slow
def test_top_calibration_rerun():
    """The composed top in Verilator on the three configurations (token-exact) vs the model."""
    got = cal.run_top(log=lambda *_: None)
    for r in got["rows"]:
        assert abs(r["error"]) <= LIMIT, r
