"""The streaming-fused ternary linear: quantize -> TLMM -> dequantize -> elementwise (TeLLMe style).

:class:`DqFactor` turns a token's amax into the dequantize factor (``hw_numerics.dq_factor``);
:class:`TLMMPipeline` composes ActQuantizer -> TLMMCore -> Epilogue with ``wiring.connect``.

TLMMPipeline ports:
  ``x``    (In): FX activations of one token per K pass group (ActQuantizer.inp; ``passes`` = number
           of column tiles to run for this token).
  ``load``, ``cmd`` (In): the weight buffer (TLMMCore); one cmd per pass, in tile order.
  ``ws_m``, ``ws_s`` (In, plain signals): the layer's ``hw_numerics.encode_wscale(w_scale)``.
  ``aux``  (In, only for ops "residual_add"/"rope"/"silu_mul"/"relu2_mul"): per output beat the
           residual (``res``), ``cos``/``sin`` or ``up`` fields of :class:`Epilogue`'s aux layout.
  ``sel``  (In, only when ``op`` is a tuple): the epilogue op index (:class:`Epilogue`), to be held
           while beats of that op are in flight (the ws_m/ws_s rule too).
  ``y``    (Out): the epilogue output beats, one per pass.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ternc.hw.epilogue import Epilogue
from ternc.ir.enums import Epilogue as EpilogueOp
from ternc.hw.quant import ActQuantizer
from ternc.hw.tlmm import TLMMCore
from ternc.ir import hw_numerics as hwn

WS_S_BITS = 8


class DqFactor(wiring.Component):
    """``scale`` {amax} -> ``factor`` {m, s}: p = amax * ws_m, normalize to 18 bits.

    Three register stages (multiply; leading-one position; shift + exponent), one stall enable
    over 3 x ~100 FFs: the estimate put the single-stage version at 15 LUT levels after an
    unregistered DSP (~105 MHz)."""

    def __init__(self):
        super().__init__({
            "scale": In(stream.Signature(data.StructLayout({"amax": unsigned(hwn.FX_BITS)}))),
            "ws_m": In(unsigned(hwn.DQ_MANT_BITS)),
            "ws_s": In(unsigned(WS_S_BITS)),
            "factor": Out(stream.Signature(data.StructLayout({
                "m": unsigned(hwn.DQ_MANT_BITS), "s": unsigned(7)}))),
        })

    def elaborate(self, platform):
        m = Module()
        pw = hwn.FX_BITS + hwn.DQ_MANT_BITS
        en = Signal()
        v1, v2 = Signal(), Signal()
        m.d.comb += [en.eq(~self.factor.valid | self.factor.ready), self.scale.ready.eq(en)]
        p1 = Signal(pw, reset_less=True)
        p2 = Signal(pw, reset_less=True)
        bl2 = Signal(range(pw + 1), reset_less=True)
        bl = Signal(range(pw + 1))
        for b in range(pw):
            with m.If(p1[b]):
                m.d.comb += bl.eq(b + 1)
        sh = Signal(range(pw + 1))
        m.d.comb += sh.eq(bl2 - hwn.DQ_MANT_BITS)   # >= 0: amax >= 1 and ws_m >= 2**17
        s_full = Signal(range(-pw, 512))
        m.d.comb += s_full.eq(self.ws_s + hwn.FX_FRAC - sh)
        with m.If(en):
            m.d.sync += [v1.eq(self.scale.valid), p1.eq(self.scale.payload.amax * self.ws_m),
                         v2.eq(v1), p2.eq(p1), bl2.eq(bl),
                         self.factor.valid.eq(v2),
                         self.factor.payload.m.eq(p2 >> sh),
                         self.factor.payload.s.eq(_clip(s_full, 0, hwn.DQ_S_MAX))]
        return m


def _clip(v, lo, hi):
    return Mux(v < lo, lo, Mux(v > hi, hi, v))


class TLMMPipeline(wiring.Component):
    def __init__(self, group: int = 3, tables: int = 28, columns: int = 16, op: EpilogueOp | str = EpilogueOp.NONE,
                 wbuf_depth: int = 4096, ram_style: str | None = "ultra", max_chunks: int = 128,
                 quant_lanes: int = 3):
        self.group, self.n_tables, self.columns, self.op = group, tables, columns, op
        self.wbuf_depth, self.ram_style = wbuf_depth, ram_style
        self.max_chunks, self.quant_lanes = max_chunks, quant_lanes
        # Signatures taken from the blocks themselves (not elaborated here).
        q = ActQuantizer(group, tables, max_chunks, quant_lanes)
        core = TLMMCore(group, tables, columns, wbuf_depth=wbuf_depth, ram_style=ram_style)
        epi = Epilogue(columns, op)
        self._ext_aux = {k: v for k, v in epi.aux_layout.members.items() if k not in ("m", "s")}
        ports = {
            "x": In(stream.Signature(q.inp.payload.shape())),
            "load": In(stream.Signature(core.load.payload.shape())),
            "cmd": In(stream.Signature(core.cmd.payload.shape())),
            "ws_m": In(unsigned(hwn.DQ_MANT_BITS)),
            "ws_s": In(unsigned(WS_S_BITS)),
            "y": Out(stream.Signature(epi.out.payload.shape())),
        }
        self.ops = epi.ops
        if len(epi.ops) > 1:
            ports["sel"] = In(range(len(epi.ops)))   # the epilogue op (Epilogue.sel), quasi-static
        if self._ext_aux:
            ports["aux"] = In(stream.Signature(data.StructLayout(self._ext_aux)))
        for blk in (q, core, epi):  # signature donors only
            blk._MustUse__silence = True
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        m.submodules.quant = q = ActQuantizer(self.group, self.n_tables, self.max_chunks, self.quant_lanes)
        m.submodules.core = core = TLMMCore(self.group, self.n_tables, self.columns,
                                            wbuf_depth=self.wbuf_depth, ram_style=self.ram_style)
        m.submodules.dq = dq = DqFactor()
        m.submodules.epi = epi = Epilogue(self.columns, self.op)
        wiring.connect(m, wiring.flipped(self.x), q.inp)
        wiring.connect(m, wiring.flipped(self.load), core.load)
        wiring.connect(m, wiring.flipped(self.cmd), core.cmd)
        wiring.connect(m, q.act, core.act)
        wiring.connect(m, q.scale, dq.scale)
        wiring.connect(m, core.out, epi.acc)
        wiring.connect(m, epi.out, wiring.flipped(self.y))
        m.d.comb += [dq.ws_m.eq(self.ws_m), dq.ws_s.eq(self.ws_s)]
        if len(self.ops) > 1:
            m.d.comb += epi.sel.eq(self.sel)
        # Join the dequantize factor with the external aux stream (if any) into epi.aux.
        f = dq.factor
        m.d.comb += [epi.aux.payload.m.eq(f.payload.m), epi.aux.payload.s.eq(f.payload.s)]
        if self._ext_aux:
            a = self.aux
            for k in self._ext_aux:
                m.d.comb += getattr(epi.aux.payload, k).eq(getattr(a.payload, k))
            m.d.comb += [epi.aux.valid.eq(f.valid & a.valid),
                         f.ready.eq(epi.aux.ready & a.valid), a.ready.eq(epi.aux.ready & f.valid)]
        else:
            m.d.comb += [epi.aux.valid.eq(f.valid), f.ready.eq(epi.aux.ready)]
        return m
