"""Compile a BitNet-b1.58-0.73B-shaped model (synthetic ternary weights, ternc.models.synthetic_bitnet's
builder: 24 layers, hidden 1536, FFN 4096, 16 heads of 96, SiLU gates, vocab 32002) for kv260 and
report the artifact: program, DDR map, weight image bytes, resources vs the K26 next to TeLLMe v2.

    python bench/fpga_bitnet073.py [-o out/bitnet073-kv260] [--context 1024] [--no-synth] [--no-rtl] [--layers N]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from ternc.models.synthetic_bitnet import FULL, build_module


def log(msg: str) -> None:
    import sys

    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-o", "--out", default="out/bitnet073-kv260")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=FULL.layers, help="fewer layers for a quick run")
    ap.add_argument("--no-synth", action="store_true")
    ap.add_argument("--no-rtl", action="store_true", help="skip Verilog generation and synthesis (program + images only)")
    args = ap.parse_args(argv)
    from ternc.backends.fpga.build import build_artifact
    from ternc.passes.pipeline import KV260_PIPELINE, compile

    cfg = replace(FULL, layers=args.layers, max_pos=args.context)
    t0 = time.time()
    module = build_module(cfg, fmt="t2", static_decode=None)
    log(f"built {cfg.name} ({cfg.ternary_params / 1e6:.0f}M ternary weights) in {time.time() - t0:.0f}s")
    module, _ = compile(module, passes=KV260_PIPELINE, target="kv260", report=lambda t: log("\n" + t))
    t1 = time.time()
    art = build_artifact(module, args.out, context=args.context, synth=not args.no_synth, rtl=not args.no_rtl,
                         pipeline_desc="default:kv260", source=f"bench synthetic {cfg.name}")
    log(f"artifact {art} in {time.time() - t1:.0f}s")
    rep = json.loads((Path(art) / "report.json").read_text())
    print(json.dumps({k: rep[k] for k in ("program", "ddr", "bounds_analytic", "config")}, indent=1))
    print((Path(art) / "resources.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
