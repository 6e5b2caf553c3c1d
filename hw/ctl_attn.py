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
Decode (N = 1) is what this unit is for; prefill is correct but DDR-heavy (see README).
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


def kv_row_words(head_dim: int) -> int:
    """backends/fpga/images.kv_row_words (restated: hw/ must not import the backend)."""
    return -(-head_dim // WORDS_PER_BEAT) * WORDS_PER_BEAT


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
        self.row_words = kv_row_words(head_dim)
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
