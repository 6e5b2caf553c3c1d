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
    # The controllers (hw/ctl_*.py) around the units, as built; L = the read latency they see.
    lin_setup: int = 7           # LinearCtl: start -> the first read commands
    lin_load_setup: int = 3      # LinearCtl: loader: group size in two registered steps, then the command
    lin_quant_div: int = 58      # LinearCtl: quantizer DIV_INIT + 56 divider steps + DIV_DONE
    lin_quant_q: int = 1         # LinearCtl: quantize phase beyond its kpad/3 reads
    lin_front_gap: int = 0       # LinearCtl: quantize -> load of the next row
    lin_replay_gap: int = 2      # LinearCtl: back end WAIT -> REPLAY
    lin_drain: int = 16          # LinearCtl: last chunk -> last output beat written
    lin_finish: int = 6          # LinearCtl: last write -> done -> busy falls, per pass
    rope_row: float = 0.25       # RopeCtl: per row beyond its W rotations
    rope_fixed: int = 12         # RopeCtl: per instruction beyond L (pipeline, last write + done)
    norm_row: float = 9.5        # NormCtl: per row beyond 2 ceil(W / lanes) (RSQRT, handshakes)
    norm_fixed: float = 13.5     # NormCtl: per instruction beyond W/4 (gamma) + L: the AXI master overlaps the
                                 # gamma and row reads (fitted on the top; memport_tb serves them one after the other)
    attn_div: int = 78           # AttnCtl: the V phase lasts at least the reciprocal's 80 steps
    attn_head: int = 11          # AttnCtl: per (row, head) phase changes and drains
    attn_fixed: int = 7          # AttnCtl: per instruction beyond L
    pattn_head: int = 12         # PrefillAttnCtl: per (block, head)
    pattn_block: int = 10        # PrefillAttnCtl: per block
    embed_row: float = 6.25      # EmbedCtl: per token beyond W/4 + 2 L (id read, row copy, done)
    embed_fixed: float = 2.75    # EmbedCtl: per instruction
    fetch: int = 6               # sequencer: fetch (2 beats) + decode + dispatch per instruction, beyond L


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
    attn_block: int = 4          # PrefillAttnCtl: query rows per K/V stream (ATTN with N > 1)
    kv_bits: int = 32            # stored KV bits per element (32: the artifact's 24-bit KV words in int32)
    lm_head: str = "host"        # host (f32, as built) | host-int8 | fabric-int8 (projected)
    lm_lanes: int = 64           # fabric LM head: int8 MACs per cycle (projected unit)
    board: str = "kv260"
    kv_group: int = 0            # KIVI group the KV_APPEND controller quantizes (0: no quantize-kv)
    prefetch: bool = False       # projected: LINEAR weights prefetched during earlier instructions
                                 # (as built, LinearCtl loads its first weight group after its start)
    cal: UnitCal = UnitCal()

    @property
    def weight_ports(self) -> int:
        """HP ports streaming LINEAR weights: LinearCtl reads weights on rd0, rows on rd1, the side
        operand on rd2 (as built: 3 ports, 1 for weights); further ports would carry weights."""
        return max(1, self.hp_ports - 2)

    @property
    def engine_ddr_beats(self) -> int:
        """DDR beats per engine beat in the weight image (images.py pads each to whole beats)."""
        return -(-self.beat_bytes // (self.axi_data_bits // 8))

    @property
    def beat_bytes(self) -> int:
        return -(-self.columns * self.tables * 5 // 8) if self.group == 3 else \
            -(-self.columns * self.tables * (math.ceil(math.log2((3 ** self.group - 1) // 2 + 1)) + 1) // 8)

    @property
    def image_beat_bytes(self) -> int:
        """DDR bytes per engine beat: the image pads each beat to whole 16-byte DDR beats."""
        return -(-self.beat_bytes // 16) * 16

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
                     norm_lanes=c["norm_lanes"], attn_lanes=c["attn_lanes"], attn_block=c.get("attn_block", 4),
                     lm_head=acc.get("lm_head", "host"))
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
    overhead: float = 0.0        # sequencer: instruction fetch + decode + dispatch
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
def linear_groups(cfg: SimConfig, k: int, nn: int, passes: int = 1) -> tuple[int, int, int, int]:
    """(chunks per tile, column tiles, tiles per weight group, groups) as LinearCtl cuts a LINEAR:
    all tiles in one group when they fit the weight buffer, else groups of half of it (double
    buffering). ``passes`` is unused (gates run two passes, each with its own groups)."""
    chunks = -(-k // (cfg.group * cfg.tables))
    tiles = -(-nn // cfg.columns)
    per = tiles if tiles * chunks <= cfg.wbuf_depth else max(1, (cfg.wbuf_depth // 2) // chunks)
    return chunks, tiles, per, -(-tiles // per)


def linear_compute(cfg: SimConfig, k: int, nn: int, n: int, passes: int = 1) -> tuple[float, float]:
    """(busy cycles, fill latency) of the linear pipeline for n tokens of one [K -> N] LINEAR: per
    token and weight group the quantizer's load + divide + quantize (``qtok``), then one weight beat
    per cycle per column tile (x passes for gated epilogues); the quantizer's two banks overlap the
    next token's qtok with the current replay, so the (token, group) items cost max(qtok, replay)
    each after the first; engines split the tiles."""
    cal = cfg.cal
    chunks, tiles, _, groups = linear_groups(cfg, k, nn, passes)
    e = max(1, min(cfg.engines, tiles))
    kpad = chunks * cfg.group * cfg.tables
    qtok = 2 * -(-kpad // cfg.quant_lanes) + cal.quant_div + cal.quant_fixed
    items = n * -(-groups // e)
    replay = n * -(-tiles // e) * chunks * passes / items      # engine cycles per (token, group) item
    compute = qtok + replay + (items - 1) * max(qtok, replay)
    levels = max(1, math.ceil(math.log2(cfg.tables)))
    return compute, levels + 3 + cal.engine_fill + cal.dq_latency + cal.epilogue_latency


def norm_compute(cfg: SimConfig, k: int, n: int) -> float:
    return n * (2 * -(-k // cfg.norm_lanes) + cfg.cal.norm_overhead)


def attn_compute(cfg: SimConfig, d: int, t_sum: float, rows: int) -> float:
    """Cycles of one query head over ``rows`` query rows that see ``t_sum`` keys in total."""
    wd = -(-d // cfg.attn_lanes)
    return 2 * t_sum * wd + t_sum + rows * (4 * wd + cfg.cal.attn_overhead)


# ---------------------------------------------------------------------- the controllers as built
# Each function is the cycle count of one instruction on its controller (hw/ctl_*.py) with memory
# answering after L cycles at one beat per cycle per port (sim/calibrate.py compares them with the
# controllers' RTL; the whole-top counters with the same functions summed per unit).
def ctl_linear(cfg: SimConfig, k: int, nn: int, n: int, passes: int, lat: float) -> float:
    """LinearCtl (its module docstring's recurrence): column groups of the weight buffer (all tiles
    when they fit, else half of it each, double-buffered); group g's weights (``engine_ddr_beats`` DDR
    beats per engine beat, over ``weight_ports``) load L cycles after their command; per token the
    quantizer's front end loads (ceil(kpad/lanes)) and divides, then quantizes into one of two banks
    (free once the token before last replayed), and the back end replays one engine chunk per cycle
    per tile of the group (split over ``engines``, projected); group g+1's load starts when group g's
    is done and group g-1 is computed; setup, drain and finish per pass."""
    cal = cfg.cal
    chunk = cfg.group * cfg.tables
    nb = -(-k // chunk)
    kpad = nb * chunk
    kq = -(-kpad // cfg.quant_lanes)
    _, tiles, gsize, _ = linear_groups(cfg, k, nn)
    groups = [min(gsize, tiles - t0) for t0 in range(0, tiles, gsize)]
    e = max(1, cfg.engines)
    beats = lambda g: g * nb * cfg.engine_ddr_beats / cfg.weight_ports  # noqa: E731
    load_done = [cal.lin_setup + cal.lin_load_setup + lat + beats(groups[0])]
    computed: list[float] = []
    front_free = cal.lin_setup + lat
    back = [-1e18, -1e18]                                  # replay ends of the two previous tokens
    for g, gt in enumerate(groups):
        replay = -(-gt // e) * nb
        for _ in range(n):
            quant = max(front_free + kq + cal.lin_quant_div, back[-2])
            front_done = quant + kq + cal.lin_quant_q
            front_free = front_done + cal.lin_front_gap
            start = max(front_done, back[-1] + cal.lin_replay_gap, load_done[g])
            back = [back[-1], start + replay]
        computed.append(back[-1] + cal.lin_drain)
        if g + 1 < len(groups):
            st = max(load_done[g], computed[g - 1] if g else 0.0)
            load_done.append(st + cal.lin_load_setup + lat + beats(groups[g + 1]))
    return passes * (computed[-1] + cal.lin_finish)


def ctl_prefill_attn(cfg: SimConfig, hq: int, d: int, n: int, pos: int, causal: bool, lat: float) -> float:
    """PrefillAttnCtl (ATTN with N > 1): ``attn_block`` query rows share one K/V stream per (block,
    head); per (block, head) the longest row's phases (as AttnCtl's) + 12; per block (B-1) (W +
    hq d/4) (serial q loads, rows written at the end) + 10; + L - 4 per instruction."""
    cal = cfg.cal
    w = -(-d // cfg.attn_lanes)
    blk = max(1, cfg.attn_block)
    total = lat - 4.0
    for t0 in range(0, n, blk):
        nb = min(blk, n - t0)
        T = pos + t0 + nb if causal else pos + n
        total += hq * (w + T * w + T + max(T * w, cal.attn_div) + 3 * w + cal.pattn_head)
        total += (nb - 1) * (w + hq * d / 4) + cal.pattn_block
    return total


def ctl_norm(cfg: SimConfig, w: int, n: int, lat: float) -> float:
    """NormCtl: gamma (W/4 beats) once, then per row the norm unit's LOAD + EMIT (2 ceil(W/lanes)) +
    its RSQRT/handshakes; one read latency (the row read queues behind gamma's) and the last write's done."""
    cal = cfg.cal
    return w / 4 + n * (2 * -(-w // cfg.norm_lanes) + cal.norm_row) + cal.norm_fixed + lat


def ctl_attn(cfg: SimConfig, hq: int, d: int, n: int, pos: int, causal: bool, lat: float) -> float:
    """AttnCtl: per query row and head, the decode unit's Q, K (T keys), P, V (at least the
    reciprocal's steps), OUT phases over W = ceil(d / lanes) lane beats; K/V stream behind, so the
    read latency is paid once per instruction. ``attn_units`` (projected) split the heads."""
    cal = cfg.cal
    w = -(-d // cfg.attn_lanes)
    per_row = []
    for t in range(n):
        T = pos + t + 1 if causal else pos + n
        per_row.append(w + T * w + T + max(T * w, cal.attn_div) + 3 * w + cal.attn_head)
    heads = -(-hq // max(1, cfg.attn_units))
    return cal.attn_fixed + lat + heads * sum(per_row)


def ctl_rope(cfg: SimConfig, heads: int, d: int, n: int, lat: float) -> float:
    """RopeCtl: the first row and its table row load (max(W/4, d) beats), then one rotated word per
    cycle (W = heads * d) while the next row loads into the other bank."""
    w = heads * d
    return max(w / 4, d) + n * (w + cfg.cal.rope_row) + cfg.cal.rope_fixed + lat


def ctl_embed(cfg: SimConfig, w: int, n: int, lat: float) -> float:
    """EmbedCtl: per token, read the id's beat, then copy the row (W/4 beats), one at a time."""
    return n * (w / 4 + 2 * lat + cfg.cal.embed_row) + cfg.cal.embed_fixed


def ctl_kv_append(n: int, pos: int, hkv: int, d: int, quant, values: bool, lat: float) -> float:
    """KvAppendCtl: hw/ctl_kv.cycle_model (word-serial append; KIVI groups joining the span)."""
    from ternc.hw.ctl_kv import cycle_model

    return cycle_model(n, pos, hkv, d, quant, values, latency=lat)


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
    def cost(self, idx: int, ins, n: int, pos: int) -> Cost:
        """One instruction: its controller's cycles (``compute``, read latency L included), the DDR
        time of its bytes at the board's sustained rate (+ L), and the sequencer's fetch + dispatch
        (``overhead``). It lasts max(compute, ddr) + overhead."""
        from ternc.backends.fpga.images import kv_row_words
        from ternc.backends.fpga.isa import Epilogue, Flag, Opcode, unpack_heads, unpack_kn, unpack_kvquant

        cfg, ddr = self.cfg, self.ddr
        lat = ddr.latency_cycles
        op = ins.op
        fetch = cfg.cal.fetch + lat
        if op == Opcode.LINEAR:
            k, nn = unpack_kn(ins["kn"])
            passes = 2 if ins.epilogue in (Epilogue.GATE_SILU, Epilogue.GATE_RELU2) else 1
            chunks, tiles, tiles_per_group, groups = linear_groups(cfg, k, nn, 1)
            w_bytes = passes * tiles * chunks * cfg.engine_ddr_beats * (cfg.axi_data_bits // 8)
            aux = 4 * nn * n if ins.epilogue == Epilogue.RESIDUAL else 0
            aux += 4 * nn * n if passes == 2 else 0           # the gate pass reads the up values back
            act = passes * (4 * k * n * groups + 4 * nn * n) + aux
            b = {"weights": w_bytes, "act": act}
            first = min(w_bytes, tiles_per_group * chunks * cfg.engine_ddr_beats * (cfg.axi_data_bits // 8))
            c = Cost(idx, "LINEAR", "linear", ctl_linear(cfg, k, nn, n, passes, lat),
                     ddr.cycles([(w_bytes, groups * passes), (act, 3 * passes)]) + lat, 0.0, bytes=b,
                     prefetch_bytes=first if cfg.prefetch else 0.0)
        elif op == Opcode.RMSNORM:
            w = ins["width"]
            b = {"act": 4 * w + 8 * w * n}                      # gamma once, rows in and out
            c = Cost(idx, "RMSNORM", "norm", ctl_norm(cfg, w, n, lat), ddr.cycles([(b["act"], 3)]) + lat, 0.0,
                     bytes=b)
        elif op == Opcode.EMBED:
            w = ins["width"]
            b = {"act": 2 * 4 * w * n + 16 * n}
            c = Cost(idx, "EMBED", "dma", ctl_embed(cfg, w, n, lat), ddr.cycles([(b["act"], 3 * n)]) + lat, 0.0,
                     bytes=b)
        elif op == Opcode.KV_APPEND:
            hkv, _, d = unpack_heads(ins["heads"])
            r = kv_row_words(d)
            quant = unpack_kvquant(ins["quant"]) if ins["quant"] else None
            values = bool(ins.flags & Flag.VALUES)
            kv = hkv * r * n * cfg.kv_bits / 8
            if quant:
                from ternc.hw.ctl_kv import new_groups

                kv += 2 * hkv * quant[1] * r * len(new_groups(n, pos, quant)) * cfg.kv_bits / 8
            b = {"act": 4 * hkv * d * n, "kv": kv}
            c = Cost(idx, "KV_APPEND", "dma", ctl_kv_append(n, pos, hkv, d, quant, values, lat),
                     ddr.cycles([(b["act"], 1), (kv, hkv * n)]) + lat, 0.0, bytes=b)
        elif op == Opcode.ATTN:
            hq, hkv, d = unpack_heads(ins["heads"])
            causal = bool(ins.flags & Flag.CAUSAL)
            t_sum = n * pos + n * (n + 1) / 2 if causal else n * (pos + n)
            kv = hq * 2 * t_sum * kv_row_words(d) * cfg.kv_bits / 8   # K and V of its KV head per query head and row
            b = {"kv": kv, "act": 4 * hq * d * n * 2}
            if n > 1:      # the top dispatches prefill ATTN to PrefillAttnCtl: K/V once per block of rows
                t_sum = sum((pos + min(t0 + cfg.attn_block, n) if causal else pos + n)
                            for t0 in range(0, n, max(1, cfg.attn_block)))
                kv = hq * 2 * t_sum * kv_row_words(d) * cfg.kv_bits / 8
                b = {"kv": kv, "act": 4 * hq * d * n * 2}
            unit_cycles = (ctl_prefill_attn(cfg, hq, d, n, pos, causal, lat) if n > 1
                           else ctl_attn(cfg, hq, d, n, pos, causal, lat))
            c = Cost(idx, "ATTN", "attn", unit_cycles,
                     ddr.cycles([(kv, 2 * hq * n), (b["act"], 2)]) + lat, 0.0, bytes=b)
        elif op == Opcode.ROPE:
            heads, _, d = unpack_heads(ins["heads"])
            b = {"act": 2 * 4 * heads * d * n + 2 * d * n}      # rows in and out, one table row per token
            c = Cost(idx, "ROPE", "dma", ctl_rope(cfg, heads, d, n, lat), ddr.cycles([(b["act"], 3 * n)]) + lat,
                     0.0, bytes=b)
        elif op == Opcode.LM_HEAD:
            c = self._lm_head(idx, ins, n)
            c.overhead = fetch                                  # the sequencer stops on it (host flag)
            return c
        else:  # END
            c = Cost(idx, op.name, "dma", 0.0, 0.0, 0.0)
        c.overhead = fetch
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
                t += c.overhead                   # the sequencer fetches it, then the host takes over
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
            c.cycles = max(c.compute, c.ddr) + c.latency + c.overhead
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
    rep["calibration_sections"] = calibration_sections()
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


def calibration_sections() -> dict:
    """The controller (per instruction / unit / call) and whole-top sections of calibration.json."""
    p = Path(__file__).with_name("calibration.json")
    d = json.loads(p.read_text()) if p.exists() else {}
    return {k: d[k] for k in ("controllers", "top") if k in d}


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
    sec = rep.get("calibration_sections") or {}
    if sec.get("controllers"):
        ctl = sec["controllers"]
        lines += ["", f"controllers vs their RTL, summed per unit and call ({ctl['source']}):",
                  "| configuration | call | unit | RTL cycles | model | error |", "|---|---|---|---|---|---|"]
        for c in ctl["per_unit"]:
            lines.append(f"| {c['config']} | {c['call']} | {c['unit']} | {c['rtl']} | {c['model']} | "
                         f"{100 * c['error']:+.2f}% |")
        w = ctl.get("max_instruction_error")
        if w:
            lines.append(f"largest per-instruction error: {100 * w['error']:+.2f}% ({w['config']} {w['op']} "
                         f"n={w['n']} pos={w['pos']}: RTL {w['rtl']}, model {w['model']})")
    if sec.get("top"):
        top = sec["top"]
        lines += ["", f"whole top (Verilator) vs the model, per call ({top['source']}):",
                  "| configuration | call | counter | RTL cycles | model | error |", "|---|---|---|---|---|---|"]
        for c in top["rows"]:
            lines.append(f"| {c['config']} | {c['call']} | {c['counter']} | {c['rtl']} | {c['model']} | "
                         f"{100 * c['error']:+.2f}% |")
    return "\n".join(lines)
