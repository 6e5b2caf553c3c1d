"""Per-token int8 activation quantizer (``ir/hw_numerics.quantize_act_fx``), feeding the TLMM engine.

Ports (Amaranth streams):
  ``inp`` (In, ``{data: lanes x FX (signed 32), last, passes}``): one token of K FX activations,
      ``lanes`` per beat, zero-padded to a multiple of G*tables; ``last`` on the final beat, whose
      ``passes`` field says how many times the quantized token is replayed (one pass per column tile
      of the following matmul; 0 is treated as 1).
  ``act`` (Out, ``hw.tlmm.act_beat_layout``): the int8 chunks, replayed ``passes`` times, ``last`` on
      the final chunk of each pass -- connects straight to ``TLMMEngine.act``.
  ``scale`` (Out, ``{amax}``): the token's amax (raw FX integer, >= 1), once per replay pass (i.e.
      once per engine output beat), for the epilogue's ``hw_numerics.dq_factor``. The next token's
      quantization waits until all of them were taken.
Capacity: ``max_chunks`` chunks of G*tables, i.e. K <= ``max_k`` = max_chunks * G * tables (default
128 x 84 = 10,752: BitNet-2B4T's down projection has K = 6,912 = 83 chunks); :meth:`check_k` raises
for larger K (the scheduler calls it), the hardware would wrap.
Phases per token: load K/lanes cycles (amax on the fly) -> reciprocal by a sequential restoring
divider (56 cycles) -> quantize K/lanes cycles (``lanes`` multipliers) into one of two banks of the
int8 chunk memory -> replay chunks at one per cycle. The front end (load, divide, quantize) of token
t+1 overlaps the replay of token t (the other bank); a token's scales are offered once the previous
token's were all taken.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from ternc.hw.tlmm import act_beat_layout
from ternc.ir import hw_numerics as hwn
from ternc.ir.semantics import ACT_QMAX, ACT_QMIN

NUM_BITS = 56  # numerator (127 << s) + amax//2 with s <= 48


class ActQuantizer(wiring.Component):
    def __init__(self, group: int = 3, tables: int = 28, max_chunks: int = 128, lanes: int = 3,
                 passes_bits: int = 12):
        chunk = group * tables
        if chunk % lanes:
            self._MustUse__silence = True  # rejected: never elaborated
            raise ValueError(f"lanes ({lanes}) must divide G*tables ({chunk})")
        self.group, self.n_tables, self.max_chunks, self.lanes = group, tables, max_chunks, lanes
        self.chunk = chunk
        self.per_chunk = chunk // lanes
        self.depth = max_chunks * self.per_chunk
        self.max_k = max_chunks * chunk
        super().__init__({
            "inp": In(stream.Signature(data.StructLayout({
                "data": data.ArrayLayout(signed(hwn.FX_BITS), lanes), "last": unsigned(1),
                "passes": unsigned(passes_bits)}))),
            "act": Out(stream.Signature(act_beat_layout(group, tables))),
            "scale": Out(stream.Signature(data.StructLayout({"amax": unsigned(hwn.FX_BITS)}))),
        })

    def check_k(self, k: int) -> None:
        """Raise ValueError when a token of ``k`` activations does not fit the chunk memory."""
        if not 1 <= k <= self.max_k:
            raise ValueError(f"ActQuantizer: K={k} outside 1..{self.max_k} "
                             f"(max_chunks={self.max_chunks} x G*tables={self.chunk})")

    def elaborate(self, platform):
        m = Module()
        L, P = self.lanes, self.per_chunk
        wbits = max(1, (self.depth - 1).bit_length())
        cbits = max(1, (self.max_chunks - 1).bit_length())
        m.submodules.raw = raw = memory.Memory(shape=unsigned(hwn.FX_BITS * L), depth=self.depth, init=[])
        # two banks of quantized chunks: token t+1 is quantized into one while t replays from the other
        m.submodules.q8 = q8 = memory.Memory(shape=unsigned(8 * self.chunk), depth=2 * self.max_chunks, init=[])
        raw_w, raw_r = raw.write_port(), raw.read_port()
        q_w, q_r = q8.write_port(), q8.read_port()

        n_words = Signal(wbits + 1)
        waddr = Signal(wbits + 1)
        amax = Signal(hwn.FX_BITS, init=0)
        passes = Signal.like(self.inp.payload.passes)

        # |x| per lane and their max (combinational, on the input beat).
        absx = [Signal(hwn.FX_BITS, name=f"abs{i}") for i in range(L)]
        for i in range(L):
            x = self.inp.payload.data[i]
            m.d.comb += absx[i].eq(Mux(x < 0, -x, x))
        beat_max = absx[0]
        for i in range(1, L):
            nxt = Signal(hwn.FX_BITS, name=f"bmax{i}")
            m.d.comb += nxt.eq(Mux(absx[i] > beat_max, absx[i], beat_max))
            beat_max = nxt

        # Divider state.
        num = Signal(NUM_BITS)
        rem = Signal(hwn.FX_BITS + 2)
        quo = Signal(NUM_BITS)
        step = Signal(range(NUM_BITS + 1))
        s_amt = Signal(6)
        recip = Signal(hwn.RECIP_BITS)
        e = Signal(range(hwn.FX_BITS + 1))
        amax1 = Signal(hwn.FX_BITS)
        m.d.comb += amax1.eq(Mux(amax == 0, 1, amax))
        for b in range(hwn.FX_BITS):  # e = bit_length(amax1)
            with m.If(amax1[b]):
                m.d.comb += e.eq(b + 1)

        # Quantize datapath: raw word read -> lanes of int8.
        qaddr = Signal(wbits + 1)
        qv = Signal()  # raw_r.data valid (read issued last cycle)
        qidx = Signal(wbits + 1)
        chunk_reg = Signal(8 * self.chunk)
        rnd = Signal(NUM_BITS)
        s_m1 = Signal(6)
        m.d.comb += [s_m1.eq(s_amt - 1), rnd.eq(Const(1, NUM_BITS) << s_m1)]
        qbytes = []
        for i in range(L):
            x = raw_r.data[i * hwn.FX_BITS:(i + 1) * hwn.FX_BITS].as_signed()
            p = Signal(signed(hwn.FX_BITS + hwn.RECIP_BITS + 2), name=f"qprod{i}")
            q = Signal(signed(hwn.FX_BITS + hwn.RECIP_BITS + 2), name=f"qval{i}")
            m.d.comb += [p.eq(x * recip), q.eq((p + rnd) >> s_amt)]
            qbytes.append(Mux(q > ACT_QMAX, ACT_QMAX, Mux(q < ACT_QMIN, ACT_QMIN, q))[:8])
        lane_pos = Signal(range(P))
        m.d.comb += lane_pos.eq(qidx % P) if P > 1 else lane_pos.eq(0)
        merged = Signal(8 * self.chunk)
        m.d.comb += merged.eq(chunk_reg)
        for pos in range(P):
            with m.If(lane_pos == pos):
                m.d.comb += merged[pos * 8 * L:(pos + 1) * 8 * L].eq(Cat(*qbytes))

        # Replay state (back end): bank rb; the front end quantizes into bank wb.
        n_chunks = Signal(cbits + 1)
        r_chunk = Signal(cbits + 1)
        r_pass = Signal.like(passes)
        rvalid = Signal()
        last_q = Signal()
        wb, rb = Signal(), Signal()
        full = Signal(2)                              # bank holds a quantized token not yet replayed
        b_chunks = [Signal(cbits + 1, name=f"b_chunks{i}") for i in range(2)]
        b_passes = [Signal.like(passes, name=f"b_passes{i}") for i in range(2)]
        b_amax = [Signal(hwn.FX_BITS, name=f"b_amax{i}") for i in range(2)]
        r_passes = Signal.like(passes)

        def bank_base(b):
            return Mux(b, self.max_chunks, 0)

        m.d.comb += [raw_w.addr.eq(waddr), raw_w.data.eq(self.inp.payload.data.as_value()),
                     q_r.addr.eq(bank_base(rb) + r_chunk), raw_r.addr.eq(qaddr)]
        scale_left = Signal.like(passes)
        amax_out = Signal(hwn.FX_BITS)
        m.d.comb += [self.scale.valid.eq(scale_left != 0), self.scale.payload.amax.eq(amax_out)]
        with m.If(self.scale.valid & self.scale.ready):
            m.d.sync += scale_left.eq(scale_left - 1)

        with m.FSM(name="front"):
            with m.State("LOAD"):
                m.d.comb += [self.inp.ready.eq(1), raw_w.en.eq(self.inp.valid)]
                with m.If(self.inp.valid):
                    m.d.sync += [waddr.eq(waddr + 1), amax.eq(Mux(beat_max > amax, beat_max, amax))]
                    with m.If(self.inp.payload.last):
                        m.d.sync += [n_words.eq(waddr + 1),
                                     passes.eq(Mux(self.inp.payload.passes == 0, 1, self.inp.payload.passes))]
                        m.next = "DIV_INIT"
            with m.State("DIV_INIT"):
                m.d.sync += [s_amt.eq(e + hwn.RECIP_SHIFT),
                             num.eq((Const(ACT_QMAX, NUM_BITS) << (e + hwn.RECIP_SHIFT)) + (amax1 >> 1)),
                             rem.eq(0), quo.eq(0), step.eq(NUM_BITS)]
                m.next = "DIV"
            with m.State("DIV"):
                trial = Cat(num[NUM_BITS - 1], rem)  # (rem << 1) | next numerator bit
                with m.If(trial >= amax1):
                    m.d.sync += [rem.eq(trial - amax1), quo.eq(Cat(1, quo))]
                with m.Else():
                    m.d.sync += [rem.eq(trial), quo.eq(Cat(0, quo))]
                m.d.sync += [num.eq(num << 1), step.eq(step - 1)]
                with m.If(step == 1):
                    m.next = "DIV_DONE"
            with m.State("DIV_DONE"):
                with m.If(~full.bit_select(wb, 1)):  # the bank's previous token has been replayed
                    m.d.sync += [recip.eq(quo), qaddr.eq(0), qidx.eq(0), qv.eq(0), chunk_reg.eq(0)]
                    m.next = "QUANT"
            with m.State("QUANT"):
                # Issue reads of raw words 0..n_words-1; consume each one cycle later.
                m.d.comb += raw_r.en.eq(1)
                with m.If(qaddr < n_words):
                    m.d.sync += [qaddr.eq(qaddr + 1), qv.eq(1)]
                with m.Else():
                    m.d.sync += qv.eq(0)
                with m.If(qv):
                    m.d.sync += qidx.eq(qidx + 1)
                    full_chunk = (lane_pos == P - 1) | (qidx == n_words - 1)
                    with m.If(full_chunk):
                        m.d.comb += [q_w.addr.eq(bank_base(wb) + qidx // P), q_w.data.eq(merged), q_w.en.eq(1)]
                        m.d.sync += chunk_reg.eq(0)
                    with m.Else():
                        m.d.sync += chunk_reg.eq(merged)
                    with m.If(qidx == n_words - 1):
                        for b in range(2):
                            with m.If(wb == b):
                                m.d.sync += [b_chunks[b].eq(qidx // P + 1), b_passes[b].eq(passes),
                                             b_amax[b].eq(amax1), full[b].eq(1)]
                        m.d.sync += [wb.eq(~wb), waddr.eq(0), amax.eq(0)]
                        m.next = "LOAD"
        with m.FSM(name="back"):
            with m.State("WAIT"):
                # the previous token's scales must all be taken before this token's are offered
                with m.If(full.bit_select(rb, 1) & (scale_left == 0)):
                    m.d.sync += [r_chunk.eq(0), r_pass.eq(0), rvalid.eq(0),
                                 n_chunks.eq(Mux(rb, b_chunks[1], b_chunks[0])),
                                 r_passes.eq(Mux(rb, b_passes[1], b_passes[0])),
                                 scale_left.eq(Mux(rb, b_passes[1], b_passes[0])),
                                 amax_out.eq(Mux(rb, b_amax[1], b_amax[0]))]
                    m.next = "REPLAY"
            with m.State("REPLAY"):
                en = ~rvalid | self.act.ready
                m.d.comb += [q_r.en.eq(en), self.act.valid.eq(rvalid),
                             self.act.payload.data.as_value().eq(q_r.data),
                             self.act.payload.last.eq(last_q)]
                done = (r_pass == r_passes)
                with m.If(en):
                    m.d.sync += [rvalid.eq(~done), last_q.eq(r_chunk == n_chunks - 1)]
                    with m.If(~done):
                        with m.If(r_chunk == n_chunks - 1):
                            m.d.sync += [r_chunk.eq(0), r_pass.eq(r_pass + 1)]
                        with m.Else():
                            m.d.sync += r_chunk.eq(r_chunk + 1)
                    with m.Else():
                        for b in range(2):
                            with m.If(rb == b):
                                m.d.sync += full[b].eq(0)
                        m.d.sync += rb.eq(~rb)
                        m.next = "WAIT"
        return m
