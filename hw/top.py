"""The accelerator top: AXI4-Lite register file + sequencer + per-opcode controllers + AXI4 DMA.

Block structure (one instruction at a time; hw/ports.py is the sequencer <-> controller contract)::

    host (AXI4-Lite) --> AxiLiteRegFile --CTRL/regs--> sequencer --start/instr--> controller[opcode]
                                                          |   fetch (2 beats)        | rd0 rd1 rd2 wr
                                                          v                          v
                          hp0_rd_axi <- AxiReadMaster <-- port mux (route) <--------+
                          hp1_rd_axi <- AxiReadMaster <--/                           |
                          hp2_rd_axi <- AxiReadMaster <-/                            |
                          hp0_wr_axi <- AxiWriteMaster <-----------------------------+

On a CTRL pulse the sequencer checks ``TOKEN_POS + N_TOKENS <= context`` (else ERROR_CODE 4), then
from PC 0: fetches instruction PC (32 bytes = 2 beats at ``DDR_BASE + PROG_ADDR + 32 PC`` over HP0's
read master), decodes word 0 (opcode | epilogue << 8 | flags << 16), and either stops (END: STATUS.done;
``host_opcode`` with ``host_flag``: STATUS.done + STATUS.host, PC left on it so the host reads its
operands), or hands the words to the controller of that opcode (the ``units`` table) and routes that
controller's ``rd0..rd2``/``wr`` to the HP masters (adding DDR_BASE), until its ``busy`` falls. Faults
stop the run with STATUS.error and ERROR_CODE (the ERR_* constants); PC stays on the instruction.

The register file is generated from a :class:`hw.regfile.RegMap` passed in (backends/fpga/regmap.py
builds the accelerator's; hw/ does not import backends/). It must have the registers this module
drives or reads: CTRL, CLEAR, STATUS (fields busy/done/error/host), TOKEN_POS, N_TOKENS,
DDR_BASE_LO/HI, PROG_ADDR, PROG_LEN, PC, ERROR_CODE and ``PERF_<name>`` for every counter named in
``units`` plus CYCLES, RD_BEATS, WR_BEATS, INSTRS. Counters (32-bit, wrap) are cleared by CLEAR:
CYCLES counts cycles of a run (CTRL to stop), each unit counter the cycles its controllers are busy
(dispatch to ``busy`` falling), RD_BEATS/WR_BEATS the DDR beats moved (fetch included), INSTRS the
instructions decoded.

AXI master ports are ``hp{i}_rd_axi`` and ``hp0_wr_axi`` (hw/axi.py signatures), so the Verilog has
``hp0_rd_axi__araddr`` ... and cocotbext-axi binds with ``AxiReadBus.from_prefix(dut, "hp0_rd_axi_")``.
"""

from __future__ import annotations

from amaranth import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .axi import AxiReadMaster, AxiWriteMaster, axi4_read_signature, axi4_write_signature
from .ports import BEAT_BITS, INSTR_WORDS
from .regfile import AxiLiteRegFile, RegMap, axi4_lite_signature

__all__ = ["Accelerator", "ERR_BAD_OPCODE", "ERR_WINDOW", "ERR_AXI", "ERR_CONTEXT", "ERR_UNIT"]

ERR_BAD_OPCODE = 1   # unknown opcode, an opcode this build has no controller for, or PC ran past PROG_LEN
ERR_WINDOW = 2       # (reserved: address outside the DDR window; not checked in RTL)
ERR_AXI = 3          # an AXI response other than OKAY on any HP port
ERR_CONTEXT = 4      # TOKEN_POS + N_TOKENS > context, or N_TOKENS = 0
ERR_UNIT = 5         # the controller reported a fault (e.g. EMBED: token id out of range)

HP_READ_PORTS = 3
BASE_COUNTERS = ("CYCLES", "RD_BEATS", "WR_BEATS", "INSTRS")


class Accelerator(wiring.Component):
    """``units``: ``{opcode: (counter, controller)}`` -- ``counter`` is the PERF_ counter name
    (without the prefix, e.g. ``"CYC_LINEAR"``) that counts the controller's busy cycles; one
    controller instance may serve several opcodes only if it is listed once per opcode (each entry is
    its own instance here). ``context``: the KV cache's positions (the TOKEN_POS + N_TOKENS check).
    ``end_opcode``, ``host_opcode``/``host_flag``: the stopping instructions (isa.py's END and
    LM_HEAD with flag HOST)."""

    def __init__(self, regmap: RegMap, units: dict, *, context: int, end_opcode: int = 0x0F,
                 host_opcode: int = 0x06, host_flag: int = 1, addr_width: int = 40, burst_len: int = 16,
                 max_outstanding: int = 4):
        self.regmap, self.context = regmap, context
        self.end_opcode, self.host_opcode, self.host_flag = end_opcode, host_opcode, host_flag
        self.addr_width, self.burst_len, self.max_outstanding = addr_width, burst_len, max_outstanding
        self.units = dict(sorted(units.items()))
        names = {r.name for r in regmap.regs}
        need = {"CTRL", "CLEAR", "STATUS", "TOKEN_POS", "N_TOKENS", "DDR_BASE_LO", "DDR_BASE_HI", "PROG_ADDR",
                "PROG_LEN", "PC", "ERROR_CODE"} | {f"PERF_{c}" for c in BASE_COUNTERS}
        need |= {f"PERF_{cnt}" for cnt, _ in self.units.values()}
        missing = sorted(need - names)
        bad = [hex(op) for op in self.units if not 0 <= op < 256 or op in (end_opcode, host_opcode)]
        for op, (_, ctl) in self.units.items():
            if getattr(ctl, "READ_PORTS", None) not in range(HP_READ_PORTS + 1):
                bad.append(f"{op:#x}: {type(ctl).__name__}.READ_PORTS must be 0..{HP_READ_PORTS}")
        if missing or bad or not 0 < context < 1 << 16:
            self._MustUse__silence = True
            raise ValueError(f"Accelerator: regmap {regmap.name} lacks {missing}; bad units {bad}; "
                             f"context {context} (1 .. 65535)")
        self.counters = list(dict.fromkeys(list(BASE_COUNTERS) + [c for c, _ in self.units.values()]))
        self.regfile = AxiLiteRegFile(regmap)
        sig = {"axil": In(axi4_lite_signature(self.regfile.addr_width))}
        for i in range(HP_READ_PORTS):
            sig[f"hp{i}_rd_axi"] = Out(axi4_read_signature(addr_width, BEAT_BITS))
        sig["hp0_wr_axi"] = Out(axi4_write_signature(addr_width, BEAT_BITS))
        super().__init__(sig)

    def elaborate(self, platform):
        m = Module()
        m.submodules.regs = rf = self.regfile
        wiring.connect(m, wiring.flipped(self.axil), rf.axil)
        dma = dict(addr_width=self.addr_width, data_width=BEAT_BITS, burst_len=self.burst_len,
                   max_outstanding=self.max_outstanding)
        rdm = []
        for i in range(HP_READ_PORTS):
            rdm.append(AxiReadMaster(**dma))
            m.submodules[f"hp{i}_rd"] = rdm[-1]
            wiring.connect(m, rdm[-1].axi, wiring.flipped(getattr(self, f"hp{i}_rd_axi")))
        m.submodules.hp0_wr = wrm = AxiWriteMaster(**dma)
        wiring.connect(m, wrm.axi, wiring.flipped(self.hp0_wr_axi))
        units = list(self.units.items())
        for op, (_, ctl) in units:
            m.submodules[f"ctl_{op:02x}"] = ctl

        base = Signal(self.addr_width)
        m.d.comb += base.eq(Cat(rf.ddr_base_lo, rf.ddr_base_hi))

        # ---- sequencer state ---------------------------------------------------------------------
        instr = [Signal(32, name=f"instr{i}") for i in range(INSTR_WORDS)]
        n_tokens, pos = Signal(16), Signal(16)
        pc = Signal(32)
        err_code = Signal(8)
        st_busy, st_done, st_error, st_host = Signal(), Signal(), Signal(), Signal()
        route = Signal(range(len(units) + 2))     # 0: idle, 1: fetch, k + 2: unit k
        axi_error = Signal()
        m.d.comb += axi_error.eq(wrm.error | Cat(r.error for r in rdm).any())
        fields = self.regmap.reg("STATUS").fields
        status = Signal(32)
        m.d.comb += status.eq(0)
        for name, sig in (("busy", st_busy), ("done", st_done), ("error", st_error), ("host", st_host)):
            m.d.comb += status[fields[name][0]].eq(sig)
        m.d.comb += [rf.status.eq(status), rf.pc.eq(pc), rf.error_code.eq(err_code)]
        for op, (_, ctl) in units:
            m.d.comb += [ctl.ctl.n_tokens.eq(n_tokens), ctl.ctl.pos.eq(pos)]
            for i in range(INSTR_WORDS):
                m.d.comb += ctl.ctl.instr[i].eq(instr[i])

        # ---- port mux: the routed source drives each DMA master -----------------------------------
        fetch_cmd_valid, fetch_cmd_ready, fetch_addr = Signal(), Signal(), Signal(32)
        fetch_data_ready = Signal()
        with m.Switch(route):
            with m.Case(1):
                m.d.comb += [rdm[0].cmd.valid.eq(fetch_cmd_valid), rdm[0].cmd.payload.addr.eq(base + fetch_addr),
                             rdm[0].cmd.payload.beats.eq(2), fetch_cmd_ready.eq(rdm[0].cmd.ready),
                             rdm[0].out.ready.eq(fetch_data_ready)]
            for k, (op, (_, ctl)) in enumerate(units):
                with m.Case(k + 2):
                    for p in range(ctl.READ_PORTS):
                        port, mst = getattr(ctl, f"rd{p}"), rdm[p]
                        m.d.comb += [mst.cmd.valid.eq(port.cmd.valid),
                                     mst.cmd.payload.addr.eq(base + port.cmd.payload.addr),
                                     mst.cmd.payload.beats.eq(port.cmd.payload.beats),
                                     port.cmd.ready.eq(mst.cmd.ready),
                                     port.data.valid.eq(mst.out.valid),
                                     port.data.payload.data.eq(mst.out.payload.data),
                                     port.data.payload.last.eq(mst.out.payload.last),
                                     mst.out.ready.eq(port.data.ready)]
                    if hasattr(ctl, "wr"):
                        w = ctl.wr
                        m.d.comb += [wrm.cmd.valid.eq(w.cmd.valid), wrm.cmd.payload.addr.eq(base + w.cmd.payload.addr),
                                     wrm.cmd.payload.beats.eq(w.cmd.payload.beats), w.cmd.ready.eq(wrm.cmd.ready),
                                     wrm.data.valid.eq(w.data.valid), wrm.data.payload.data.eq(w.data.payload.data),
                                     w.data.ready.eq(wrm.data.ready),
                                     w.done.valid.eq(wrm.done.valid), wrm.done.ready.eq(w.done.ready)]

        # ---- counters -----------------------------------------------------------------------------
        cnt = {c: Signal(32, name=f"perf_{c.lower()}") for c in self.counters}
        for c, s in cnt.items():
            m.d.comb += getattr(rf, f"perf_{c.lower()}").eq(s)
        inc = {c: Signal(name=f"inc_{c.lower()}") for c in self.counters}
        rd_fires = Signal(range(HP_READ_PORTS + 1))
        m.d.comb += rd_fires.eq(sum((r.out.valid & r.out.ready for r in rdm), start=0))
        wr_fire = Signal()
        m.d.comb += wr_fire.eq(self.hp0_wr_axi.wvalid & self.hp0_wr_axi.wready)
        with m.If(rf.clear):
            m.d.sync += [s.eq(0) for s in cnt.values()]
        with m.Else():
            for c, s in cnt.items():
                if c == "RD_BEATS":
                    m.d.sync += s.eq(s + rd_fires)
                elif c == "WR_BEATS":
                    m.d.sync += s.eq(s + wr_fire)
                else:
                    m.d.sync += s.eq(s + inc[c])
        unit_active = Signal()

        # ---- sequencer ----------------------------------------------------------------------------
        opcode = instr[0][:8]
        flags = instr[0][16:]
        with m.If(rf.clear):
            m.d.sync += [st_done.eq(0), st_error.eq(0), st_host.eq(0), err_code.eq(0)]
        m.d.comb += inc["CYCLES"].eq(st_busy)

        def fail(code):
            m.d.sync += [st_busy.eq(0), st_error.eq(1), err_code.eq(code), route.eq(0)]
            m.next = "IDLE"

        with m.FSM(name="seq"):
            with m.State("IDLE"):
                with m.If(rf.ctrl):
                    m.d.sync += [n_tokens.eq(rf.n_tokens), pos.eq(rf.token_pos), pc.eq(0), st_busy.eq(1),
                                 st_done.eq(0), st_error.eq(0), st_host.eq(0), err_code.eq(0)]
                    with m.If((rf.n_tokens == 0) | (rf.n_tokens + rf.token_pos > self.context)):
                        fail(ERR_CONTEXT)
                    with m.Else():
                        m.next = "FETCH"
            with m.State("FETCH"):
                with m.If(pc >= rf.prog_len):
                    fail(ERR_BAD_OPCODE)
                with m.Elif(axi_error):
                    fail(ERR_AXI)
                with m.Else():
                    m.d.sync += route.eq(1)
                    m.next = "FETCH_CMD"
            with m.State("FETCH_CMD"):
                m.d.comb += [fetch_cmd_valid.eq(1), fetch_addr.eq(rf.prog_addr + (pc << 5))]
                with m.If(fetch_cmd_ready):
                    m.next = "FETCH_D0"
            with m.State("FETCH_D0"):
                m.d.comb += fetch_data_ready.eq(1)
                with m.If(rdm[0].out.valid):
                    m.d.sync += [instr[i].eq(rdm[0].out.payload.data[32 * i:32 * i + 32]) for i in range(4)]
                    m.next = "FETCH_D1"
            with m.State("FETCH_D1"):
                m.d.comb += fetch_data_ready.eq(1)
                with m.If(rdm[0].out.valid):
                    m.d.sync += [instr[4 + i].eq(rdm[0].out.payload.data[32 * i:32 * i + 32]) for i in range(4)]
                    m.d.sync += route.eq(0)
                    m.next = "DECODE"
            with m.State("DECODE"):
                m.d.comb += inc["INSTRS"].eq(1)
                with m.If(axi_error):
                    fail(ERR_AXI)
                with m.Elif(opcode == self.end_opcode):
                    m.d.sync += [st_busy.eq(0), st_done.eq(1)]
                    m.next = "IDLE"
                with m.Elif((opcode == self.host_opcode) & (flags & self.host_flag).any()):
                    m.d.sync += [st_busy.eq(0), st_done.eq(1), st_host.eq(1)]
                    m.next = "IDLE"
                for k, (op, _) in enumerate(units):
                    with m.Elif(opcode == op):
                        m.d.sync += route.eq(k + 2)
                        m.next = "START"
                with m.Else():
                    fail(ERR_BAD_OPCODE)
            with m.State("START"):
                with m.Switch(route):
                    for k, (_, (_, ctl)) in enumerate(units):
                        with m.Case(k + 2):
                            m.d.comb += ctl.ctl.start.eq(1)
                m.d.comb += unit_active.eq(1)
                m.next = "SETTLE"          # busy rises the cycle after start
            with m.State("SETTLE"):
                m.d.comb += unit_active.eq(1)
                m.next = "WAIT"
            with m.State("WAIT"):
                m.d.comb += unit_active.eq(1)
                busy, error = Signal(), Signal()
                with m.Switch(route):
                    for k, (_, (_, ctl)) in enumerate(units):
                        with m.Case(k + 2):
                            m.d.comb += [busy.eq(ctl.ctl.busy), error.eq(ctl.ctl.error)]
                with m.If(~busy):
                    with m.If(error):
                        fail(ERR_UNIT)
                    with m.Elif(axi_error):
                        fail(ERR_AXI)
                    with m.Else():
                        m.d.sync += [pc.eq(pc + 1), route.eq(0)]
                        m.next = "FETCH"
        for k, (_, (c, _)) in enumerate(units):
            with m.If(unit_active & (route == k + 2)):
                m.d.comb += inc[c].eq(1)
        return m
