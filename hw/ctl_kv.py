"""KV_APPEND controller: appends a call's K or V rows to the DDR KV cache, then quantizes (KIVI) the
token groups that join the quantized span, bit-exact with ``backends/fpga/executor.py`` KV_APPEND
(``hw_numerics.kv_from_fx`` and ``hw_numerics.kv_quant_span_fx``).

Contract: hw/ports.py (``ctl``, one read port ``rd0``, the write port ``wr``). Instruction fields
(isa.py): ``src``, ``cache``, ``heads`` (hkv in bits 15..8, d in bits 31..16), ``context``,
``quant`` (bits | group_size << 8 | residual << 16 | sinks << 24; 0 = none), flag VALUES (bit 18 of
word 0). The controller is built for one ``head_dim`` (d) and a largest quantization group
``max_group``; an instruction with another d, a group over ``max_group``, ``bits`` outside 1..8, a V
grouping that does not tile d (min(group, d) must divide d) or a row width ``hkv*d`` that is not whole
beats raises ``error`` and does nothing.

Phases (one instruction; word-serial datapath, one 32-bit word per cycle at most):

* APPEND -- one read command for the N source rows (N * hkv*d/4 beats, contiguous); the words
  stream through ``kv_from_fx`` (round half up by 4 bits, saturate to 24 bits) into one write
  command per (token, KV head) row of R = ``kv_row_words(d)`` (ir/hw_numerics.py) words at
  ``cache + 4*((h*context + pos + t)*R)``, pad words 0. Heads need not be beat-aligned in the source
  row: the reader unpacks whole beats into words, the writer packs words (data + pad) into beats.
* QUANT (``quant`` != 0) -- after every APPEND write's ``done`` (the quantizer reads the rows back):
  walk the groups g = start, start + gs, ... of ``ir/kvquant.quantized_span`` (start = min(sinks,
  pos + N)); a group is in the span after this call iff g + gs + residual <= pos + N and was not
  before iff g + gs + residual > pos. For each new group and KV head: LOAD its gs rows (one read
  command of gs*R/4 beats; the rows of one head are contiguous) into an on-chip buffer of
  ``max_group * d`` words (pads dropped); per statistic group (keys: a channel over gs tokens, values:
  min(gs, d) channels of one token) STAT (min, max), SCALE (scale = ceil((max - min) / qmax) by a
  restoring divider, 25 steps), CODE the elements through a pipeline, one per cycle (code =
  round_half_up((x - min) / scale) = (2(x - min) + scale) // (2 scale) in 8 unrolled restoring steps:
  code <= qmax < 2**bits <= 2**8; x_hat = min + code * scale written back in place; a constant group
  has scale 0 and code 0); STORE the rows back (one write command, pads 0).

Cycles per instruction (start to busy falling; measured by tests/hw/test_ctl_kv.py with a memory that
is always ready (sim/memport_tb.py, p = 1), ``latency`` = its read latency in cycles, 4 by default):

    APPEND: N * hkv * R + latency + 10
    QUANT : sum over new groups of hkv * (2 * gs * R + stats * (2 * m + 40) + latency + 6)
            + (pos + N) / gs group steps + 3,
            with stats = d, m = gs (keys) or stats = gs * d / vg, m = vg = min(gs, d) (values): per
            statistic group STAT m + 3, SCALE 25 + 2, CODE m + 10 (the code pipeline drains).

The datapath is word-serial (one word per cycle; a DDR beat has 4): appending costs ~R cycles per
token and head; quantizing a group ~2 gs R (load + store) + 2 gs d (two passes) + 40 per statistic
group, per head, once every gs tokens.

``cycle_model`` below is this formula; the test checks the measured cycles against it.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import Out

from ternc.hw.ports import (ADDR_BITS, BEAT_BITS, LEN_BITS, WORDS_PER_BEAT, op_control_signature,
                            read_port_signature, write_port_signature)
from ternc.ir import hw_numerics as hn

__all__ = ["KvAppendCtl", "cycle_model", "new_groups"]

SCALE_STEPS = 25          # (max - min) + qmax - 1 < 2**24 + 2**8 < 2**25: quotient bits of the scale divider
CODE_BITS = 8             # the code pipeline's restoring steps: codes of up to 8 bits
BUF_BITS = 26             # buffer words: 24-bit KV words in, x_hat = min + code*scale < 2**25 out
VALUES_FLAG_BIT = 16 + 2  # isa.Flag.VALUES in word 0




def new_groups(n: int, pos: int, quant: tuple[int, int, int, int]) -> list[int]:
    """First tokens of the KIVI groups a call of n tokens at pos adds to the quantized span."""
    _, gs, res, sinks = quant
    seq = pos + n
    g = min(sinks, seq)
    out = []
    while g + gs + res <= seq:
        if g + gs + res > pos:
            out.append(g)
        g += gs
    return out


def cycle_model(n: int, pos: int, hkv: int, d: int, quant: tuple[int, int, int, int] | None, values: bool,
                latency: float = 4) -> float:
    """Cycles of one KV_APPEND (see the module doc) on a memory that is always ready."""
    r = hn.kv_row_words(d)
    cyc = n * hkv * r + latency + 10
    if quant:
        bits, gs, res, sinks = quant
        if values:
            vg = min(gs, d)
            stats, m = gs * d // vg, vg
        else:
            stats, m = d, gs
        groups = new_groups(n, pos, quant)
        steps = (pos + n - min(sinks, pos + n) - res) // gs if pos + n - min(sinks, pos + n) >= res + gs else 0
        cyc += len(groups) * hkv * (2 * gs * r + stats * (2 * m + CODE_BITS + 7 + SCALE_STEPS) + latency + 6)
        cyc += steps + 3
    return cyc


class KvAppendCtl(wiring.Component):
    """KV_APPEND (+ KIVI quantization) for KV heads of ``head_dim`` words; groups up to ``max_group``."""

    READ_PORTS = 1

    def __init__(self, head_dim: int, max_group: int = 32):
        if head_dim < 1 or max_group < 1:
            raise ValueError(f"KvAppendCtl: head_dim={head_dim}, max_group={max_group} must be >= 1")
        self.head_dim, self.max_group = head_dim, max_group
        self.row_words = hn.kv_row_words(head_dim)
        super().__init__({
            "ctl": Out(op_control_signature()),
            "rd0": Out(read_port_signature()),
            "wr": Out(write_port_signature()),
        })

    def elaborate(self, platform):
        m = Module()
        d, R, G = self.head_dim, self.row_words, self.max_group
        ctl, rd, wr = self.ctl, self.rd0, self.wr
        row_bytes = 4 * R

        # ---- latched instruction ------------------------------------------------------------
        src = Signal(ADDR_BITS)
        cache = Signal(ADDR_BITS)
        hkv = Signal(8)
        ctx_len = Signal(32)
        bits = Signal(8)
        gs = Signal(8)
        res = Signal(8)
        sinks = Signal(8)
        values = Signal()
        quant = Signal()
        n_tok = Signal(16)
        pos = Signal(16)

        busy = Signal()
        m.d.comb += ctl.busy.eq(busy)

        # ---- word reader: rd0 beats -> one word per cycle --------------------------------------
        rbeat = Signal(BEAT_BITS)
        ridx = Signal(range(WORDS_PER_BEAT + 1), init=WORDS_PER_BEAT)
        rw_valid = Signal()
        rw_ready = Signal()
        rw_data = Signal(signed(32))
        m.d.comb += [rw_valid.eq(ridx < WORDS_PER_BEAT),
                     rw_data.eq(rbeat.word_select(ridx[:2], 32).as_signed()),
                     rd.data.ready.eq((ridx == WORDS_PER_BEAT) | ((ridx == WORDS_PER_BEAT - 1) & rw_ready))]
        with m.If(rw_valid & rw_ready):
            m.d.sync += ridx.eq(ridx + 1)
        with m.If(rd.data.valid & rd.data.ready):
            m.d.sync += [rbeat.eq(rd.data.payload.data), ridx.eq(0)]

        # ---- word writer: one word per cycle -> wr beats -------------------------------------
        acc = Signal(32 * (WORDS_PER_BEAT - 1))
        widx = Signal(range(WORDS_PER_BEAT))
        obeat = Signal(BEAT_BITS)
        ovalid = Signal()
        ww_valid = Signal()
        ww_ready = Signal()
        ww_data = Signal(32)
        m.d.comb += [ww_ready.eq((widx < WORDS_PER_BEAT - 1) | ~ovalid | wr.data.ready),
                     wr.data.valid.eq(ovalid), wr.data.payload.data.eq(obeat)]
        with m.If(wr.data.valid & wr.data.ready):
            m.d.sync += ovalid.eq(0)
        with m.If(ww_valid & ww_ready):
            with m.If(widx == WORDS_PER_BEAT - 1):
                m.d.sync += [obeat.eq(Cat(acc, ww_data)), ovalid.eq(1), widx.eq(0)]
            with m.Else():
                for i in range(WORDS_PER_BEAT - 1):
                    with m.If(widx == i):
                        m.d.sync += acc.word_select(i, 32).eq(ww_data)
                m.d.sync += widx.eq(widx + 1)

        # ---- command registers + write accounting ---------------------------------------------
        rc_valid = Signal()
        wc_valid = Signal()
        m.d.comb += [rd.cmd.valid.eq(rc_valid), wr.cmd.valid.eq(wc_valid), wr.done.ready.eq(1)]
        with m.If(rd.cmd.valid & rd.cmd.ready):
            m.d.sync += rc_valid.eq(0)
        wc_fire = Signal()
        m.d.comb += wc_fire.eq(wr.cmd.valid & wr.cmd.ready)
        with m.If(wc_fire):
            m.d.sync += wc_valid.eq(0)
        pending = Signal(24)   # write commands accepted without their done
        done_fire = Signal()
        m.d.comb += done_fire.eq(wr.done.valid & wr.done.ready)
        m.d.sync += pending.eq(pending + wc_fire - done_fire)

        # ---- KV word conversion (kv_from_fx) ---------------------------------------------------
        sh = hn.FX_FRAC - hn.KV_FRAC
        rounded = Signal(signed(33))
        kv_word = Signal(signed(32))
        m.d.comb += [rounded.eq((rw_data + (1 << (sh - 1))) >> sh),
                     kv_word.eq(Mux(rounded > hn.KV_MAX, hn.KV_MAX, Mux(rounded < hn.KV_MIN, hn.KV_MIN, rounded)))]

        # ---- append counters -------------------------------------------------------------------
        head_stride = Signal(ADDR_BITS)       # 4 * R * context
        a_col = Signal(range(R))
        a_head = Signal(8)
        a_tok = Signal(16)
        wc_left = Signal(24)                  # append write commands not yet loaded
        wc_head = Signal(8)
        wc_base = Signal(ADDR_BITS)           # row (pos + t) of head 0
        wc_addr = Signal(ADDR_BITS)

        # ---- quantization state ----------------------------------------------------------------
        m.submodules.buf = buf = memory.Memory(shape=signed(BUF_BITS), depth=G * d, init=[])
        wp, rp = buf.write_port(), buf.read_port()
        seq = Signal(17)
        g_tok = Signal(17)
        g_addr = Signal(ADDR_BITS)
        g_stride = Signal(ADDR_BITS)          # gs * 4R
        q_head = Signal(8)
        h_addr = Signal(ADDR_BITS)
        l_col = Signal(range(R))
        l_tok = Signal(8)
        ptr = Signal(range(G * d + 1))
        vg = Signal(range(max(G, d) + 1))     # V grouping: min(gs, d) channels
        s_base = Signal(range(G * d + 1))
        s_end = Signal(range(G * d + 1))
        s_step = Signal(range(max(G, d) + 1))
        s_count = Signal(range(max(G, d) + 1))  # elements per statistic group
        s_stride = Signal(range(d + 1))
        s_i = Signal(range(max(G, d) + 1))
        pv = Signal()
        mn = Signal(signed(BUF_BITS))
        mx = Signal(signed(BUF_BITS))
        qmax = Signal(9)
        div_q = Signal(SCALE_STEPS)
        div_r = Signal(10)
        div_n = Signal(range(SCALE_STEPS + 1))
        scale = Signal(SCALE_STEPS)

        # V groupings that tile d: min(gs, d) divides d (executor: reshape(d // vg, vg)).
        vg_ok = Const(sum(1 << g for g in range(1, G + 1) if g >= d or d % g == 0), G + 1)
        bad = Signal()
        w0 = ctl.instr[0]
        q_word = ctl.instr[5]
        q_bits, q_gs = q_word[0:8], q_word[8:16]
        m.d.comb += bad.eq((ctl.instr[3][16:32] != d) | (ctl.instr[3][8:16] == 0) | (ctl.n_tokens == 0)
                           | (((ctl.instr[3][8:16] * d) & (WORDS_PER_BEAT - 1)) != 0)
                           | ((q_word != 0) & ((q_bits == 0) | (q_bits > 8) | (q_gs == 0) | (q_gs > G)
                                               | (w0[VALUES_FLAG_BIT] & ~vg_ok.bit_select(q_gs, 1)))))

        # ---- code pipeline: code = (2(x - min) + scale) // (2 scale), one element per cycle --------
        # CODE_BITS restoring steps (code <= qmax < 2**bits <= 2**CODE_BITS: leading steps give 0 bits),
        # then x_hat = min + code * scale written back in place. Stage 0 holds the issued address.
        issue = Signal()
        dbl = Signal(SCALE_STEPS + 1)
        m.d.comb += dbl.eq(scale << 1)
        n_st = CODE_BITS + 1
        pv_ = [Signal(name=f"cp{i}_valid") for i in range(n_st + 1)]
        pa_ = [Signal(range(G * d + 1), name=f"cp{i}_addr") for i in range(n_st + 1)]
        pr_ = [Signal(SCALE_STEPS + 2, name=f"cp{i}_rem") for i in range(n_st + 1)]
        pc_ = [Signal(CODE_BITS, name=f"cp{i}_code") for i in range(n_st + 1)]
        m.d.sync += [pv_[0].eq(issue), pa_[0].eq(ptr), pv_[1].eq(pv_[0]), pa_[1].eq(pa_[0]),
                     pr_[1].eq(((rp.data - mn) << 1) + scale), pc_[1].eq(0)]
        for i in range(1, n_st):
            shifted = dbl << (CODE_BITS - i)
            take = Signal(name=f"cp{i}_take")
            m.d.comb += take.eq(pr_[i] >= shifted)
            m.d.sync += [pv_[i + 1].eq(pv_[i]), pa_[i + 1].eq(pa_[i]),
                         pr_[i + 1].eq(Mux(take, pr_[i] - shifted, pr_[i])),
                         pc_[i + 1].eq(Cat(take, pc_[i][:-1]))]
        x_hat = Signal(signed(BUF_BITS))
        m.d.comb += x_hat.eq(mn + Mux(scale == 0, 0, pc_[n_st]) * scale)
        with m.If(pv_[n_st]):
            m.d.comb += [wp.addr.eq(pa_[n_st]), wp.data.eq(x_hat), wp.en.eq(1)]
        code_busy = Signal()
        m.d.comb += code_busy.eq(Cat(*pv_).any())

        with m.FSM():
            with m.State("IDLE"):
                with m.If(ctl.start):
                    m.d.sync += ctl.error.eq(0)
                    with m.If(bad):
                        m.d.sync += [ctl.error.eq(1), busy.eq(1)]
                        m.next = "FAIL"
                    with m.Else():
                        m.d.sync += [busy.eq(1),
                                     src.eq(ctl.instr[1]), cache.eq(ctl.instr[2]), hkv.eq(ctl.instr[3][8:16]),
                                     ctx_len.eq(ctl.instr[4]), quant.eq(q_word != 0), bits.eq(q_bits),
                                     gs.eq(q_gs), res.eq(q_word[16:24]), sinks.eq(q_word[24:32]),
                                     values.eq(w0[VALUES_FLAG_BIT]), n_tok.eq(ctl.n_tokens), pos.eq(ctl.pos)]
                        m.next = "SETUP"
            with m.State("FAIL"):
                m.d.sync += busy.eq(0)
                m.next = "IDLE"
            with m.State("SETUP"):
                # One read command for all N source rows; the write commands follow the data order.
                m.d.sync += [rc_valid.eq(1), rd.cmd.payload.addr.eq(src),
                             rd.cmd.payload.beats.eq(n_tok * hkv * (d // WORDS_PER_BEAT) if d % WORDS_PER_BEAT == 0
                                                     else (n_tok * hkv * d) >> 2),
                             head_stride.eq(ctx_len * row_bytes),
                             wc_left.eq(n_tok * hkv), wc_head.eq(0),
                             wc_base.eq(cache + pos * row_bytes), wc_addr.eq(cache + pos * row_bytes),
                             a_col.eq(0), a_head.eq(0), a_tok.eq(0),
                             seq.eq(pos + n_tok), qmax.eq((Const(1, 9) << bits[:4]) - 1),
                             g_stride.eq(gs * row_bytes), vg.eq(Mux(gs < d, gs, d))]
                m.next = "APPEND"
            with m.State("APPEND"):
                # write commands, loaded as soon as the register is free
                with m.If((wc_left != 0) & (~wc_valid | wc_fire)):
                    m.d.sync += [wc_valid.eq(1), wr.cmd.payload.addr.eq(wc_addr),
                                 wr.cmd.payload.beats.eq(R // WORDS_PER_BEAT), wc_left.eq(wc_left - 1)]
                    with m.If(wc_head == hkv - 1):
                        m.d.sync += [wc_head.eq(0), wc_base.eq(wc_base + row_bytes),
                                     wc_addr.eq(wc_base + row_bytes)]
                    with m.Else():
                        m.d.sync += [wc_head.eq(wc_head + 1), wc_addr.eq(wc_addr + head_stride)]
                # data: d converted words then R - d pad words per (token, head) row
                is_data = Signal()
                m.d.comb += [is_data.eq(a_col < d),
                             ww_valid.eq(~is_data | rw_valid),
                             ww_data.eq(Mux(is_data, kv_word, 0)),
                             rw_ready.eq(is_data & ww_ready)]
                with m.If(ww_valid & ww_ready):
                    m.d.sync += a_col.eq(a_col + 1)
                    with m.If(a_col == R - 1):
                        m.d.sync += [a_col.eq(0), a_head.eq(a_head + 1)]
                        with m.If(a_head == hkv - 1):
                            m.d.sync += [a_head.eq(0), a_tok.eq(a_tok + 1)]
                            with m.If(a_tok == n_tok - 1):
                                m.next = "APPEND_WAIT"
            with m.State("APPEND_WAIT"):
                # every row written and acknowledged before the quantizer reads rows back
                with m.If((wc_left == 0) & ~wc_valid & ~ovalid & (pending == 0)):
                    with m.If(quant):
                        m.d.sync += [g_tok.eq(Mux(sinks < seq, sinks, seq))]
                        m.next = "Q_SPAN"
                    with m.Else():
                        m.d.sync += busy.eq(0)
                        m.next = "IDLE"
            with m.State("Q_SPAN"):
                m.d.sync += g_addr.eq(cache + g_tok * row_bytes)
                m.next = "Q_NEXT"
            with m.State("Q_NEXT"):
                end = Signal(18)
                m.d.comb += end.eq(g_tok + gs + res)
                with m.If(end <= seq):
                    with m.If(end > pos):
                        m.d.sync += [q_head.eq(0), h_addr.eq(g_addr)]
                        m.next = "Q_LOAD"
                    with m.Else():
                        m.d.sync += [g_tok.eq(g_tok + gs), g_addr.eq(g_addr + g_stride)]
                with m.Else():
                    m.next = "DONE"
            with m.State("Q_LOAD"):
                m.d.sync += [rc_valid.eq(1), rd.cmd.payload.addr.eq(h_addr),
                             rd.cmd.payload.beats.eq(gs * (R // WORDS_PER_BEAT)),
                             l_col.eq(0), l_tok.eq(0), ptr.eq(0)]
                m.next = "Q_LOAD_DATA"
            with m.State("Q_LOAD_DATA"):
                m.d.comb += [rw_ready.eq(1), wp.addr.eq(ptr), wp.data.eq(rw_data)]
                with m.If(rw_valid):
                    m.d.sync += l_col.eq(l_col + 1)
                    with m.If(l_col < d):
                        m.d.comb += wp.en.eq(1)
                        m.d.sync += ptr.eq(ptr + 1)
                    with m.If(l_col == R - 1):
                        m.d.sync += [l_col.eq(0), l_tok.eq(l_tok + 1)]
                        with m.If(l_tok == gs - 1):
                            m.d.sync += [s_base.eq(0),
                                         s_end.eq(Mux(values, gs * d, d)),
                                         s_step.eq(Mux(values, vg, 1)),
                                         s_count.eq(Mux(values, vg, gs)),
                                         s_stride.eq(Mux(values, 1, d))]
                            m.next = "Q_STAT_INIT"
            with m.State("Q_STAT_INIT"):
                m.d.sync += [ptr.eq(s_base), s_i.eq(0), pv.eq(0), mn.eq(hn.KV_MAX), mx.eq(hn.KV_MIN)]
                m.next = "Q_STAT"
            with m.State("Q_STAT"):
                m.d.comb += rp.addr.eq(ptr)
                with m.If(s_i < s_count):
                    m.d.sync += [ptr.eq(ptr + s_stride), s_i.eq(s_i + 1), pv.eq(1)]
                with m.Else():
                    m.d.sync += pv.eq(0)
                with m.If(pv):
                    x = rp.data
                    with m.If(x < mn):
                        m.d.sync += mn.eq(x)
                    with m.If(x > mx):
                        m.d.sync += mx.eq(x)
                with m.If(pv & (s_i == s_count)):
                    m.next = "Q_SCALE_INIT"
            with m.State("Q_SCALE_INIT"):
                m.d.sync += [div_q.eq(mx - mn + qmax - 1), div_r.eq(0), div_n.eq(0)]
                m.next = "Q_SCALE"
            with m.State("Q_SCALE"):
                # restoring division by qmax, one quotient bit per cycle
                r2 = Signal(11)
                m.d.comb += r2.eq(Cat(div_q[-1], div_r))
                with m.If(r2 >= qmax):
                    m.d.sync += [div_r.eq(r2 - qmax), div_q.eq(Cat(1, div_q[:-1]))]
                with m.Else():
                    m.d.sync += [div_r.eq(r2), div_q.eq(Cat(0, div_q[:-1]))]
                m.d.sync += div_n.eq(div_n + 1)
                with m.If(div_n == SCALE_STEPS - 1):
                    m.next = "Q_SCALE_DONE"
            with m.State("Q_SCALE_DONE"):
                m.d.sync += [scale.eq(div_q), ptr.eq(s_base), s_i.eq(0)]
                m.next = "Q_CODE"
            with m.State("Q_CODE"):
                # one element per cycle into the code pipeline; next statistic group once it drained
                m.d.comb += rp.addr.eq(ptr)
                with m.If(s_i < s_count):
                    m.d.comb += issue.eq(1)
                    m.d.sync += [ptr.eq(ptr + s_stride), s_i.eq(s_i + 1)]
                with m.Elif(~code_busy):
                    m.d.sync += s_base.eq(s_base + s_step)
                    with m.If(s_base + s_step == s_end):
                        m.next = "Q_STORE_CMD"
                    with m.Else():
                        m.next = "Q_STAT_INIT"
            with m.State("Q_STORE_CMD"):
                m.d.comb += rp.addr.eq(0)
                with m.If(~wc_valid):
                    m.d.sync += [wc_valid.eq(1), wr.cmd.payload.addr.eq(h_addr),
                                 wr.cmd.payload.beats.eq(gs * (R // WORDS_PER_BEAT)),
                                 l_col.eq(0), l_tok.eq(0), ptr.eq(0)]
                    m.next = "Q_STORE"
            with m.State("Q_STORE"):
                is_data = Signal()
                adv = Signal()
                m.d.comb += [is_data.eq(l_col < d),
                             ww_valid.eq(1), ww_data.eq(Mux(is_data, rp.data, 0)),
                             adv.eq(is_data & ww_ready),
                             rp.addr.eq(Mux(adv, ptr + 1, ptr))]
                with m.If(adv):
                    m.d.sync += ptr.eq(ptr + 1)
                with m.If(ww_ready):
                    m.d.sync += l_col.eq(l_col + 1)
                    with m.If(l_col == R - 1):
                        m.d.sync += [l_col.eq(0), l_tok.eq(l_tok + 1)]
                        with m.If(l_tok == gs - 1):
                            m.d.sync += [q_head.eq(q_head + 1), h_addr.eq(h_addr + head_stride)]
                            with m.If(q_head == hkv - 1):
                                m.d.sync += [g_tok.eq(g_tok + gs), g_addr.eq(g_addr + g_stride)]
                                m.next = "Q_NEXT"
                            with m.Else():
                                m.next = "Q_LOAD"
            with m.State("DONE"):
                with m.If(~wc_valid & ~ovalid & (pending == 0)):
                    m.d.sync += busy.eq(0)
                    m.next = "IDLE"
        return m

