"""AXI4 burst masters (DDR <-> stream) for the PS DDR on the KV260's HP ports.

Signal-level AXI ports are ``wiring.Signature`` members named exactly as in the AXI spec
(``araddr``, ``arlen``, ...), so the generated Verilog has ``<port>__araddr`` etc. and cocotbext-axi
binds with ``AxiReadBus.from_prefix(dut, "<port>_")``. One ID (0), INCR bursts, full-width beats.

* :class:`AxiReadMaster` -- ``cmd`` {addr, beats} -> AR bursts of up to ``burst_len`` beats (split at
  ``burst_len``-beat aligned boundaries, so a burst never crosses 4 KiB) -> ``out`` {data, last}.
  Up to ``max_outstanding`` full bursts in flight: an AR is issued only when the data FIFO has room
  for all of its beats (credits), so ``rready`` is constant 1 and the interconnect never stalls on
  us (HP-port deadlock avoidance). ``last`` marks the final beat of each command.
* :class:`AxiWriteMaster` -- ``cmd`` {addr, beats} + ``data`` {data} -> AW bursts / W beats with
  ``wlast`` / B responses; ``done`` gives one beat per command once all its B responses arrived;
  at most ``max_outstanding`` bursts without a B response.

Both take ``error`` (sticky: a response other than OKAY) and count beats (``beats``, 32-bit wrap)
for the register file's performance counters. Addresses must be aligned to the beat (data_width/8).

Throughput: one beat per cycle in steady state on both masters when the slave keeps up (an AR/AW
at most every other cycle, each up to ``burst_len`` beats, while credits last); read latency = one
cycle to register the first burst, the slave's, + 2 cycles (FIFO). Measured
in the benches (``sim/cocotb_axi.py``): see their output.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from ternc.hw.stream_util import SkidBuffer

__all__ = ["axi4_read_signature", "axi4_write_signature", "AxiReadMaster", "AxiWriteMaster"]

BURST_INCR = 1
RESP_OKAY = 0


def axi4_read_signature(addr_width: int, data_width: int, id_width: int = 1) -> wiring.Signature:
    """AR + R channels, manager side (Out = driven by the master)."""
    return wiring.Signature({
        "arid": Out(id_width), "araddr": Out(addr_width), "arlen": Out(8), "arsize": Out(3),
        "arburst": Out(2), "arcache": Out(4), "arprot": Out(3), "arvalid": Out(1), "arready": In(1),
        "rid": In(id_width), "rdata": In(data_width), "rresp": In(2), "rlast": In(1),
        "rvalid": In(1), "rready": Out(1),
    })


def axi4_write_signature(addr_width: int, data_width: int, id_width: int = 1) -> wiring.Signature:
    """AW + W + B channels, manager side."""
    return wiring.Signature({
        "awid": Out(id_width), "awaddr": Out(addr_width), "awlen": Out(8), "awsize": Out(3),
        "awburst": Out(2), "awcache": Out(4), "awprot": Out(3), "awvalid": Out(1), "awready": In(1),
        "wdata": Out(data_width), "wstrb": Out(data_width // 8), "wlast": Out(1), "wvalid": Out(1),
        "wready": In(1),
        "bid": In(id_width), "bresp": In(2), "bvalid": In(1), "bready": Out(1),
    })


def _check(addr_width, data_width, burst_len, max_outstanding):
    if data_width % 8 or data_width < 8 or data_width & (data_width - 1):
        raise ValueError(f"data_width {data_width}: a power of two >= 8")
    if burst_len < 1 or burst_len > 256 or burst_len & (burst_len - 1):
        raise ValueError(f"burst_len {burst_len}: a power of two in 1..256")
    if burst_len * data_width // 8 > 4096:
        raise ValueError("a burst must not exceed 4 KiB")
    if max_outstanding < 1:
        raise ValueError("max_outstanding >= 1")


class _BurstSplitter:
    """Shared address generator: splits (addr, beats) into INCR bursts aligned to burst_len beats."""

    def __init__(self, m, addr_width, data_width, burst_len, len_bits, name):
        self.size = (data_width // 8).bit_length() - 1          # log2 bytes per beat
        self.bl_bits = burst_len.bit_length() - 1
        self.addr = Signal(addr_width, name=f"{name}_addr")
        self.left = Signal(len_bits, name=f"{name}_left")        # beats of the command not yet issued
        self.active = Signal(name=f"{name}_active")
        off = self.addr[self.size:self.size + self.bl_bits] if self.bl_bits else 0
        room = Signal(self.bl_bits + 1, name=f"{name}_room")
        m.d.comb += room.eq(burst_len - off)
        # The next burst's length is registered (cuts the compare -> credit check -> address-update
        # path); it is stale for one cycle after addr/left change, so ``fresh`` gates the issue and
        # ARs/AWs go out at most every other cycle (each carries up to burst_len beats).
        self.burst = Signal(self.bl_bits + 1, name=f"{name}_burst")  # beats of the next burst
        self.final = Signal(name=f"{name}_final")                   # the next burst ends the command
        self.fresh = Signal(name=f"{name}_fresh")
        m.d.sync += [self.burst.eq(Mux(self.left < room, self.left, room)),
                     self.final.eq(self.left <= room), self.fresh.eq(1)]

    def load(self, m, addr, beats):
        m.d.sync += [self.addr.eq(addr), self.left.eq(beats), self.active.eq(beats != 0), self.fresh.eq(0)]

    def advance(self, m):
        m.d.sync += [self.addr.eq(self.addr + (self.burst << self.size)), self.left.eq(self.left - self.burst),
                     self.fresh.eq(0)]
        with m.If(self.final):
            m.d.sync += self.active.eq(0)


class AxiReadMaster(wiring.Component):
    """DDR -> stream burst reader.

    Ports: ``cmd`` (In {addr, beats}), ``out`` (Out {data, last}), ``axi`` (AXI4 read manager),
    ``error`` (Out, sticky), ``beats`` (Out(32), beats received).
    Parameters: ``burst_len`` (16, as TeLLMe), ``max_outstanding`` (bursts; the data FIFO holds
    ``burst_len * max_outstanding`` beats), ``len_bits`` (beats per command < 2**len_bits).
    """

    def __init__(self, addr_width: int = 40, data_width: int = 128, burst_len: int = 16,
                 max_outstanding: int = 4, len_bits: int = 24, id_width: int = 1, cmd_queue: int = 4):
        try:
            _check(addr_width, data_width, burst_len, max_outstanding)
        except ValueError:
            self._MustUse__silence = True
            raise
        self.addr_width, self.data_width, self.burst_len = addr_width, data_width, burst_len
        self.max_outstanding, self.len_bits, self.id_width, self.cmd_queue = max_outstanding, len_bits, id_width, cmd_queue
        self.fifo_depth = burst_len * max_outstanding
        super().__init__({
            "cmd": In(stream.Signature(data.StructLayout({"addr": unsigned(addr_width),
                                                          "beats": unsigned(len_bits)}))),
            "out": Out(stream.Signature(data.StructLayout({"data": unsigned(data_width), "last": unsigned(1)}))),
            "axi": Out(axi4_read_signature(addr_width, data_width, id_width)),
            "error": Out(1),
            "beats": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        axi = self.axi
        sp = _BurstSplitter(m, self.addr_width, self.data_width, self.burst_len, self.len_bits, "rd")
        # Command lengths for the R side (marks `last`), in command order.
        m.submodules.cmdq = cmdq = fifo.SyncFIFOBuffered(width=self.len_bits, depth=self.cmd_queue)
        m.submodules.dq = dq = fifo.SyncFIFOBuffered(width=self.data_width + 1, depth=self.fifo_depth)
        reserved = Signal(range(self.fifo_depth + 1))  # beats requested and not yet popped from dq
        take_cmd = Signal()
        m.d.comb += [self.cmd.ready.eq(~sp.active & cmdq.w_rdy),
                     take_cmd.eq(self.cmd.valid & self.cmd.ready),
                     cmdq.w_en.eq(take_cmd & (self.cmd.payload.beats != 0)), cmdq.w_data.eq(self.cmd.payload.beats)]
        with m.If(take_cmd):
            sp.load(m, self.cmd.payload.addr, self.cmd.payload.beats)
        # AR channel (registered outputs).
        issue = Signal()
        m.d.comb += [axi.arid.eq(0), axi.arsize.eq(sp.size), axi.arburst.eq(BURST_INCR),
                     axi.arcache.eq(0b0011), axi.arprot.eq(0),
                     issue.eq((~axi.arvalid | axi.arready) & sp.active & sp.fresh
                              & (reserved <= self.fifo_depth - self.burst_len))]
        with m.If(axi.arvalid & axi.arready):
            m.d.sync += axi.arvalid.eq(0)
        with m.If(issue):
            m.d.sync += [axi.arvalid.eq(1), axi.araddr.eq(sp.addr), axi.arlen.eq(sp.burst - 1)]
            sp.advance(m)
        pop = Signal()
        m.d.comb += pop.eq(self.out.valid & self.out.ready)
        m.d.sync += reserved.eq(reserved + Mux(issue, sp.burst, 0) - pop)
        # R channel: always ready (room reserved), beats counted against the head command.
        got = Signal(self.len_bits)
        rfire = Signal()
        is_last = Signal()
        m.d.comb += [axi.rready.eq(1), rfire.eq(axi.rvalid),
                     is_last.eq(cmdq.r_rdy & (got + 1 == cmdq.r_data)),
                     dq.w_en.eq(rfire), dq.w_data.eq(axi.rdata | (is_last << self.data_width)),
                     cmdq.r_en.eq(rfire & is_last)]
        with m.If(rfire):
            m.d.sync += [got.eq(Mux(is_last, 0, got + 1)), self.beats.eq(self.beats + 1)]
            with m.If(axi.rresp != RESP_OKAY):
                m.d.sync += self.error.eq(1)
        m.d.comb += [self.out.valid.eq(dq.r_rdy), dq.r_en.eq(self.out.ready),
                     self.out.payload.data.eq(dq.r_data[:self.data_width]),
                     self.out.payload.last.eq(dq.r_data[self.data_width])]
        return m


class AxiWriteMaster(wiring.Component):
    """Stream -> DDR burst writer.

    Ports: ``cmd`` (In {addr, beats}), ``data`` (In {data}: the command's beats in order),
    ``done`` (Out, one beat per command after its last B response), ``axi`` (AXI4 write manager),
    ``error`` (Out, sticky), ``beats`` (Out(32), beats written).
    ``data`` passes a skid buffer, so ``data.ready`` is a register (not ``wready``).
    """

    def __init__(self, addr_width: int = 40, data_width: int = 128, burst_len: int = 16,
                 max_outstanding: int = 4, len_bits: int = 24, id_width: int = 1):
        try:
            _check(addr_width, data_width, burst_len, max_outstanding)
        except ValueError:
            self._MustUse__silence = True
            raise
        self.addr_width, self.data_width, self.burst_len = addr_width, data_width, burst_len
        self.max_outstanding, self.len_bits, self.id_width = max_outstanding, len_bits, id_width
        super().__init__({
            "cmd": In(stream.Signature(data.StructLayout({"addr": unsigned(addr_width),
                                                          "beats": unsigned(len_bits)}))),
            "data": In(stream.Signature(data.StructLayout({"data": unsigned(data_width)}))),
            "done": Out(stream.Signature(unsigned(1))),
            "axi": Out(axi4_write_signature(addr_width, data_width, id_width)),
            "error": Out(1),
            "beats": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        axi = self.axi
        bl_bits = self.burst_len.bit_length()
        sp = _BurstSplitter(m, self.addr_width, self.data_width, self.burst_len, self.len_bits, "wr")
        # Per issued burst: its length (for W) and whether it ends a command (for B -> done).
        m.submodules.wq = wq = fifo.SyncFIFOBuffered(width=bl_bits, depth=self.max_outstanding)
        m.submodules.bq = bq = fifo.SyncFIFOBuffered(width=1, depth=self.max_outstanding)
        outstanding = Signal(range(self.max_outstanding + 1))  # bursts issued without a B response
        m.d.comb += self.cmd.ready.eq(~sp.active)
        with m.If(self.cmd.valid & self.cmd.ready):
            sp.load(m, self.cmd.payload.addr, self.cmd.payload.beats)
        issue = Signal()
        m.d.comb += [axi.awid.eq(0), axi.awsize.eq(sp.size), axi.awburst.eq(BURST_INCR),
                     axi.awcache.eq(0b0011), axi.awprot.eq(0),
                     issue.eq((~axi.awvalid | axi.awready) & sp.active & sp.fresh & wq.w_rdy & bq.w_rdy
                              & (outstanding < self.max_outstanding)),
                     wq.w_en.eq(issue), wq.w_data.eq(sp.burst), bq.w_en.eq(issue), bq.w_data.eq(sp.final)]
        with m.If(axi.awvalid & axi.awready):
            m.d.sync += axi.awvalid.eq(0)
        with m.If(issue):
            m.d.sync += [axi.awvalid.eq(1), axi.awaddr.eq(sp.addr), axi.awlen.eq(sp.burst - 1)]
            sp.advance(m)
        # W channel: beats of the head burst.
        m.submodules.skid = skid = SkidBuffer(self.data.payload.shape())
        wiring.connect(m, wiring.flipped(self.data), skid.inp)
        sent = Signal(bl_bits)
        wlast = Signal()
        m.d.comb += [wlast.eq(sent + 1 == wq.r_data),
                     axi.wvalid.eq(skid.out.valid & wq.r_rdy), axi.wdata.eq(skid.out.payload.data),
                     axi.wstrb.eq((1 << (self.data_width // 8)) - 1), axi.wlast.eq(wlast),
                     skid.out.ready.eq(axi.wready & wq.r_rdy)]
        wfire = Signal()
        m.d.comb += [wfire.eq(axi.wvalid & axi.wready), wq.r_en.eq(wfire & wlast)]
        with m.If(wfire):
            m.d.sync += [sent.eq(Mux(wlast, 0, sent + 1)), self.beats.eq(self.beats + 1)]
        # B channel.
        bfire = Signal()
        pending_done = Signal(16)  # commands finished and not yet taken from `done`
        m.d.comb += [axi.bready.eq(1), bfire.eq(axi.bvalid), bq.r_en.eq(bfire),
                     self.done.valid.eq(pending_done != 0), self.done.payload.eq(0)]
        with m.If(bfire & (axi.bresp != RESP_OKAY)):
            m.d.sync += self.error.eq(1)
        m.d.sync += [outstanding.eq(outstanding + issue - bfire),
                     pending_done.eq(pending_done + (bfire & bq.r_data) - (self.done.valid & self.done.ready))]
        return m


class AxiDma(wiring.Component):
    """One :class:`AxiReadMaster` and one :class:`AxiWriteMaster` side by side (two HP ports, or one
    port's read and write channels): ports ``rd_cmd``, ``rd_out``, ``rd_axi``, ``wr_cmd``,
    ``wr_data``, ``wr_done``, ``wr_axi``, ``error`` (either master's), ``rd_beats``, ``wr_beats``."""

    def __init__(self, addr_width: int = 40, data_width: int = 128, burst_len: int = 16,
                 max_outstanding: int = 4, len_bits: int = 24):
        self.params = dict(addr_width=addr_width, data_width=data_width, burst_len=burst_len,
                           max_outstanding=max_outstanding, len_bits=len_bits)
        rd, wr = AxiReadMaster(**self.params), AxiWriteMaster(**self.params)
        for blk in (rd, wr):  # signature donors only
            blk._MustUse__silence = True
        sig = {}
        for prefix, blk in (("rd", rd), ("wr", wr)):
            for name, member in blk.signature.members.items():
                if name in ("error", "beats"):
                    continue
                sig[f"{prefix}_{name}"] = member
        sig.update({"error": Out(1), "rd_beats": Out(32), "wr_beats": Out(32)})
        super().__init__(sig)

    def elaborate(self, platform):
        m = Module()
        m.submodules.rd = rd = AxiReadMaster(**self.params)
        m.submodules.wr = wr = AxiWriteMaster(**self.params)
        for prefix, blk in (("rd", rd), ("wr", wr)):
            for name in blk.signature.members:
                if name in ("error", "beats"):
                    continue
                wiring.connect(m, wiring.flipped(getattr(self, f"{prefix}_{name}")), getattr(blk, name))
        m.d.comb += [self.error.eq(rd.error | wr.error), self.rd_beats.eq(rd.beats), self.wr_beats.eq(wr.beats)]
        return m
