"""Smoke run of bench/cpu_vs_llamacpp.py --tiny (2 layers, hidden 256): ternc compiles and runs the
BitNet-shaped module bit-close to the IR interpreter and produces tokens/s; llama.cpp joins when its
llama-bench is already built under .cache/llamacpp (building it takes minutes: run the script once)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "cpu_vs_llamacpp.py"
LLAMA_BENCH = REPO / ".cache" / "llamacpp" / "build" / "bin" / "llama-bench"  # where the script builds it


@pytest.mark.bench
def test_cpu_bench_tiny(tmp_path):
    out = tmp_path / "tiny.json"
    argv = ["--tiny", "--rounds", "1", "--reps", "1", "--out", str(out)]
    vnni = Path("/proc/cpuinfo").exists() and "avx512_vnni" in Path("/proc/cpuinfo").read_text()
    argv += ["--variants", "backend,proto" if vnni else "backend"]  # the prototype kernel needs AVX-512 VNNI
    have_llama = LLAMA_BENCH.exists()
    if not have_llama:
        argv.append("--skip-llamacpp")
    subprocess.run([sys.executable, str(SCRIPT), *argv], check=True)
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
