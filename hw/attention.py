"""Decode attention unit: one query head against the T cached tokens of its KV head, streamed from
DDR, two-pass softmax with an exp table; bit-exact with ``ir/hw_numerics.attention_decode_fx``.

GQA is addressing: the sequencer streams the K/V rows of KV head ``h // (heads / kv_heads)`` for
query head ``h`` (no repeat). The KV cache is in the hw format (FX per element).

Ports:
  ``q``   (In, ``{data: lanes x FX, last}``): the query head, head_dim/lanes beats, ``last`` on the
          final beat; ``n_ctx`` (T, >= 1) and ``scale`` are sampled with it.
  ``kv``  (In, ``{data: lanes x FX}``): T x head_dim/lanes K beats (token-major, dims in order),
          then T x head_dim/lanes V beats. Always ready while the unit expects K or V (no stall
          from the unit: it never backpressures DDR reads).
  ``out`` (Out, ``{data: lanes x FX, last}``): the head's output, head_dim/lanes beats.
  ``n_ctx`` (In(16)), ``scale`` (In(32), FX ``to_fx(1/sqrt(head_dim))``): config.
Phases per head: Q (d/lanes beats, q scaled on entry) -> K (T*d/lanes beats: lanes products per
cycle, exact dot products, scores into an on-chip score memory of ``max_ctx`` words, running max)
-> P (T cycles + 4: p_t = exp(s_t - m) over the score memory, l = sum p_t; starts the 80-cycle
reciprocal divider, which overlaps V) -> V (T*d/lanes beats: o_acc += p_t * v_t in a rotating
accumulator ring of d/lanes words x lanes x 72 bits) -> OUT (3 cycles per beat: multiply by the
reciprocal, round/shift/saturate, hand over).
Cycles per head (kv at full rate, out ready) = 2*T*d/lanes + T + 4*d/lanes + ``OVERHEAD`` (11)
while T*d/lanes >= 80 (the divider hides behind V), as measured by the Verilator bench
(tests/hw/test_attention.py prints it: T=128, d=64, lanes=4: 4,299 cycles/head). Throughput: ``lanes`` K or V
elements per cycle = lanes x 4 bytes/cycle of DDR (16 B/cycle for lanes = 4).
"""

from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from ternc.ir import hw_numerics as hwn

FX = signed(hwn.FX_BITS)
ACC_BITS = 72
DIV_BITS = 80   # R = floor(2**79 / (l normalized to [2**47, 2**48)))


def _sat_fx(v):
    return Mux(v > hwn.FX_MAX, hwn.FX_MAX, Mux(v < hwn.FX_MIN, hwn.FX_MIN, v))


class DecodeAttention(wiring.Component):
    OVERHEAD = 11  # pipeline drains and phase changes, measured on Verilator (class docstring)

    def __init__(self, head_dim: int = 64, lanes: int = 4, max_ctx: int = 1024):
        if head_dim % lanes or lanes < 1:
            self._MustUse__silence = True
            raise ValueError("lanes must divide head_dim")
        if max_ctx < 1 or max_ctx >= 1 << 16:
            self._MustUse__silence = True
            raise ValueError("max_ctx in 1 .. 65535")
        self.head_dim, self.lanes, self.max_ctx = head_dim, lanes, max_ctx
        self.words = head_dim // lanes
        beat = data.ArrayLayout(FX, lanes)
        super().__init__({
            "q": In(stream.Signature(data.StructLayout({"data": beat, "last": unsigned(1)}))),
            "kv": In(stream.Signature(data.StructLayout({"data": beat}))),
            "out": Out(stream.Signature(data.StructLayout({"data": beat, "last": unsigned(1)}))),
            "n_ctx": In(16),
            "scale": In(32),
        })

    def check_ctx(self, t: int) -> None:
        if not 1 <= t <= self.max_ctx:
            raise ValueError(f"DecodeAttention: context {t} outside 1..{self.max_ctx}")

    def elaborate(self, platform):
        m = Module()
        L, W = self.lanes, self.words
        tb = max(1, (self.max_ctx - 1).bit_length())
        m.submodules.smem = smem = memory.Memory(shape=unsigned(32), depth=self.max_ctx, init=[])
        sw, sr = smem.write_port(), smem.read_port()

        n_ctx = Signal(16)
        scale = Signal(FX)
        qring = [Signal(data.ArrayLayout(FX, L), name=f"q{w}", reset_less=True) for w in range(W)]
        oring = [[Signal(signed(ACC_BITS), name=f"o{w}_{i}", reset_less=True) for i in range(L)] for w in range(W)]
        wbits = max(1, (W - 1).bit_length())
        beat_i = Signal(wbits + 1)       # beat index within a token (0 .. W-1)
        tok = Signal(17)                 # token index
        kv_take = Signal()
        m.d.comb += kv_take.eq(self.kv.valid & self.kv.ready)

        # ---- K datapath: products (stage 1), beat sum (stage 2), accumulate / score (stage 3) -----
        prods = [Signal(signed(64), name=f"qk{i}", reset_less=True) for i in range(L)]
        p1_v, p1_last = Signal(), Signal(reset_less=True)
        bsum = Signal(signed(64 + L.bit_length()), reset_less=True)
        p2_v, p2_last = Signal(), Signal(reset_less=True)
        dot = Signal(signed(ACC_BITS), reset_less=True)
        dot_first = Signal(init=1)
        k_phase = Signal()
        for i in range(L):
            m.d.sync += prods[i].eq(qring[0][i] * self.kv.payload.data[i])
        m.d.sync += [p1_v.eq(kv_take & k_phase), p1_last.eq(beat_i == W - 1),
                     bsum.eq(sum(prods)), p2_v.eq(p1_v), p2_last.eq(p1_last)]
        new_dot = Signal(signed(ACC_BITS))
        m.d.comb += new_dot.eq(Mux(dot_first, 0, dot) + bsum)
        score = Signal(FX)
        m.d.comb += score.eq(_sat_fx((new_dot + (1 << 15)) >> 16))
        smax = Signal(FX)
        k_written = Signal(17)
        with m.If(p2_v):
            m.d.sync += [dot.eq(new_dot), dot_first.eq(p2_last)]
            with m.If(p2_last):
                m.d.sync += [k_written.eq(k_written + 1),
                             smax.eq(Mux((k_written == 0) | (score > smax), score, smax))]

        # ---- P pass: 4 stages over the score memory ------------------------------------------------
        lut = Array(Const(int(v), 17) for v in hwn.exp_lut())
        pt = Signal(17)                  # read address counter
        pa_v, pb_v, pc_v, pd_v = Signal(), Signal(), Signal(), Signal()
        pa_t, pb_t, pc_t, pd_t = (Signal(tb, name=f"p_t{i}", reset_less=True) for i in range(4))
        u = Signal(23, reset_less=True)
        y = Signal(40, reset_less=True)
        pval = Signal(17, reset_less=True)
        l_sum = Signal(34)
        diff = Signal(signed(34))
        m.d.comb += diff.eq(sr.data.as_signed() - smax)
        # stage a (data of address issued last cycle is on sr.data): u = min(-diff, U_MAX)
        m.d.sync += [pb_v.eq(pa_v), pb_t.eq(pa_t), pc_v.eq(pb_v), pc_t.eq(pb_t), pd_v.eq(pc_v), pd_t.eq(pc_t),
                     u.eq(Mux(-diff > hwn.EXP_U_MAX, hwn.EXP_U_MAX, -diff)),
                     y.eq((u * hwn.LOG2E_Q) >> 16)]
        ip = y[16:]
        fp = y[:16]
        m.d.sync += pval.eq(Mux(ip >= 17, 0, lut[fp[16 - hwn.EXP_LUT_BITS:]] >> ip[:5]))
        # stage d: write p back in place of the score, accumulate l
        p_write = Signal()
        m.d.comb += p_write.eq(pd_v)

        # ---- V datapath: p_t * v (stage 1) then ring += (rotating on every product) ---------------
        v_phase = Signal()
        p_cur = Signal(17)
        m.d.comb += p_cur.eq(sr.data[:17])
        vprod = [Signal(signed(17 + 32 + 1), name=f"pv{i}", reset_less=True) for i in range(L)]
        vp_v = Signal()
        for i in range(L):
            m.d.sync += vprod[i].eq(p_cur * self.kv.payload.data[i])
        m.d.sync += vp_v.eq(kv_take & v_phase)
        clear_o = Signal()
        out_rot = Signal()
        with m.If(clear_o):
            for w in range(W):
                for i in range(L):
                    m.d.sync += oring[w][i].eq(0)
        with m.Elif(vp_v):
            for w in range(W - 1):
                for i in range(L):
                    m.d.sync += oring[w][i].eq(oring[w + 1][i])
            for i in range(L):
                m.d.sync += oring[W - 1][i].eq(oring[0][i] + vprod[i])
        with m.Elif(out_rot):
            for w in range(W - 1):
                for i in range(L):
                    m.d.sync += oring[w][i].eq(oring[w + 1][i])

        # ---- reciprocal of l (restoring division, overlaps V) --------------------------------------
        ln = Signal(48)
        e = Signal(range(35))
        rem = Signal(49)
        quo = Signal(34)
        step = Signal(range(DIV_BITS + 1))
        div_busy, div_done = Signal(), Signal()
        enc = Signal(range(35))
        lsh = Signal(range(49))
        m.d.comb += lsh.eq(48 - enc)
        v_primed = Signal()
        for b in range(34):
            with m.If(l_sum[b]):
                m.d.comb += enc.eq(b + 1)
        with m.If(div_busy):
            num_bit = (step == DIV_BITS)  # the numerator 2**79 has its only 1 at the first step
            trial = Cat(num_bit, rem)
            with m.If(trial >= ln):
                m.d.sync += [rem.eq(trial - ln), quo.eq(Cat(1, quo))]
            with m.Else():
                m.d.sync += [rem.eq(trial), quo.eq(Cat(0, quo))]
            m.d.sync += step.eq(step - 1)
            with m.If(step == 1):
                m.d.sync += [div_busy.eq(0), div_done.eq(1)]

        # ---- output ------------------------------------------------------------------------------
        oprod = [Signal(signed(ACC_BITS + 35), name=f"op{i}", reset_less=True) for i in range(L)]
        o_sh = Signal(range(70))
        o_rnd = Signal(70)
        o_sh_m1 = Signal(range(70))
        m.d.comb += [o_sh_m1.eq(o_sh - 1), o_rnd.eq(Const(1, 70) << o_sh_m1)]
        ores = [Signal(FX, name=f"ores{i}", reset_less=True) for i in range(L)]
        for i in range(L):
            m.d.comb += self.out.payload.data[i].eq(ores[i])
        out_w = Signal(wbits + 1)

        # ---- control -----------------------------------------------------------------------------
        m.d.comb += [sw.addr.eq(Mux(p_write, pd_t, k_written)),
                     sw.data.eq(Mux(p_write, pval, score)),
                     sw.en.eq(p_write | (p2_v & p2_last)), sr.en.eq(1)]
        with m.If(p_write):
            m.d.sync += l_sum.eq(l_sum + pval)
        adv = Signal()
        with m.FSM():
            with m.State("Q"):
                m.d.comb += [self.q.ready.eq(1), clear_o.eq(1)]
                with m.If(self.q.valid):
                    # shift in: after W beats qring[0] holds beat 0; scale on entry (mul_fx)
                    for w in range(W - 1):
                        m.d.sync += qring[w].eq(qring[w + 1])
                    for i in range(L):
                        x = self.q.payload.data[i]
                        m.d.sync += qring[W - 1][i].eq(
                            _sat_fx((x * self.scale.as_signed() + (1 << (hwn.FX_FRAC - 1))) >> hwn.FX_FRAC))
                    with m.If(self.q.payload.last):
                        m.d.sync += [n_ctx.eq(self.n_ctx), beat_i.eq(0), tok.eq(0), k_written.eq(0),
                                     dot_first.eq(1), l_sum.eq(0), div_done.eq(0)]
                        m.next = "K"
            with m.State("K"):
                m.d.comb += [k_phase.eq(tok < n_ctx), self.kv.ready.eq(tok < n_ctx)]
                with m.If(kv_take):
                    for w in range(W - 1):
                        m.d.sync += qring[w].eq(qring[w + 1])
                    m.d.sync += qring[W - 1].eq(qring[0])
                    m.d.sync += beat_i.eq(Mux(beat_i == W - 1, 0, beat_i + 1))
                    with m.If(beat_i == W - 1):
                        m.d.sync += tok.eq(tok + 1)
                with m.If(k_written == n_ctx):   # all scores in memory (pipeline drained)
                    m.d.sync += [pt.eq(0), pa_v.eq(0)]
                    m.next = "P"
            with m.State("P"):
                m.d.comb += sr.addr.eq(pt)
                m.d.sync += [pa_v.eq(pt < n_ctx), pa_t.eq(pt)]
                with m.If(pt < n_ctx):
                    m.d.sync += pt.eq(pt + 1)
                with m.If((pt == n_ctx) & ~pa_v & ~pb_v & ~pc_v & ~pd_v):
                    m.d.sync += [tok.eq(0), beat_i.eq(0), step.eq(DIV_BITS), rem.eq(0), quo.eq(0),
                                 e.eq(enc), ln.eq(l_sum << lsh), div_busy.eq(1), v_primed.eq(0)]
                    m.next = "V"
            with m.State("V"):
                # first cycle: the score memory still shows the P pass's last address (p_0 next cycle)
                m.d.sync += v_primed.eq(1)
                m.d.comb += [v_phase.eq(v_primed & (tok < n_ctx)), self.kv.ready.eq(v_primed & (tok < n_ctx)),
                             adv.eq(kv_take & (beat_i == W - 1)),
                             sr.addr.eq(Mux(adv, tok + 1, tok))]
                with m.If(kv_take):
                    m.d.sync += beat_i.eq(Mux(beat_i == W - 1, 0, beat_i + 1))
                    with m.If(adv):
                        m.d.sync += tok.eq(tok + 1)
                with m.If((tok == n_ctx) & ~vp_v & div_done):
                    m.d.sync += [out_w.eq(0), o_sh.eq(e + 31)]
                    m.next = "OMUL"
            with m.State("OMUL"):
                for i in range(L):
                    m.d.sync += oprod[i].eq(oring[0][i] * quo)
                m.next = "OSHIFT"
            with m.State("OSHIFT"):
                for i in range(L):
                    m.d.sync += ores[i].eq(_sat_fx((oprod[i] + o_rnd) >> o_sh))
                m.next = "OUT"
            with m.State("OUT"):
                m.d.comb += [self.out.valid.eq(1), self.out.payload.last.eq(out_w == W - 1)]
                with m.If(self.out.ready):
                    m.d.comb += out_rot.eq(1)
                    m.d.sync += out_w.eq(out_w + 1)
                    with m.If(out_w == W - 1):
                        m.next = "Q"
                    with m.Else():
                        m.next = "OMUL"
        return m
