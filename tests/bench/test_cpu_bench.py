"""Smoke run of bench/cpu_vs_llamacpp.py --tiny (2 layers, hidden 256): ternc compiles and runs the
BitNet-shaped module bit-close to the IR interpreter and produces tokens/s; llama.cpp joins when its
llama-bench is already built under .cache/llamacpp (building it takes minutes: run the script once)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "cpu_vs_llamacpp.py"


def _load():
    spec = importlib.util.spec_from_file_location("cpu_vs_llamacpp", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.bench
def test_cpu_bench_tiny(tmp_path):
    bench = _load()
    out = tmp_path / "tiny.json"
    argv = ["--tiny", "--rounds", "1", "--reps", "1", "--out", str(out)]
    vnni = Path("/proc/cpuinfo").exists() and "avx512_vnni" in Path("/proc/cpuinfo").read_text()
    argv += ["--variants", "backend,proto" if vnni else "backend"]  # the prototype kernel needs AVX-512 VNNI
    have_llama = bench.llama_bench_path().exists()
    if not have_llama:
        argv.append("--skip-llamacpp")
    assert bench.main(argv) == 0
    rep = json.loads(out.read_text())
    eng = rep["engines"]
    assert eng["ternc i2 [backend]"]["max_abs_err_vs_interp"] < 1e-3
    ours = eng["ternc i2 [backend]"]
    assert ours["pp_tok_s"] > 0 and ours["tg_tok_s"] > 0
    if have_llama:
        for t in ("TQ2_0", "TQ1_0"):
            e = eng[f"llama.cpp {t}"]
            assert math.isfinite(e["pp_tok_s"]) and e["tg_tok_s"] > 0
        assert ours["ratio_vs_tq2_0"]["tg"] > 0
    if vnni:
        proto = eng["ternc i2 [proto]"]
        assert proto["max_abs_err_vs_interp"] < 1e-3 and proto["tg_tok_s"] > 0
