"""sim/calibrate.py: the dataflow model's as-built controller models (sim/dataflow.ctl_*) against the
controllers' RTL (hw/ctl_*.py in Amaranth's simulator on real compiled programs), per instruction and
per unit and call, within 5%; the stored table (sim/calibration.json, README, `ternc simulate`
report) is what the RTL measures today."""

from __future__ import annotations

import json

import pytest

from ternc.sim import calibrate as cal
from ternc.sim import dataflow as df

LIMIT = 0.05


def _stored() -> dict:
    return json.loads(df.Path(df.__file__).with_name("calibration.json").read_text())


def test_stored_controller_table_is_within_5_percent():
    ctl = _stored()["controllers"]
    assert {r["config"] for r in ctl["per_unit"]} == set(cal.CONFIGS)
    assert {r["unit"] for r in ctl["per_unit"]} == {"linear", "norm", "attn", "dma"}
    for r in ctl["per_unit"] + ctl["instructions"]:
        assert abs(r["error"]) <= LIMIT, r


def test_decode_call_of_the_default_model_remeasured():
    """The instructions of one decode call of tiny-bitnet (all but the two-pass gated FFN LINEARs, which
    the slow test covers): the RTL cycles and the model equal the stored rows (so the table is not
    stale) and agree within 5%."""
    from ternc.backends.fpga.isa import Epilogue

    stored = {r["index"]: r for r in _stored()["controllers"]["instructions"]
              if r["config"] == "tiny-bitnet" and r["pos"] > 0}
    rows = cal.measure_calls("tiny-bitnet", decode_only=True, log=lambda *_: None,
                             select=lambda i: i.epilogue not in (Epilogue.GATE_SILU, Epilogue.GATE_RELU2))["instructions"]
    assert {r["op"] for r in rows} == {"EMBED", "RMSNORM", "LINEAR", "ROPE", "KV_APPEND", "ATTN"}
    for r in rows:
        s = stored[r["index"]]
        assert (r["op"], r["rtl"], r["model"]) == (s["op"], s["rtl"], s["model"]), (r, s)
        assert abs(r["error"]) <= LIMIT, r
    for u in cal.per_unit(rows):
        assert abs(u["error"]) <= LIMIT, u


def test_models_follow_the_controllers_own_formulas():
    """The dataflow's as-built functions equal the controllers' documented cycle models (LinearCtl's
    recurrence, KvAppendCtl's formula) on shapes the RTL runs never hit (several weight groups,
    quantized groups), so a controller change that updates its formula shows up here."""
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


@pytest.mark.slow
def test_controller_calibration_all_configurations():
    """Re-measure the three configurations (prefill + decode): the stored per-unit table reproduces."""
    got = cal.run_controllers(log=lambda *_: None)
    stored = {(r["config"], r["call"], r["unit"]): r for r in _stored()["controllers"]["per_unit"]}
    for r in got["per_unit"]:
        assert abs(r["error"]) <= LIMIT, r
        assert stored[(r["config"], r["call"], r["unit"])]["rtl"] == r["rtl"]
