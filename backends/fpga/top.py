"""Top: the accelerator's configuration from the model and a board budget, its RTL units, their
yosys resources (out of context, cached by Verilog hash), the budget check and the Vivado inputs.

What exists as RTL today is the fused linear engine (``hw/pipeline.py``: ActQuantizer -> TLMMCore
(TL2 table lookups, URAM weight buffer) -> DqFactor/Epilogue). The other units of the block diagram
(sequencer, AXI DMA, RMSNorm, attention, register file) are listed in the resource table as "no RTL"
rows with zero counts: the table never presents them as synthesized.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .schedule import EngineConfig

#: AMD Kria K26 SoM (KV260) programmable logic, and its part for Vivado.
K26_PART = "xck26-sfvc784-2LV-c"
DDR_PEAK_GBPS = 19.2          # 64-bit DDR4-2400
HW_SOURCES = ("hw/tlmm.py", "hw/quant.py", "hw/epilogue.py", "hw/pipeline.py", "ir/hw_numerics.py")

# TeLLMe v2 (FPGA'26) on the same board, for the report.
TELLME_V2 = {"LUT": 98_000, "FF": 137_000, "DSP": 610, "BRAM": 98.5, "URAM": 60}


@dataclass(frozen=True)
class AcceleratorConfig:
    engine: EngineConfig = EngineConfig()
    wbuf_depth: int = 4096            # weight-buffer words (one beat each), UltraRAM
    epilogue_op: str = "rope"         # the engine instance synthesized (widest aux of the epilogues)
    clock_mhz: float = 250.0
    lm_head: str = "host"

    def to_json(self) -> dict:
        return asdict(self)


class ResourceError(ValueError):
    """The design does not fit the board: names the resource and the unit that uses the most of it."""

    def __init__(self, resource: str, used: float, budget: float, unit: str):
        self.resource, self.used, self.budget, self.unit = resource, used, budget, unit
        super().__init__(f"design does not fit the K26: {resource} {used:g} used > {budget:g} available "
                         f"(largest user: unit '{unit}')")


def choose_config(plan, budget: dict | None = None, clock_mhz: float = 250.0, lm_head: str = "host",
                  engine: EngineConfig | None = None) -> AcceleratorConfig:
    """The configuration for a model. The engine's K pass must fit the quantizer (max_chunks = 64
    chunks of G x tables activations) and a column tile's K chunks must fit half the weight buffer
    (double buffering)."""
    eng = engine or EngineConfig()
    per_chunk = eng.group * eng.tables
    k_max = max((lin.k for lin in plan.linears.values()), default=per_chunk)
    chunks = -(-k_max // per_chunk)
    if chunks > 64:
        raise ResourceError("quantizer chunks (K)", chunks, 64, "ActQuantizer")
    depth = 4096
    if 2 * chunks > depth:
        raise ResourceError("weight buffer words", 2 * chunks, depth, "TLMMCore.WeightBuffer")
    return AcceleratorConfig(eng, depth, "rope", clock_mhz, lm_head)


UNITS = ("linear engine", "sequencer", "AXI4 DMA (weights, activations, KV)", "RMSNorm unit", "attention unit",
         "AXI4-Lite register file")


@dataclass
class UnitResources:
    unit: str
    status: str                       # "yosys" (synthesized here) or "no RTL"
    resources: dict = field(default_factory=dict)
    seconds: float = 0.0
    verilog: str = ""                 # file name of the unit's Verilog in the artifact, if any


def engine_component(cfg: AcceleratorConfig):
    from ...hw.pipeline import TLMMPipeline

    e = cfg.engine
    return TLMMPipeline(e.group, e.tables, e.columns, cfg.epilogue_op, wbuf_depth=cfg.wbuf_depth,
                        ram_style="ultra")


def engine_key(cfg: AcceleratorConfig) -> str:
    e = cfg.engine
    return f"pipe G{e.group} T{e.tables} C{e.columns} D{cfg.wbuf_depth} {cfg.epilogue_op}"


def synthesize(cfg: AcceleratorConfig, synth: bool = True, rtl: bool = True
               ) -> tuple[list[UnitResources], dict[str, Path]]:
    """Per-unit resources (yosys synth_xilinx, out of context, cached by the RTLIL's hash) and the
    Verilog files of the units that have RTL."""
    from ...hw.synth import synth_xilinx, verilog_cached

    t0 = time.time()
    if not rtl:
        return [UnitResources(name, "no RTL generated (rtl=False)") for name in UNITS], {}
    il = verilog_cached(lambda: engine_component(cfg), "tlmm_pipeline", engine_key(cfg), sources=HW_SOURCES,
                        fmt="il")
    v = verilog_cached(lambda: engine_component(cfg), "tlmm_pipeline", engine_key(cfg), sources=HW_SOURCES,
                       fmt="v")
    units = []
    if synth:
        r = synth_xilinx(il, "tlmm_pipeline")
        units.append(UnitResources("linear engine (quantizer + TLMM 16x28 + dequant/epilogue)"
                                   if (cfg.engine.columns, cfg.engine.tables) == (16, 28) else
                                   f"linear engine (TLMM {cfg.engine.columns}x{cfg.engine.tables})",
                                   "yosys", r["resources"], r.get("seconds", time.time() - t0),
                                   "rtl/tlmm_pipeline.v"))
    else:
        units.append(UnitResources("linear engine", "not synthesized (--no-synth)", {}, 0.0, "rtl/tlmm_pipeline.v"))
    for name in UNITS[1:]:
        units.append(UnitResources(name, "no RTL"))
    return units, {"rtl/tlmm_pipeline.v": v}


def check_budget(units: list[UnitResources], budget: dict) -> dict:
    total = {k: 0.0 for k in budget}
    for u in units:
        for k in budget:
            total[k] += float(u.resources.get(k, 0))
    for k, cap in budget.items():
        if total[k] > cap:
            worst = max(units, key=lambda u: float(u.resources.get(k, 0)))
            raise ResourceError(k, total[k], cap, worst.unit)
    return total


def resources_table(units: list[UnitResources], total: dict, budget: dict) -> str:
    keys = list(budget)
    head = f"| unit | source | {' | '.join(keys)} |\n|---|---|{'---|' * len(keys)}\n"
    rows = []
    for u in units:
        vals = " | ".join(f"{u.resources[k]:g}" if k in u.resources else "-" for k in keys)
        rows.append(f"| {u.unit} | {u.status} | {vals} |")
    rows.append(f"| **total (units with RTL)** | | {' | '.join(f'{total[k]:g}' for k in keys)} |")
    rows.append(f"| K26 budget | | {' | '.join(f'{budget[k]:g}' for k in keys)} |")
    rows.append(f"| utilization | | {' | '.join(f'{100 * total[k] / budget[k]:.1f}%' for k in keys)} |")
    rows.append(f"| TeLLMe v2 (whole design) | paper | {' | '.join(f'{TELLME_V2.get(k, 0):g}' for k in keys)} |")
    return head + "\n".join(rows) + "\n"


def vivado_files(cfg: AcceleratorConfig, verilog_names: list[str]) -> dict[str, str]:
    """Out-of-context Vivado implementation of the RTL units for the K26 part at the chosen clock:
    ``vivado -mode batch -source vivado/build.tcl`` (from the artifact directory) writes utilization
    and timing reports. (Not a bitstream: that needs the sequencer/DMA top in a block design with the
    Zynq MPSoC PS, which is not built yet.)"""
    period = 1000.0 / cfg.clock_mhz
    xdc = (f"# ternc kv260: {cfg.clock_mhz:g} MHz\n"
           f"create_clock -period {period:.3f} -name clk [get_ports clk]\n")
    reads = "\n".join(f"read_verilog [file join $root {n}]" for n in verilog_names)
    tcl = f"""# ternc: out-of-context implementation of the accelerator's RTL units on the K26 SoM.
# usage (from the artifact directory): vivado -mode batch -source vivado/build.tcl
set root [file normalize [file join [file dirname [info script]] ..]]
set part {K26_PART}
file mkdir [file join $root vivado/out]
{reads}
read_xdc -mode out_of_context [file join $root vivado/clock.xdc]
synth_design -top tlmm_pipeline -part $part -mode out_of_context -flatten_hierarchy rebuilt
opt_design
place_design
route_design
report_utilization -file [file join $root vivado/out/utilization.rpt]
report_timing_summary -file [file join $root vivado/out/timing.rpt]
write_checkpoint -force [file join $root vivado/out/tlmm_pipeline_routed.dcp]
"""
    return {"vivado/build.tcl": tcl, "vivado/clock.xdc": xdc}
