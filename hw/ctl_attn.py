"""ATTN controller: the decode attention unit (hw/attention.py DecodeAttention) on every query row and
head of a program's call (hw/ports.py contract).

Instruction (backends/fpga/isa.py): ``q``, ``dst``, ``heads`` (hq | hkv << 8 | d << 16), ``cache_k``,
``cache_v``, ``scale`` (FX), ``context`` (the cache's compiled length); flag CAUSAL. For every token
row t < N and query head h: ``dst[t, h*d:(h+1)*d] = attention_decode_fx(q[t, h*d:(h+1)*d], K, V, scale)``
where K/V are the first ``n_ctx`` rows of KV head ``h // (hq / hkv)`` (GQA by addressing), widened
from KV words (Q11.12) to FX by a 4-bit shift, and ``n_ctx = POS + t + 1`` if CAUSAL else
``POS + N``. That is ``hw_numerics.attention_fx`` row by row (its docstring: prefill = this per-row
definition), bit-exact.

Ports and dataflow (everything streams; no row buffer):
* ``rd0`` -- the query rows, one command for all N rows (N*hq*d/4 beats: rows are contiguous). A
  :class:`WordFifo` cuts the word stream into heads of d words and lanes: heads are not beat-aligned
  (d = 42: head 1 starts at word 42), the fifo does not care. The controller back-pressures ``rd0``
  while a head runs (the read DMA keeps its own FIFO; AxiReadMaster issues an AR only when it has room,
  so holding ``data.ready`` low never stalls the interconnect).
* ``rd1`` -- per (t, h), two commands: K rows 0..n_ctx-1 of the KV head (contiguous in the cache layout
  [kv_heads][context][kv_row_words(d)], so one command of n_ctx*kv_row_words/4 beats), then V. The pad
  words at the end of each cache row are dropped on entry (``count`` of the row's last beat), so their
  contents never matter.
* ``wr`` -- the output rows, one command for all N rows: the unit emits heads in order, which is the
  row layout; a WordFifo packs them back into whole beats.

head_dim and lanes: the unit needs ``lanes`` | its head_dim. A head_dim that is not a multiple of
``lanes`` (42 with lanes = 4) is padded on chip to ``dp = ceil(d / lanes) * lanes``: the fifo fills the
pad lanes of q, K and V with exact zeros, which add 0 to every dot product and give pad outputs of 0
that are dropped before the write, so the result is bit-exact. The default model (d = 42) therefore runs
with lanes = 4 (dp = 44, 95% of the lanes useful) instead of lanes = 2 (100% useful, half the rate).

Cycles (ports at full rate; measured by tests/hw/test_ctl_attn.py, the model is
:meth:`AttnCtl.cycles`): per (t, h) with T = n_ctx(t) and W = dp / lanes: the unit's phases
W (Q) + T*W (K) + T (P) + max(T*W, ``DIV``) (V, overlapping the 80-step reciprocal) + 3W (OUT) +
``HEAD_OVERHEAD`` cycles; plus ``OVERHEAD`` per instruction. K/V stream once per (t, h): this per-row
scheme reads 2 * T * kv_row_words * 4 bytes per query head and row, i.e. a prefill of N tokens reads the
cache hq * N times (sum over rows of T), where a block-wise prefill would read it hkv * N / block times.
Decode (N = 1) is what this controller is for; its prefill is correct but DDR-heavy:
:class:`PrefillAttnCtl` below is the block-wise mode (one K/V stream per block of rows and group of
query heads).
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import Out

from ternc.hw.attention import DecodeAttention
from ternc.hw.ctl_util import WordFifo
from ternc.hw.ports import WORDS_PER_BEAT, op_control_signature, read_port_signature, write_port_signature
from ternc.ir import hw_numerics as hwn

CAUSAL_BIT = 16 + 1   # isa.Flag.CAUSAL = 2 in the flags half-word




class AttnCtl(wiring.Component):
    READ_PORTS = 2
    DIV = 78             # V phase lower bound: the reciprocal (80 steps) starts with P's last cycles (fitted)
    HEAD_OVERHEAD = 11   # per (row, head): phase changes, pipeline drains (fitted)
    OVERHEAD = 11        # per instruction: first read latency, last write + done (fitted)

    def __init__(self, head_dim: int = 64, lanes: int = 4, max_ctx: int = 1024):
        if head_dim < 1 or lanes < 1 or not 1 <= max_ctx < 1 << 16:
            self._MustUse__silence = True
            raise ValueError("AttnCtl: need head_dim, lanes >= 1 and max_ctx in 1..65535")
        self.head_dim, self.lanes, self.max_ctx = head_dim, lanes, max_ctx
        self.dp = -(-head_dim // lanes) * lanes
        self.row_words = hwn.kv_row_words(head_dim)
        super().__init__({
            "ctl": Out(op_control_signature()),
            "rd0": Out(read_port_signature()),
            "rd1": Out(read_port_signature()),
            "wr": Out(write_port_signature()),
        })

    def cycles(self, hq: int, n_tokens: int, pos: int, causal: bool = True) -> int:
        """Analytic cycles of one ATTN instruction with DDR at full rate (module docstring)."""
        w = self.dp // self.lanes
        total = self.OVERHEAD
        for t in range(n_tokens):
            T = pos + t + 1 if causal else pos + n_tokens
            total += hq * (w + T * w + T + max(T * w, self.DIV) + 3 * w + self.HEAD_OVERHEAD)
        return total

    def elaborate(self, platform):
        m = Module()
        L, WB, d, dp, rw = self.lanes, WORDS_PER_BEAT, self.head_dim, self.dp, self.row_words
        chunks = dp // L                          # unit beats per head
        tail = d - (chunks - 1) * L               # real words in a head's last chunk
        row_beats = rw // WB
        row_tail = d - (row_beats - 1) * WB       # real words in a cache row's last beat
        c = self.ctl
        causal = c.instr[0][CAUSAL_BIT]
        q_addr, dst, heads = c.instr[1], c.instr[2], c.instr[3]
        cache_k, cache_v, context = c.instr[4], c.instr[5], c.instr[7]
        hq, hkv, hd = heads[0:8], heads[8:16], heads[16:32]
        n, pos = c.n_tokens, c.pos

        m.submodules.unit = unit = DecodeAttention(dp, L, self.max_ctx)
        m.submodules.q_in = q_in = WordFifo(WB, L)
        m.submodules.kv_in = kv_in = WordFifo(WB, L)
        m.submodules.o_out = o_out = WordFifo(L, WB)
        m.d.comb += unit.scale.eq(c.instr[6])

        running = Signal()
        clear = Signal()
        m.d.comb += [q_in.clear.eq(clear), kv_in.clear.eq(clear), o_out.clear.eq(clear)]
        row_beats_all = Signal(32)                # N * hq * d / 4
        m.d.comb += row_beats_all.eq((n * hq * d) >> 2)
        group = Signal(8)                         # hq / hkv (latched at start)
        stride = Signal(32)                       # bytes per KV head in the cache
        bad = Signal()
        m.d.comb += bad.eq((hd != d) | (hq == 0) | (hkv == 0) | (hq < hkv) | ((hq // hkv) * hkv != hq)
                           | (n == 0) | (pos + n > self.max_ctx) | (pos + n > context) | ((hq * d)[:2] != 0))

        # ---- rd0: all query rows; wr: all output rows ----------------------------------------------
        q_cmd, w_cmd = Signal(), Signal()
        m.d.comb += [self.rd0.cmd.valid.eq(running & ~q_cmd), self.rd0.cmd.payload.addr.eq(q_addr),
                     self.rd0.cmd.payload.beats.eq(row_beats_all),
                     self.wr.cmd.valid.eq(running & ~w_cmd), self.wr.cmd.payload.addr.eq(dst),
                     self.wr.cmd.payload.beats.eq(row_beats_all), self.wr.done.ready.eq(1)]
        with m.If(self.rd0.cmd.valid & self.rd0.cmd.ready):
            m.d.sync += q_cmd.eq(1)
        with m.If(self.wr.cmd.valid & self.wr.cmd.ready):
            m.d.sync += w_cmd.eq(1)

        # ---- query heads into the unit, with their context length ------------------------------------
        qc = Signal(range(chunks + 1))
        qh = Signal(8)
        qt = Signal(16)
        q_last = Signal()
        m.d.comb += [q_in.inp.valid.eq(self.rd0.data.valid & running),
                     q_in.inp.payload.data.as_value().eq(self.rd0.data.payload.data),
                     q_in.inp.payload.count.eq(WB),
                     self.rd0.data.ready.eq(q_in.inp.ready & running),
                     q_last.eq(qc == chunks - 1),
                     q_in.take.eq(Mux(q_last, tail, L)),
                     unit.q.valid.eq(q_in.out.valid), q_in.out.ready.eq(unit.q.ready),
                     unit.q.payload.data.as_value().eq(q_in.out.payload.data.as_value()),
                     unit.q.payload.last.eq(q_last),
                     unit.n_ctx.eq(Mux(causal, pos + qt + 1, pos + n))]
        with m.If(unit.q.valid & unit.q.ready):
            m.d.sync += qc.eq(Mux(q_last, 0, qc + 1))
            with m.If(q_last):
                with m.If(qh == hq - 1):
                    m.d.sync += [qh.eq(0), qt.eq(qt + 1)]
                with m.Else():
                    m.d.sync += qh.eq(qh + 1)

        # ---- rd1: K then V rows of the KV head, per (t, h) --------------------------------------------
        kt = Signal(16)                # row
        kh = Signal(8)                 # query head
        kr = Signal(8)                 # h mod group
        k_off = Signal(32)             # byte offset of the KV head in its cache
        is_v = Signal()
        k_done = Signal()
        k_ctx = Signal(17)
        m.d.comb += [k_ctx.eq(Mux(causal, pos + kt + 1, pos + n)),
                     self.rd1.cmd.valid.eq(running & ~k_done),
                     self.rd1.cmd.payload.addr.eq(Mux(is_v, cache_v, cache_k) + k_off),
                     self.rd1.cmd.payload.beats.eq(k_ctx * row_beats)]
        with m.If(self.rd1.cmd.valid & self.rd1.cmd.ready):
            m.d.sync += is_v.eq(~is_v)
            with m.If(is_v):
                with m.If(kh == hq - 1):
                    m.d.sync += [kh.eq(0), kr.eq(0), k_off.eq(0), kt.eq(kt + 1)]
                    with m.If(kt == n - 1):
                        m.d.sync += k_done.eq(1)
                with m.Else():
                    m.d.sync += kh.eq(kh + 1)
                    with m.If(kr == group - 1):
                        m.d.sync += [kr.eq(0), k_off.eq(k_off + stride)]
                    with m.Else():
                        m.d.sync += kr.eq(kr + 1)

        # ---- K/V words into the unit: drop the cache rows' pad words, widen KV -> FX ------------------
        rb = Signal(range(row_beats + 1))
        kc = Signal(range(chunks + 1))
        rb_last, kc_last = Signal(), Signal()
        m.d.comb += [rb_last.eq(rb == row_beats - 1), kc_last.eq(kc == chunks - 1),
                     kv_in.inp.valid.eq(self.rd1.data.valid & running),
                     kv_in.inp.payload.data.as_value().eq(self.rd1.data.payload.data),
                     kv_in.inp.payload.count.eq(Mux(rb_last, row_tail, WB)),
                     self.rd1.data.ready.eq(kv_in.inp.ready & running),
                     kv_in.take.eq(Mux(kc_last, tail, L)),
                     unit.kv.valid.eq(kv_in.out.valid), kv_in.out.ready.eq(unit.kv.ready)]
        for i in range(L):
            m.d.comb += unit.kv.payload.data[i].eq(kv_in.out.payload.data[i].as_signed()
                                                   << (hwn.FX_FRAC - hwn.KV_FRAC))
        with m.If(self.rd1.data.valid & self.rd1.data.ready):
            m.d.sync += rb.eq(Mux(rb_last, 0, rb + 1))
        with m.If(unit.kv.valid & unit.kv.ready):
            m.d.sync += kc.eq(Mux(kc_last, 0, kc + 1))

        # ---- output heads -> beats ----------------------------------------------------------------------
        m.d.comb += [o_out.inp.valid.eq(unit.out.valid), unit.out.ready.eq(o_out.inp.ready),
                     o_out.inp.payload.data.as_value().eq(unit.out.payload.data.as_value()),
                     o_out.inp.payload.count.eq(Mux(unit.out.payload.last, tail, L)),
                     o_out.take.eq(WB),
                     self.wr.data.valid.eq(o_out.out.valid), o_out.out.ready.eq(self.wr.data.ready),
                     self.wr.data.payload.data.eq(o_out.out.payload.data.as_value())]

        # ---- control ----------------------------------------------------------------------------------
        with m.If(c.start):
            m.d.comb += clear.eq(1)
            m.d.sync += [c.error.eq(bad), c.busy.eq(1), running.eq(~bad), q_cmd.eq(0), w_cmd.eq(0),
                         qc.eq(0), qh.eq(0), qt.eq(0), kt.eq(0), kh.eq(0), kr.eq(0), k_off.eq(0),
                         is_v.eq(0), k_done.eq(0), rb.eq(0), kc.eq(0),
                         group.eq(Mux(hkv == 0, 1, hq // hkv)), stride.eq(context * (4 * rw))]
        with m.Elif(c.busy & ~running):
            m.d.sync += c.busy.eq(0)                     # refused instruction: one busy cycle
        with m.Elif(running & self.wr.done.valid):
            m.d.sync += [c.busy.eq(0), running.eq(0)]
        return m


class PrefillAttnCtl(wiring.Component):
    """ATTN, block-wise: ``block`` query rows x ``group`` query heads share one K/V stream (the prefill
    mode the issue asks for).

    Same instruction, same result as :class:`AttnCtl` (bit-exact: each row is still
    ``attention_decode_fx`` over its own n_ctx keys), but ``block * group`` DecodeAttention units run
    side by side: unit (i, g) takes row t0 + i of query head p*G + g, for a *pass* p over the query
    heads; the G heads of a pass share their KV head (GQA), so the K rows 0 .. T_max-1 and then the V
    rows of that KV head are read once per (block, pass) and broadcast; unit (i, g) takes the first T_i
    rows of each (causal: T_i = POS + t0 + i + 1) and ignores the rest. DDR reads of K/V per (block,
    pass): 2 * T_max rows, where the per-row controller reads 2 * sum_i T_i rows per query head
    (``block * group`` times fewer in a long prefill). ``group`` must divide hq / hkv (else ``error``).

    Ports: ``rd0`` query heads (one command per (pass, row): the beats covering the pass's G*d words,
    leading/trailing words dropped on entry, since heads are not beat-aligned), ``rd1`` K then V rows
    per pass, ``wr`` one command per block (its rows are contiguous). Row i's output heads (units (i, 0),
    (i, 1), ... in turn) are packed into a row FIFO (``max_width`` words; rows t0+1.. wait for row t0);
    blocks do not overlap (the next block starts when this one is written).

    Cycles per (block, pass) (ports at full rate; tests/hw/test_ctl_attn.py; :meth:`cycles`), set by
    the units with the longest context: G*W (their q loads) + T_max*W (K) + T_max (P) + max(T_max*W,
    DIV) (V) + 3W*G (OUT, the G heads of a row leave in turn) + ``HEAD_OVERHEAD``, W = dp/lanes (the
    other rows' q loads hide behind their earlier end of V: unit (i, g) leaves the broadcast after T_i
    rows); per block (B-1)*G*W (the first pass's serial q loads) + (B-1) * hq*d/4 (the rows after the
    first, written at the end) + ``BLOCK_OVERHEAD``. Cost: ``block * group`` attention units (score
    memories of max_ctx words, W x lanes 72-bit accumulators each) and ``block`` row FIFOs.
    """

    READ_PORTS = 2
    DIV = AttnCtl.DIV
    HEAD_OVERHEAD = 12    # fitted (per block and pass)
    BLOCK_OVERHEAD = 10   # fitted (per block)
    OVERHEAD = 0          # fitted

    def __init__(self, head_dim: int = 64, lanes: int = 4, max_ctx: int = 1024, block: int = 4,
                 max_width: int = 4096, group: int = 1):
        if head_dim < 1 or lanes < 1 or not 1 <= max_ctx < 1 << 16 or block < 1 or group < 1 or max_width < 4:
            self._MustUse__silence = True
            raise ValueError("PrefillAttnCtl: need head_dim, lanes, block, group >= 1, max_ctx in 1..65535, "
                             "max_width >= 4")
        self.head_dim, self.lanes, self.max_ctx, self.block, self.group = head_dim, lanes, max_ctx, block, group
        self.max_width = max_width
        self.dp = -(-head_dim // lanes) * lanes
        self.row_words = hwn.kv_row_words(head_dim)
        super().__init__({
            "ctl": Out(op_control_signature()),
            "rd0": Out(read_port_signature()),
            "rd1": Out(read_port_signature()),
            "wr": Out(write_port_signature()),
        })

    def cycles(self, hq: int, n_tokens: int, pos: int, causal: bool = True) -> int:
        w, G = self.dp // self.lanes, self.group
        total = self.OVERHEAD
        for t0 in range(0, n_tokens, self.block):
            nb = min(self.block, n_tokens - t0)
            T = pos + t0 + nb if causal else pos + n_tokens
            total += hq // G * (G * w + T * w + T + max(T * w, self.DIV) + 3 * w * G + self.HEAD_OVERHEAD)
            total += (nb - 1) * (G * w + hq * self.head_dim // WORDS_PER_BEAT) + self.BLOCK_OVERHEAD
        return total

    def elaborate(self, platform):
        from amaranth.lib.fifo import SyncFIFOBuffered

        m = Module()
        L, WB, d, dp, rw = self.lanes, WORDS_PER_BEAT, self.head_dim, self.dp, self.row_words
        B, G = self.block, self.group
        chunks = dp // L
        tail = d - (chunks - 1) * L
        row_beats = rw // WB
        row_tail = d - (row_beats - 1) * WB
        c = self.ctl
        causal = c.instr[0][CAUSAL_BIT]
        q_addr, dst, heads = c.instr[1], c.instr[2], c.instr[3]
        cache_k, cache_v, context = c.instr[4], c.instr[5], c.instr[7]
        hq, hkv, hd = heads[0:8], heads[8:16], heads[16:32]
        n, pos = c.n_tokens, c.pos
        width = Signal(24)                          # words per row: hq * d
        m.d.comb += width.eq(hq * d)
        wbeats = Signal(22)
        m.d.comb += wbeats.eq(width >> 2)
        fifo_depth = -(-self.max_width // WB)

        units = {}                                  # (row i, head g of the pass)
        for i in range(B):
            for g in range(G):
                u = DecodeAttention(dp, L, self.max_ctx)
                m.submodules[f"unit{i}_{g}"] = u
                units[i, g] = u
        m.submodules.q_in = q_in = WordFifo(WB, L)
        m.submodules.kv_in = kv_in = WordFifo(WB, L)
        o_out, rows = [], []
        for i in range(B):
            m.submodules[f"o_out{i}"] = o = WordFifo(L, WB)
            m.submodules[f"row{i}"] = r = SyncFIFOBuffered(width=WB * 32, depth=fifo_depth)
            o_out.append(o)
            rows.append(r)

        running = Signal()
        clear = Signal()
        m.d.comb += [q_in.clear.eq(clear), kv_in.clear.eq(clear)] + [o.clear.eq(clear) for o in o_out]
        passes = Signal(8)                          # hq / G (latched at start)
        kv_passes = Signal(8)                       # passes per KV head: hq / hkv / G
        stride = Signal(32)
        bad = Signal()
        m.d.comb += bad.eq((hd != d) | (hq == 0) | (hkv == 0) | (hq < hkv) | ((hq // hkv) * hkv != hq)
                           | ((hq // hkv) % G != 0)
                           | (n == 0) | (pos + n > self.max_ctx) | (pos + n > context) | (width[:2] != 0)
                           | (width > self.max_width))

        # ---- block state: rows t0 .. t0+nb-1 ---------------------------------------------------------
        t0 = Signal(16)
        nb = Signal(range(B + 1))
        in_block = Signal()
        t_i = [Signal(17, name=f"n_ctx{i}") for i in range(B)]
        t_max = Signal(17)
        for i in range(B):
            m.d.comb += t_i[i].eq(Mux(causal, pos + t0 + i + 1, pos + n))
            for g in range(G):
                m.d.comb += [units[i, g].n_ctx.eq(t_i[i]), units[i, g].scale.eq(c.instr[6])]
        m.d.comb += t_max.eq(Mux(causal, pos + t0 + nb, pos + n))

        # ---- rd0: per (pass p, row i) the beats covering words [(t0+i)*W + p*G*d, +G*d) ----------------
        def q_word(p, i):
            return (q_addr >> 2) + (t0 + i) * width + p * (G * d)

        qp_c, qi_c, q_cdone = Signal(8), Signal(range(B + 1)), Signal()
        qw_c = Signal(32)
        m.d.comb += [qw_c.eq(q_word(qp_c, qi_c)),
                     self.rd0.cmd.valid.eq(in_block & ~q_cdone),
                     self.rd0.cmd.payload.addr.eq((qw_c >> 2) << 4),
                     self.rd0.cmd.payload.beats.eq((qw_c[:2] + G * d + WB - 1) >> 2)]
        with m.If(self.rd0.cmd.valid & self.rd0.cmd.ready):
            with m.If(qi_c == nb - 1):
                m.d.sync += [qi_c.eq(0), qp_c.eq(qp_c + 1)]
                with m.If(qp_c == passes - 1):
                    m.d.sync += q_cdone.eq(1)
            with m.Else():
                m.d.sync += qi_c.eq(qi_c + 1)
        # receive: drop the words before and after the pass's heads
        qp_r, qi_r = Signal(8), Signal(range(B + 1))
        q_left = Signal(range(G * d + 1))
        q_first = Signal()
        qw_r = Signal(32)
        skip = Signal(2)
        avail = Signal(range(WB + 1))
        cnt = Signal(range(WB + 1))
        m.d.comb += [qw_r.eq(q_word(qp_r, qi_r)), skip.eq(Mux(q_first, qw_r[:2], 0)),
                     avail.eq(WB - skip), cnt.eq(Mux(q_left < avail, q_left, avail)),
                     q_in.inp.valid.eq(self.rd0.data.valid & in_block),
                     q_in.inp.payload.data.as_value().eq(self.rd0.data.payload.data >> (skip * 32)),
                     q_in.inp.payload.count.eq(cnt),
                     self.rd0.data.ready.eq(q_in.inp.ready & in_block)]
        with m.If(self.rd0.data.valid & self.rd0.data.ready):
            with m.If(q_left == cnt):                       # the command's last beat
                m.d.sync += [q_first.eq(1), q_left.eq(G * d)]
                with m.If(qi_r == nb - 1):
                    m.d.sync += [qi_r.eq(0), qp_r.eq(qp_r + 1)]
                with m.Else():
                    m.d.sync += qi_r.eq(qi_r + 1)
            with m.Else():
                m.d.sync += [q_first.eq(0), q_left.eq(q_left - cnt)]
        # distribute: units (0, 0), (0, 1), .., (0, G-1), (1, 0), .. in turn, one head each
        q_row = Signal(range(B + 1))
        q_head = Signal(range(G + 1))
        qc = Signal(range(chunks + 1))
        q_last = Signal()
        m.d.comb += [q_last.eq(qc == chunks - 1), q_in.take.eq(Mux(q_last, tail, L))]
        for (i, g), u in units.items():
            m.d.comb += [u.q.payload.data.as_value().eq(q_in.out.payload.data.as_value()),
                         u.q.payload.last.eq(q_last)]
            with m.If((q_row == i) & (q_head == g)):
                m.d.comb += [u.q.valid.eq(q_in.out.valid & in_block), q_in.out.ready.eq(u.q.ready & in_block)]
        with m.If(q_in.out.valid & q_in.out.ready):
            m.d.sync += qc.eq(Mux(q_last, 0, qc + 1))
            with m.If(q_last):
                with m.If(q_head == G - 1):
                    m.d.sync += [q_head.eq(0), q_row.eq(Mux(q_row == nb - 1, 0, q_row + 1))]
                with m.Else():
                    m.d.sync += q_head.eq(q_head + 1)

        # ---- rd1: per pass, K rows 0 .. T_max-1 then V rows of its KV head ------------------------------
        kp, kr = Signal(8), Signal(8)
        k_off = Signal(32)
        is_v, k_done = Signal(), Signal()
        m.d.comb += [self.rd1.cmd.valid.eq(in_block & ~k_done),
                     self.rd1.cmd.payload.addr.eq(Mux(is_v, cache_v, cache_k) + k_off),
                     self.rd1.cmd.payload.beats.eq(t_max * row_beats)]
        with m.If(self.rd1.cmd.valid & self.rd1.cmd.ready):
            m.d.sync += is_v.eq(~is_v)
            with m.If(is_v):
                with m.If(kp == passes - 1):
                    m.d.sync += k_done.eq(1)
                with m.Else():
                    m.d.sync += kp.eq(kp + 1)
                    with m.If(kr == kv_passes - 1):
                        m.d.sync += [kr.eq(0), k_off.eq(k_off + stride)]
                    with m.Else():
                        m.d.sync += kr.eq(kr + 1)
        # broadcast: row r goes to the units with r < T_i; it moves when all of them take it
        rb = Signal(range(row_beats + 1))
        kc = Signal(range(chunks + 1))
        r = Signal(17)
        rb_last, kc_last = Signal(), Signal()
        m.d.comb += [rb_last.eq(rb == row_beats - 1), kc_last.eq(kc == chunks - 1),
                     kv_in.inp.valid.eq(self.rd1.data.valid & in_block),
                     kv_in.inp.payload.data.as_value().eq(self.rd1.data.payload.data),
                     kv_in.inp.payload.count.eq(Mux(rb_last, row_tail, WB)),
                     self.rd1.data.ready.eq(kv_in.inp.ready & in_block),
                     kv_in.take.eq(Mux(kc_last, tail, L))]
        need = [Signal(name=f"need{i}") for i in range(B)]
        all_ready = Signal()
        fold = in_block
        for i in range(B):
            m.d.comb += need[i].eq((i < nb) & (r < t_i[i]))
            for g in range(G):
                fold = fold & (~need[i] | units[i, g].kv.ready)
        m.d.comb += all_ready.eq(fold)
        for (i, g), u in units.items():
            m.d.comb += u.kv.valid.eq(kv_in.out.valid & need[i] & all_ready)
            for j in range(L):
                m.d.comb += u.kv.payload.data[j].eq(kv_in.out.payload.data[j].as_signed()
                                                    << (hwn.FX_FRAC - hwn.KV_FRAC))
        m.d.comb += kv_in.out.ready.eq(all_ready)
        with m.If(self.rd1.data.valid & self.rd1.data.ready):
            m.d.sync += rb.eq(Mux(rb_last, 0, rb + 1))
        with m.If(kv_in.out.valid & kv_in.out.ready):
            m.d.sync += kc.eq(Mux(kc_last, 0, kc + 1))
            with m.If(kc_last):
                m.d.sync += r.eq(Mux(r == t_max - 1, 0, r + 1))

        # ---- outputs: row i's heads (units (i, 0..G-1) in turn) -> row FIFO i; rows written in order --
        o_sel = [Signal(range(G + 1), name=f"o_sel{i}") for i in range(B)]
        for i in range(B):
            o = o_out[i]
            m.d.comb += [o.take.eq(WB), rows[i].w_en.eq(o.out.valid),
                         rows[i].w_data.eq(o.out.payload.data.as_value()), o.out.ready.eq(rows[i].w_rdy)]
            for g in range(G):
                u = units[i, g]
                with m.If(o_sel[i] == g):
                    m.d.comb += [o.inp.valid.eq(u.out.valid), u.out.ready.eq(o.inp.ready),
                                 o.inp.payload.data.as_value().eq(u.out.payload.data.as_value()),
                                 o.inp.payload.count.eq(Mux(u.out.payload.last, tail, L))]
                    with m.If(u.out.valid & u.out.ready & u.out.payload.last):
                        m.d.sync += o_sel[i].eq(Mux(o_sel[i] == G - 1, 0, o_sel[i] + 1))
        w_cmd = Signal()
        w_unit = Signal(range(B + 1))
        w_beat = Signal(22)
        cmds, dones = Signal(16), Signal(16)
        m.d.comb += [self.wr.cmd.valid.eq(in_block & ~w_cmd),
                     self.wr.cmd.payload.addr.eq(dst + t0 * (width << 2)),
                     self.wr.cmd.payload.beats.eq(nb * wbeats), self.wr.done.ready.eq(1)]
        with m.If(self.wr.cmd.valid & self.wr.cmd.ready):
            m.d.sync += [w_cmd.eq(1), cmds.eq(cmds + 1)]
        with m.If(self.wr.done.valid):
            m.d.sync += dones.eq(dones + 1)
        for i in range(B):
            with m.If(w_unit == i):
                m.d.comb += [self.wr.data.valid.eq(rows[i].r_rdy & in_block),
                             self.wr.data.payload.data.eq(rows[i].r_data),
                             rows[i].r_en.eq(self.wr.data.ready & in_block)]
        block_done = Signal()
        with m.If(self.wr.data.valid & self.wr.data.ready):
            with m.If(w_beat == wbeats - 1):
                m.d.sync += [w_beat.eq(0), w_unit.eq(w_unit + 1)]
                with m.If(w_unit == nb - 1):
                    m.d.comb += block_done.eq(1)
            with m.Else():
                m.d.sync += w_beat.eq(w_beat + 1)

        # ---- control ----------------------------------------------------------------------------------
        def block_reset(start_row):
            return [t0.eq(start_row), nb.eq(Mux(n - start_row < B, n - start_row, B)),
                    qp_c.eq(0), qi_c.eq(0), q_cdone.eq(0), qp_r.eq(0), qi_r.eq(0), q_left.eq(G * d),
                    q_first.eq(1), q_row.eq(0), q_head.eq(0), qc.eq(0), kp.eq(0), kr.eq(0), k_off.eq(0),
                    is_v.eq(0), k_done.eq(0), rb.eq(0), kc.eq(0), r.eq(0), w_cmd.eq(0), w_unit.eq(0),
                    w_beat.eq(0)] + [s.eq(0) for s in o_sel]

        with m.FSM():
            with m.State("IDLE"):
                with m.If(c.start):
                    m.d.comb += clear.eq(1)
                    m.d.sync += [c.error.eq(bad), c.busy.eq(1), running.eq(~bad), cmds.eq(0), dones.eq(0),
                                 passes.eq(hq // G), kv_passes.eq(Mux(hkv == 0, 1, hq // hkv) // G),
                                 stride.eq(context * (4 * rw))]
                    m.d.sync += block_reset(0)
                    with m.If(bad):
                        m.next = "REFUSED"
                    with m.Else():
                        m.d.sync += in_block.eq(1)
                        m.next = "BLOCK"
            with m.State("REFUSED"):
                m.d.sync += c.busy.eq(0)
                m.next = "IDLE"
            with m.State("BLOCK"):
                with m.If(block_done):
                    m.d.sync += block_reset(t0 + B)
                    with m.If(t0 + B >= n):
                        m.d.sync += in_block.eq(0)
                        m.next = "DRAIN"
            with m.State("DRAIN"):
                with m.If(dones == cmds):
                    m.d.sync += [c.busy.eq(0), running.eq(0)]
                    m.next = "IDLE"
        return m
