"""Stream plumbing shared by the units: register slices and credit buffers.

Why: a stall-by-clock-enable pipeline (``en = ~out.valid | out.ready`` on every stage) runs ``ready``
combinationally from the last stage back to the first and puts every data register on one
clock-enable net. The units instead run their datapath *free* (no enable, data registers without
reset) and decide at the input whether a beat may enter, from registered state only:

* :class:`CreditBuffer` -- the output FIFO of a free-running pipeline of ``latency`` cycles. It
  counts the results in flight plus those buffered; ``credit`` (a register) says one more
  result-producing beat may enter this cycle. With ``SyncFIFOBuffered`` a result written at cycle
  ``latency`` is valid at ``latency + 2`` and its credit usable at ``latency + 3``: ``depth =
  latency + 3`` keeps full throughput when the consumer is always ready.
* :class:`SkidBuffer` -- a two-entry register slice: cuts both ``valid``/``payload`` and ``ready``
  paths at full throughput (``inp.ready`` is a register).
"""

from __future__ import annotations

from amaranth import Module, Signal, Value
from amaranth.hdl import Shape
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["CreditBuffer", "SkidBuffer"]


class CreditBuffer(wiring.Component):
    """Output FIFO with registered credits for a free-running pipeline.

    Ports:
      ``start`` (In(1)): a result-producing beat entered the pipeline this cycle (only when ``credit``).
      ``credit`` (Out(1), registered): the pipeline may start one result-producing beat this cycle.
      ``w`` (In, always-ready stream): the pipeline's results, ``latency`` or any number of cycles later.
      ``out`` (Out stream): the results in order.
    Never overflows: results in flight + buffered <= ``depth``.
    """

    def __init__(self, shape, depth: int):
        if depth < 1:
            self._MustUse__silence = True
            raise ValueError("depth must be >= 1")
        self.shape, self.depth = shape, depth
        super().__init__({
            "start": In(1),
            "credit": Out(1, init=1),
            "w": In(stream.Signature(shape, always_ready=True)),
            "out": Out(stream.Signature(shape)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.fifo = f = fifo.SyncFIFOBuffered(width=Shape.cast(self.shape).width, depth=self.depth)
        m.d.comb += [f.w_data.eq(Value.cast(self.w.payload)),
                     f.w_en.eq(self.w.valid),
                     self.out.valid.eq(f.r_rdy), f.r_en.eq(self.out.ready),
                     self.out.payload.eq(f.r_data)]
        outstanding = Signal(range(self.depth + 1))
        pop = Signal()
        nxt = Signal(range(self.depth + 2))
        m.d.comb += [pop.eq(self.out.valid & self.out.ready),
                     nxt.eq(outstanding + self.start - pop)]
        m.d.sync += [outstanding.eq(nxt), self.credit.eq(nxt < self.depth)]
        return m


class SkidBuffer(wiring.Component):
    """Two-entry register slice (full throughput; ``inp.ready`` and ``out.valid`` are registers)."""

    def __init__(self, shape):
        self.shape = shape
        super().__init__({
            "inp": In(stream.Signature(shape)),
            "out": Out(stream.Signature(shape)),
        })

    def elaborate(self, platform):
        m = Module()
        main = Signal.like(self.out.payload, reset_less=True)
        spare = Signal.like(self.out.payload, reset_less=True)
        main_v, spare_v = Signal(), Signal()
        m.d.comb += [self.out.valid.eq(main_v), self.out.payload.eq(main), self.inp.ready.eq(~spare_v)]
        take = self.inp.valid & self.inp.ready
        give = self.out.valid & self.out.ready
        with m.If(give | ~main_v):
            # main is free this cycle: refill it from the skid entry, else from the input.
            with m.If(spare_v):  # (no input this cycle: ready = ~spare_v)
                m.d.sync += [main.eq(spare), main_v.eq(1), spare_v.eq(0)]
            with m.Else():
                m.d.sync += [main.eq(self.inp.payload), main_v.eq(take)]
        with m.Elif(take):
            m.d.sync += [spare.eq(self.inp.payload), spare_v.eq(1)]
        return m
