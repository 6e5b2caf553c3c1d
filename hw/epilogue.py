"""Fused epilogue after the TLMM engine: dequantize (int32 -> FX Q15.16) + one elementwise op.

Numerics: exactly ``ir/hw_numerics.py`` (``dequantize_fx``, ``add_fx``, ``relu2_fx``, ``silu_gate_fx``,
``relu2_gate_fx``, ``rope_fx``); the Amaranth tests compare bit for bit.

Ports (Amaranth streams):
  ``acc`` (In, ``columns`` x signed(32)): one beat per engine output (TLMMEngine.out).
  ``aux`` (In, struct): per-beat side data, paired in order with ``acc``:
      ``m`` (18-bit mantissa), ``s`` (7-bit shift) of the per-token dequantize factor
      (``hw_numerics.dq_factor``), plus for op "residual_add": ``res[columns]`` (FX);
      for op "rope": ``cos[columns/2]``, ``sin[columns/2]`` (Q1.14 int16).
  ``out`` (Out): FX values; ``columns`` of them, or ``columns/2`` for the gated ops.
Ops are ``ir.enums.Epilogue`` (the IR's FusedLinear vocabulary, plus hardware-only "none", "relu2").
Lane pairing for "rope", "gated_silu", "gated_relu2": lane j (< columns/2) pairs with lane
j + columns/2 -- (x[i], x[i + d/2]) for RoPE, (gate, up) for the gated FFN; the scheduler orders
weight rows so that a tile holds such pairs.
Pipeline: 4 free-running register stages (join+multiply, shift+saturate, op part 1, op part 2)
into a credit FIFO of 7 results (hw/stream_util.CreditBuffer): ``acc``/``aux`` ready = credit & the
other's valid, never a function of ``out.ready``. Latency 6 cycles (accepting edge -> out.valid),
throughput one beat per cycle, every stream tolerates valid/ready toggling.
"""

from __future__ import annotations

from amaranth import Array, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ternc.ir import hw_numerics as hwn
from ternc.ir.enums import Epilogue as Op

OPS = tuple(Op)  # the IR's epilogue vocabulary (FusedLinear's `epilogue`); "none" and "relu2" are hardware-only
FX = signed(hwn.FX_BITS)


def _sat(v, width=hwn.FX_BITS):
    hi, lo = (1 << (width - 1)) - 1, -(1 << (width - 1))
    return Mux(v > hi, hi, Mux(v < lo, lo, v))


def _rshift_round(v, sh: int):
    return (v + (1 << (sh - 1))) >> sh


class Epilogue(wiring.Component):
    LATENCY = 4  # datapath stages; out.valid follows the accepting edge by LATENCY + 2 cycles

    def __init__(self, columns: int = 16, op: Op | str = Op.NONE, acc_width: int = 32):
        if op not in OPS:
            self._MustUse__silence = True  # rejected: never elaborated
            raise ValueError(f"unknown epilogue op {op!r}; expected one of {', '.join(o.value for o in OPS)}")
        op = Op(op)
        if (op == Op.ROPE or op.gated) and columns % 2:
            self._MustUse__silence = True  # rejected: never elaborated
            raise ValueError(f"op {op.value} pairs lanes: columns must be even")
        self.columns, self.op, self.acc_width = columns, op, acc_width
        half = columns // 2
        aux = {"m": unsigned(hwn.DQ_MANT_BITS), "s": unsigned(7)}
        if op == Op.RESIDUAL_ADD:
            aux["res"] = data.ArrayLayout(FX, columns)
        if op == Op.ROPE:
            aux["cos"] = data.ArrayLayout(signed(16), half)
            aux["sin"] = data.ArrayLayout(signed(16), half)
        self.aux_layout = data.StructLayout(aux)
        self.n_out = half if op.gated else columns
        super().__init__({
            "acc": In(stream.Signature(data.ArrayLayout(signed(acc_width), columns))),
            "aux": In(stream.Signature(self.aux_layout)),
            "out": Out(stream.Signature(data.ArrayLayout(FX, self.n_out))),
        })

    def elaborate(self, platform):
        from ternc.hw.stream_util import CreditBuffer
        m = Module()
        c, half = self.columns, self.columns // 2
        # Free-running 4-stage datapath (no clock enable, data registers without reset); beats
        # enter on a credit of the output FIFO, so acc/aux.ready never see out.ready.
        m.submodules.obuf = obuf = CreditBuffer(data.ArrayLayout(FX, self.n_out), self.LATENCY + 3)
        fire = Signal()
        v = [Signal(name=f"v{i}") for i in range(4)]
        m.d.comb += [self.acc.ready.eq(obuf.credit & self.aux.valid),
                     self.aux.ready.eq(obuf.credit & self.acc.valid),
                     fire.eq(obuf.credit & self.acc.valid & self.aux.valid), obuf.start.eq(fire)]
        m.d.sync += [v[0].eq(fire), v[1].eq(v[0]), v[2].eq(v[1]), v[3].eq(v[2])]

        def reg(name, shape, expr):
            r = Signal(shape, name=name, reset_less=True)
            m.d.sync += r.eq(expr)
            return r

        # Stage 1: acc * m, shift amount clip(s - 16, 1, 63).
        s = self.aux.payload.s
        sh = reg("dq_sh", unsigned(6), Mux(s <= hwn.FX_FRAC + hwn.DQ_SHIFT_MIN, hwn.DQ_SHIFT_MIN,
                                           Mux(s >= hwn.FX_FRAC + hwn.DQ_SHIFT_MAX, hwn.DQ_SHIFT_MAX,
                                               s - hwn.FX_FRAC)))
        prod = [reg(f"dq_prod{i}", signed(self.acc_width + hwn.DQ_MANT_BITS + 1),
                    self.acc.payload[i] * self.aux.payload.m) for i in range(c)]
        aux1 = reg("aux1", self.aux_layout, self.aux.payload)
        # Stage 2: round, shift, saturate -> FX.
        rnd = Signal(unsigned(64), name="dq_rnd")
        sh_m1 = Signal(unsigned(6), name="dq_sh_m1")
        m.d.comb += [sh_m1.eq(sh - 1), rnd.eq(Const(1, 64) << sh_m1)]
        y = [reg(f"y{i}", FX, _sat((prod[i] + rnd) >> sh)) for i in range(c)]
        aux2 = reg("aux2", self.aux_layout, aux1)

        op = self.op
        outs = []
        if op in (Op.NONE, Op.RESIDUAL_ADD):
            for i in range(c):
                val = y[i] if op == Op.NONE else _sat(y[i] + aux2.res[i])
                r3 = reg(f"e3_{i}", FX, val)
                outs.append(reg(f"e4_{i}", FX, r3))
        elif op == Op.RELU2:
            for i in range(c):
                r = reg(f"relu{i}", unsigned(hwn.FX_BITS - 1), Mux(y[i][-1], 0, y[i]))
                outs.append(reg(f"e4_{i}", FX, _sat(_rshift_round(r * r, hwn.FX_FRAC))))
        elif op.gated:
            lut = Array(Const(int(v), unsigned(hwn.SIG_FRAC + 1)) for v in hwn.sigmoid_lut())
            n_lut = 1 << hwn.SIG_LUT_BITS
            for i in range(half):
                g, u = y[i], y[i + half]
                if op == Op.GATED_SILU:
                    idx = Signal(signed(hwn.FX_BITS - hwn.SIG_IDX_SHIFT + 1), name=f"sig_idx{i}")
                    m.d.comb += idx.eq((g >> hwn.SIG_IDX_SHIFT) + n_lut // 2)
                    sig = Mux(idx < 0, 0, Mux(idx >= n_lut, 1 << hwn.SIG_FRAC, lut[idx[:hwn.SIG_LUT_BITS]]))
                    act = reg(f"silu{i}", FX, _sat(_rshift_round(g * sig, hwn.SIG_FRAC)))
                else:
                    r = Mux(g[-1], 0, g)
                    act = reg(f"relu2_{i}", FX, _sat(_rshift_round(r * r, hwn.FX_FRAC)))
                u3 = reg(f"up{i}", FX, u)
                outs.append(reg(f"e4_{i}", FX, _sat(_rshift_round(act * u3, hwn.FX_FRAC))))
        elif op == Op.ROPE:
            for i in range(half):
                x0, x1 = y[i], y[i + half]
                cs, sn = aux2.cos[i], aux2.sin[i]
                a0 = reg(f"rope_a{i}", signed(50), x0 * cs - x1 * sn)
                a1 = reg(f"rope_b{i}", signed(50), x0 * sn + x1 * cs)
                outs.append((a0, a1))
            outs = [reg(f"e4_{i}", FX, _sat(_rshift_round(a0, hwn.ROPE_FRAC))) for i, (a0, _) in enumerate(outs)] + \
                   [reg(f"e4_{i + half}", FX, _sat(_rshift_round(a1, hwn.ROPE_FRAC))) for i, (_, a1) in enumerate(outs)]
        m.d.comb += obuf.w.valid.eq(v[3])
        for i, o in enumerate(outs):
            m.d.comb += obuf.w.payload[i].eq(o)
        wiring.connect(m, obuf.out, wiring.flipped(self.out))
        return m
