"""Project BitNet-b1.58-0.73B (TeLLMe's shape) and 2B4T shapes on the KV260 and the U280 with the
dataflow simulator, next to TeLLMe v2's figures; optionally sweep the design space.

The program is what the kv260 backend schedules for the shape (backends/fpga/schedule.py: the same
instruction stream an artifact holds; addresses do not affect timing), built from `--layers` layers
of synthetic ternary weights (bench/cpu_vs_llamacpp.build_module) and scaled to the full depth
(layers are instruction-for-instruction identical; sim/sweep.one_layer). 2B4T's ReLU^2 gate is
built as a SiLU gate: the same GATE instruction and cost.

    python bench/dataflow_projection.py [--layers 2] [--sweep] [--out bench/results/dataflow_projection.json]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from cpu_vs_llamacpp import FULL, Config, build_module, log

B2B4T = Config("bitnet-b1.58-2B4T-shape", layers=30, hidden=2560, ffn=6912, heads=20, vocab=128256, kv_heads=5)
TELLME_V2 = {"decode_tok_s": 25, "prefill_tok_s": 143, "ttft_64_s": 0.45, "LUT": 98_000, "DSP": 610, "BRAM": 98.5,
             "URAM": 60}
GOALS = {"decode_tok_s": 40, "prefill_tok_s": 250, "ttft_64_s": 0.25}


def program(cfg: Config, layers: int, context: int):
    from ternc.backends.fpga.schedule import schedule
    from ternc.passes.pipeline import compile
    from ternc.targets import get

    small = replace(cfg, layers=layers, max_pos=context)
    t0 = time.time()
    module = build_module(small, fmt="t2", static_decode=None)
    module, _ = compile(module, list(get("kv260").pipeline), report=False)
    plan = schedule(module, context)
    log(f"{cfg.name}: {layers}-layer program scheduled in {time.time() - t0:.0f}s "
        f"({len(plan.program.instrs)} instructions)")
    return plan.program.instrs, cfg.layers / layers


def run(cfg: Config, instrs, scale: float, board: str, over: dict, context: int) -> dict:
    from ternc.sim import dataflow as df

    sim = df.SimConfig(board=board, **over)
    model = df.DataflowModel(instrs, sim, layer_scale=scale)
    rep = df.project(model, context)
    rep["model"] = cfg.name
    return rep


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--plots", default="bench/results/dataflow/scaled")
    ap.add_argument("--out", default="bench/results/dataflow_projection.json")
    args = ap.parse_args(argv)
    from ternc.sim import dataflow as df
    from ternc.sim import sweep as sw
    from ternc.sim.plots import roofline_png, timeline_png

    results = {"tellme_v2": TELLME_V2, "goals": GOALS, "rows": [], "sweeps": {}}
    variants = [("as built (f32 host LM head, 32-bit KV words, 3 ports)", {}),
                ("+ int8 host LM head, 8-bit KV, 6 ports (projected)", {"lm_head": "host-int8", "kv_bits": 8,
                                                                          "hp_ports": 6}),
                ("+ fabric int8 LM head, 4-bit KV, 2 attention units x 8 lanes, 6 ports (projected)",
                 {"lm_head": "fabric-int8", "kv_bits": 4, "hp_ports": 6, "attn_units": 2, "attn_lanes": 8})]
    for cfg in (FULL, B2B4T):
        instrs, scale = program(cfg, args.layers, args.context)
        for board in ("kv260", "u280"):
            for label, over in variants:
                t0 = time.time()
                rep = run(cfg, instrs, scale, board, over, args.context)
                rep["variant"] = label
                rep["seconds"] = round(time.time() - t0, 2)
                results["rows"].append(rep)
                log(f"{cfg.name} {board} {label}: {rep['seconds']}s")
            if cfg is FULL and board == "kv260":
                model = df.DataflowModel(instrs, df.SimConfig(board=board), layer_scale=scale)
                out = Path(args.plots)
                out.mkdir(parents=True, exist_ok=True)
                base = results["rows"][-3]
                base["context_compiled"] = args.context
                roofline_png(model, {**base, "model": "BitNet-0.73B shape"}, out / "roofline_073b_kv260.png")
                timeline_png(model, out / "timeline_073b_prefill64.png", n=64, pos=0)
                timeline_png(model, out / "timeline_073b_decode1024.png", n=1, pos=1023)
            if args.sweep:
                t0 = time.time()
                srep = sw.sweep(instrs, df.SimConfig(board=board), args.context)
                srep["seconds"] = round(time.time() - t0, 1)
                results["sweeps"][f"{cfg.name}@{board}"] = {k: v for k, v in srep.items() if k != "front"} | \
                    {"front": srep["front"][:40]}
                print(f"\n## {cfg.name} on {board}\n" + sw.front_text(srep, 15))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1, default=str))
    print(table(results))
    return 0


def table(results: dict) -> str:
    lines = ["| model | board | design | decode tok/s @1024 (bound) | decode @2048 | prefill tok/s @128 (bound) | "
             "TTFT @64 s | KV B/token @1024 | weights B/token |", "|" + "---|" * 9]
    for r in results["rows"]:
        dec = {d["context"]: d for d in r["decode"] if "tok_s" in d}
        pre = {p["prompt"]: p for p in r["prefill"] if "ttft_s" in p}
        d1, d2, p128, p64 = dec.get(1024), dec.get(2048), pre.get(128), pre.get(64)
        lines.append(f"| {r['model']} | {r['board']} | {r['variant']} | {d1['tok_s']:.1f} ({d1['bound']}) | "
                     f"{d2['tok_s']:.1f} | {p128['prefill_tok_s']:.0f} ({p128['bound']}) | {p64['ttft_s']:.3f} | "
                     f"{d1['bytes_per_token']['kv'] / 1e6:.1f} MB | {d1['bytes_per_token']['weights'] / 1e6:.1f} MB |")
    t = results["tellme_v2"]
    lines.append(f"| TeLLMe v2 (paper) | kv260 | hand-written HLS | {t['decode_tok_s']} | - | {t['prefill_tok_s']} | "
                 f"{t['ttft_64_s']} | fp16 KV | - |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
