"""RMSNORM controller: the norm unit (hw/norm.py RMSNorm) on a program's rows (hw/ports.py contract).

Instruction (backends/fpga/isa.py): ``src``, ``dst``, ``width`` (W words, a multiple of 4), ``weight``
(gamma, W FX words), ``inv_k``, ``eps_q``; ``dst[t] = rmsnorm_fx_consts(src[t], gamma, inv_k, eps_q)``
for t < N_TOKENS.

Dataflow (one read port): ``rd0`` reads gamma once (W/4 beats) into an on-chip copy of ``max_k`` words
(BRAM), then all N rows in one command (rows are contiguous: N*W/4 beats); a :class:`WordFifo` cuts
the beats into the unit's ``lanes`` (a ragged last chunk is zero-padded, which the unit allows); the
gamma copy is replayed once per row; the unit's output goes back into beats through a second
WordFifo and out on ``wr`` as one command of N*W/4 beats. ``busy`` falls at that command's ``done``.
A width of 0, not a multiple of 4, or above ``max_k``, or N_TOKENS = 0, sets ``error`` (nothing moves).

Cycles per instruction (ports at full rate, measured by tests/hw/test_ctl_norm.py in Amaranth's
simulator; the model is :meth:`NormCtl.cycles`): W/4 (gamma) + N * (2 * ceil(W / lanes) +
``ROW_OVERHEAD``) + ``OVERHEAD``, i.e. the norm unit's own per-token cost (LOAD then EMIT, not
overlapped; its 9 RSQRT/drain cycles plus handshakes: 9.5 on average, the next row's beats already
wait in the input WordFifo) plus the gamma load and the DDR round trips at the start and end.
Measured (p = 1, read latency 4-6 cycles): W=168, N=5: 530 cycles (model 531.5); W=336, N=1: 284
(283). DDR traffic: 4W (gamma) + 8W bytes per row; the unit runs at lanes words/cycle, so a row costs
2W/lanes cycles against 2W/4 beats of DDR: with lanes = 4 the norm is compute-bound at half the port
rate (a second token buffer in RMSNorm would overlap LOAD and EMIT).
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, unsigned
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import Out

from ternc.hw.ctl_util import WordFifo
from ternc.hw.norm import RMSNorm
from ternc.hw.ports import (BEAT_BITS, WORDS_PER_BEAT, op_control_signature, read_port_signature,
                            write_port_signature)
from ternc.hw.stream_util import CreditBuffer


class NormCtl(wiring.Component):
    READ_PORTS = 1
    ROW_OVERHEAD = 9.5  # per row beyond 2 * ceil(W / lanes) (measured, module docstring)
    OVERHEAD = 22       # read latency into the first row, write-back of the last beat, done (measured)

    def __init__(self, lanes: int = 4, max_k: int = 8192):
        if lanes < 1 or lanes & (lanes - 1) or max_k < WORDS_PER_BEAT:
            self._MustUse__silence = True
            raise ValueError("NormCtl: need lanes a power of two and max_k >= 4")
        self.lanes, self.max_k = lanes, max_k
        self.gamma_beats = -(-max_k // WORDS_PER_BEAT)
        super().__init__({
            "ctl": Out(op_control_signature()),
            "rd0": Out(read_port_signature()),
            "wr": Out(write_port_signature()),
        })

    def cycles(self, width: int, n_tokens: int) -> float:
        """Analytic cycles of one RMSNORM instruction with DDR at full rate (see the module docstring)."""
        return width // 4 + n_tokens * (2 * -(-width // self.lanes) + self.ROW_OVERHEAD) + self.OVERHEAD

    def elaborate(self, platform):
        m = Module()
        L, WB = self.lanes, WORDS_PER_BEAT
        c = self.ctl
        src, dst, width, weight = c.instr[1], c.instr[2], c.instr[3], c.instr[4]

        m.submodules.norm = norm = RMSNorm(L, self.max_k)
        m.submodules.row_in = row_in = WordFifo(WB, L)
        m.submodules.gam_in = gam_in = WordFifo(WB, L)
        m.submodules.row_out = row_out = WordFifo(L, WB)
        m.submodules.gmem = gmem = memory.Memory(shape=unsigned(BEAT_BITS), depth=self.gamma_beats, init=[])
        gw, gr = gmem.write_port(), gmem.read_port()
        m.submodules.gbuf = gbuf = CreditBuffer(unsigned(BEAT_BITS), 4)
        m.d.comb += [norm.inv_k.eq(c.instr[5]), norm.eps_q.eq(c.instr[6])]

        beats = Signal(16)                      # W / 4
        chunks = Signal(16)                     # ceil(W / lanes)
        tail = Signal(range(L + 1))             # words in a row's last chunk
        total = Signal(32)                      # N * W / 4
        m.d.comb += [beats.eq(width >> 2), chunks.eq((width + L - 1) >> (L.bit_length() - 1)),
                     tail.eq(width - (chunks - 1) * L), total.eq(c.n_tokens * beats)]
        bad = Signal()
        m.d.comb += bad.eq((width == 0) | (width[:2] != 0) | (width > self.max_k) | (c.n_tokens == 0))

        running = Signal()
        rd_cmds = Signal(2)
        wr_cmd = Signal()
        got = Signal(32)                        # rd0 beats received
        g_addr = Signal(range(self.gamma_beats + 1))
        g_tok = Signal(16)
        in_chunk = Signal(16)
        out_chunk = Signal(16)
        clear = Signal()
        m.d.comb += [row_in.clear.eq(clear), gam_in.clear.eq(clear), row_out.clear.eq(clear)]

        # ---- reads: gamma, then all rows ------------------------------------------------------------
        m.d.comb += [self.rd0.cmd.valid.eq(running & (rd_cmds < 2)),
                     self.rd0.cmd.payload.addr.eq(Mux(rd_cmds == 0, weight, src)),
                     self.rd0.cmd.payload.beats.eq(Mux(rd_cmds == 0, beats, total))]
        with m.If(self.rd0.cmd.valid & self.rd0.cmd.ready):
            m.d.sync += rd_cmds.eq(rd_cmds + 1)
        gamma_phase = Signal()
        m.d.comb += gamma_phase.eq(got < beats)
        m.d.comb += [gw.addr.eq(got), gw.data.eq(self.rd0.data.payload.data),
                     gw.en.eq(self.rd0.data.valid & gamma_phase & running),
                     row_in.inp.payload.data.as_value().eq(self.rd0.data.payload.data),
                     row_in.inp.payload.count.eq(WB),
                     row_in.inp.valid.eq(self.rd0.data.valid & ~gamma_phase & running),
                     self.rd0.data.ready.eq(running & (gamma_phase | row_in.inp.ready))]
        with m.If(self.rd0.data.valid & self.rd0.data.ready):
            m.d.sync += got.eq(got + 1)

        # ---- gamma replay, once per row ---------------------------------------------------------------
        g_issue = Signal()
        m.d.comb += [g_issue.eq(running & ~gamma_phase & (g_tok < c.n_tokens) & gbuf.credit),
                     gr.addr.eq(g_addr), gr.en.eq(1), gbuf.start.eq(g_issue)]
        g_valid = Signal()
        m.d.sync += g_valid.eq(g_issue)
        m.d.comb += [gbuf.w.valid.eq(g_valid), gbuf.w.payload.eq(gr.data),
                     gam_in.inp.valid.eq(gbuf.out.valid), gam_in.inp.payload.data.as_value().eq(gbuf.out.payload),
                     gam_in.inp.payload.count.eq(WB), gbuf.out.ready.eq(gam_in.inp.ready)]
        with m.If(g_issue):
            with m.If(g_addr == beats - 1):
                m.d.sync += [g_addr.eq(0), g_tok.eq(g_tok + 1)]
            with m.Else():
                m.d.sync += g_addr.eq(g_addr + 1)

        # ---- into the unit: rows and gamma in lanes --------------------------------------------------
        last_in, gam_last = Signal(), Signal()
        m.d.comb += [last_in.eq(in_chunk == chunks - 1),
                     row_in.take.eq(Mux(last_in, tail, L)),
                     gam_in.take.eq(Mux(gam_last, tail, L)),
                     norm.inp.valid.eq(row_in.out.valid), row_in.out.ready.eq(norm.inp.ready),
                     norm.inp.payload.data.as_value().eq(row_in.out.payload.data.as_value()),
                     norm.inp.payload.last.eq(last_in),
                     norm.gamma.valid.eq(gam_in.out.valid), gam_in.out.ready.eq(norm.gamma.ready),
                     norm.gamma.payload.data.as_value().eq(gam_in.out.payload.data.as_value())]
        g_chunk = Signal(16)
        m.d.comb += gam_last.eq(g_chunk == chunks - 1)
        with m.If(norm.inp.valid & norm.inp.ready):
            m.d.sync += in_chunk.eq(Mux(last_in, 0, in_chunk + 1))
        with m.If(norm.gamma.valid & norm.gamma.ready):
            m.d.sync += g_chunk.eq(Mux(gam_last, 0, g_chunk + 1))

        # ---- out of the unit: back to beats ---------------------------------------------------------
        last_out = Signal()
        m.d.comb += [last_out.eq(out_chunk == chunks - 1),
                     row_out.inp.valid.eq(norm.out.valid), norm.out.ready.eq(row_out.inp.ready),
                     row_out.inp.payload.data.as_value().eq(norm.out.payload.data.as_value()),
                     row_out.inp.payload.count.eq(Mux(last_out, tail, L)),
                     row_out.take.eq(WB),
                     self.wr.data.valid.eq(row_out.out.valid), row_out.out.ready.eq(self.wr.data.ready),
                     self.wr.data.payload.data.eq(row_out.out.payload.data.as_value())]
        with m.If(norm.out.valid & norm.out.ready):
            m.d.sync += out_chunk.eq(Mux(last_out, 0, out_chunk + 1))
        m.d.comb += [self.wr.cmd.valid.eq(running & ~wr_cmd), self.wr.cmd.payload.addr.eq(dst),
                     self.wr.cmd.payload.beats.eq(total), self.wr.done.ready.eq(1)]
        with m.If(self.wr.cmd.valid & self.wr.cmd.ready):
            m.d.sync += wr_cmd.eq(1)

        # ---- control ----------------------------------------------------------------------------------
        with m.If(c.start):
            m.d.comb += clear.eq(1)
            m.d.sync += [c.error.eq(bad), c.busy.eq(1), running.eq(~bad), rd_cmds.eq(0), wr_cmd.eq(0),
                         got.eq(0), g_addr.eq(0), g_tok.eq(0), in_chunk.eq(0), out_chunk.eq(0), g_chunk.eq(0)]
        with m.Elif(c.busy & ~running):
            m.d.sync += c.busy.eq(0)                     # refused instruction: one busy cycle
        with m.Elif(running & self.wr.done.valid):
            m.d.sync += [c.busy.eq(0), running.eq(0)]
        return m
