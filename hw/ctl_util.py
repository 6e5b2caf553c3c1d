"""Word plumbing shared by the per-opcode controllers (hw/ctl_*.py): DDR beats <-> unit lanes.

Activation rows are whole 16-byte beats, but what a unit consumes is not: a query head of d = 42 words
starts mid-beat, a KV-cache row carries pad words, an output head ends mid-beat. :class:`WordFifo`
re-packs a stream of words at any alignment: the producer pushes up to ``in_words`` words per beat
(``count`` says how many are valid), the consumer pops ``take`` (1..``out_words``) words per beat, and
words past ``take`` read as 0 -- so a head of d words padded to a multiple of ``lanes`` comes out with
exact zero pad lanes, and a partial tail is dropped by popping fewer words. Full rate when ``in_words``
== ``out_words`` (``in_words + out_words`` words of registers).
"""

from __future__ import annotations

from amaranth import Array, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["WordFifo", "words_of"]


def words_of(value, n: int, width: int = 32) -> list:
    """The n ``width``-bit words of a flat value (LSB first: word 0 = bits [0, width))."""
    return [value[width * i:width * (i + 1)] for i in range(n)]


class WordFifo(wiring.Component):
    """Ports: ``inp`` {data: in_words x width, count} (words 0..count-1 valid, count >= 1);
    ``out`` {data: out_words x width} valid when at least ``take`` words are buffered; ``take``
    (In, 1..out_words, sampled with ``out.ready``): words popped by this beat (the rest of ``out.data``
    reads 0); ``clear`` (In): drop everything (between instructions)."""

    def __init__(self, in_words: int, out_words: int, width: int = 32):
        self.in_words, self.out_words, self.width = in_words, out_words, width
        self.size = in_words + out_words
        super().__init__({
            "inp": In(stream.Signature(data.StructLayout({
                "data": data.ArrayLayout(unsigned(width), in_words), "count": range(in_words + 1)}))),
            "out": Out(stream.Signature(data.StructLayout({"data": data.ArrayLayout(unsigned(width), out_words)}))),
            "take": In(range(out_words + 1)),
            "clear": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        S, I, O = self.size, self.in_words, self.out_words
        buf = [Signal(self.width, name=f"w{i}", reset_less=True) for i in range(S)]
        cnt = Signal(range(S + 1))
        fire_out = Signal()
        sh = Signal(range(O + 1))
        rem = Signal(range(S + 1))
        m.d.comb += [self.out.valid.eq((cnt >= self.take) & (self.take != 0)),
                     fire_out.eq(self.out.valid & self.out.ready),
                     sh.eq(Mux(fire_out, self.take, 0)),
                     rem.eq(cnt - sh),
                     self.inp.ready.eq(rem + I <= S)]
        for j in range(O):
            m.d.comb += self.out.payload.data[j].eq(Mux(j < self.take, buf[j], 0))
        arr = Array(buf + [Signal(self.width, name=f"wz{i}") for i in range(O)])   # reads past S are 0
        ind = Array(self.inp.payload.data[i] for i in range(I))
        accept = self.inp.valid & self.inp.ready
        for i in range(S):
            shifted = arr[i + sh]
            pos = Signal(range(-S, S + 1), name=f"pos{i}")
            m.d.comb += pos.eq(i - rem)
            fill = accept & (pos >= 0) & (pos < self.inp.payload.count)
            m.d.sync += buf[i].eq(Mux(fill, ind[pos[:max(1, (I - 1).bit_length())]], shifted))
        with m.If(self.clear):
            m.d.sync += cnt.eq(0)
        with m.Else():
            m.d.sync += cnt.eq(rem + Mux(accept, self.inp.payload.count, 0))
        return m
