"""Dataflow simulator (sim/dataflow.py): the model of a kv260 artifact's program, its byte accounting
against the artifact, the sweep, the CLI, and the per-unit calibration against the units' RTL."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from ternc.sim import calibrate, dataflow as df, sweep as sw

CTX = 256


@pytest.fixture(scope="module")
def tiny_art(onnx_export, tmp_path_factory):
    import ternc
    from ternc.backends.fpga.build import build_artifact
    from ternc.passes.pipeline import compile
    from ternc.targets import get

    m = compile(ternc.load(str(onnx_export("tiny-bitnet", False))), list(get("kv260").pipeline), report=False)[0]
    return build_artifact(m, tmp_path_factory.mktemp("df") / "tiny", context=CTX, synth=False, rtl=False)


def test_projection_of_the_default_model(tiny_art, tmp_path):
    rep = df.simulate_artifact(tiny_art, tmp_path, plots=True)
    art_rep = json.loads((tiny_art / "report.json").read_text())
    dec = [r for r in rep["decode"] if "tok_s" in r]
    assert [r["context"] for r in dec] == [64, 128, 256]
    # every decode step reads each weight image exactly once, whatever the context
    for r in dec:
        assert r["bytes_per_token"]["weights"] == art_rep["ddr"]["weight_image_bytes"]
    # KV read grows linearly with the context: per layer K and V of every query head's KV head
    m = art_rep["model"]
    kv = [r["bytes_per_token"]["kv"] for r in dec]
    per_key = 2 * m["layers"] * 4 * m["head_dim"] * (m["kv_heads"])   # appended words; reads scale with hq
    assert kv[1] - kv[0] >= 64 * per_key and kv[2] - kv[1] == pytest.approx(2 * (kv[1] - kv[0]))
    assert dec[0]["tok_s"] > dec[1]["tok_s"] > dec[2]["tok_s"]
    pre = [p for p in rep["prefill"] if "ttft_s" in p]
    assert [p["prompt"] for p in pre] == [64, 128] and pre[0]["ttft_s"] < pre[1]["ttft_s"]
    assert rep["prefill"][2]["skipped"]
    for r in dec + pre:
        assert r["bound"] in ("ddr", "linear", "norm", "attn", "dma", "host")
        assert all(0 <= u <= 1 for u in r["utilization"].values())
    for p in ("roofline.png", "timeline.png", "timeline_decode.png", "dataflow.json"):
        assert (tmp_path / p).stat().st_size > 1000
    assert "TTFT" in df.text(rep)


def test_overrides_move_the_right_bound(tiny_art):
    model, _ = df.load(tiny_art)
    base = model.call(1, 200)
    # fewer bytes per KV element: less KV traffic, never slower
    low = df.DataflowModel(model.instrs, replace(model.cfg, kv_bits=4)).call(1, 200)
    assert low.bytes()["kv"] == pytest.approx(base.bytes()["kv"] * 4 / 32, rel=0.05)
    assert low.seconds <= base.seconds
    # the host LM head in int8 reads a quarter of the f32 bytes
    i8 = df.DataflowModel(model.instrs, replace(model.cfg, lm_head="host-int8")).call(1, 200)
    assert i8.bytes()["host_lm_head"] * 4 == base.bytes()["host_lm_head"]
    # a faster clock never lowers tok/s; doubling engines never slows a prefill
    assert df.DataflowModel(model.instrs, replace(model.cfg, clock_mhz=300)).call(64, 0).seconds <= \
        model.call(64, 0).seconds
    assert df.DataflowModel(model.instrs, replace(model.cfg, engines=2)).call(64, 0).accel_cycles <= \
        model.call(64, 0).accel_cycles


def test_layer_scaling_equals_the_full_program(tiny_art):
    model, _ = df.load(tiny_art)
    prog, scale = sw.one_layer(model.instrs)
    assert scale == 2 and len(prog) < len(model.instrs)
    for n, pos in ((1, 100), (32, 0)):
        full = model.call(n, pos)
        one = df.DataflowModel(prog, model.cfg, layer_scale=scale).call(n, pos)
        assert one.accel_cycles == pytest.approx(full.accel_cycles, rel=0.02)
        assert one.bytes()["weights"] == pytest.approx(full.bytes()["weights"])


def test_sweep_front_fits_and_is_pareto(tiny_art):
    model, _ = df.load(tiny_art)
    grid = {"columns": (8, 16, 32), "tables": (28,), "engines": (1, 2), "wbuf_depth": (4096,), "kv_bits": (32, 4),
            "lm_head": ("host", "fabric-int8"), "clock_mhz": (250.0,), "hp_ports": (3, 6), "attn_lanes": (4,),
            "attn_units": (1,)}
    rep = sw.sweep(model.instrs, model.cfg, CTX, grid)
    assert rep["front"] and rep["evaluated"] <= 3 * 2 * 2 * 2 * 2
    budget = rep["budget"]
    for p in rep["front"]:
        assert all(p["resources"][k] <= budget[k] for k in budget)
    # 32 x 28 x 2 engines needs 126 URAM banks: over the K26's 64, so never evaluated
    assert not any(p["config"]["columns"] == 32 and p["config"]["engines"] == 2 for p in rep["front"])
    assert sw.uram_banks(16, 28, 4096) == 32 and sw.uram_banks(32, 28, 4096) == 63   # the yosys figures
    best = sw.buildable(rep["best"])
    assert set(best["build"]) == {"engine", "clock_mhz", "lm_head"}


def test_cli_simulate_and_sweep(tiny_art, tmp_path, capsys):
    from ternc.cli import main

    assert main(["simulate", str(tiny_art), "--out", str(tmp_path / "o"), "--no-plots", "--set", "kv_bits=8"]) == 0
    out = capsys.readouterr().out
    assert "decode tok/s" in out and "KV 8 bits" in out
    assert main(["simulate", str(tiny_art), "--set", "bogus=1"]) == 2
    assert main(["simulate", str(tmp_path), "--out", str(tmp_path / "x")]) == 2   # not an artifact


# ------------------------------------------------------------------ calibration against the RTL
def _check(rows):
    for r in rows:
        assert abs(r["error"]) <= 0.05, r


def test_calibration_one_case_per_unit():
    """The unit models agree with the RTL (Amaranth simulator, full rate) within 5%, and the stored
    table (README, `ternc simulate` report) is what the RTL measures today."""
    stored = {(r["unit"], r["config"]): r for r in json.loads(
        (df.Path(df.__file__).with_name("calibration.json")).read_text())["rows"]}
    rows = []
    for name, (cases, meas, model, fmt) in calibrate.UNITS.items():
        case = cases[0]
        rtl, mod = meas(*case), model(*case)
        row = {"unit": name, "config": fmt.format(*case), "rtl": rtl, "error": (mod - rtl) / rtl}
        assert stored[(name, row["config"])]["rtl"] == rtl
        rows.append(row)
    _check(rows)


@pytest.mark.slow
def test_calibration_all_cases():
    _check(calibrate.run())
