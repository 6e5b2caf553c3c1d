"""Top: the accelerator's configuration from the model and a board budget, its RTL units, their
yosys resources (out of context, cached by Verilog hash), the budget check and the Vivado inputs.

Units with RTL today: the fused linear engine (``hw/pipeline.py``: ActQuantizer -> TLMMCore (TL2
table lookups, URAM weight buffer) -> DqFactor/Epilogue), the AXI4 DMA (``hw/axi.py``: burst read +
write masters, one per HP port) and the AXI4-Lite register file generated from ``regmap.py``
(``hw/regfile.py``), the RMSNorm unit (``hw/norm.py``) and the decode attention unit
(``hw/attention.py``). They are generated and synthesized here as separate units (not yet composed
into one top: there is no sequencer). The sequencer and a prefill attention unit are "no RTL" rows
with zero counts: the table never presents them as synthesized.
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
    hp_ports: int = 3                 # AXI4 DMA instances (KV260 HP ports, 128-bit)
    axi_data_bits: int = 128
    norm_lanes: int = 4
    norm_max_k: int = 8192            # the norm unit's token buffer (the widest normalized vector)
    head_dim: int = 64
    attn_lanes: int = 4
    context: int = 1024               # the decode attention unit's score memory
    vocab: int = 256                  # the embedding table's rows (EMBED's token-id range check)
    kv_max_group: int = 1             # the KV controller's quantization buffer (largest KIVI group; 1: none)
    rope_max_width: int = 4096        # the RoPE controller's row buffer (widest ROPE row = q row, words)
    attn_block: int = 4               # query rows per K/V stream of the prefill attention controller
    attn_max_width: int = 4096        # the prefill attention controller's row FIFOs (q row = hq * d words)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "AcceleratorConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**{**known, "engine": EngineConfig(**d["engine"])})


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
    import inspect

    from ...hw.pipeline import TLMMPipeline

    limit = inspect.signature(TLMMPipeline.__init__).parameters["max_chunks"].default
    per_chunk = eng.group * eng.tables
    k_max = max((lin.k for lin in plan.linears.values()), default=per_chunk)
    chunks = -(-k_max // per_chunk)
    if chunks > limit:
        raise ResourceError("quantizer chunks (K)", chunks, limit, "ActQuantizer")
    depth = 4096
    if 2 * chunks > depth:
        raise ResourceError("weight buffer words", 2 * chunks, depth, "TLMMCore.WeightBuffer")
    widths = [plan.hidden] + [lin.k for lin in plan.linears.values()]
    return AcceleratorConfig(eng, depth, "rope", clock_mhz, lm_head, norm_max_k=max(widths),
                             head_dim=plan.head_dim, context=plan.context, vocab=plan.vocab,
                             kv_max_group=_kv_max_group(plan.program), rope_max_width=_rope_max_width(plan.program),
                             attn_max_width=_attn_max_width(plan.program),
                             attn_lanes=4)   # AttnCtl pads d to whole lanes on chip (d = 42 -> 44)


def _kv_max_group(program) -> int:
    from .isa import Opcode, unpack_kvquant

    return max([1] + [unpack_kvquant(i["quant"])[1] for i in program.instrs if i.op == Opcode.KV_APPEND and i["quant"]])


def _controllers() -> dict:
    """opcode (or (opcode, "prefill"|"decode")) -> (PERF counter, factory(cfg)) of every controller."""
    from ...hw.ctl_attn import AttnCtl, PrefillAttnCtl
    from ...hw.ctl_embed import EmbedCtl
    from ...hw.ctl_kv import KvAppendCtl
    from ...hw.ctl_linear import LinearCtl
    from ...hw.ctl_norm import NormCtl
    from ...hw.ctl_rope import RopeCtl
    from .isa import Opcode

    def linear(cfg):
        e = cfg.engine
        return LinearCtl(e.group, e.tables, e.columns, wbuf_depth=cfg.wbuf_depth,
                         max_chunks=-(-cfg.norm_max_k // (e.group * e.tables)), ram_style="ultra")

    return {int(Opcode.EMBED): ("CYC_DMA", lambda cfg: EmbedCtl(cfg.vocab)),
            int(Opcode.RMSNORM): ("CYC_NORM", lambda cfg: NormCtl(cfg.norm_lanes, cfg.norm_max_k)),
            int(Opcode.LINEAR): ("CYC_LINEAR", linear),
            int(Opcode.KV_APPEND): ("CYC_DMA", lambda cfg: KvAppendCtl(cfg.head_dim, max_group=cfg.kv_max_group)),
            # lanes = 4 with on-chip zero padding of d (AttnCtl's docstring: d = 42 runs at dp = 44);
            # prefill calls (N > 1) on the block-wise unit (K/V read once per block of query rows)
            (int(Opcode.ATTN), "decode"): ("CYC_ATTN", lambda cfg: AttnCtl(cfg.head_dim, cfg.attn_lanes, cfg.context)),
            (int(Opcode.ATTN), "prefill"): ("CYC_ATTN", lambda cfg: PrefillAttnCtl(
                cfg.head_dim, cfg.attn_lanes, cfg.context, block=cfg.attn_block, max_width=cfg.attn_max_width)),
            int(Opcode.ROPE): ("CYC_DMA", lambda cfg: RopeCtl(cfg.rope_max_width, cfg.head_dim))}


def _rope_max_width(program) -> int:
    from .isa import Opcode, unpack_heads

    widths = [unpack_heads(i["heads"])[0] * unpack_heads(i["heads"])[2] for i in program.instrs if i.op == Opcode.ROPE]
    return max([4] + widths)


def _attn_max_width(program) -> int:
    from .isa import Opcode, unpack_heads

    widths = [unpack_heads(i["heads"])[0] * unpack_heads(i["heads"])[2] for i in program.instrs if i.op == Opcode.ATTN]
    return max([4] + widths)


def controller_table(cfg: AcceleratorConfig) -> dict:
    """The composed top's controller set: ``{opcode: (PERF counter, controller instance)}``
    (hw/top.Accelerator). Opcodes whose controller is not built are left out: the sequencer stops on
    them with ERROR_CODE 1 (bad opcode)."""
    return {op: (counter, make(cfg)) for op, (counter, make) in _controllers().items()}


def built_opcodes(cfg: AcceleratorConfig | None = None) -> set:
    """Opcodes with a controller in the composed top (the rest stop the sequencer with ERROR_CODE 1)."""
    return {k[0] if isinstance(k, tuple) else k for k in _controllers()}


def accelerator_component(cfg: AcceleratorConfig):
    """The composed accelerator (hw/top.py) for a configuration: register file of regmap.py,
    sequencer, the controllers of :func:`controller_table`, three HP read masters and a write master."""
    from ...hw.top import Accelerator
    from .isa import Flag, Opcode
    from .regmap import REGMAP

    return Accelerator(REGMAP, controller_table(cfg), context=cfg.context, end_opcode=int(Opcode.END),
                       host_opcode=int(Opcode.LM_HEAD), host_flag=int(Flag.HOST))


def accelerator_key(cfg: AcceleratorConfig) -> str:
    import json

    return "accel " + json.dumps(cfg.to_json(), sort_keys=True)


def _accel_sources() -> tuple:
    """Every HDL source the composed top may use (all of hw/, the numerics, the maps)."""
    from ...hw.synth import REPO

    hw = sorted(str(p.relative_to(REPO)) for p in (REPO / "hw").glob("*.py"))
    return tuple(hw) + ("ir/hw_numerics.py", "backends/fpga/regmap.py", "backends/fpga/isa.py", "backends/fpga/top.py")


def accelerator_verilog(cfg: AcceleratorConfig):
    """The composed top's Verilog (module ``accelerator``), cached by configuration + sources."""
    from ...hw.synth import verilog_cached

    return verilog_cached(lambda: accelerator_component(cfg), "accelerator", accelerator_key(cfg),
                          sources=_accel_sources())


UNITS = ("linear engine", "AXI4 DMA", "AXI4-Lite register file", "RMSNorm unit", "decode attention unit",
         "sequencer", "prefill attention unit")


@dataclass
class UnitResources:
    unit: str
    status: str                       # "yosys" (synthesized here) or "no RTL"
    resources: dict = field(default_factory=dict)
    seconds: float = 0.0
    verilog: str = ""                 # file name of the unit's Verilog in the artifact, if any
    depth: dict | None = None         # hw.synth.logic_depth: est. critical path, fmax (yosys netlist)
    counted: bool = True              # False: a breakdown row of a unit inside the composed top's row


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
    from ...hw.axi import AxiDma
    from ...hw.regfile import AxiLiteRegFile
    from .regmap import REGMAP

    dma_key = f"dma A40 D{cfg.axi_data_bits} B16 O4"
    dma_il = verilog_cached(lambda: AxiDma(data_width=cfg.axi_data_bits), "axi_dma", dma_key,
                            sources=("hw/axi.py", "hw/stream_util.py"), fmt="il")
    dma_v = verilog_cached(lambda: AxiDma(data_width=cfg.axi_data_bits), "axi_dma", dma_key,
                           sources=("hw/axi.py", "hw/stream_util.py"), fmt="v")
    rf_key = REGMAP.to_json().__repr__()
    rf_il = verilog_cached(lambda: AxiLiteRegFile(REGMAP), "regfile", rf_key, sources=("hw/regfile.py",), fmt="il")
    rf_v = verilog_cached(lambda: AxiLiteRegFile(REGMAP), "regfile", rf_key, sources=("hw/regfile.py",), fmt="v")
    from ...hw.norm import RMSNorm

    max_k = 1 << max(1, (cfg.norm_max_k - 1).bit_length())
    norm_key = f"norm L{cfg.norm_lanes} K{max_k}"
    norm_src = ("hw/norm.py", "hw/stream_util.py", "ir/hw_numerics.py")
    norm_il = verilog_cached(lambda: RMSNorm(cfg.norm_lanes, max_k), "rmsnorm", norm_key, sources=norm_src, fmt="il")
    norm_v = verilog_cached(lambda: RMSNorm(cfg.norm_lanes, max_k), "rmsnorm", norm_key, sources=norm_src, fmt="v")
    from ...hw.attention import DecodeAttention

    attn_dp = -(-cfg.head_dim // cfg.attn_lanes) * cfg.attn_lanes     # the controllers pad d to whole lanes
    attn_key = f"dattn D{attn_dp} L{cfg.attn_lanes} C{cfg.context}"
    attn_src = ("hw/attention.py", "hw/stream_util.py", "ir/hw_numerics.py")
    mk_attn = lambda: DecodeAttention(attn_dp, cfg.attn_lanes, cfg.context)  # noqa: E731
    attn_il = verilog_cached(mk_attn, "decode_attn", attn_key, sources=attn_src, fmt="il")
    attn_v = verilog_cached(mk_attn, "decode_attn", attn_key, sources=attn_src, fmt="v")
    e = cfg.engine
    rows = [(f"linear engine (quantizer + TLMM {e.columns}x{e.tables} + dequant/epilogue)", il, "tlmm_pipeline",
             "rtl/tlmm_pipeline.v", 1),
            (f"AXI4 DMA (burst read + write masters, {cfg.axi_data_bits}-bit) x {cfg.hp_ports}", dma_il, "axi_dma",
             "rtl/axi_dma.v", cfg.hp_ports),
            ("AXI4-Lite register file (regmap.json)", rf_il, "regfile", "rtl/regfile.v", 1),
            (f"RMSNorm unit ({cfg.norm_lanes} lanes, K <= {max_k})", norm_il, "rmsnorm", "rtl/rmsnorm.v", 1),
            (f"decode attention unit (d {cfg.head_dim}, {cfg.attn_lanes} lanes, context {cfg.context})", attn_il,
             "decode_attn", "rtl/decode_attn.v", 1)]
    units = []
    for name, path, top, vname, count in rows:
        if synth:
            t1 = time.time()
            r = synth_xilinx(path, top)
            res = {k: v * count for k, v in r["resources"].items()}
            u = UnitResources(name, "yosys", res, r.get("seconds", time.time() - t1), vname)
            u.depth = r.get("depth")
        else:
            u = UnitResources(name, "not synthesized (--no-synth)", {}, 0.0, vname)
        units.append(u)
    top_rows = composed_rows(cfg, synth)
    if any(u.counted for u in top_rows):
        for u in units:   # the standalone units are inside the composed top: a breakdown, not added again
            u.counted = False
    units += top_rows
    _ = t0
    return units, {"rtl/tlmm_pipeline.v": v, "rtl/axi_dma.v": dma_v, "rtl/regfile.v": rf_v, "rtl/rmsnorm.v": norm_v,
                   "rtl/decode_attn.v": attn_v}


def composed_rows(cfg: AcceleratorConfig, synth: bool) -> list[UnitResources]:
    """The composed top (hw/top.py ``accelerator``: sequencer, register file, AXI masters, every
    controller) as one counted row, and each controller of :func:`controller_table` out of context as
    a breakdown row; yosys results cached by the RTLIL's hash (hw.synth)."""
    import json

    from ...hw.synth import synth_xilinx, verilog_cached
    from .isa import Opcode

    if not synth:   # the top's Verilog is generated by the build (rtl/accelerator.v); nothing to count
        return [UnitResources("composed top: sequencer + register file + AXI masters + all controllers (hw/top.py)",
                              "not synthesized (--no-synth)", {}, 0.0, "rtl/accelerator.v", counted=False)]
    rows = []
    for op, (counter, make) in sorted(_controllers().items()):
        name = f"ctl_{Opcode(op).name.lower()}"
        key = f"{name} " + json.dumps(cfg.to_json(), sort_keys=True)
        cls = {"EMBED": "EmbedCtl", "RMSNORM": "NormCtl", "LINEAR": "LinearCtl", "KV_APPEND": "KvAppendCtl",
               "ATTN": "AttnCtl", "ROPE": "RopeCtl"}.get(Opcode(op).name, "controller")
        il = verilog_cached((lambda mk: lambda: mk(cfg))(make), name, key, sources=_accel_sources(), fmt="il")
        rows.append((f"  controller {Opcode(op).name} ({cls}, {counter})", il, name, False))
    top_il = verilog_cached(lambda: accelerator_component(cfg), "accelerator", accelerator_key(cfg),
                            sources=_accel_sources(), fmt="il")
    rows.append(("composed top: sequencer + register file + AXI masters + all controllers (hw/top.py)", top_il,
                 "accelerator", True))
    out = []
    for label, il, top, counted in rows:
        vname = "rtl/accelerator.v" if top == "accelerator" else ""
        r = synth_xilinx(il, top)
        u = UnitResources(label, "yosys", dict(r["resources"]), r.get("seconds", 0.0), vname, counted=counted)
        u.depth = r.get("depth")
        out.append(u)
    return out


def check_budget(units: list[UnitResources], budget: dict) -> dict:
    """Totals of the counted rows against the budget; an overflow names the resource and the largest
    user among the rows that are not the whole top (the breakdown), else among the counted rows."""
    total = {k: 0.0 for k in budget}
    for u in units:
        if not u.counted:
            continue
        for k in budget:
            total[k] += float(u.resources.get(k, 0))
    parts = [u for u in units if not (u.counted and u.unit.startswith("composed top"))] or units
    for k, cap in budget.items():
        if total[k] > cap:
            worst = max(parts, key=lambda u: float(u.resources.get(k, 0)))
            raise ResourceError(k, total[k], cap, worst.unit)
    return total


def resources_table(units: list[UnitResources], total: dict, budget: dict) -> str:
    keys = list(budget)
    head = f"| unit | source | {' | '.join(keys)} | est. fmax |\n|---|---|{'---|' * len(keys)}---|\n"
    rows = []
    for u in units:
        vals = " | ".join(f"{u.resources[k]:g}" if k in u.resources else "-" for k in keys)
        fmax = f"{u.depth['fmax_mhz']:.0f} MHz" if u.depth else "-"
        status = u.status + ("" if u.counted or u.status != "yosys" else " (inside the top; not added)")
        rows.append(f"| {u.unit} | {status} | {vals} | {fmax} |")
    what = "composed top" if any(u.counted and u.unit.startswith("composed top") for u in units) else "units with RTL"
    rows.append(f"| **total ({what})** | | {' | '.join(f'{total[k]:g}' for k in keys)} | |")
    rows.append(f"| K26 budget | | {' | '.join(f'{budget[k]:g}' for k in keys)} | |")
    rows.append(f"| utilization | | {' | '.join(f'{100 * total[k] / budget[k]:.1f}%' for k in keys)} | |")
    rows.append(f"| TeLLMe v2 (whole design) | paper | {' | '.join(f'{TELLME_V2.get(k, 0):g}' for k in keys)} | |")
    return head + "\n".join(rows) + "\n"


def vivado_files(cfg: AcceleratorConfig, verilog_names: list[str]) -> dict[str, str]:
    """Out-of-context Vivado implementation of the RTL units for the K26 part at the chosen clock:
    ``vivado -mode batch -source vivado/build.tcl`` (from the artifact directory) writes utilization
    and timing reports. (Not a bitstream: that needs the sequencer/DMA top in a block design with the
    Zynq MPSoC PS, which is not built yet.)"""
    period = 1000.0 / cfg.clock_mhz
    xdc = (f"# ternc kv260: {cfg.clock_mhz:g} MHz\n"
           f"create_clock -period {period:.3f} -name clk [get_ports clk]\n")
    units = " ".join(f"{{{Path(n).stem} {n}}}" for n in verilog_names)
    tcl = f"""# ternc: out-of-context implementation of the accelerator's RTL units on the K26 SoM, each unit
# on its own (place, route, utilization and timing at the constrained clock).
# usage (from anywhere): vivado -mode batch -source ART/vivado/build.tcl
set root [file normalize [file join [file dirname [info script]] ..]]
set part {K26_PART}
file mkdir [file join $root vivado/out]
foreach unit [list {units}] {{
    lassign $unit top file
    close_project -quiet
    create_project -in_memory -part $part
    read_verilog [file join $root $file]
    read_xdc -mode out_of_context [file join $root vivado/clock.xdc]
    synth_design -top $top -part $part -mode out_of_context -flatten_hierarchy rebuilt
    opt_design
    place_design
    route_design
    report_utilization -file [file join $root vivado/out/$top.utilization.rpt]
    report_timing_summary -file [file join $root vivado/out/$top.timing.rpt]
    write_checkpoint -force [file join $root vivado/out/$top.routed.dcp]
}}
"""
    return {"vivado/build.tcl": tcl, "vivado/clock.xdc": xdc}
