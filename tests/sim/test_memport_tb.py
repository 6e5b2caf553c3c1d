"""sim/memport_tb.py serves hw/ports.py's contract: a minimal copy controller moves 10 beats under random
valid/ready and the memory ends exactly as a numpy copy would leave it."""
import random, numpy as np
from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator
from ternc.hw.ports import read_port_signature, write_port_signature, op_control_signature
from ternc.sim.memport_tb import serve_reads, serve_writes, run_instr

class Copy(wiring.Component):
    def __init__(self):
        super().__init__({"ctl": Out(op_control_signature()), "rd": Out(read_port_signature()), "wr": Out(write_port_signature())})
    def elaborate(self, p):
        m = Module()
        c = self.ctl
        src, dst, n = c.instr[1], c.instr[2], c.instr[3]
        issued = Signal(); wissued = Signal(); 
        with m.FSM():
            with m.State("IDLE"):
                with m.If(c.start):
                    m.d.sync += c.busy.eq(1)
                    m.next = "CMD"
            with m.State("CMD"):
                m.d.comb += [self.rd.cmd.valid.eq(~issued), self.rd.cmd.payload.addr.eq(src), self.rd.cmd.payload.beats.eq(n),
                             self.wr.cmd.valid.eq(~wissued), self.wr.cmd.payload.addr.eq(dst), self.wr.cmd.payload.beats.eq(n)]
                with m.If(self.rd.cmd.ready): m.d.sync += issued.eq(1)
                with m.If(self.wr.cmd.ready): m.d.sync += wissued.eq(1)
                m.d.comb += [self.wr.data.valid.eq(self.rd.data.valid), self.wr.data.payload.data.eq(self.rd.data.payload.data),
                             self.rd.data.ready.eq(self.wr.data.ready)]
                m.d.comb += self.wr.done.ready.eq(1)
                with m.If(self.wr.done.valid):
                    m.d.sync += [c.busy.eq(0), issued.eq(0), wissued.eq(0)]
                    m.next = "IDLE"
        return m

def test_copy_controller_through_memport_models():
    dut = Copy()
    mem = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)
    ref = mem.copy(); ref[1024:1024+160] = ref[64:64+160]
    sim = Simulator(dut); sim.add_clock(1e-8)
    sim.add_process(serve_reads(dut.rd, mem, random.Random(1), 0.7))
    sim.add_process(serve_writes(dut.wr, mem, random.Random(2), 0.7))
    res = {}
    sim.add_testbench(run_instr(dut.ctl, [0, 64, 1024, 10, 0,0,0,0], 1, 0, res))
    sim.run()
    assert res["error"] == 0 and 10 < res["cycles"] < 500
    assert (mem == ref).all()
