"""Fused epilogue after the TLMM engine: dequantize (int32 -> FX Q15.16) + one elementwise op.

Numerics: exactly ``ir/hw_numerics.py`` (``dequantize_fx``, ``add_fx``, ``relu2_fx``, ``silu_gate_fx``,
``relu2_gate_fx``, ``rope_fx``); the Amaranth tests compare bit for bit.

Ports (Amaranth streams):
  ``acc`` (In, ``columns`` x signed(32)): one beat per engine output (TLMMEngine.out).
  ``aux`` (In, struct): per-beat side data, paired in order with ``acc``:
      ``m`` (18-bit mantissa), ``s`` (7-bit shift) of the per-token dequantize factor
      (``hw_numerics.dq_factor``), plus for op "residual_add": ``res[columns]`` (FX);
      for op "rope": ``cos[columns/2]``, ``sin[columns/2]`` (Q1.14 int16); for ops "silu_mul" /
      "relu2_mul": ``up[columns]`` (FX), the second factor (the gated FFN's up projection, computed by
      an earlier engine pass: gate and up have different weight scales, so they cannot share a beat).
  ``sel`` (In, only when ``op`` is a tuple of ops): which op runs, as an index into the tuple; it is
      registered with each accepted beat, so it may change between beats.
  ``out`` (Out): FX values; ``columns`` of them, or ``columns/2`` for the gated ops.
Ops are ``ir.enums.Epilogue`` (the IR's FusedLinear vocabulary, plus hardware-only "none", "relu2",
"silu_mul" = silu_gate_fx(y, up), "relu2_mul" = relu2_gate_fx(y, up)). ``op`` may be a tuple of ops
of equal output width: one datapath with a runtime ``sel`` (the linear controller runs none /
residual_add / silu_mul / relu2_mul on one engine); silu_mul and relu2_mul share the multipliers.
Lane pairing for "rope", "gated_silu", "gated_relu2": lane j (< columns/2) pairs with lane
j + columns/2 -- (x[i], x[i + d/2]) for RoPE, (gate, up) for the gated FFN; the scheduler orders
weight rows so that a tile holds such pairs.
Pipeline: 4 free-running register stages (join+multiply, shift+saturate, op part 1, op part 2)
into a credit FIFO of 7 results (hw/stream_util.CreditBuffer): ``acc``/``aux`` ready = credit & the
other's valid, never a function of ``out.ready``. Latency 6 cycles (accepting edge -> out.valid),
throughput one beat per cycle, every stream tolerates valid/ready toggling.
"""

from __future__ import annotations

from amaranth import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
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

    def __init__(self, columns: int = 16, op: "Op | str | tuple" = Op.NONE, acc_width: int = 32):
        ops = tuple(op) if isinstance(op, (tuple, list)) else (op,)
        for o in ops:
            if o not in OPS:
                self._MustUse__silence = True  # rejected: never elaborated
                raise ValueError(f"unknown epilogue op {o!r}; expected one of {', '.join(x.value for x in OPS)}")
        ops = tuple(Op(o) for o in ops)
        if not ops or len(set(ops)) != len(ops):
            self._MustUse__silence = True
            raise ValueError(f"epilogue ops {ops!r}: need one or more distinct ops")
        if any(o == Op.ROPE or o.gated for o in ops) and columns % 2:
            self._MustUse__silence = True  # rejected: never elaborated
            raise ValueError(f"ops {[o.value for o in ops]} pair lanes: columns must be even")
        half = columns // 2
        n_outs = {half if o.gated else columns for o in ops}
        if len(n_outs) > 1:
            self._MustUse__silence = True
            raise ValueError(f"ops {[o.value for o in ops]} differ in output width (gated ops halve it)")
        self.columns, self.ops, self.acc_width = columns, ops, acc_width
        self.op = ops[0] if len(ops) == 1 else ops
        aux = {"m": unsigned(hwn.DQ_MANT_BITS), "s": unsigned(7)}
        if Op.RESIDUAL_ADD in ops:
            aux["res"] = data.ArrayLayout(FX, columns)
        if Op.SILU_MUL in ops or Op.RELU2_MUL in ops:
            aux["up"] = data.ArrayLayout(FX, columns)
        if Op.ROPE in ops:
            aux["cos"] = data.ArrayLayout(signed(16), half)
            aux["sin"] = data.ArrayLayout(signed(16), half)
        self.aux_layout = data.StructLayout(aux)
        self.n_out = n_outs.pop()
        ports = {
            "acc": In(stream.Signature(data.ArrayLayout(signed(acc_width), columns))),
            "aux": In(stream.Signature(self.aux_layout)),
            "out": Out(stream.Signature(data.ArrayLayout(FX, self.n_out))),
        }
        if len(ops) > 1:
            # runtime op select: index into ``ops``, sampled with each beat (travels beside it)
            ports["sel"] = In(range(len(ops)))
        super().__init__(ports)

    def elaborate(self, platform):
        from ternc.hw.stream_util import CreditBuffer
        m = Module()
        c, half = self.columns, self.columns // 2
        ops = self.ops
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

        multi = len(ops) > 1
        sel0 = self.sel if multi else Const(0, 1)
        sel1 = reg("sel1", sel0.shape(), sel0)
        sel2 = reg("sel2", sel0.shape(), sel1)
        sel3 = reg("sel3", sel0.shape(), sel2)

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

        n_lut = 1 << hwn.SIG_LUT_BITS
        lut_init = [int(v) for v in hwn.sigmoid_lut()]

        def silu(g, name):
            # the sigmoid table as a ROM with an asynchronous read port per lane (LUT ROM on the
            # FPGA; a list index in the simulator, where a 1,024-way Array mux is very slow)
            rom = memory.Memory(shape=unsigned(hwn.SIG_FRAC + 1), depth=n_lut, init=lut_init)
            m.submodules[f"sig_rom_{name}"] = rom
            rp = rom.read_port(domain="comb")
            idx = Signal(signed(hwn.FX_BITS - hwn.SIG_IDX_SHIFT + 1), name=f"sig_idx_{name}")
            m.d.comb += [idx.eq((g >> hwn.SIG_IDX_SHIFT) + n_lut // 2), rp.addr.eq(idx[:hwn.SIG_LUT_BITS])]
            sig = Mux(idx < 0, 0, Mux(idx >= n_lut, 1 << hwn.SIG_FRAC, rp.data))
            return _sat(_rshift_round(g * sig, hwn.SIG_FRAC))

        def relu2(g):
            r = Mux(g[-1], 0, g)
            return _sat(_rshift_round(r * r, hwn.FX_FRAC))

        # Stage 3 registers per op, and each op's stage-4 input expressions (n_out of them).
        stage4: dict = {}
        for op in ops:
            tag = op.value
            if op in (Op.NONE, Op.RESIDUAL_ADD):
                stage4[op] = [reg(f"{tag}_e3_{i}", FX, y[i] if op == Op.NONE else _sat(y[i] + aux2.res[i]))
                              for i in range(c)]
            elif op == Op.RELU2:
                exprs = []
                for i in range(c):
                    r = reg(f"relu{i}", unsigned(hwn.FX_BITS - 1), Mux(y[i][-1], 0, y[i]))
                    exprs.append(_sat(_rshift_round(r * r, hwn.FX_FRAC)))
                stage4[op] = exprs
            elif op.gated:
                exprs = []
                for i in range(half):
                    g, u = y[i], y[i + half]
                    act = reg(f"{tag}_act{i}", FX, silu(g, f"{tag}{i}") if op == Op.GATED_SILU else relu2(g))
                    u3 = reg(f"{tag}_up{i}", FX, u)
                    exprs.append(_sat(_rshift_round(act * u3, hwn.FX_FRAC)))
                stage4[op] = exprs
            elif op == Op.ROPE:
                pairs = []
                for i in range(half):
                    x0, x1 = y[i], y[i + half]
                    cs, sn = aux2.cos[i], aux2.sin[i]
                    a0 = reg(f"rope_a{i}", signed(50), x0 * cs - x1 * sn)
                    a1 = reg(f"rope_b{i}", signed(50), x0 * sn + x1 * cs)
                    pairs.append((a0, a1))
                stage4[op] = [_sat(_rshift_round(a0, hwn.ROPE_FRAC)) for a0, _ in pairs] + \
                             [_sat(_rshift_round(a1, hwn.ROPE_FRAC)) for _, a1 in pairs]
        # silu_mul / relu2_mul (act(y) * aux.up) share one multiplier per lane: the activation is
        # selected at stage 3.
        muls = [o for o in ops if o in (Op.SILU_MUL, Op.RELU2_MUL)]
        if muls:
            exprs = []
            for i in range(c):
                if len(muls) == 2:
                    is_silu = sel2 == ops.index(Op.SILU_MUL)
                    act_e = Mux(is_silu, silu(y[i], f"mul{i}"), relu2(y[i]))
                else:
                    act_e = silu(y[i], f"mul{i}") if muls[0] == Op.SILU_MUL else relu2(y[i])
                act = reg(f"mul_act{i}", FX, act_e)
                u3 = reg(f"mul_up{i}", FX, aux2.up[i])
                exprs.append(_sat(_rshift_round(act * u3, hwn.FX_FRAC)))
            for o in muls:
                stage4[o] = exprs
        # Stage 4: the selected op's result.
        outs = []
        for i in range(self.n_out):
            val = stage4[ops[-1]][i]
            for j in range(len(ops) - 2, -1, -1):
                val = Mux(sel3 == j, stage4[ops[j]][i], val)
            outs.append(reg(f"e4_{i}", FX, val))
        m.d.comb += obuf.w.valid.eq(v[3])
        for i, o in enumerate(outs):
            m.d.comb += obuf.w.payload[i].eq(o)
        wiring.connect(m, obuf.out, wiring.flipped(self.out))
        return m
