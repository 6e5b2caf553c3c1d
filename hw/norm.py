"""RMSNorm unit (Llama / BitNet, including BitNet's attn/ffn sub-norms), bit-exact with
``ir/hw_numerics.rmsnorm_fx`` (sum of Q.24 squares, table + Newton rsqrt, FX output).

Ports:
  ``inp``   (In, ``{data: lanes x FX, last}``): one token of K activations, ``lanes`` per beat,
            ``last`` on the final beat. K not a multiple of ``lanes``: pad the last beat with zeros
            (they add nothing to the sum of squares; their outputs are 0 times gamma).
  ``gamma`` (In, ``{data: lanes x FX}``): the norm weight, one beat per output beat (every token
            consumes the whole vector; it streams from the weight image or a small on-chip copy).
  ``out``   (Out, ``{data: lanes x FX, last}``): the normalized token.
  ``inv_k``, ``eps_q`` (In, 32-bit config, held while a token is in the unit):
            ``hw_numerics.norm_consts(K, eps)`` of the layer.
Phases per token (not overlapped; a second token buffer would hide LOAD behind EMIT):
  LOAD  K/lanes cycles (squares pipelined, saturating 64-bit sum), 2 cycles of drain;
  RSQRT 7 cycles (mean by multiply with inv_k, normalize, table, two Newton multiplies, one subtract);
  EMIT  K/lanes cycles, free-running 4-stage datapath (read, x * y1, shift + saturate, * gamma) into a
        credit FIFO, so ``gamma.ready``/the buffer read never depend on ``out.ready``.
Cycles per token = 2 * ceil(K / lanes) + ``OVERHEAD``: 9 state cycles (drain, mean, exponent,
mantissa, table, 3 Newton) + the output latency of ``EMIT_LATENCY`` cycles + handshakes, measured
on Verilator as (last output - first input + 1) / tokens for 2 back-to-back tokens at full rate
(``tests/hw/test_norm.py`` prints it). The token buffer holds ``max_k`` activations (BRAM).
"""

from __future__ import annotations

from amaranth import Array, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from ternc.hw.stream_util import CreditBuffer
from ternc.ir import hw_numerics as hwn

FX = signed(hwn.FX_BITS)
SS_BITS = 63


def _sat_fx(v):
    return Mux(v > hwn.FX_MAX, hwn.FX_MAX, Mux(v < hwn.FX_MIN, hwn.FX_MIN, v))


class RMSNorm(wiring.Component):
    EMIT_LATENCY = 4 + 2   # datapath stages (read, x*y1, shift+sat, *gamma) + the credit FIFO
    OVERHEAD = 12          # measured (see the docstring); 2 tokens, full rate

    def __init__(self, lanes: int = 4, max_k: int = 8192):
        if lanes < 1 or max_k < lanes:
            self._MustUse__silence = True
            raise ValueError("need lanes >= 1 and max_k >= lanes")
        self.lanes, self.max_k = lanes, max_k
        self.depth = -(-max_k // lanes)
        beat = data.ArrayLayout(FX, lanes)
        super().__init__({
            "inp": In(stream.Signature(data.StructLayout({"data": beat, "last": unsigned(1)}))),
            "gamma": In(stream.Signature(data.StructLayout({"data": beat}))),
            "out": Out(stream.Signature(data.StructLayout({"data": beat, "last": unsigned(1)}))),
            "inv_k": In(32),
            "eps_q": In(32),
        })

    def check_k(self, k: int) -> None:
        if not 1 <= k <= self.max_k:
            raise ValueError(f"RMSNorm: K={k} outside 1..{self.max_k}")

    def elaborate(self, platform):
        m = Module()
        L = self.lanes
        abits = max(1, (self.depth - 1).bit_length())
        m.submodules.buf = buf = memory.Memory(shape=unsigned(32 * L), depth=self.depth, init=[])
        wp, rp = buf.write_port(), buf.read_port()

        # ---- LOAD: buffer + pipelined sum of squares ----------------------------------------------
        waddr = Signal(abits + 1)
        n_words = Signal(abits + 1)
        ss = Signal(SS_BITS)
        sq = [Signal(unsigned(64 - hwn.NORM_SQ_SHIFT), name=f"sq{i}", reset_less=True) for i in range(L)]
        sq_v, sum_v = Signal(), Signal()
        beat_sum = Signal(unsigned(64 - hwn.NORM_SQ_SHIFT + L.bit_length()), reset_less=True)
        take = Signal()
        m.d.comb += [wp.addr.eq(waddr), wp.data.eq(self.inp.payload.data.as_value()), wp.en.eq(take)]
        for i in range(L):
            x = self.inp.payload.data[i]
            m.d.sync += sq[i].eq((x * x) >> hwn.NORM_SQ_SHIFT)
        m.d.sync += [sq_v.eq(take), sum_v.eq(sq_v), beat_sum.eq(sum(sq))]
        acc = Signal(SS_BITS + 2)
        m.d.comb += acc.eq(ss + beat_sum)
        with m.If(sum_v):
            m.d.sync += ss.eq(Mux(acc > hwn.NORM_SS_MAX, hwn.NORM_SS_MAX, acc))

        # ---- RSQRT registers -------------------------------------------------------------------------
        ms = Signal(SS_BITS + 2)
        k = Signal(signed(7))
        enc_s = Signal(signed(8))
        sl = Signal(range(2 * 12 + 1))   # k >= -12 (ms >= 1)
        sr = Signal(range(2 * 20 + 1))   # k <= 19 (ms < 2**65)
        mant = Signal(hwn.NORM_MANT_FRAC + 2)
        y0 = Signal(17)
        t = Signal(hwn.NORM_MANT_FRAC + 2 + 17)
        h = Signal(hwn.NORM_MANT_FRAC + 4)
        y1 = Signal(hwn.NORM_Y_FRAC + 2)
        lut = Array(Const(int(v), 17) for v in hwn.rsqrt_lut())
        enc = Signal(range(SS_BITS + 2))
        for b in range(SS_BITS + 2):  # bit_length - 1 (priority encoder; ms >= 1)
            with m.If(ms[b]):
                m.d.comb += enc.eq(b)
        m.d.comb += enc_s.eq(enc)

        # ---- EMIT: free-running datapath behind credits ----------------------------------------------
        m.submodules.obuf = obuf = CreditBuffer(self.out.payload.shape(), 4 + 3)
        raddr = Signal(abits + 1)
        issue = Signal()
        sh = Signal(range(64))
        m.d.comb += [rp.addr.eq(raddr), rp.en.eq(1)]
        v1, v2, v3, v4 = Signal(), Signal(), Signal(), Signal()
        l1, l2, l3, l4 = (Signal(name=f"last{i}", reset_less=True) for i in (1, 2, 3, 4))
        g1, g2, g3 = (Signal.like(self.gamma.payload.data, name=f"gamma{i}", reset_less=True) for i in (1, 2, 3))
        m.d.sync += [v1.eq(issue), v2.eq(v1), v3.eq(v2), v4.eq(v3), l2.eq(l1), l3.eq(l2), l4.eq(l3),
                     g2.eq(g1), g3.eq(g2)]
        with m.If(issue):
            m.d.sync += [l1.eq(raddr == n_words - 1), g1.eq(self.gamma.payload.data)]
        prod = [Signal(signed(32 + hwn.NORM_Y_FRAC + 3), name=f"xy{i}", reset_less=True) for i in range(L)]
        nrm = [Signal(FX, name=f"n{i}", reset_less=True) for i in range(L)]
        outv = [Signal(FX, name=f"y{i}", reset_less=True) for i in range(L)]
        rnd = Signal(64)
        sh_m1 = Signal(range(64))
        m.d.comb += [sh_m1.eq(sh - 1), rnd.eq(Const(1, 64) << sh_m1)]
        for i in range(L):
            x = rp.data[32 * i:32 * (i + 1)].as_signed()
            m.d.sync += [prod[i].eq(x * y1),
                         nrm[i].eq(_sat_fx((prod[i] + rnd) >> sh)),
                         outv[i].eq(_sat_fx((nrm[i] * g3[i] + (1 << (hwn.FX_FRAC - 1))) >> hwn.FX_FRAC))]
        m.d.comb += [obuf.w.valid.eq(v4), obuf.w.payload.last.eq(l4), obuf.start.eq(issue)]
        for i in range(L):
            m.d.comb += obuf.w.payload.data[i].eq(outv[i])
        wiring.connect(m, obuf.out, wiring.flipped(self.out))

        drain = Signal(2)
        with m.FSM():
            with m.State("LOAD"):
                m.d.comb += [self.inp.ready.eq(1), take.eq(self.inp.valid)]
                with m.If(take):
                    m.d.sync += waddr.eq(waddr + 1)
                    with m.If(self.inp.payload.last):
                        m.d.sync += [n_words.eq(waddr + 1), drain.eq(0)]
                        m.next = "DRAIN"
            with m.State("DRAIN"):  # the last squares reach `ss`
                m.d.sync += drain.eq(drain + 1)
                with m.If(drain == 1):
                    m.next = "MEAN"
            with m.State("MEAN"):
                m.d.sync += ms.eq(((ss * self.inv_k) >> 32) + self.eps_q)
                m.next = "EXP"
            with m.State("EXP"):
                kk = (enc_s - hwn.NORM_SQ_FRAC) >> 1          # floor((e - 24) / 2)
                m.d.sync += [k.eq(kk), sl.eq(Mux(kk < 0, -2 * kk, 0)), sr.eq(Mux(kk > 0, 2 * kk, 0))]
                m.next = "MANT"
            with m.State("MANT"):
                # mant = ms * 2**(-2k): k <= 0 shifts left, k > 0 right (truncating).
                m.d.sync += mant.eq((ms << sl) >> sr)
                m.next = "LUT"
            with m.State("LUT"):
                m.d.sync += y0.eq(lut[(mant >> (hwn.NORM_MANT_FRAC - hwn.NORM_LUT_BITS))
                                      - (1 << hwn.NORM_LUT_BITS)])
                m.next = "NEWTON1"
            with m.State("NEWTON1"):
                m.d.sync += t.eq(mant * y0)
                m.next = "NEWTON2"
            with m.State("NEWTON2"):
                m.d.sync += h.eq((t * y0) >> 32)
                m.next = "NEWTON3"
            with m.State("NEWTON3"):
                m.d.sync += [y1.eq((y0 * ((3 << hwn.NORM_MANT_FRAC) - h)) >> 18),
                             sh.eq(hwn.NORM_Y_FRAC + k), raddr.eq(0)]
                m.next = "EMIT"
            with m.State("EMIT"):
                m.d.comb += [issue.eq(obuf.credit & self.gamma.valid), self.gamma.ready.eq(issue)]
                with m.If(issue):
                    m.d.sync += raddr.eq(raddr + 1)
                    with m.If(raddr == n_words - 1):
                        m.d.sync += [waddr.eq(0), ss.eq(0)]
                        m.next = "LOAD"
        return m
