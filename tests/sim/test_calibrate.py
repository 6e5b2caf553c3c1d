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
    """Every instruction of one decode call of tiny-bitnet: the RTL cycles and the model equal the
    stored rows (so the table is not stale) and agree within 5%."""
    stored = {r["index"]: r for r in _stored()["controllers"]["instructions"]
              if r["config"] == "tiny-bitnet" and r["pos"] > 0}
    rows = [r for r in cal.measure_calls("tiny-bitnet", decode_only=True, log=lambda *_: None)["instructions"]]
    assert {r["op"] for r in rows} == {"EMBED", "RMSNORM", "LINEAR", "ROPE", "KV_APPEND", "ATTN"}
    for r in rows:
        s = stored[r["index"]]
        assert (r["op"], r["rtl"], r["model"]) == (s["op"], s["rtl"], s["model"]), (r, s)
        assert abs(r["error"]) <= LIMIT, r
    for u in cal.per_unit(rows):
        assert abs(u["error"]) <= LIMIT, u


@pytest.mark.slow
def test_controller_calibration_all_configurations():
    """Re-measure the three configurations (prefill + decode): the stored per-unit table reproduces."""
    got = cal.run_controllers(log=lambda *_: None)
    stored = {(r["config"], r["call"], r["unit"]): r for r in _stored()["controllers"]["per_unit"]}
    for r in got["per_unit"]:
        assert abs(r["error"]) <= LIMIT, r
        assert stored[(r["config"], r["call"], r["unit"])]["rtl"] == r["rtl"]
