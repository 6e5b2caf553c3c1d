"""EMBED controller: ``dst[t] = table[ids[t]]`` for the call's N_TOKENS tokens (isa.py, opcode 0x01).

Per token: one read of the beat holding ``ids[t]`` (int32 at ``ids + 4 t``), a range check against the
vocabulary (``0 <= id < vocab``; an out-of-range id sets ``error`` and stops copying), then the row
``table + 4 * width * id`` streams beat for beat from ``rd0`` into ``wr`` at ``dst + 4 * width * t``.
Rows are whole beats (the schedule keeps ``width`` a multiple of 4 words). ``busy`` falls once every
issued write is ``done`` (hw/ports.py). Not a bandwidth-critical unit (one row per token), so it
copies one row at a time.
"""

from __future__ import annotations

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import Out

from .ports import BEAT_BYTES, WORDS_PER_BEAT, op_control_signature, read_port_signature, write_port_signature

__all__ = ["EmbedCtl"]


class EmbedCtl(wiring.Component):
    """``vocab``: the embedding table's rows (ids outside ``0 .. vocab-1`` are a fault)."""

    READ_PORTS = 1

    def __init__(self, vocab: int):
        if not 0 < vocab < 1 << 31:
            raise ValueError(f"EmbedCtl: vocab {vocab} must be in 1 .. 2**31-1")
        self.vocab = vocab
        super().__init__({
            "ctl": Out(op_control_signature()),
            "rd0": Out(read_port_signature()),
            "wr": Out(write_port_signature()),
        })

    def elaborate(self, platform):
        m = Module()
        c, rd, wr = self.ctl, self.rd0, self.wr
        table, dst, width, ids = c.instr[1], c.instr[2], c.instr[3], c.instr[4]
        row_bytes = Signal(32)
        m.d.comb += row_bytes.eq(width << 2)
        t = Signal(16)                 # token being copied
        tok = Signal(32)               # its id
        src_addr = Signal(32)
        dst_addr = Signal(32)
        rd_sent, wr_sent = Signal(), Signal()
        pending = Signal(17)           # writes issued and not yet done
        issue_wr = Signal()
        m.d.comb += [wr.done.ready.eq(1), issue_wr.eq(wr.cmd.valid & wr.cmd.ready)]
        m.d.sync += pending.eq(pending + issue_wr - wr.done.valid)
        bytes_per_word = 4
        word_of = t[:(WORDS_PER_BEAT - 1).bit_length()]

        with m.FSM():
            with m.State("IDLE"):
                with m.If(c.start):
                    m.d.sync += [c.busy.eq(1), c.error.eq(0), t.eq(0), dst_addr.eq(dst)]
                    with m.If(c.n_tokens == 0):
                        m.next = "DRAIN"
                    with m.Else():
                        m.next = "ID_CMD"
            with m.State("ID_CMD"):
                m.d.comb += [rd.cmd.valid.eq(1),
                             rd.cmd.payload.addr.eq(ids + (t >> 2) * BEAT_BYTES),
                             rd.cmd.payload.beats.eq(1)]
                with m.If(rd.cmd.ready):
                    m.next = "ID_DATA"
            with m.State("ID_DATA"):
                m.d.comb += rd.data.ready.eq(1)
                with m.If(rd.data.valid):
                    m.d.sync += tok.eq(rd.data.payload.data.word_select(word_of, 8 * bytes_per_word))
                    m.next = "CHECK"
            with m.State("CHECK"):
                with m.If(tok >= self.vocab):      # unsigned: negative ids are huge
                    m.d.sync += c.error.eq(1)
                    m.next = "DRAIN"
                with m.Else():
                    m.d.sync += [src_addr.eq(table + tok * row_bytes), rd_sent.eq(0), wr_sent.eq(0)]
                    m.next = "ROW_CMD"
            with m.State("ROW_CMD"):
                m.d.comb += [rd.cmd.valid.eq(~rd_sent), rd.cmd.payload.addr.eq(src_addr),
                             rd.cmd.payload.beats.eq(width >> 2),
                             wr.cmd.valid.eq(~wr_sent), wr.cmd.payload.addr.eq(dst_addr),
                             wr.cmd.payload.beats.eq(width >> 2)]
                rd_now = rd_sent | rd.cmd.ready
                wr_now = wr_sent | wr.cmd.ready
                m.d.sync += [rd_sent.eq(rd_now), wr_sent.eq(wr_now)]
                with m.If(rd_now & wr_now):
                    m.next = "COPY"
            with m.State("COPY"):
                m.d.comb += [wr.data.valid.eq(rd.data.valid), wr.data.payload.data.eq(rd.data.payload.data),
                             rd.data.ready.eq(wr.data.ready)]
                with m.If(rd.data.valid & wr.data.ready & rd.data.payload.last):
                    m.d.sync += [t.eq(t + 1), dst_addr.eq(dst_addr + row_bytes)]
                    with m.If(t + 1 == c.n_tokens):
                        m.next = "DRAIN"
                    with m.Else():
                        m.next = "ID_CMD"
            with m.State("DRAIN"):
                with m.If((pending == 0) & ~issue_wr):
                    m.d.sync += c.busy.eq(0)
                    m.next = "IDLE"
        return m
