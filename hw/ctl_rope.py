"""ROPE controller: rotary position embedding of a program's q/k rows (hw/ports.py contract).

Instruction (backends/fpga/isa.py, opcode ROPE): ``src``, ``dst`` (the schedule runs it in place),
``heads`` (h | h << 8 | d << 16), ``table`` (the RoPE table: per position p, cos[d/2] then sin[d/2]
as int16 Q1.14, so a position's row is 2d bytes and *not* beat-aligned for d = 42). For every row
t < N at position POS + t and head k, each pair (x0, x1) = (x[k*d + i], x[k*d + i + d/2]) becomes
``rope_fx(x0, x1, cos[i], sin[i])`` = (sat((x0*c - x1*s + 2**13) >> 14), sat((x0*s + x1*c + 2**13) >> 14)),
bit-exact with ``hw_numerics.rope_fx`` (and the executor).

Dataflow: ``rd0`` reads all N rows in one command (W = h*d words per row, W a multiple of 4); each row
lands in an on-chip row buffer (``max_width`` words, beat-wide BRAM with two read ports), because a
pair's words are d/2 apart and heads are not beat-aligned. ``rd1`` reads the table rows of positions
POS .. POS+N-1 in one command (they are contiguous: the beats covering [table + 2d*POS, table +
2d*(POS+N))); a 16-bit :class:`WordFifo` drops the leading half-words and hands d half-words per row to
the cos/sin buffers (``max_head_dim`` / 2 entries each). The rotation then runs one output word per
cycle in row order (two row-buffer reads, two 32x16 multiplies, round/shift/saturate: 3 stages) into a
credit FIFO and a WordFifo that packs whole beats for ``wr`` (one command for all N rows).
In place is safe: row t is written only after all of it is on chip, and row t+1 lives elsewhere.

Cycles (ports at full rate; tests/hw/test_ctl_rope.py measures them, the model is
:meth:`RopeCtl.cycles`): per row max(W/4, d) (load the row and its table row) + W (rotate) +
``ROW_OVERHEAD``, plus ``OVERHEAD`` per instruction. Measured (p = 1): q of tiny-bitnet (4 x 42), N = 5:
1,071 cycles (model 1,071); k (2 x 42), N = 1: 143 (142.25). The load and the rotation are not overlapped
and the rotation does one word per cycle where DDR delivers 4: a ping-pong row buffer and 4 rotations
per cycle would bring a row to ~W/4 cycles (not built; RoPE touches (hq + hkv) * d words per token,
a small share of a layer's time next to the linears).
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import Out

from ternc.hw.ctl_util import WordFifo
from ternc.hw.ports import (BEAT_BITS, BEAT_BYTES, WORDS_PER_BEAT, op_control_signature, read_port_signature,
                            write_port_signature)
from ternc.hw.stream_util import CreditBuffer
from ternc.ir import hw_numerics as hwn

HALF_PER_BEAT = BEAT_BITS // 16


def _sat_fx(v):
    return Mux(v > hwn.FX_MAX, hwn.FX_MAX, Mux(v < hwn.FX_MIN, hwn.FX_MIN, v))


class RopeCtl(wiring.Component):
    READ_PORTS = 2
    ROW_OVERHEAD = 1.25  # per row: load -> rotate handover (fitted; the next row already waits in the FIFOs)
    OVERHEAD = 15        # per instruction: first read latency, pipeline, last write + done (fitted)
    LATENCY = 3        # rotation pipeline stages

    def __init__(self, max_width: int = 4096, max_head_dim: int = 256):
        if max_width < WORDS_PER_BEAT or max_head_dim < 2:
            self._MustUse__silence = True
            raise ValueError("RopeCtl: need max_width >= 4 and max_head_dim >= 2")
        self.max_width, self.max_head_dim = max_width, max_head_dim
        self.row_depth = -(-max_width // WORDS_PER_BEAT)
        self.tab_depth = -(-max_head_dim // 2)
        super().__init__({
            "ctl": Out(op_control_signature()),
            "rd0": Out(read_port_signature()),
            "rd1": Out(read_port_signature()),
            "wr": Out(write_port_signature()),
        })

    def cycles(self, heads: int, head_dim: int, n_tokens: int) -> float:
        """Analytic cycles of one ROPE instruction with DDR at full rate (module docstring)."""
        w = heads * head_dim
        return n_tokens * (max(w // 4, head_dim) + w + self.ROW_OVERHEAD) + self.OVERHEAD

    def elaborate(self, platform):
        m = Module()
        WB = WORDS_PER_BEAT
        c = self.ctl
        src, dst, heads, table = c.instr[1], c.instr[2], c.instr[3], c.instr[4]
        nh, d = heads[0:8], heads[16:32]
        n, pos = c.n_tokens, c.pos

        width = Signal(24)
        half = Signal(16)
        m.d.comb += [width.eq(nh * d), half.eq(d >> 1)]
        row_beats = Signal(22)
        m.d.comb += row_beats.eq(width >> 2)
        bad = Signal()
        m.d.comb += bad.eq((nh == 0) | (d == 0) | d[0] | (width[:2] != 0) | (width > self.max_width)
                           | (d > self.max_head_dim) | (n == 0))

        m.submodules.rows = rows = memory.Memory(shape=unsigned(BEAT_BITS), depth=self.row_depth, init=[])
        rw, ra, rb = rows.write_port(), rows.read_port(), rows.read_port()
        m.submodules.cos = cos = memory.Memory(shape=signed(16), depth=self.tab_depth, init=[])
        m.submodules.sin = sin = memory.Memory(shape=signed(16), depth=self.tab_depth, init=[])
        cw, cr = cos.write_port(), cos.read_port()
        sw, sr = sin.write_port(), sin.read_port()
        m.submodules.tab = tab = WordFifo(HALF_PER_BEAT, 1, width=16)
        m.submodules.obuf = obuf = CreditBuffer(unsigned(32), self.LATENCY + 3)
        m.submodules.pack = pack = WordFifo(1, WB)

        running = Signal()
        clear = Signal()
        m.d.comb += [tab.clear.eq(clear), pack.clear.eq(clear)]

        # ---- commands: all rows (rd0), their table rows (rd1), all output rows (wr) -------------------
        total = Signal(32)
        t_lo = Signal(32)                          # first table byte
        t_hi = Signal(32)                          # one past the last table byte
        skip = Signal(range(HALF_PER_BEAT))        # half-words to drop before position POS's row
        m.d.comb += [total.eq(n * row_beats), t_lo.eq(table + 2 * d * pos), t_hi.eq(table + 2 * d * (pos + n)),
                     skip.eq(t_lo[1:4])]
        r_cmd, t_cmd, w_cmd = Signal(), Signal(), Signal()
        m.d.comb += [self.rd0.cmd.valid.eq(running & ~r_cmd), self.rd0.cmd.payload.addr.eq(src),
                     self.rd0.cmd.payload.beats.eq(total),
                     self.rd1.cmd.valid.eq(running & ~t_cmd),
                     self.rd1.cmd.payload.addr.eq(t_lo & ~(BEAT_BYTES - 1)),
                     self.rd1.cmd.payload.beats.eq(((t_hi + BEAT_BYTES - 1) >> 4) - (t_lo >> 4)),
                     self.wr.cmd.valid.eq(running & ~w_cmd), self.wr.cmd.payload.addr.eq(dst),
                     self.wr.cmd.payload.beats.eq(total), self.wr.done.ready.eq(1)]
        with m.If(self.rd0.cmd.valid & self.rd0.cmd.ready):
            m.d.sync += r_cmd.eq(1)
        with m.If(self.rd1.cmd.valid & self.rd1.cmd.ready):
            m.d.sync += t_cmd.eq(1)
        with m.If(self.wr.cmd.valid & self.wr.cmd.ready):
            m.d.sync += w_cmd.eq(1)

        # ---- table half-words: drop the first `skip`, then d per row -----------------------------------
        t_first = Signal()
        m.d.comb += [tab.inp.valid.eq(self.rd1.data.valid & running),
                     tab.inp.payload.data.as_value().eq(Mux(t_first, self.rd1.data.payload.data >> (skip * 16),
                                                            self.rd1.data.payload.data)),
                     tab.inp.payload.count.eq(Mux(t_first, HALF_PER_BEAT - skip, HALF_PER_BEAT)),
                     self.rd1.data.ready.eq(tab.inp.ready & running), tab.take.eq(1)]
        with m.If(self.rd1.data.valid & self.rd1.data.ready):
            m.d.sync += t_first.eq(0)

        # ---- row load + table load ---------------------------------------------------------------------
        loading = Signal()
        lb = Signal(22)                 # row beats received
        tb = Signal(16)                 # table half-words received
        m.d.comb += [rw.addr.eq(lb), rw.data.eq(self.rd0.data.payload.data),
                     rw.en.eq(self.rd0.data.valid & self.rd0.data.ready),
                     self.rd0.data.ready.eq(loading & (lb < row_beats)),
                     tab.out.ready.eq(loading & (tb < d))]
        h_in = tab.out.payload.data[0].as_signed()
        t_take = tab.out.valid & tab.out.ready
        m.d.comb += [cw.addr.eq(tb), cw.data.eq(h_in), cw.en.eq(t_take & (tb < half)),
                     sw.addr.eq(tb - half), sw.data.eq(h_in), sw.en.eq(t_take & (tb >= half))]
        with m.If(rw.en):
            m.d.sync += lb.eq(lb + 1)
        with m.If(t_take):
            m.d.sync += tb.eq(tb + 1)

        # ---- rotation: one output word per cycle, 3 stages ---------------------------------------------
        wi = Signal(24)                 # output word in the row
        j = Signal(16)                  # position in the head
        second = Signal()               # j >= d/2: this word is y1 of its pair
        x0i, x1i = Signal(24), Signal(24)
        issue = Signal()
        m.d.comb += [second.eq(j >= half),
                     x0i.eq(Mux(second, wi - half, wi)), x1i.eq(Mux(second, wi, wi + half)),
                     ra.addr.eq(x0i >> 2), rb.addr.eq(x1i >> 2), ra.en.eq(1), rb.en.eq(1),
                     cr.addr.eq(Mux(second, j - half, j)), sr.addr.eq(Mux(second, j - half, j)),
                     cr.en.eq(1), sr.en.eq(1), obuf.start.eq(issue)]
        v1, v2, v3 = Signal(), Signal(), Signal()
        sel0, sel1 = Signal(2, reset_less=True), Signal(2, reset_less=True)
        sec1, sec2 = Signal(reset_less=True), Signal(reset_less=True)
        m.d.sync += [v1.eq(issue), v2.eq(v1), v3.eq(v2), sel0.eq(x0i[:2]), sel1.eq(x1i[:2]),
                     sec1.eq(second), sec2.eq(sec1)]
        x0 = Signal(signed(32))
        x1 = Signal(signed(32))
        m.d.comb += [x0.eq(ra.data.word_select(sel0, 32)), x1.eq(rb.data.word_select(sel1, 32))]
        p1 = Signal(signed(48), reset_less=True)
        p2 = Signal(signed(48), reset_less=True)
        cs, sn = cr.data.as_signed(), sr.data.as_signed()
        m.d.sync += [p1.eq(x0 * Mux(sec1, sn, cs)), p2.eq(x1 * Mux(sec1, cs, sn))]
        acc = Signal(signed(50))
        m.d.comb += acc.eq(Mux(sec2, p1 + p2, p1 - p2) + (1 << (hwn.ROPE_FRAC - 1)))
        y = Signal(signed(32), reset_less=True)
        m.d.sync += y.eq(_sat_fx(acc >> hwn.ROPE_FRAC))
        m.d.comb += [obuf.w.valid.eq(v3), obuf.w.payload.eq(y),
                     pack.inp.valid.eq(obuf.out.valid), obuf.out.ready.eq(pack.inp.ready),
                     pack.inp.payload.data.as_value().eq(obuf.out.payload), pack.inp.payload.count.eq(1),
                     pack.take.eq(WB),
                     self.wr.data.valid.eq(pack.out.valid), pack.out.ready.eq(self.wr.data.ready),
                     self.wr.data.payload.data.eq(pack.out.payload.data.as_value())]

        # ---- control -----------------------------------------------------------------------------------
        row = Signal(16)
        with m.FSM():
            with m.State("IDLE"):
                with m.If(c.start):
                    m.d.comb += clear.eq(1)
                    m.d.sync += [c.error.eq(bad), c.busy.eq(1), running.eq(~bad), r_cmd.eq(0), t_cmd.eq(0),
                                 w_cmd.eq(0), t_first.eq(1), row.eq(0), lb.eq(0), tb.eq(0)]
                    with m.If(bad):
                        m.next = "REFUSED"
                    with m.Else():
                        m.d.sync += loading.eq(1)
                        m.next = "LOAD"
            with m.State("REFUSED"):
                m.d.sync += c.busy.eq(0)
                m.next = "IDLE"
            with m.State("LOAD"):
                with m.If((lb == row_beats) & (tb == d)):
                    m.d.sync += [loading.eq(0), wi.eq(0), j.eq(0)]
                    m.next = "ROTATE"
            with m.State("ROTATE"):
                m.d.comb += issue.eq(obuf.credit)
                with m.If(issue):
                    m.d.sync += wi.eq(wi + 1)
                    with m.If(j == d - 1):
                        m.d.sync += j.eq(0)
                    with m.Else():
                        m.d.sync += j.eq(j + 1)
                    with m.If(wi == width - 1):
                        m.d.sync += [row.eq(row + 1), lb.eq(0), tb.eq(0)]
                        with m.If(row == n - 1):
                            m.next = "DONE"
                        with m.Else():
                            m.d.sync += loading.eq(1)
                            m.next = "LOAD"
            with m.State("DONE"):
                with m.If(self.wr.done.valid):
                    m.d.sync += [c.busy.eq(0), running.eq(0)]
                    m.next = "IDLE"
        return m
