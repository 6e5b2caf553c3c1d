"""TLMM: the table-lookup ternary matmul engine (TeLLMe-style), as Amaranth 0.5 stream components.

Blocks (each a ``wiring.Component`` with ``amaranth.lib.stream`` ports, composed with ``wiring.connect``):

* :class:`TablePrecompute` -- per group of G int8 activations, the (3**G - 1)/2 distinct non-zero
  signed sums T[i] = dot(a, digits(i)) (G = 3: 13 sums; entry 0 is the constant 0; the 13 negative
  sums are *not* built -- lanes mirror them by a conditional negate). Partial sums over leading
  digits are shared, so G = 3 costs 2 pair adders + 11 final adders per table.
* :class:`LookupLanes` -- joins a table beat with a weight beat: for every column c and table t the
  value (-1)**sign[c][t] * T_t[index[c][t]] (TL2 fields: 4-bit index + sign bit per weight triple).
* :class:`AdderTree` -- per column, a pipelined (one register per level) adder tree over the tables.
* :class:`Accumulator` -- per column int32 accumulators over the chunks of one K pass; emits the C
  sums when the chunk flagged ``last`` arrives.
* :class:`WeightBuffer` -- the weight-index buffer (block RAM / UltraRAM via the ``ram_style``
  attribute): written sequentially from a ``load`` stream, replayed by (base, count) commands.
* :class:`TLMMEngine` -- precompute -> lanes -> tree -> accumulator.
* :class:`TLMMCore` -- WeightBuffer + TLMMEngine (what the resource figures synthesize).

Throughput: one activation chunk (G x tables int8) and one weight beat (columns x tables TL fields)
per clock, i.e. columns x tables x G ternary MACs per cycle (16 x 28 x 3 = 1,344 for TeLLMe's
configuration), with no bubbles in steady state and between K passes.

Host-side packing helpers (:func:`act_beats`, :func:`weight_beats`) turn int8 activations and
ternary weights into stream beats using ``ir/packing.py`` (G = 3) / ``ir/hw_numerics.py``.
"""

from __future__ import annotations

import math

import numpy as np
from amaranth import Array, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from ternc.ir import hw_numerics as hwn
from ternc.ir.packing import TL2

ACT_BITS = 8

__all__ = [
    "tl_field_layout", "weight_beat_layout", "act_beat_layout", "table_width",
    "tables_layout", "TablePrecompute", "LookupLanes", "AdderTree", "Accumulator", "WeightBuffer",
    "TLMMEngine", "TLMMCore", "act_beats", "weight_beats", "chunks_for",
]


# ------------------------------------------------------------------------------------------------
# Layouts
# ------------------------------------------------------------------------------------------------
def tl_field_layout(group: int) -> data.StructLayout:
    """One TL weight field: ``index`` (4 bits for G=3) in the low bits, ``sign`` above it."""
    return data.StructLayout({"index": unsigned(hwn.tlg_index_bits(group)), "sign": unsigned(1)})


def weight_beat_layout(group: int, tables: int, columns: int) -> data.ArrayLayout:
    """A weight beat: ``beat[c][t]`` is the TL field of column c, table t (column-major, t fastest)."""
    return data.ArrayLayout(data.ArrayLayout(tl_field_layout(group), tables), columns)


def act_beat_layout(group: int, tables: int) -> data.StructLayout:
    """An activation chunk: ``data[t*G + g]`` = int8 activation k = chunk*G*T + t*G + g; ``last``
    flags the final chunk of a K pass."""
    return data.StructLayout({"data": data.ArrayLayout(signed(ACT_BITS), group * tables),
                              "last": unsigned(1)})


def table_width(group: int) -> int:
    """Signed width of a table entry: |T[i]| <= 128 * G."""
    return (128 * group).bit_length() + 1


def tables_layout(group: int, tables: int) -> data.StructLayout:
    """Output of :class:`TablePrecompute`: ``table[t][i]`` (i = 0 .. (3**G-1)/2) and ``last``."""
    return data.StructLayout({
        "table": data.ArrayLayout(data.ArrayLayout(signed(table_width(group)), hwn.tlg_num_indices(group)),
                                  tables),
        "last": unsigned(1)})


def chunks_for(k: int, group: int, tables: int) -> int:
    return max(1, -(-k // (group * tables)))


# ------------------------------------------------------------------------------------------------
# Blocks
# ------------------------------------------------------------------------------------------------
# The datapath stages run free: no clock enable, data registers without reset, ``valid`` bits
# (with reset) travel beside the data. Their streams are ``always_ready``; backpressure is
# handled once, at the engine's input, by credits (hw/stream_util.CreditBuffer).
def _free(shape):
    return stream.Signature(shape, always_ready=True)


class TablePrecompute(wiring.Component):
    """act chunk -> T tables of (3**G-1)/2 + 1 signed entries (entry 0 == 0). One register stage,
    free-running (``always_ready`` streams: a beat presented with ``valid`` is registered next cycle).

    Ports: ``act`` (In, :func:`act_beat_layout`), ``tables`` (Out, ``{table[t][i], last}``).
    """

    def __init__(self, group: int = 3, tables: int = 28):
        self.group, self.n_tables = group, tables
        self.n_entries = hwn.tlg_num_indices(group)
        self.width = table_width(group)
        self.tables_layout = tables_layout(group, tables)
        super().__init__({
            "act": In(_free(act_beat_layout(group, tables))),
            "tables": Out(_free(self.tables_layout)),
        })

    def elaborate(self, platform):
        m = Module()
        g = self.group
        digits = hwn.tlg_digits(np.arange(self.n_entries), g)  # the shared definition
        m.d.sync += self.tables.valid.eq(self.act.valid)
        last = Signal(reset_less=True)
        m.d.sync += last.eq(self.act.payload.last)
        m.d.comb += self.tables.payload.last.eq(last)
        for t in range(self.n_tables):
            a = [self.act.payload.data[t * g + j] for j in range(g)]
            prefix: dict[tuple, object] = {}

            def psum(ds, a=a, prefix=prefix):
                # sum_j ds[j] * a[j], memoized over prefixes (shares the pair sums).
                if ds in prefix:
                    return prefix[ds]
                if len(ds) == 0:
                    r = None
                else:
                    head = psum(ds[:-1])
                    d, x = ds[-1], a[len(ds) - 1]
                    if d == 0:
                        r = head
                    elif head is None:
                        r = x if d > 0 else -x
                    else:
                        w = Signal(signed(self.width), name=f"p{t}_" + "".join("mzp"[v + 1] for v in ds))
                        m.d.comb += w.eq(head + x if d > 0 else head - x)
                        r = w
                prefix[ds] = r
                return r

            for i in range(1, self.n_entries):
                v = psum(tuple(int(d) for d in digits[i]))
                r = Signal(signed(self.width), name=f"tab{t}_{i}", reset_less=True)
                m.d.sync += r.eq(v)
                m.d.comb += self.tables.payload.table[t][i].eq(r)
        return m


class LookupLanes(wiring.Component):
    """``out.data[c][t] = (-1)**sign * table[t][index]`` for the ``tables`` beat and the ``wgt`` beat
    presented in the same cycle (free-running, one register stage; ``out.valid`` = both valid).

    Indices above (3**G-1)/2 (14, 15 for G=3) are invalid TL2 encodings; their value is unspecified.
    """

    def __init__(self, group: int = 3, tables: int = 28, columns: int = 16):
        self.group, self.n_tables, self.columns = group, tables, columns
        self.width = table_width(group)
        self.out_layout = data.StructLayout({
            "data": data.ArrayLayout(data.ArrayLayout(signed(self.width), tables), columns),
            "last": unsigned(1)})
        super().__init__({
            "tables": In(_free(tables_layout(group, tables))),
            "wgt": In(_free(weight_beat_layout(group, tables, columns))),
            "out": Out(_free(self.out_layout)),
        })

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.out.valid.eq(self.tables.valid & self.wgt.valid)
        last = Signal(reset_less=True)
        m.d.sync += last.eq(self.tables.payload.last)
        m.d.comb += self.out.payload.last.eq(last)
        n = hwn.tlg_num_indices(self.group)
        for t in range(self.n_tables):
            entries = Array([self.tables.payload.table[t][i] for i in range(n)])
            for c in range(self.columns):
                f = self.wgt.payload[c][t]
                sel = Signal(signed(self.width), name=f"sel_c{c}_t{t}")
                r = Signal(signed(self.width), name=f"lane_c{c}_t{t}", reset_less=True)
                m.d.comb += sel.eq(entries[f.index])
                m.d.sync += r.eq(Mux(f.sign, -sel, sel))
                m.d.comb += self.out.payload.data[c][t].eq(r)
        return m


class AdderTree(wiring.Component):
    """Per column, sum the T lane values; one pipeline register per tree level (``levels`` =
    max(1, ceil(log2 T)) cycles), free-running."""

    def __init__(self, tables: int = 28, columns: int = 16, in_width: int = 10):
        self.n_tables, self.columns, self.in_width = tables, columns, in_width
        self.levels = max(1, math.ceil(math.log2(tables))) if tables > 1 else 1
        self.out_width = in_width + (math.ceil(math.log2(tables)) if tables > 1 else 0)
        super().__init__({
            "inp": In(_free(data.StructLayout({
                "data": data.ArrayLayout(data.ArrayLayout(signed(in_width), tables), columns),
                "last": unsigned(1)}))),
            "out": Out(_free(data.StructLayout({
                "data": data.ArrayLayout(signed(self.out_width), columns), "last": unsigned(1)}))),
        })

    def elaborate(self, platform):
        m = Module()
        cols = [[self.inp.payload.data[c][t] for t in range(self.n_tables)] for c in range(self.columns)]
        valid, last, width = self.inp.valid, self.inp.payload.last, self.in_width
        for lvl in range(self.levels):
            if len(cols[0]) > 1:
                width += 1
            new_cols = []
            for c, col in enumerate(cols):
                nxt = []
                for i in range(0, len(col), 2):
                    r = Signal(signed(width), name=f"tree_l{lvl}_c{c}_{i // 2}", reset_less=True)
                    m.d.sync += r.eq(col[i] + col[i + 1] if i + 1 < len(col) else col[i])
                    nxt.append(r)
                new_cols.append(nxt)
            cols = new_cols
            v, l = Signal(name=f"tree_v{lvl}"), Signal(name=f"tree_last{lvl}", reset_less=True)
            m.d.sync += [v.eq(valid), l.eq(last)]
            valid, last = v, l
        m.d.comb += [self.out.valid.eq(valid), self.out.payload.last.eq(last)]
        for c in range(self.columns):
            m.d.comb += self.out.payload.data[c].eq(cols[c][0])
        return m


class Accumulator(wiring.Component):
    """Per column accumulate chunk sums of one K pass; present the C sums on ``out`` (one cycle,
    ``always_ready``: the engine reserved room for it by credit) after the chunk flagged ``last``."""

    def __init__(self, columns: int = 16, in_width: int = 15, acc_width: int = 32):
        self.columns, self.in_width, self.acc_width = columns, in_width, acc_width
        super().__init__({
            "inp": In(_free(data.StructLayout({
                "data": data.ArrayLayout(signed(in_width), columns), "last": unsigned(1)}))),
            "out": Out(_free(data.ArrayLayout(signed(acc_width), columns))),
        })

    def elaborate(self, platform):
        m = Module()
        at_start = Signal(init=1)
        last = self.inp.payload.last
        m.d.sync += self.out.valid.eq(self.inp.valid & last)
        with m.If(self.inp.valid):
            m.d.sync += at_start.eq(last)
        for c in range(self.columns):
            acc = Signal(signed(self.acc_width), name=f"acc{c}", reset_less=True)
            m.d.comb += self.out.payload[c].eq(acc)
            with m.If(self.inp.valid):
                m.d.sync += acc.eq(Mux(at_start, 0, acc) + self.inp.payload.data[c])
        return m


class WeightBuffer(wiring.Component):
    """Weight-index buffer: one memory word per weight beat, mapped to BRAM/URAM by ``ram_style``.

    Ports:
      ``load`` (In, ``{data: beat, first}``): written at consecutive addresses (wrapping at
          ``depth``); ``first`` restarts at 0. Always ready.
      ``cmd``  (In, ``{base, count}``): replay ``count`` words starting at ``base`` < depth, wrapping
          at ``depth`` (any depth, not only powers of two).
      ``rd``   (Out, beat): the replayed words, one per cycle, back-to-back across commands.
    Latency: the first word of a command is valid 2 cycles after the command is accepted (address
    register, synchronous read). ``rd.ready`` drives the memory's read enable combinationally; the
    engine makes it from registered credits and one valid (a few LUT levels), never from its output.
    Loading a region while it is being replayed is undefined (double-buffer at the host level).
    """

    def __init__(self, shape, depth: int, ram_style: str | None = None, bank_width: int = 72):
        if depth < 1:
            self._MustUse__silence = True
            raise ValueError("depth must be >= 1")
        self.shape, self.depth, self.ram_style, self.bank_width = shape, depth, ram_style, bank_width
        self.addr_bits = max(1, (depth - 1).bit_length())
        super().__init__({
            "load": In(stream.Signature(data.StructLayout({"data": shape, "first": unsigned(1)}))),
            "cmd": In(stream.Signature(data.StructLayout({
                "base": unsigned(self.addr_bits), "count": unsigned(self.addr_bits + 1)}))),
            "rd": Out(stream.Signature(shape)),
        })

    def _inc(self, a):
        """a + 1 modulo depth (a plain increment when depth is a power of two)."""
        if self.depth == 1 << self.addr_bits:
            return (a + 1)[:self.addr_bits]
        return Mux(a == self.depth - 1, 0, a + 1)

    def elaborate(self, platform):
        m = Module()
        attrs = {"ram_style": self.ram_style} if self.ram_style else None
        width = len(Value.cast(self.rd.payload))
        # One memory per ``bank_width`` slice of the beat (72 = URAM288 / BRAM36 SDP data width):
        # keeps each inferred memory a plain RAM column for the synthesis tools.
        banks = []
        for b, lo in enumerate(range(0, width, self.bank_width)):
            w = min(self.bank_width, width - lo)
            mem = memory.Memory(shape=unsigned(w), depth=self.depth, init=[], attrs=attrs)
            m.submodules[f"bank{b}"] = mem
            banks.append((lo, w, mem.write_port(), mem.read_port()))

        waddr = Signal(self.addr_bits)
        addr = Signal(self.addr_bits)
        m.d.comb += [self.load.ready.eq(1), addr.eq(Mux(self.load.payload.first, 0, waddr))]
        with m.If(self.load.valid):
            m.d.sync += waddr.eq(self._inc(addr))

        raddr = Signal(self.addr_bits)
        remaining = Signal(self.addr_bits + 1)
        rvalid = Signal()
        en, issue = Signal(), Signal()
        m.d.comb += [en.eq(~rvalid | self.rd.ready), issue.eq(en & (remaining != 0)),
                     self.rd.valid.eq(rvalid),
                     self.cmd.ready.eq((remaining == 0) | ((remaining == 1) & issue))]
        wdata = Value.cast(self.load.payload.data)
        rdata = Value.cast(self.rd.payload)
        for lo, w, wp, rp in banks:
            m.d.comb += [wp.addr.eq(addr), wp.data.eq(wdata[lo:lo + w]), wp.en.eq(self.load.valid),
                         rp.en.eq(en), rp.addr.eq(raddr), rdata[lo:lo + w].eq(rp.data)]
        with m.If(en):
            m.d.sync += rvalid.eq(remaining != 0)
        with m.If(issue):
            m.d.sync += [raddr.eq(self._inc(raddr)), remaining.eq(remaining - 1)]
        with m.If(self.cmd.valid & self.cmd.ready):
            m.d.sync += [raddr.eq(self.cmd.payload.base), remaining.eq(self.cmd.payload.count)]
        return m


class TLMMEngine(wiring.Component):
    """Ternary matmul engine: G x ``tables`` activations and ``columns`` x ``tables`` weight triples
    (TL fields) per cycle -> per-column int32 sums of a K pass.

    Port protocol (all Amaranth streams: a beat moves on a clock edge where valid & ready):
      ``act`` (In, :func:`act_beat_layout`): one chunk of G*tables int8 activations per beat;
        chunk j of a K pass carries activations k = j*G*tables ... (j+1)*G*tables - 1; ``last`` = 1
        on the final chunk of the pass. K not a multiple of G*tables: the tail lanes may carry any
        value provided the matching weight fields are index 0 (zero weight) -- :func:`weight_beats`
        pads that way (:func:`act_beats` pads with zeros too).
      ``wgt`` (In, :func:`weight_beat_layout`): the weight beat of the same chunk, ``wgt[c][t]`` =
        TL field of column c for activation group t of the chunk (ir/packing.tl2_encode for G = 3).
        ``act`` and ``wgt`` are joined: both move in the same cycle.
      ``out`` (Out, ``columns`` x signed(acc_width)): after each pass, out[c] = sum_k x[k] * w[c, k].
    Timing structure: the datapath (precompute, wgt register, lanes, tree levels, accumulator) runs
    without clock enable; a ``last`` chunk enters only with a credit of the output FIFO
    (:class:`~ternc.hw.stream_util.CreditBuffer`, ``out_depth`` = ``pipe_latency`` + 3 results), so
    ``act.ready``/``wgt.ready`` = (other input valid) & (~last | credit): no combinational path from
    ``out.ready``.
    Latency: ``pipe_latency`` = levels + 3 cycles from the edge accepting the last chunk to the
    result entering the FIFO, ``latency`` = ``pipe_latency`` + 2 to ``out.valid`` (measured in
    tests/hw/test_tlmm.py). Throughput: one chunk per cycle with both inputs valid, across passes,
    as long as ``out`` drains one result per pass.
    """

    def __init__(self, group: int = 3, tables: int = 28, columns: int = 16, acc_width: int = 32):
        if group < 1 or tables < 1 or columns < 1:
            self._MustUse__silence = True  # rejected: never elaborated
            raise ValueError("group, tables and columns must be >= 1")
        self.group, self.n_tables, self.columns, self.acc_width = group, tables, columns, acc_width
        self.macs_per_cycle = group * tables * columns
        levels = max(1, math.ceil(math.log2(tables))) if tables > 1 else 1
        self.pipe_latency = levels + 3          # precompute, lanes, tree levels, accumulator
        self.latency = self.pipe_latency + 2    # + the FIFO (write, then its output register)
        self.out_depth = self.pipe_latency + 3
        super().__init__({
            "act": In(stream.Signature(act_beat_layout(group, tables))),
            "wgt": In(stream.Signature(weight_beat_layout(group, tables, columns))),
            "out": Out(stream.Signature(data.ArrayLayout(signed(acc_width), columns))),
        })

    def elaborate(self, platform):
        from ternc.hw.stream_util import CreditBuffer
        m = Module()
        g, t, c = self.group, self.n_tables, self.columns
        m.submodules.pre = pre = TablePrecompute(g, t)
        m.submodules.lanes = lanes = LookupLanes(g, t, c)
        m.submodules.tree = tree = AdderTree(t, c, table_width(g))
        m.submodules.acc = acc = Accumulator(c, tree.out_width, self.acc_width)
        m.submodules.obuf = obuf = CreditBuffer(self.out.payload.shape(), self.out_depth)
        # Join act + wgt at the input; a pass-ending chunk needs a credit.
        ok = Signal()
        fire = Signal()
        m.d.comb += [ok.eq(~self.act.payload.last | obuf.credit),
                     self.act.ready.eq(self.wgt.valid & ok), self.wgt.ready.eq(self.act.valid & ok),
                     fire.eq(self.act.valid & self.wgt.valid & ok),
                     obuf.start.eq(fire & self.act.payload.last),
                     pre.act.valid.eq(fire), pre.act.payload.eq(self.act.payload)]
        # The weight beat waits one cycle beside the table precompute.
        wreg = Signal.like(self.wgt.payload, reset_less=True, name="wgt_reg")
        wv = Signal()
        m.d.sync += [wreg.eq(self.wgt.payload), wv.eq(fire)]
        m.d.comb += [lanes.wgt.valid.eq(wv), lanes.wgt.payload.eq(wreg)]
        wiring.connect(m, pre.tables, lanes.tables)
        wiring.connect(m, lanes.out, tree.inp)
        wiring.connect(m, tree.out, acc.inp)
        wiring.connect(m, acc.out, obuf.w)
        wiring.connect(m, obuf.out, wiring.flipped(self.out))
        return m


class TLMMCore(wiring.Component):
    """:class:`WeightBuffer` feeding :class:`TLMMEngine`. Ports ``load``/``cmd`` (weight buffer),
    ``act`` and ``out`` (engine). For a pass over weight-beat addresses [base, base+n), send
    cmd(base, n) and the n activation chunks (last on the n-th)."""

    def __init__(self, group: int = 3, tables: int = 28, columns: int = 16, acc_width: int = 32,
                 wbuf_depth: int = 4096, ram_style: str | None = "ultra"):
        self.group, self.n_tables, self.columns = group, tables, columns
        self.acc_width, self.wbuf_depth, self.ram_style = acc_width, wbuf_depth, ram_style
        self.macs_per_cycle = group * tables * columns
        wl = weight_beat_layout(group, tables, columns)
        addr_bits = max(1, (wbuf_depth - 1).bit_length())
        super().__init__({
            "load": In(stream.Signature(data.StructLayout({"data": wl, "first": unsigned(1)}))),
            "cmd": In(stream.Signature(data.StructLayout({
                "base": unsigned(addr_bits), "count": unsigned(addr_bits + 1)}))),
            "act": In(stream.Signature(act_beat_layout(group, tables))),
            "out": Out(stream.Signature(data.ArrayLayout(signed(acc_width), columns))),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.wbuf = wb = WeightBuffer(weight_beat_layout(self.group, self.n_tables, self.columns),
                                              self.wbuf_depth, self.ram_style)
        m.submodules.engine = eng = TLMMEngine(self.group, self.n_tables, self.columns, self.acc_width)
        wiring.connect(m, wiring.flipped(self.load), wb.load)
        wiring.connect(m, wiring.flipped(self.cmd), wb.cmd)
        wiring.connect(m, wb.rd, eng.wgt)
        wiring.connect(m, wiring.flipped(self.act), eng.act)
        wiring.connect(m, eng.out, wiring.flipped(self.out))
        return m


# ------------------------------------------------------------------------------------------------
# Host-side packing (shared by the Amaranth and cocotb benches and the FPGA backend)
# ------------------------------------------------------------------------------------------------
def act_beats(x_q: np.ndarray, group: int = 3, tables: int = 28, pad=None) -> list[dict]:
    """int8 [K] -> activation chunk beats (dicts for :func:`act_beat_layout`). ``pad``: optional
    int8 values for the tail lanes (default zeros; the engine ignores them when weights are padded)."""
    x_q = np.asarray(x_q)
    if x_q.dtype != np.int8 or x_q.ndim != 1:
        raise TypeError("x_q must be a 1-D int8 vector")
    w = group * tables
    n = chunks_for(x_q.shape[0], group, tables)
    buf = np.zeros(n * w, dtype=np.int64)
    if pad is not None:
        buf[x_q.shape[0]:] = np.asarray(pad, dtype=np.int64)[: n * w - x_q.shape[0]]
    buf[: x_q.shape[0]] = x_q
    return [{"data": [int(v) for v in buf[j * w:(j + 1) * w]], "last": int(j == n - 1)} for j in range(n)]


def weight_beats(w_t: np.ndarray, group: int = 3, tables: int = 28, columns: int = 16) -> list[list]:
    """Ternary [N <= columns, K] -> weight beats (nested lists for :func:`weight_beat_layout`).

    G = 3 (the TL2 engine): packs ``w_t`` with ``ir/packing.py``'s TL2 format and reads the beats
    from those PACKED bytes (``packing.TL2.tlmm_weight_beats``), the same path the FPGA backend takes
    from the IR's packed constants. Other G (generic TL-G, no byte format): ``hw_numerics.tlg_encode``.
    Rows N..columns-1 and groups past K are zero (index 0)."""
    w_t = np.asarray(w_t)
    n_rows, k = w_t.shape
    if n_rows > columns:
        raise ValueError(f"tile has {n_rows} rows > {columns} columns")
    if group == TL2.group and n_rows >= 1 and k >= 1:
        return TL2.tlmm_weight_beats(TL2.pack(w_t), k, tables, columns)
    index, sign = hwn.tlg_encode(w_t, group)
    n = chunks_for(k, group, tables)
    idx = np.zeros((columns, n * tables), dtype=np.int64)
    sgn = np.zeros((columns, n * tables), dtype=np.int64)
    idx[:n_rows, : index.shape[1]] = index
    sgn[:n_rows, : sign.shape[1]] = sign
    return [[[{"index": int(idx[c, j * tables + t]), "sign": int(sgn[c, j * tables + t])}
              for t in range(tables)] for c in range(columns)] for j in range(n)]
