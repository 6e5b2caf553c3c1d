"""Host driver of the kv260 accelerator: loads an artifact's images into DDR, drives the register map
(regmap.py) and runs the program; the LM head runs here on the host (the ARM cores on the board).

One driver class, several transports (what moves registers and DDR bytes):

* :class:`PynqTransport` -- the board: ``pynq.Overlay`` (bitstream + .hwh), ``MMIO`` on the
  accelerator's AXI4-Lite window, one ``pynq.allocate`` CMA buffer as the DDR window. Written against
  the PYNQ 3.x API; it cannot run on this machine (no board), so it is untested here.
* :class:`ModelTransport` -- the functional executor behind the same register protocol: the
  sequencer's fetch (program read from the DDR window at PROG_ADDR) and the register semantics are
  modelled, the units by ``executor.Executor``. It checks the driver's protocol token-exactly.
* :class:`CocotbTransport` -- the generated top (hw/top.py) in Verilator under cocotb: cocotbext-axi
  ``AxiRam`` models on the HP ports sharing one memory as DDR, ``AxiLiteMaster`` on the register file.
  The driver (synchronous code) runs in a ``cocotb.task.bridge`` thread; every register/DDR access is a
  ``cocotb.task.resume`` call into the simulation (sim/cocotb_top.py), so the board's driver code is what
  runs the RTL.
"""

from __future__ import annotations

import time

import numpy as np

from . import regmap
from .build import FpgaArtifact, load_artifact
from .executor import Executor
from .isa import INSTR_BYTES, Flag, Opcode, Program

R = regmap.offsets()
ST = regmap.STATUS_BITS


class DriverError(RuntimeError):
    pass


class Transport:
    def write_reg(self, offset: int, value: int) -> None: ...
    def read_reg(self, offset: int) -> int: ...
    def write_ddr(self, offset: int, data: bytes) -> None: ...
    def read_ddr(self, offset: int, n: int) -> bytes: ...
    def ddr_physical_base(self) -> int: ...

    def idle(self) -> None:
        """Between two STATUS polls (the board: a short sleep; a simulation: some clock cycles)."""
        time.sleep(1e-4)


class PynqTransport(Transport):
    """The KV260 under PYNQ: ``bitfile`` is the .bit whose .hwh sits beside it with the same stem."""

    def __init__(self, bitfile: str, ddr_bytes: int, ip_name: str = "ternc_kv260_0"):
        from pathlib import Path

        from pynq import MMIO, Overlay, allocate

        hwh = Path(bitfile).with_suffix(".hwh")
        if not hwh.exists():
            raise DriverError(f"{hwh} missing: PYNQ needs the .hwh exported with the bitstream, same name")
        free = _cma_free_bytes()
        if free is not None and free < ddr_bytes:
            raise DriverError(f"the accelerator needs {ddr_bytes / 2**20:.0f} MiB of contiguous (CMA) memory but "
                              f"only {free / 2**20:.0f} MiB is free: raise cma= on the kernel command line")
        self.overlay = Overlay(str(bitfile))
        if ip_name not in self.overlay.ip_dict:
            raise DriverError(f"{bitfile}: no IP {ip_name!r} in the overlay (has {sorted(self.overlay.ip_dict)})")
        ip = self.overlay.ip_dict[ip_name]
        self.mmio = MMIO(ip["phys_addr"], ip["addr_range"])
        self.buf = allocate(shape=(ddr_bytes,), dtype=np.uint8)

    def write_reg(self, offset, value):
        self.mmio.write(offset, int(value) & 0xFFFFFFFF)

    def read_reg(self, offset):
        return int(self.mmio.read(offset))

    def write_ddr(self, offset, data):
        self.buf[offset:offset + len(data)] = np.frombuffer(data, np.uint8)
        self.buf.flush()

    def read_ddr(self, offset, n):
        self.buf.invalidate()
        return bytes(self.buf[offset:offset + n])

    def ddr_physical_base(self):
        return int(self.buf.physical_address)


def _cma_free_bytes() -> int | None:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("CmaFree:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class CocotbTransport(Transport):
    """The RTL top under cocotb (see module doc). ``axil``: a cocotbext-axi ``AxiLiteMaster`` on the
    register file; ``mem``: the bytearray the HP ports' ``AxiRam`` models share (they address it modulo
    its size, so DDR offset o is ``mem[o]`` when ``base`` is a multiple of its size); ``clk``: the clock
    signal (``idle`` waits ``poll_cycles`` of it; more than ``max_cycles`` of polling in all is a
    DriverError, a hung simulation's timeout). Only usable from a ``cocotb.bridge`` thread."""

    def __init__(self, axil, mem: bytearray, clk, base: int = 0x4000_0000, poll_cycles: int = 256,
                 max_cycles: int = 50_000_000):
        from cocotb.task import resume   # cocotb >= 2 (``cocotb.function`` before)
        from cocotb.triggers import ClockCycles

        if base % len(mem):
            raise DriverError(f"DDR base {base:#x} is not a multiple of the simulated DDR's {len(mem)} bytes")
        self.mem, self.base = mem, base
        self.poll_cycles, self.max_cycles, self.cycles = poll_cycles, max_cycles, 0

        async def write_reg(offset, value):
            await axil.write_dword(offset, int(value) & 0xFFFFFFFF)

        async def read_reg(offset):
            return int(await axil.read_dword(offset))

        async def idle():
            await ClockCycles(clk, poll_cycles)

        self._write_reg, self._read_reg = resume(write_reg), resume(read_reg)
        self._idle = resume(idle)

    def write_reg(self, offset, value):
        self._write_reg(offset, value)

    def read_reg(self, offset):
        return self._read_reg(offset)

    def write_ddr(self, offset, data):   # the simulator is paused while this thread runs
        if offset + len(data) > len(self.mem):
            raise DriverError(f"DDR write [{offset:#x}, +{len(data)}) outside the simulated {len(self.mem)} bytes")
        self.mem[offset:offset + len(data)] = data

    def read_ddr(self, offset, n):
        return bytes(self.mem[offset:offset + n])

    def ddr_physical_base(self):
        return self.base

    def idle(self):
        self.cycles += self.poll_cycles
        if self.cycles > self.max_cycles:
            raise DriverError(f"simulation: no STATUS done/error after {self.max_cycles} polled cycles")
        self._idle()


class ModelTransport(Transport):
    """Registers + DDR window backed by the functional executor (see module doc)."""

    def __init__(self, art: FpgaArtifact):
        self.art = art
        self.ex = Executor(Program([]), art.memmap, b"", b"", art.lm_head, art.engine, art.context)
        self.regs = {r.offset: r.reset for r in regmap.REGMAP.regs}

    def write_reg(self, offset, value):
        kind = {r.offset: r.kind for r in regmap.REGMAP.regs}.get(offset)
        if offset == R["CTRL"]:
            if value & 1:
                self._start()
            return
        if offset == R["CLEAR"]:
            if value & 1:
                self.regs[R["STATUS"]] = 0
            return
        if kind != "rw":
            raise DriverError(f"write to register at 0x{offset:x} ({kind}): not host-writable")
        self.regs[offset] = int(value) & 0xFFFFFFFF

    def read_reg(self, offset):
        return self.regs[offset]

    def write_ddr(self, offset, data):
        self.ex.ddr[offset:offset + len(data)] = np.frombuffer(data, np.uint8)

    def read_ddr(self, offset, n):
        return self.ex.ddr[offset:offset + n].tobytes()

    def ddr_physical_base(self):
        return 0x4000_0000   # any: the model addresses the window by offset

    def _start(self):
        prog_addr, n_instr = self.regs[R["PROG_ADDR"]], self.regs[R["PROG_LEN"]]
        prog = Program.decode(self.read_ddr(prog_addr, n_instr * INSTR_BYTES))   # the sequencer's fetch
        self.ex.n, self.ex.pos = self.regs[R["N_TOKENS"]], self.regs[R["TOKEN_POS"]]
        status = 0
        for pc, ins in enumerate(prog.instrs):
            self.regs[R["PC"]] = pc
            if ins.op == Opcode.END:
                status = 1 << ST["done"]
                break
            if ins.op == Opcode.LM_HEAD and ins.flags & Flag.HOST:
                status = 1 << ST["done"] | 1 << ST["host"]
                break
            self.ex.step(ins)
        self.regs[R["STATUS"]] = status


class KV260Driver:
    def __init__(self, artifact, transport: Transport | None = None, timeout_s: float = 60.0):
        self.art = artifact if isinstance(artifact, FpgaArtifact) else load_artifact(artifact)
        self.t = transport or ModelTransport(self.art)
        self.timeout_s = timeout_s
        self.regions = self.art.memmap["regions"]
        self.program = self.art.program
        self.loaded = False

    def load(self):
        if self.t.read_reg(R["ID"]) != regmap.ID_VALUE:
            raise DriverError(f"register ID reads 0x{self.t.read_reg(R['ID']):08x}, expected "
                              f"0x{regmap.ID_VALUE:08x}: wrong bitstream or IP address")
        for name, blob in (("program", self.program.encode()), ("consts", self.art.consts),
                           ("weights", self.art.weights)):
            self.t.write_ddr(self.regions[name]["addr"], blob)
        base = self.t.ddr_physical_base()
        self.t.write_reg(R["DDR_BASE_LO"], base & 0xFFFFFFFF)
        self.t.write_reg(R["DDR_BASE_HI"], base >> 32)
        self.t.write_reg(R["PROG_ADDR"], self.regions["program"]["addr"])
        self.t.write_reg(R["PROG_LEN"], len(self.program.instrs))
        self.loaded = True

    def run(self, ids, pos: int) -> np.ndarray:
        """One call (prefill of len(ids) tokens at position pos, or a decode step): logits [1, N, V]."""
        if not self.loaded:
            self.load()
        ids = np.asarray(ids, np.int64).reshape(-1)
        if pos + ids.size > self.art.context:
            raise DriverError(f"{ids.size} tokens at position {pos} exceed the compiled context {self.art.context}")
        self.t.write_ddr(self.regions["ids"]["addr"], ids.astype("<i4").tobytes())
        self.t.write_reg(R["N_TOKENS"], ids.size)
        self.t.write_reg(R["TOKEN_POS"], pos)
        self.t.write_reg(R["CLEAR"], 1)
        self.t.write_reg(R["CTRL"], 1)
        t0 = time.time()
        while True:
            st = self.t.read_reg(R["STATUS"])
            if st & (1 << ST["error"]):
                raise DriverError(f"accelerator error {self.t.read_reg(R['ERROR_CODE'])} at instruction "
                                  f"{self.t.read_reg(R['PC'])}")
            if st & (1 << ST["done"]):
                break
            if time.time() - t0 > self.timeout_s:
                raise DriverError(f"accelerator did not finish in {self.timeout_s}s (PC {self.t.read_reg(R['PC'])})")
            self.t.idle()
        if not st & (1 << ST["host"]):
            raise DriverError("program ended without handing the LM head to the host")
        ins = self.program.instrs[self.t.read_reg(R["PC"])]
        w = ins["width"]
        raw = np.frombuffer(self.t.read_ddr(ins["src"], 4 * w * ids.size), "<i4").reshape(1, ids.size, w)
        from ...ir import hw_numerics as hn

        return np.matmul(hn.from_fx(raw), self.art.lm_head.T)   # the IR's LM head Linear, on the host

    def counters(self) -> dict:
        """The performance counters (PERF_* registers; since the last CLEAR, i.e. of the last call)."""
        return {c: self.t.read_reg(R[f"PERF_{c}"]) for c in regmap.COUNTERS}

    def generate(self, prompt_ids, max_new_tokens: int):
        ids = [int(i) for i in np.asarray(prompt_ids).reshape(-1)]
        logits = [self.run(ids, 0)]
        for i in range(max_new_tokens):
            ids.append(int(np.argmax(logits[-1][0, -1])))
            if i < max_new_tokens - 1:
                logits.append(self.run([ids[-1]], len(ids) - 1))
        return ids, logits
