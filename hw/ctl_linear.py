"""LinearCtl: executes the LINEAR instruction (backends/fpga/isa.py) on the TLMM pipeline.

The controller wraps :class:`~ternc.hw.pipeline.TLMMPipeline` (ActQuantizer -> TLMMCore with its
weight buffer -> DqFactor -> Epilogue) and moves the instruction's data through the memory ports of
hw/ports.py (the sequencer connects them to the DMA engines):

* ``rd0`` -- weights: the layer's image (images.py: engine beats tile-major, each padded to
  ``eb`` = ceil(beat_bytes / 16) DDR beats) into the weight buffer, one read command per column group.
* ``rd1`` -- activations: the N_TOKENS source rows (K FX words each, 4 per DDR beat), one read
  command per column group; a 4 -> 3 word gearbox feeds the quantizer's 3-word input and zero-fills
  each row from K to the chunk boundary (``nb`` chunks of G x tables).
* ``rd2`` -- the epilogue's FX side operand, per token and column group: the residual rows (``aux``,
  RESIDUAL) or the up projection's values (``dst``, second pass of a gate); a partial last tile is
  zero-filled on chip (those lanes are never written).
* ``wr`` -- outputs: per token and column group one write command of the group's valid words
  (``columns`` FX words per engine beat; only the N valid words of the last tile).

Column groups: ``tiles`` = ceil(N / columns) column tiles of ``nb`` engine beats each. When all
tiles*nb beats fit the weight buffer (``wbuf_depth``), one group holds all tiles. Otherwise a group is
``gsize`` = (wbuf_depth // 2) // nb tiles, stored alternately in the two halves of the buffer: the
weights of group g+1 load while group g computes (they may load once group g-1 is finished). Each
group reads its weights once and reuses them for every token (prefill reuse), the token rows are
re-streamed per group (the quantizer replays a token ``passes`` = tiles of the group times).

Epilogues: NONE, RESIDUAL in one engine pass. GATE_SILU / GATE_RELU2 in two: the up projection
(image ``aux``, scale ``aux2``) with NONE into ``dst``, then (after every write of that pass is done)
the gate projection with the hardware op silu_mul / relu2_mul (hw/epilogue.py) reading the up values
back from ``dst`` as its side operand. Reading ``dst`` while writing it is safe: the output beat of a
tile is computed from that tile's side operand, so every word is read before it is overwritten, and
other tiles' addresses do not overlap. ROPE (no longer emitted by the schedule) or any other
epilogue, K or N not a positive multiple of 4, nb > max_chunks, a column tile that does not fit half
the buffer, or more than 4,095 tiles in a group raise ``error`` (nothing is read or written).

Cycles (start to idle) -- the analytic model :func:`cycle_model`, on which the dataflow simulator is
calibrated (memory answering every beat ``L`` cycles after its command, no backpressure)::

    pre      = 2 * kpad/3 + 59      quantizer per token: load kpad/3 beats, divide (58), quantize kpad/3
    replay_g = gtiles_g * nb        engine chunks per token of group g (one per cycle)
    load_g   = L + gtiles_g * nb * eb   weight DDR beats of group g (eb = DDR beats per engine beat)
    group g, token t:  replay starts at max(quantizer free + pre, load_g done); +1 cycle gap
    load_{g+1} starts when load_g is done and group g-1 is computed (double buffering)
    total    = passes * (7 setup + ... + 16 drain + 6 finish),  passes = 2 for gates

i.e. ~ passes * (load_0 + groups * T * (pre + gtiles * nb)) when compute hides the next loads; with
T tokens the weights are read once per group (prefill reuse). The quantizer does not overlap a
token's load/divide/quantize with the previous token's replay, so with few tiles per group the
per-token ``pre`` dominates the engine time (tiny-bitnet K = 168: pre = 171 cycles vs 14 chunks per
tile). tests/hw/test_ctl_linear.py checks model vs simulation.
"""

from __future__ import annotations

import numpy as np
from amaranth import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import Out

from ternc.hw.pipeline import TLMMPipeline
from ternc.hw.ports import BEAT_BITS, BEAT_BYTES, op_control_signature, read_port_signature, write_port_signature
from ternc.ir import hw_numerics as hwn
from ternc.ir.enums import Epilogue as Op

__all__ = ["LinearCtl", "cycle_model"]

# isa.Epilogue codes (kept numeric here: hw/ does not import the backend)
_EP_NONE, _EP_RESIDUAL, _EP_ROPE, _EP_GATE_SILU, _EP_GATE_RELU2 = 0, 1, 2, 3, 4
_LANES = 3           # the quantizer's input words per beat
_FX = hwn.FX_BITS
_WPB = BEAT_BITS // _FX   # FX words per DDR beat
# cycle_model constants (measured on the simulator, tests/hw/test_ctl_linear.py)
SETUP_CYCLES = 7          # start -> the first read commands
QUANT_FIXED = 59          # per token: DIV_INIT + 56 divider steps + DIV_DONE + phase changes
REPLAY_GAP = 1
PIPE_DRAIN = 16           # last chunk -> last output beat written (engine + epilogue + writer)
FINISH_CYCLES = 6         # last write -> its done -> busy falls


def _ceil_div_const(x, d: int, width: int):
    """ceil(x / d) for 0 <= x < 2**width as a constant multiply + shift (exactness checked here)."""
    if d & (d - 1) == 0:
        return (x + (d - 1)) >> (d.bit_length() - 1)
    s = width + d.bit_length() + 1
    mul = -(-(1 << s) // d)
    v = np.arange((1 << width) + d, dtype=np.int64)
    if not np.array_equal((v * mul) >> s, v // d):
        raise AssertionError(f"reciprocal multiply for /{d} is not exact")
    return ((x + (d - 1)) * mul) >> s


def cycle_model(k: int, n: int, n_tokens: int, epilogue: int, group: int, tables: int, columns: int,
                wbuf_depth: int, latency: int = 4) -> int:
    """The analytic cycle count of one LINEAR (module docstring): a recurrence over column groups and
    tokens with memory answering every beat ``latency`` cycles after its command, no backpressure."""
    chunk = group * tables
    nb = -(-k // chunk)
    kpad = nb * chunk
    tiles = -(-n // columns)
    eb = -(-columns * tables * (hwn.tlg_index_bits(group) + 1) // BEAT_BITS)
    gsize = tiles if tiles * nb <= wbuf_depth else (wbuf_depth // 2) // nb
    groups = [min(gsize, tiles - t0) for t0 in range(0, tiles, gsize)]
    pre = 2 * (kpad // 3) + QUANT_FIXED                 # quantizer: load, divide, quantize one token
    t0 = SETUP_CYCLES
    load_done = [t0 + latency + groups[0] * nb * eb]
    computed: list[int] = []
    q_free = t0 + latency                               # the quantizer takes the first row
    for g, gt in enumerate(groups):
        for _ in range(n_tokens):
            replay = max(q_free + pre, load_done[g])
            q_free = replay + gt * nb + REPLAY_GAP
        computed.append(q_free + PIPE_DRAIN)
        if g + 1 < len(groups):                         # the next group's slot frees when g-1 is done
            start = max(load_done[g], computed[g - 1] if g else 0)
            load_done.append(start + latency + groups[g + 1] * nb * eb)
    passes = 2 if epilogue in (_EP_GATE_SILU, _EP_GATE_RELU2) else 1
    return passes * (computed[-1] + FINISH_CYCLES)


class LinearCtl(wiring.Component):
    """The LINEAR controller (module docstring). Geometry: the engine (``group``, ``tables``,
    ``columns``), the weight buffer (``wbuf_depth`` engine beats) and the quantizer's
    ``max_chunks`` (K <= max_chunks * G * tables)."""

    READ_PORTS = 3
    OPS = (Op.NONE, Op.RESIDUAL_ADD, Op.SILU_MUL, Op.RELU2_MUL)   # the epilogue's runtime ops

    def __init__(self, group: int = 3, tables: int = 28, columns: int = 16, wbuf_depth: int = 4096,
                 max_chunks: int = 128, ram_style: str | None = "ultra"):
        if group != 3:
            raise ValueError(f"LinearCtl: group={group}; the weight images are TL2 (G = 3)")
        if columns % _WPB:
            raise ValueError(f"LinearCtl: columns={columns} must be a multiple of {_WPB} (whole DDR beats of outputs)")
        if wbuf_depth < 2 or max_chunks < 1:
            raise ValueError("LinearCtl: wbuf_depth >= 2 and max_chunks >= 1")
        self.group, self.tables, self.columns = group, tables, columns
        self.wbuf_depth, self.max_chunks, self.ram_style = wbuf_depth, max_chunks, ram_style
        self.chunk = group * tables
        self.eng_bits = columns * tables * (hwn.tlg_index_bits(group) + 1)
        self.eb = -(-self.eng_bits // BEAT_BITS)          # DDR beats per engine beat
        super().__init__({
            "ctl": Out(op_control_signature()),
            **{f"rd{i}": Out(read_port_signature()) for i in range(self.READ_PORTS)},
            "wr": Out(write_port_signature()),
        })

    def cycle_model(self, k: int, n: int, n_tokens: int, epilogue: int, latency: int = 4) -> int:
        return cycle_model(k, n, n_tokens, epilogue, self.group, self.tables, self.columns, self.wbuf_depth,
                           latency)

    def elaborate(self, platform):
        m = Module()
        C, EB, CH = self.columns, self.eb, self.chunk
        depth = self.wbuf_depth
        cpb = C // _WPB                       # DDR beats per engine output beat
        m.submodules.pipe = pipe = TLMMPipeline(self.group, self.tables, C, self.OPS, wbuf_depth=depth,
                                                ram_style=self.ram_style, max_chunks=self.max_chunks,
                                                quant_lanes=_LANES)
        ctl = self.ctl
        rd_w, rd_x, rd_a, wr = self.rd0, self.rd1, self.rd2, self.wr

        # ------------------------------------------------------------ instruction registers
        ep = Signal(8)
        k = Signal(16)
        n = Signal(16)
        n_tok = Signal(16)
        f_src, f_dst, f_w, f_ws, f_aux, f_aux2 = (Signal(32, name=nm) for nm in
                                                  ("f_src", "f_dst", "f_weights", "f_ws", "f_aux", "f_aux2"))
        nb = Signal(16)          # chunks (engine beats) per column tile
        tiles = Signal(16)
        total_e = Signal(32)     # tiles * nb
        fits = Signal()
        gsize = Signal(16)       # tiles per column group
        region = Signal(32)      # engine beats per group slot in the buffer (gsize * nb)
        region_bytes = Signal(32)
        gcols = Signal(32)       # words per full group (gsize * columns)
        kpad3 = Signal(16)       # quantizer beats per row
        kpad = Signal(18)
        act_beats = Signal(32)   # DDR beats of all token rows (T * K / 4)
        row_bytes_k = Signal(20)  # 4 * K
        row_bytes_n = Signal(20)  # 4 * N
        # per pass
        p_w = Signal(32)
        p_wsm = Signal(hwn.DQ_MANT_BITS)
        p_wss = Signal(8)
        p_sel = Signal(range(len(self.OPS)))
        p_aux_on = Signal()
        p_aux_base = Signal(32)
        second = Signal()        # the gate pass of a GATE_* instruction (after the up pass)
        go = Signal()            # one-cycle pulse: start every unit on the pass

        loaded = Signal(16)      # groups whose weights are in the buffer
        computed = Signal(16)    # groups whose outputs all left the pipeline

        m.d.comb += [pipe.ws_m.eq(p_wsm), pipe.ws_s.eq(p_wss), pipe.sel.eq(p_sel)]

        runs = {u: Signal(name=f"run_{u}") for u in ("load", "cmd", "xin", "xout", "auxc", "auxd", "wcmd", "wdat")}
        w_issued = Signal(32)
        w_done = Signal(32)
        m.d.comb += wr.done.ready.eq(1)
        with m.If(wr.done.valid):
            m.d.sync += w_done.eq(w_done + 1)

        gt_rom = [Const((depth // 2) // i if i else 0, 16) for i in range(self.max_chunks + 1)]

        tiles_e = _ceil_div_const(n, C, 16)
        nb_e = _ceil_div_const(k, CH, 16)
        wd = ctl.instr
        with m.FSM(name="main"):
            with m.State("IDLE"):
                with m.If(ctl.start):
                    m.d.sync += [ctl.busy.eq(1), ctl.error.eq(0), ep.eq(wd[0][8:16]), k.eq(wd[3][:16]),
                                 n.eq(wd[3][16:]), n_tok.eq(ctl.n_tokens), f_src.eq(wd[1]), f_dst.eq(wd[2]),
                                 f_w.eq(wd[4]), f_ws.eq(wd[5]), f_aux.eq(wd[6]), f_aux2.eq(wd[7]), second.eq(0)]
                    m.next = "S1"
            with m.State("S1"):
                m.d.sync += [tiles.eq(tiles_e), nb.eq(nb_e), row_bytes_k.eq(k << 2), row_bytes_n.eq(n << 2),
                             act_beats.eq(n_tok * k[2:])]
                m.next = "S2"
            with m.State("S2"):
                rom = Signal(16)
                with m.Switch(nb):
                    for i, v in enumerate(gt_rom):
                        with m.Case(i):
                            m.d.comb += rom.eq(v)
                m.d.sync += [total_e.eq(tiles * nb), kpad.eq(nb * CH), kpad3.eq(nb * (CH // _LANES))]
                m.d.sync += gsize.eq(rom)
                m.next = "S3"
            with m.State("S3"):
                m.d.sync += fits.eq(total_e <= depth)
                with m.If(total_e <= depth):
                    m.d.sync += gsize.eq(tiles)
                m.next = "S4"
            with m.State("S4"):
                m.d.sync += [region.eq(gsize * nb), gcols.eq(gsize * C)]
                bad = ((ep != _EP_NONE) & (ep != _EP_RESIDUAL) & (ep != _EP_GATE_SILU) & (ep != _EP_GATE_RELU2)) | \
                      (k == 0) | (n == 0) | (k[:2] != 0) | (n[:2] != 0) | (nb > self.max_chunks) | \
                      (gsize == 0) | (gsize >= 4096)
                with m.If(bad):
                    m.d.sync += ctl.error.eq(1)
                    m.next = "FINISH"
                with m.Elif(n_tok == 0):
                    m.next = "FINISH"
                with m.Else():
                    m.next = "PASS"
            with m.State("PASS"):
                m.d.sync += region_bytes.eq(region * (EB * BEAT_BYTES))
                gate = (ep == _EP_GATE_SILU) | (ep == _EP_GATE_RELU2)
                with m.If(gate & ~second):     # up projection, plain
                    m.d.sync += [p_w.eq(f_aux), p_wsm.eq(f_aux2[:24]), p_wss.eq(f_aux2[24:]), p_sel.eq(0),
                                 p_aux_on.eq(0)]
                with m.Else():
                    m.d.sync += [p_w.eq(f_w), p_wsm.eq(f_ws[:24]), p_wss.eq(f_ws[24:]),
                                 p_sel.eq(Mux(ep == _EP_RESIDUAL, 1, Mux(ep == _EP_GATE_SILU, 2,
                                                                         Mux(ep == _EP_GATE_RELU2, 3, 0)))),
                                 p_aux_on.eq((ep == _EP_RESIDUAL) | gate),
                                 p_aux_base.eq(Mux(gate, f_dst, f_aux))]
                m.d.sync += [loaded.eq(0), computed.eq(0), w_issued.eq(0), w_done.eq(0)]
                m.next = "GO"
            with m.State("GO"):
                m.d.comb += go.eq(1)
                m.next = "WAIT"
            with m.State("WAIT"):
                idle = ~Cat(*runs.values()).any() & (w_done == w_issued)
                with m.If(idle):
                    with m.If(((ep == _EP_GATE_SILU) | (ep == _EP_GATE_RELU2)) & ~second):
                        m.d.sync += second.eq(1)
                        m.next = "PASS"
                    with m.Else():
                        m.next = "FINISH"
            with m.State("FINISH"):
                m.d.sync += ctl.busy.eq(0)
                m.next = "IDLE"

        with m.If(go):
            m.d.sync += [r.eq(1) for r in runs.values()]
        for u in ("auxc", "auxd"):
            with m.If(go & ~p_aux_on):
                m.d.sync += runs[u].eq(0)

        def gtiles_of(t0):
            left = Signal(16, name=f"left_{t0.name}")
            m.d.comb += left.eq(tiles - t0)
            return Mux(left < gsize, left, gsize)

        def last_group(t0):
            return t0 + gsize >= tiles

        # ------------------------------------------------------------ weights: rd0 -> buffer
        l_t0 = Signal(16)
        l_g = Signal(16)
        l_addr = Signal(32)
        l_eleft = Signal(32)     # engine beats left in the group
        l_first = Signal()
        l_sub = Signal(range(max(EB, 2)))
        held = [Signal(BEAT_BITS, name=f"held{i}") for i in range(EB - 1)]
        load = pipe.load
        m.d.comb += load.payload.data.as_value().eq(Cat(*held, rd_w.data.payload.data)[:self.eng_bits])
        m.d.comb += load.payload.first.eq(l_first)
        with m.FSM(name="loader"):
            with m.State("IDLE"):
                with m.If(go):
                    m.d.sync += [l_t0.eq(0), l_g.eq(0), l_addr.eq(p_w)]
                    m.next = "WAITBUF"
            with m.State("WAITBUF"):
                # the slot of group g is free once group g-2 is computed (one slot when it all fits)
                with m.If(l_g < computed + 2):
                    gt = gtiles_of(l_t0)
                    m.d.sync += [l_eleft.eq(gt * nb), l_first.eq(~l_g[0]), l_sub.eq(0)]
                    m.next = "CMD"
            with m.State("CMD"):
                m.d.comb += [rd_w.cmd.valid.eq(1), rd_w.cmd.payload.addr.eq(l_addr),
                             rd_w.cmd.payload.beats.eq(l_eleft * EB)]
                with m.If(rd_w.cmd.ready):
                    m.next = "DATA"
            with m.State("DATA"):
                at_end = l_sub == EB - 1
                m.d.comb += [rd_w.data.ready.eq(~at_end | load.ready),
                             load.valid.eq(at_end & rd_w.data.valid)]
                with m.If(rd_w.data.valid & rd_w.data.ready):
                    if EB > 1:
                        for i in range(EB - 1):
                            with m.If(l_sub == i):
                                m.d.sync += held[i].eq(rd_w.data.payload.data)
                        m.d.sync += l_sub.eq(Mux(at_end, 0, l_sub + 1))
                    with m.If(at_end):
                        m.d.sync += [l_eleft.eq(l_eleft - 1), l_first.eq(0)]
                        with m.If(l_eleft == 1):
                            m.d.sync += [loaded.eq(loaded + 1), l_g.eq(l_g + 1), l_t0.eq(l_t0 + gsize),
                                         l_addr.eq(l_addr + region_bytes)]
                            with m.If(last_group(l_t0)):
                                m.d.sync += runs["load"].eq(0)
                                m.next = "IDLE"
                            with m.Else():
                                m.next = "WAITBUF"

        # ------------------------------------------------------------ weight-buffer replay commands
        c_t0 = Signal(16)
        c_g = Signal(16)
        c_tok = Signal(16)
        c_tile = Signal(16)
        c_base = Signal(32)
        c_gt = Signal(16)
        cmd = pipe.cmd
        with m.FSM(name="replay"):
            with m.State("IDLE"):
                with m.If(go):
                    m.d.sync += [c_t0.eq(0), c_g.eq(0)]
                    m.next = "WAITLOAD"
            with m.State("WAITLOAD"):
                with m.If(c_g < loaded):
                    m.d.sync += [c_tok.eq(0), c_tile.eq(0), c_gt.eq(gtiles_of(c_t0)),
                                 c_base.eq(Mux(c_g[0] & ~fits, region, 0))]
                    m.next = "CMD"
            with m.State("CMD"):
                m.d.comb += [cmd.valid.eq(1), cmd.payload.base.eq(c_base), cmd.payload.count.eq(nb)]
                with m.If(cmd.ready):
                    with m.If(c_tile == c_gt - 1):
                        m.d.sync += [c_tile.eq(0), c_tok.eq(c_tok + 1), c_base.eq(Mux(c_g[0] & ~fits, region, 0))]
                        with m.If(c_tok == n_tok - 1):
                            m.d.sync += [c_g.eq(c_g + 1), c_t0.eq(c_t0 + gsize)]
                            with m.If(last_group(c_t0)):
                                m.d.sync += runs["cmd"].eq(0)
                                m.next = "IDLE"
                            with m.Else():
                                m.next = "WAITLOAD"
                    with m.Else():
                        m.d.sync += [c_tile.eq(c_tile + 1), c_base.eq(c_base + nb)]

        # ------------------------------------------------------------ activations: rd1 -> gearbox -> quantizer
        gb = [Signal(_FX, name=f"gb{i}") for i in range(8)]
        gb_n = Signal(range(9))
        gin_valid, gin_n = Signal(), Signal(range(5))
        gin_words = [Signal(_FX, name=f"gin{i}") for i in range(_WPB)]
        x = pipe.x
        o_fire = Signal()
        gin_ready = Signal()
        base = Signal(range(9))   # words left after this cycle's output beat
        m.d.comb += [x.valid.eq(gb_n >= _LANES), o_fire.eq(x.valid & x.ready),
                     base.eq(gb_n - Mux(o_fire, _LANES, 0)), gin_ready.eq(base <= 8 - _WPB)]
        for i in range(_LANES):
            m.d.comb += x.payload.data[i].eq(gb[i])
        gin_fire = gin_valid & gin_ready
        for j in range(8):
            val = gb[j + _LANES] if j + _LANES < 8 else gb[j]
            nxt = Mux(o_fire, val, gb[j])
            for i in range(_WPB):
                if i <= j:
                    nxt = Mux(gin_fire & (base == j - i) & (i < gin_n), gin_words[i], nxt)
            m.d.sync += gb[j].eq(nxt)
        m.d.sync += gb_n.eq(base + Mux(gin_fire, gin_n, 0))

        # input side
        i_t0 = Signal(16)
        i_tok = Signal(16)
        i_words = Signal(18)
        with m.FSM(name="xin"):
            with m.State("IDLE"):
                with m.If(go):
                    m.d.sync += [i_t0.eq(0), i_tok.eq(0), i_words.eq(0)]
                    m.next = "CMD"
            with m.State("CMD"):
                m.d.comb += [rd_x.cmd.valid.eq(1), rd_x.cmd.payload.addr.eq(f_src),
                             rd_x.cmd.payload.beats.eq(act_beats)]
                with m.If(rd_x.cmd.ready):
                    m.next = "FEED"
            with m.State("FEED"):
                real = i_words < k
                padn = Signal(18)
                m.d.comb += padn.eq(kpad - i_words)
                m.d.comb += [gin_valid.eq(Mux(real, rd_x.data.valid, 1)),
                             gin_n.eq(Mux(real | (padn >= _WPB), _WPB, padn)),
                             rd_x.data.ready.eq(real & gin_ready)]
                for i in range(_WPB):
                    m.d.comb += gin_words[i].eq(Mux(real, rd_x.data.payload.data[i * _FX:(i + 1) * _FX], 0))
                with m.If(gin_fire):
                    with m.If(i_words + gin_n == kpad):
                        m.d.sync += [i_words.eq(0), i_tok.eq(i_tok + 1)]
                        with m.If(i_tok == n_tok - 1):
                            m.d.sync += [i_tok.eq(0), i_t0.eq(i_t0 + gsize)]
                            with m.If(last_group(i_t0)):
                                m.d.sync += runs["xin"].eq(0)
                                m.next = "IDLE"
                            with m.Else():
                                m.next = "CMD"
                    with m.Else():
                        m.d.sync += i_words.eq(i_words + gin_n)

        # output side (the quantizer's beats: `last` per row, `passes` = tiles of the row's group)
        o_t0 = Signal(16)
        o_tok = Signal(16)
        o_beat = Signal(16)
        m.d.comb += [x.payload.last.eq(o_beat == kpad3 - 1), x.payload.passes.eq(gtiles_of(o_t0))]
        with m.If(go):
            m.d.sync += [o_t0.eq(0), o_tok.eq(0), o_beat.eq(0)]
        with m.Elif(o_fire):
            with m.If(o_beat == kpad3 - 1):
                m.d.sync += [o_beat.eq(0), o_tok.eq(o_tok + 1)]
                with m.If(o_tok == n_tok - 1):
                    m.d.sync += [o_tok.eq(0), o_t0.eq(o_t0 + gsize)]
                    with m.If(last_group(o_t0)):
                        m.d.sync += runs["xout"].eq(0)
            with m.Else():
                m.d.sync += o_beat.eq(o_beat + 1)

        # ------------------------------------------------------------ side operand: rd2 -> epilogue aux
        def slice_words(t0):
            """Valid words of a token's slice of the group starting at tile t0."""
            c0 = Signal(32, name=f"c0_{t0.name}")
            left = Signal(32, name=f"wleft_{t0.name}")
            m.d.comb += [c0.eq(t0 * C), left.eq(n - c0)]
            return c0, Mux(left < gcols, left, gcols)

        a_t0 = Signal(16)
        a_tok = Signal(16)
        a_row = Signal(32)
        with m.FSM(name="auxc"):
            with m.State("IDLE"):
                with m.If(go & p_aux_on):
                    m.d.sync += [a_t0.eq(0), a_tok.eq(0), a_row.eq(p_aux_base)]
                    m.next = "CMD"
            with m.State("CMD"):
                c0, words = slice_words(a_t0)
                m.d.comb += [rd_a.cmd.valid.eq(1), rd_a.cmd.payload.addr.eq(a_row + (c0 << 2)),
                             rd_a.cmd.payload.beats.eq(words >> 2)]
                with m.If(rd_a.cmd.ready):
                    m.d.sync += [a_tok.eq(a_tok + 1), a_row.eq(a_row + row_bytes_n)]
                    with m.If(a_tok == n_tok - 1):
                        m.d.sync += [a_tok.eq(0), a_row.eq(p_aux_base), a_t0.eq(a_t0 + gsize)]
                        with m.If(last_group(a_t0)):
                            m.d.sync += runs["auxc"].eq(0)
                            m.next = "IDLE"

        aux = pipe.aux
        ad_t0 = Signal(16)
        ad_tok = Signal(16)
        ad_left = Signal(32)     # words of the token slice not yet received
        ad_sub = Signal(range(cpb + 1))
        ad_buf = [Signal(BEAT_BITS, name=f"auxbuf{i}") for i in range(cpb)]
        ad_full = Signal()
        vec = Cat(*ad_buf)
        for i in range(C):
            w = vec[i * _FX:(i + 1) * _FX]
            m.d.comb += [aux.payload.res[i].eq(w), aux.payload.up[i].eq(w)]
        m.d.comb += aux.valid.eq(Mux(p_aux_on, ad_full, 1))
        with m.FSM(name="auxd"):
            with m.State("IDLE"):
                with m.If(go & p_aux_on):
                    m.d.sync += [ad_t0.eq(0), ad_tok.eq(0), ad_sub.eq(0), ad_full.eq(0)]
                    m.next = "START"
            with m.State("START"):
                _, words = slice_words(ad_t0)
                m.d.sync += ad_left.eq(words)
                m.next = "FILL"
            with m.State("FILL"):
                # one aux beat: min(columns, left) words from DDR, the rest zero
                with m.If(ad_sub == cpb):
                    m.d.sync += ad_full.eq(1)
                    m.next = "HOLD"
                with m.Elif(ad_left == 0):
                    for i in range(cpb):
                        with m.If(ad_sub == i):
                            m.d.sync += ad_buf[i].eq(0)
                    m.d.sync += ad_sub.eq(ad_sub + 1)
                with m.Else():
                    m.d.comb += rd_a.data.ready.eq(1)
                    with m.If(rd_a.data.valid):
                        for i in range(cpb):
                            with m.If(ad_sub == i):
                                m.d.sync += ad_buf[i].eq(rd_a.data.payload.data)
                        m.d.sync += [ad_sub.eq(ad_sub + 1), ad_left.eq(ad_left - _WPB)]
            with m.State("HOLD"):
                with m.If(aux.ready):
                    m.d.sync += [ad_full.eq(0), ad_sub.eq(0)]
                    with m.If(ad_left == 0):
                        m.d.sync += ad_tok.eq(ad_tok + 1)
                        with m.If(ad_tok == n_tok - 1):
                            m.d.sync += [ad_tok.eq(0), ad_t0.eq(ad_t0 + gsize)]
                            with m.If(last_group(ad_t0)):
                                m.d.sync += runs["auxd"].eq(0)
                                m.next = "IDLE"
                            with m.Else():
                                m.next = "START"
                        with m.Else():
                            m.next = "START"
                    with m.Else():
                        m.next = "FILL"

        # ------------------------------------------------------------ outputs: epilogue -> wr
        w_t0 = Signal(16)
        w_tok = Signal(16)
        w_row = Signal(32)
        with m.FSM(name="wcmd"):
            with m.State("IDLE"):
                with m.If(go):
                    m.d.sync += [w_t0.eq(0), w_tok.eq(0), w_row.eq(f_dst)]
                    m.next = "CMD"
            with m.State("CMD"):
                c0, words = slice_words(w_t0)
                m.d.comb += [wr.cmd.valid.eq(1), wr.cmd.payload.addr.eq(w_row + (c0 << 2)),
                             wr.cmd.payload.beats.eq(words >> 2)]
                with m.If(wr.cmd.ready):
                    m.d.sync += [w_issued.eq(w_issued + 1), w_tok.eq(w_tok + 1), w_row.eq(w_row + row_bytes_n)]
                    with m.If(w_tok == n_tok - 1):
                        m.d.sync += [w_tok.eq(0), w_row.eq(f_dst), w_t0.eq(w_t0 + gsize)]
                        with m.If(last_group(w_t0)):
                            m.d.sync += runs["wcmd"].eq(0)
                            m.next = "IDLE"

        y = pipe.y
        d_t0 = Signal(16)
        d_tok = Signal(16)
        d_left = Signal(32)
        d_sub = Signal(range(cpb))
        yw = Cat(*(y.payload[i] for i in range(C)))
        with m.Switch(d_sub):
            for i in range(cpb):
                with m.Case(i):
                    m.d.comb += wr.data.payload.data.eq(yw[i * BEAT_BITS:(i + 1) * BEAT_BITS])
        with m.FSM(name="wdat"):
            with m.State("IDLE"):
                with m.If(go):
                    m.d.sync += [d_t0.eq(0), d_tok.eq(0), d_sub.eq(0)]
                    m.next = "START"
            with m.State("START"):
                _, words = slice_words(d_t0)
                m.d.sync += d_left.eq(words)
                m.next = "DATA"
            with m.State("DATA"):
                end_tile = (d_sub == cpb - 1) | (d_left == _WPB)
                m.d.comb += [wr.data.valid.eq(y.valid), y.ready.eq(wr.data.ready & end_tile)]
                with m.If(wr.data.valid & wr.data.ready):
                    m.d.sync += [d_left.eq(d_left - _WPB), d_sub.eq(Mux(end_tile, 0, d_sub + 1))]
                    with m.If(d_left == _WPB):
                        m.d.sync += d_tok.eq(d_tok + 1)
                        m.next = "START"
                        with m.If(d_tok == n_tok - 1):
                            m.d.sync += [d_tok.eq(0), d_t0.eq(d_t0 + gsize), computed.eq(computed + 1)]
                            with m.If(last_group(d_t0)):
                                m.d.sync += runs["wdat"].eq(0)
                                m.next = "IDLE"
        return m
