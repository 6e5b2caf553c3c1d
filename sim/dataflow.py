"""Fast dataflow simulator of a kv260 artifact: times the artifact's own program on a
transaction-level model of the generated units (issue 11). It never computes numerics (that is the
functional executor, backends/fpga/executor.py); it reads the instruction stream from
``program.bin`` and the configuration from the manifest, and charges every instruction analytically.

Unit models (cycles at the artifact's clock; constants from the units' docstrings, calibrated
against their RTL in sim/calibrate.py):

* linear engine (hw/pipeline.py): per token and weight group, the quantizer loads the token
  (ceil(K/lanes) cycles), divides (56-cycle restoring divider) and quantizes (ceil(K/lanes)), not
  overlapped with the engine (hw/quant.py: "phases per token, not overlapped"); the engine then runs
  one weight beat per cycle for each column tile (gated epilogues: gate and up, two passes on one
  quantized token); fill latency = adder-tree levels + engine latency + epilogue latency. Weights are
  double-buffered in the URAM weight buffer: a LINEAR is cut into weight groups of at most
  ``wbuf_depth / 2`` beats; each group is read from DDR once per call and replayed for every token of
  the call (prefill reuse), the next group loading while this one computes.
* RMSNorm unit (hw/norm.py): 2 ceil(K/lanes) + 12 cycles per token, tokens back to back.
* decode attention unit (hw/attention.py): per query row and head 2 T d/lanes + T + 4 d/lanes + 11
  cycles with T = POS + t + 1 keys (prefill runs it per row: there is no prefill attention unit);
  it streams K then V of its KV head from DDR for every query head (GQA by addressing, no reuse).
* EMBED / KV_APPEND: the DMA only (read + write of the rows).
* host LM head (when the program ends in LM_HEAD with the HOST flag): a GEMV over the [vocab,
  hidden] weight on the board's host CPU, max(bytes / host bandwidth, flops / host flops) + a call
  overhead; for a prefill only the last row's logits are computed (what generation needs).

DDR (sim/ddr.py): every instruction's streams (weights, KV, activations) share the ports and the
DDR's sustained rate; an instruction lasts max(unit cycles, DDR cycles) + fill latency + the DDR's
first-access latency (streaming: the unit consumes while the DMA delivers). Overlap between
instructions: the program is a dependency chain, so instructions run one after another, except that
a LINEAR's first weight group is prefetched into the free half of the weight buffer during the
previous instructions' DDR-idle time (double buffering).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .boards import KV260, Board, get_board
from .ddr import DDRModel

# Opcodes/epilogues/flags as integers (the ISA's values; sim/ must not import backends/ for data it
# can read from the artifact -- but decoding the program is the ISA's job, so it is imported lazily).
UNITS = ("linear", "norm", "attn", "dma", "host")


@dataclass(frozen=True)
class UnitCal:
    """Per-unit cycle constants (calibrated against RTL: sim/calibrate.py, README table)."""

    quant_div: int = 56          # restoring divider (hw/quant.py)
    quant_fixed: int = 4         # state changes between load / divide / quantize / replay
    engine_fill: int = 2         # TLMMEngine latency beyond tree levels + 3 (docstring: + 2)
    epilogue_latency: int = 6    # hw/epilogue.py
    dq_latency: int = 3          # DqFactor stages
    norm_overhead: int = 12      # hw/norm.py OVERHEAD
    attn_overhead: int = 11      # hw/attention.py OVERHEAD


@dataclass(frozen=True)
class SimConfig:
    """What the simulator needs from the generated design (defaults: the artifact's configuration)."""

    group: int = 3
    tables: int = 28
    columns: int = 16
    engines: int = 1
    wbuf_depth: int = 4096
    quant_lanes: int = 3
    clock_mhz: float = 250.0
    hp_ports: int = 3
    axi_data_bits: int = 128
    norm_lanes: int = 4
    attn_lanes: int = 4
    attn_units: int = 1
    kv_bits: int = 32            # stored KV bits per element (32: the artifact's 24-bit KV words in int32)
    lm_head: str = "host"        # host (f32, as built) | host-int8 | fabric-int8 (projected)
    lm_lanes: int = 64           # fabric LM head: int8 MACs per cycle (projected unit)
    board: str = "kv260"
    cal: UnitCal = UnitCal()

    @property
    def beat_bytes(self) -> int:
        return -(-self.columns * self.tables * 5 // 8) if self.group == 3 else \
            -(-self.columns * self.tables * (math.ceil(math.log2((3 ** self.group - 1) // 2 + 1)) + 1) // 8)

    def to_json(self) -> dict:
        d = asdict(self)
        d["beat_bytes"] = self.beat_bytes
        return d


def config_from_artifact(manifest: dict, **over) -> SimConfig:
    acc = manifest["accelerator"]
    c = acc["config"]
    e = c["engine"]
    base = SimConfig(group=e["group"], tables=e["tables"], columns=e["columns"], wbuf_depth=c["wbuf_depth"],
                     clock_mhz=c["clock_mhz"], hp_ports=c["hp_ports"], axi_data_bits=c["axi_data_bits"],
                     norm_lanes=c["norm_lanes"], attn_lanes=c["attn_lanes"], lm_head=acc.get("lm_head", "host"))
    return replace(base, **over)


@dataclass
class Cost:
    """One instruction of one call, as timed."""

    idx: int
    op: str
    unit: str
    compute: float               # unit-busy cycles
    ddr: float                   # DDR cycles (after prefetch)
    latency: float               # fill + first access
    cycles: float = 0.0          # duration on the timeline
    start: float = 0.0
    bytes: dict = field(default_factory=dict)   # weights / kv / act -> bytes (read + write)
    prefetch_bytes: float = 0.0  # weight bytes that may load during earlier instructions
    weight: float = 1.0          # times this instruction counts (layer scaling of projections)

    @property
    def bound(self) -> str:
        return "ddr" if self.ddr > self.compute else self.unit


@dataclass
class CallResult:
    n_tokens: int
    pos: int
    costs: list
    accel_cycles: float
    host_s: float
    clock_mhz: float

    @property
    def accel_s(self) -> float:
        return self.accel_cycles / (self.clock_mhz * 1e6)

    @property
    def seconds(self) -> float:
        return self.accel_s + self.host_s

    def bytes(self) -> dict:
        out = {"weights": 0.0, "kv": 0.0, "act": 0.0, "host_lm_head": 0.0}
        for c in self.costs:
            for k, v in c.bytes.items():
                out[k] = out.get(k, 0.0) + v * c.weight
        return out

    def unit_busy(self) -> dict:
        busy = {u: 0.0 for u in UNITS}
        for c in self.costs:
            if c.unit != "host":
                busy[c.unit] += c.compute * c.weight
        busy["ddr"] = sum(c.ddr * c.weight for c in self.costs if c.unit != "host")
        return busy

    def bound(self) -> dict:
        """Cycles of the call spent in instructions bound by each resource."""
        b: dict[str, float] = {}
        for c in self.costs:
            if c.unit == "host":
                continue
            b[c.bound] = b.get(c.bound, 0.0) + c.cycles * c.weight
        b["host"] = self.host_s * self.clock_mhz * 1e6
        return b

    def main_bound(self) -> str:
        b = self.bound()
        return max(b, key=b.get)


# ---------------------------------------------------------------------- unit formulas (calibrated)
def linear_groups(cfg: SimConfig, k: int, nn: int, passes: int) -> tuple[int, int, int, int]:
    """(chunks per tile, column tiles, tiles per weight group, groups): a group is what half the
    double-buffered weight buffer holds (whole column tiles)."""
    chunks = -(-k // (cfg.group * cfg.tables))
    tiles = -(-nn // cfg.columns)
    half = max(chunks * passes, cfg.wbuf_depth // 2)
    tiles_per_group = max(1, half // (chunks * passes))
    return chunks, tiles, tiles_per_group, -(-tiles // tiles_per_group)


def linear_compute(cfg: SimConfig, k: int, nn: int, n: int, passes: int = 1) -> tuple[float, float]:
    """(busy cycles, fill latency) of the linear pipeline for n tokens of one [K -> N] LINEAR: per
    token and weight group the quantizer's load + divide + quantize (not overlapped with the engine),
    then one weight beat per cycle per column tile (x passes for gated epilogues); engines split the
    tiles."""
    cal = cfg.cal
    chunks, tiles, _, groups = linear_groups(cfg, k, nn, passes)
    e = max(1, min(cfg.engines, tiles))
    kpad = chunks * cfg.group * cfg.tables
    qtok = 2 * -(-kpad // cfg.quant_lanes) + cal.quant_div + cal.quant_fixed
    compute = n * (-(-groups // e) * qtok + -(-tiles // e) * chunks * passes)
    levels = max(1, math.ceil(math.log2(cfg.tables)))
    return compute, levels + 3 + cal.engine_fill + cal.dq_latency + cal.epilogue_latency


def norm_compute(cfg: SimConfig, k: int, n: int) -> float:
    return n * (2 * -(-k // cfg.norm_lanes) + cfg.cal.norm_overhead)


def attn_compute(cfg: SimConfig, d: int, t_sum: float, rows: int) -> float:
    """Cycles of one query head over ``rows`` query rows that see ``t_sum`` keys in total."""
    wd = -(-d // cfg.attn_lanes)
    return 2 * t_sum * wd + t_sum + rows * (4 * wd + cfg.cal.attn_overhead)


class DataflowModel:
    """Times a program (a list of isa.Instr) on the units of ``cfg`` with ``board``'s DDR and host."""

    def __init__(self, instrs, cfg: SimConfig, lm_shape: tuple[int, int] | None = None, layer_scale: float = 1.0):
        self.instrs = list(instrs)
        self.cfg = cfg
        self.board: Board = get_board(cfg.board)
        self.ddr = DDRModel.of(self.board, cfg.clock_mhz, cfg.hp_ports, cfg.axi_data_bits)
        self.lm_shape = lm_shape
        self.layer_scale = layer_scale
        ops = [i.op.name for i in self.instrs]
        # Layer instructions: between EMBED and the final RMSNORM before LM_HEAD (identical per layer).
        last = ops.index("LM_HEAD") if "LM_HEAD" in ops else len(ops)
        self.layer_span = (ops.index("EMBED") + 1 if "EMBED" in ops else 0, max(0, last - 1))

    # ------------------------------------------------------------------ per instruction
    def _linear(self, ins, n: int) -> tuple[float, float, dict, float, float]:
        from ternc.backends.fpga.isa import Epilogue, unpack_kn

        cfg = self.cfg
        k, nn = unpack_kn(ins["kn"])
        passes = 2 if ins.epilogue in (Epilogue.GATE_SILU, Epilogue.GATE_RELU2) else 1
        compute, latency = linear_compute(cfg, k, nn, n, passes)
        chunks, tiles, tiles_per_group, groups = linear_groups(cfg, k, nn, passes)
        w_bytes = tiles * chunks * passes * cfg.beat_bytes
        out_w = nn
        aux = 0
        if ins.epilogue == Epilogue.RESIDUAL:
            aux = 4 * nn * n
        elif ins.epilogue == Epilogue.ROPE:
            aux = 2 * ((ins["aux2"] >> 16) or 64) * n
        act = 4 * k * n + aux + 4 * out_w * n
        e = max(1, min(cfg.engines, tiles))
        first_group = min(w_bytes, tiles_per_group * chunks * passes * cfg.beat_bytes * e)
        return compute, latency, {"weights": w_bytes, "act": act}, first_group, groups

    def cost(self, idx: int, ins, n: int, pos: int) -> Cost:
        from ternc.backends.fpga.isa import Flag, Opcode, unpack_heads

        cfg, cal, ddr = self.cfg, self.cfg.cal, self.ddr
        op = ins.op
        if op == Opcode.LINEAR:
            compute, lat, b, pre, groups = self._linear(ins, n)
            streams = [(b["weights"], groups), (b["act"], 3)]
            c = Cost(idx, "LINEAR", "linear", compute, ddr.cycles(streams), lat, bytes=b, prefetch_bytes=pre)
        elif op == Opcode.RMSNORM:
            w = ins["width"]
            compute = norm_compute(cfg, w, n)
            b = {"act": 4 * w * n * 2 + 4 * w * n}        # src + dst rows, gamma per token
            c = Cost(idx, "RMSNORM", "norm", compute, ddr.cycles([(b["act"], 3 * n)]), 4, bytes=b)
        elif op == Opcode.EMBED:
            w = ins["width"]
            b = {"act": 2 * 4 * w * n}
            c = Cost(idx, "EMBED", "dma", 0.0, ddr.cycles([(b["act"], 2 * n)]), 2, bytes=b)
        elif op == Opcode.KV_APPEND:
            hkv, _, d = unpack_heads(ins["heads"])
            kvw = hkv * d * n * cfg.kv_bits / 8
            b = {"act": 4 * hkv * d * n, "kv": kvw}
            if ins["quant"] and cfg.kv_bits == 32:
                b["kv"] += 2 * kvw                          # in-place re-quantization of the joining group
            c = Cost(idx, "KV_APPEND", "dma", 0.0, ddr.cycles([(b["act"], 1), (b["kv"], hkv)]), 2, bytes=b)
        elif op == Opcode.ATTN:
            hq, hkv, d = unpack_heads(ins["heads"])
            causal = bool(ins.flags & Flag.CAUSAL)
            # sum over query rows t of T_t = pos + t + 1 (causal) or pos + n (not)
            t_sum = n * pos + n * (n + 1) / 2 if causal else n * (pos + n)
            compute = hq * attn_compute(cfg, d, t_sum, n) / max(1, cfg.attn_units)
            kv = hq * 2 * t_sum * d * cfg.kv_bits / 8       # K and V of its KV head per query head and row
            b = {"kv": kv, "act": 4 * hq * d * n * 2}
            c = Cost(idx, "ATTN", "attn", compute, ddr.cycles([(kv, 2 * hq * n), (b["act"], 2)]), 8, bytes=b)
        elif op == Opcode.ROPE:
            heads, _, d = unpack_heads(ins["heads"])
            b = {"act": 2 * 4 * heads * d * n + 2 * d * n}   # rows in and out, one table row per token
            c = Cost(idx, "ROPE", "dma", 0.0, ddr.cycles([(b["act"], 3 * n)]), 4, bytes=b)
        elif op == Opcode.LM_HEAD:
            c = self._lm_head(idx, ins, n)
        else:  # END
            c = Cost(idx, op.name, "dma", 0.0, 0.0, 0.0)
        c.latency += ddr.latency_cycles if c.ddr else 0.0
        return c

    def _lm_head(self, idx: int, ins, n: int) -> Cost:
        v, h = ins["vocab"], ins["width"]
        mode = self.cfg.lm_head
        if mode == "fabric-int8":
            # Projected unit (not built): an int8 GEMV streaming the [V, H] int8 weight from DDR.
            wb = v * h
            compute = v * h / self.cfg.lm_lanes
            return Cost(idx, "LM_HEAD", "linear", compute, self.ddr.cycles([(wb, 1)]), 20,
                        bytes={"weights": wb, "act": 4 * h + 4 * v})
        host = self.board.host
        bpw = 4 if mode == "host" else 1
        wb = v * h * bpw
        t = max(wb / (host.mem_gbps * 1e9), 2 * v * h / (host.gflops * 1e9)) + host.call_overhead_s
        cyc = t * self.cfg.clock_mhz * 1e6
        return Cost(idx, "LM_HEAD", "host", cyc, 0.0, 0.0, cycles=cyc, bytes={"host_lm_head": wb})

    # ------------------------------------------------------------------ one call
    def call(self, n: int, pos: int) -> CallResult:
        from ternc.backends.fpga.isa import Flag, Opcode

        costs, t = [], 0.0
        slack = 0.0        # DDR-idle cycles of the instructions since the last LINEAR (prefetch room)
        host_s = 0.0
        lo, hi = self.layer_span
        for idx, ins in enumerate(self.instrs):
            if ins.op == Opcode.END:
                break
            c = self.cost(idx, ins, n, pos)
            if lo <= idx < hi:
                c.weight = self.layer_scale
            if c.unit == "host":
                c.start = t
                host_s += c.cycles / (self.cfg.clock_mhz * 1e6)
                costs.append(c)
                if ins.flags & Flag.HOST:
                    break
                continue
            if c.prefetch_bytes and slack > 0:
                room = slack * self.ddr.bytes_per_cycle
                saved = min(c.prefetch_bytes, room) / self.ddr.bytes_per_cycle
                c.ddr = max(0.0, c.ddr - saved)
                slack = 0.0
            c.cycles = max(c.compute, c.ddr) + c.latency
            slack += max(0.0, c.cycles - c.ddr)
            c.start = t
            t += c.cycles * c.weight
            costs.append(c)
        return CallResult(n, pos, costs, t, host_s, self.cfg.clock_mhz)


# ---------------------------------------------------------------------- reports
PROMPTS = (64, 128, 512)
CONTEXTS = (64, 128, 256, 512, 1024, 2048)


def project(model: DataflowModel, context: int, prompts=PROMPTS, contexts=CONTEXTS) -> dict:
    """TTFT / prefill, decode vs context, bytes per token, utilization and bounds."""
    cfg = model.cfg
    rep = {"config": cfg.to_json(), "board": model.board.name, "ddr": model.ddr.describe(),
           "host": asdict(model.board.host), "context_compiled": context, "prefill": [], "decode": []}
    for p in prompts:
        if p > context:
            rep["prefill"].append({"prompt": p, "skipped": f"exceeds the compiled context {context}"})
            continue
        r = model.call(p, 0)
        rep["prefill"].append({"prompt": p, "ttft_s": r.seconds, "prefill_tok_s": p / r.seconds,
                               "accel_s": r.accel_s, "host_s": r.host_s, "bound": r.main_bound(),
                               "bound_cycles": _round(r.bound()), "bytes": _round(r.bytes()),
                               "utilization": _util(r)})
    for ctx in contexts:
        pos = ctx - 1
        if pos + 1 > context:
            rep["decode"].append({"context": ctx, "skipped": f"exceeds the compiled context {context}"})
            continue
        r = model.call(1, pos)
        rep["decode"].append({"context": ctx, "tok_s": 1.0 / r.seconds, "s_per_token": r.seconds,
                              "accel_s": r.accel_s, "host_s": r.host_s, "bound": r.main_bound(),
                              "bound_cycles": _round(r.bound()), "bytes_per_token": _round(r.bytes()),
                              "utilization": _util(r)})
    return rep


def _round(d: dict) -> dict:
    return {k: round(v, 1) for k, v in d.items()}


def _util(r: CallResult) -> dict:
    total = r.accel_cycles + r.host_s * r.clock_mhz * 1e6
    busy = r.unit_busy()
    busy["host"] = r.host_s * r.clock_mhz * 1e6
    return {k: round(v / total, 4) for k, v in busy.items()} if total else {}


def load(path, **over) -> tuple[DataflowModel, dict]:
    """The model of an artifact (checksums verified) with optional configuration overrides."""
    from ternc.backends.fpga.build import load_artifact

    art = load_artifact(path)
    layer_scale = over.pop("layer_scale", 1.0)
    cfg = config_from_artifact(art.manifest, **over)
    return DataflowModel(art.program.instrs, cfg, layer_scale=layer_scale), art.manifest


def simulate_artifact(path, out_dir=None, plots: bool = True, **over) -> dict:
    model, manifest = load(path, **over)
    ctx = int(manifest["accelerator"]["context"])
    rep = project(model, ctx)
    rep["artifact"] = str(path)
    rep["model"] = manifest["model"]["name"]
    rep["instructions"] = len(model.instrs)
    rep["layer_scale"] = model.layer_scale
    rep["calibration"] = calibration_table()
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "dataflow.json").write_text(json.dumps(rep, indent=1))
        if plots:
            from .plots import roofline_png, timeline_png

            roofline_png(model, rep, out / "roofline.png")
            timeline_png(model, out / "timeline.png", n=min(64, ctx), pos=0)
            timeline_png(model, out / "timeline_decode.png", n=1, pos=min(1023, ctx - 1))
            rep["plots"] = [str(out / p) for p in ("roofline.png", "timeline.png", "timeline_decode.png")]
    return rep


def calibration_table() -> list | None:
    p = Path(__file__).with_name("calibration.json")
    return json.loads(p.read_text())["rows"] if p.exists() else None


def text(rep: dict) -> str:
    d = rep["ddr"]
    lines = [f"dataflow model of {rep.get('artifact', '?')} ({rep.get('model', '?')}, {rep.get('instructions')} "
             f"instructions) on {rep['board']} at {rep['config']['clock_mhz']:g} MHz",
             f"engine {rep['config']['columns']}x{rep['config']['tables']} (G={rep['config']['group']}) x "
             f"{rep['config']['engines']}, weight buffer {rep['config']['wbuf_depth']} beats, KV {rep['config']['kv_bits']} "
             f"bits, LM head {rep['config']['lm_head']}",
             f"DDR: {d['peak_GBps']} GB/s peak x {d['efficiency']} = {d['sustained_GBps']} GB/s; {d['ports']} ports "
             f"x {d['port_bytes_per_cycle']} B/cycle = {d['ports_GBps']} GB/s; bursts {d['burst']}; "
             f"latency {d['latency_cycles']} cycles",
             f"host: {rep['host']['name']}: {rep['host']['mem_gbps']} GB/s, {rep['host']['gflops']} GFLOP/s (assumed)",
             "", "| prompt | TTFT s | prefill tok/s | bound |", "|---|---|---|---|"]
    for p in rep["prefill"]:
        if "skipped" in p:
            lines.append(f"| {p['prompt']} | - | - | {p['skipped']} |")
        else:
            lines.append(f"| {p['prompt']} | {p['ttft_s']:.4g} | {p['prefill_tok_s']:.4g} | {p['bound']} |")
    lines += ["", "| context | decode tok/s | bound | weights B/tok | KV B/tok | act B/tok | host B/tok |",
              "|---|---|---|---|---|---|---|"]
    for r in rep["decode"]:
        if "skipped" in r:
            lines.append(f"| {r['context']} | - | {r['skipped']} | | | | |")
            continue
        b = r["bytes_per_token"]
        lines.append(f"| {r['context']} | {r['tok_s']:.4g} | {r['bound']} | {b['weights']:.4g} | {b['kv']:.4g} | "
                     f"{b['act']:.4g} | {b['host_lm_head']:.4g} |")
    dec = [r for r in rep["decode"] if "utilization" in r]
    if dec:
        u = dec[min(len(dec) - 1, 4)]
        lines += ["", f"utilization at decode context {u['context']}: " +
                  ", ".join(f"{k} {100 * v:.1f}%" for k, v in u["utilization"].items())]
    if rep.get("calibration"):
        lines += ["", "calibration vs RTL (sim/calibration.json):", "| unit | config | RTL cycles | model | error |",
                  "|---|---|---|---|---|"]
        for c in rep["calibration"]:
            lines.append(f"| {c['unit']} | {c['config']} | {c['rtl']} | {c['model']} | {100 * c['error']:+.2f}% |")
    return "\n".join(lines)
