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
  runs the RTL. The deploy bundle's ``run.py --transport rtl`` reaches it through :func:`open_transport`.

The LM head (``LM_HEAD`` with the HOST flag) runs on the host through ``lm_head``: numpy by default
(exactly the IR's Linear), or the deploy bundle's TVM aarch64 GEMV kernel (``lm_head.TvmLmHead``).
Imports: numpy, the ISA and the executor (runtime.py) only, so the deploy bundle runs it on the board.
"""

from __future__ import annotations

import time

import numpy as np

from . import regmap
from .runtime import FpgaArtifact, load_artifact
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

    def __init__(self, bitfile: str, ddr_bytes: int, ctrl_addr: int = 0xA000_0000, ctrl_range: int = 0x1_0000,
                 ip_name: str | None = None):
        from pathlib import Path

        bit = Path(bitfile)
        if not bit.is_file():
            raise DriverError(f"{bit}: no bitstream (build it from the bundle's hw/ with Vivado: hw/BOARD.md)")
        hwh = bit.with_suffix(".hwh")
        if not hwh.exists():
            raise DriverError(f"{hwh} missing: PYNQ needs the .hwh exported with the bitstream, same name "
                              f"({bit.stem}.hwh beside {bit.name})")
        check_cma(ddr_bytes)
        from pynq import MMIO, Overlay, allocate

        self.overlay = Overlay(str(bit))
        if ip_name is not None:
            if ip_name not in self.overlay.ip_dict:
                raise DriverError(f"{bit}: no IP {ip_name!r} in the overlay (has {sorted(self.overlay.ip_dict)})")
            ctrl_addr, ctrl_range = self.overlay.ip_dict[ip_name]["phys_addr"], self.overlay.ip_dict[ip_name]["addr_range"]
        # the generated block design puts the register file at a fixed address (hw/BOARD.md, vivado/ps_bd.tcl)
        self.mmio = MMIO(ctrl_addr, ctrl_range)
        try:
            self.buf = allocate(shape=(ddr_bytes,), dtype=np.uint8)
        except Exception as e:   # pynq raises RuntimeError/MemoryError variants when CMA is exhausted
            raise DriverError(f"pynq.allocate of the {ddr_bytes:,}-byte DDR window failed ({e}); "
                              + cma_message(ddr_bytes, cma_free_bytes())) from e

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


def cma_free_bytes(meminfo: str = "/proc/meminfo") -> int | None:
    """CmaFree of /proc/meminfo in bytes (None where the kernel does not report it)."""
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("CmaFree:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def cma_message(needed: int, free: int | None) -> str:
    have = "CmaFree is not reported" if free is None else f"only {free:,} bytes ({free / 2**20:.1f} MiB) are free"
    return (f"the accelerator's DDR window needs {needed:,} bytes ({needed / 2**20:.1f} MiB) of contiguous (CMA) "
            f"memory but {have}: raise the CMA pool (kernel command line cma=, e.g. cma=1024M on the KV260's "
            f"PYNQ image: hw/BOARD.md), free buffers held by other overlays, or compile with a shorter context")


def check_cma(needed: int, meminfo: str = "/proc/meminfo") -> int | None:
    """Refuse before pynq.allocate when CmaFree is below the artifact's DDR window; returns CmaFree."""
    free = cma_free_bytes(meminfo)
    if free is not None and free < needed:
        raise DriverError(cma_message(needed, free))
    return free


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
        self.regs = dict(regmap.resets())

    def write_reg(self, offset, value):
        kind = regmap.kinds().get(offset)
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
    def __init__(self, artifact, transport: Transport | None = None, timeout_s: float = 60.0, lm_head=None):
        self.art = artifact if isinstance(artifact, FpgaArtifact) else load_artifact(artifact)
        self.t = transport or ModelTransport(self.art)
        # (x [N, hidden] f64 FX values) -> logits [N, vocab]: numpy = the IR's Linear exactly
        self.lm_head = lm_head or (lambda x: np.matmul(x, self.art.lm_head.T))
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

        return np.asarray(self.lm_head(hn.from_fx(raw)[0]))[None]   # the IR's LM head Linear, on the host

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


TRANSPORTS = ("pynq", "model", "rtl")


def open_transport(kind: str, art: FpgaArtifact, bitfile: str | None = None) -> Transport:
    """The transport by name: "pynq" (the board: `bitfile` with its .hwh beside it), "model" (the
    functional executor behind the register protocol) or "rtl" (cocotb/Verilator over the generated
    top, where this ternc has it)."""
    if kind == "model":
        return ModelTransport(art)
    if kind == "pynq":
        if bitfile is None:
            raise DriverError("--transport pynq needs the bitstream (--bitfile BIT; its .hwh beside it, same stem)")
        return PynqTransport(bitfile, int(art.memmap["total_bytes"]))
    if kind == "rtl":   # the driver runs inside the simulation (sim/cocotb_top.py builds the CocotbTransport)
        raise DriverError("the rtl transport is opened by the cocotb bench, not here: use "
                          "board_runner.BoardRunner(transport='rtl') (a bundle's `run.py --transport rtl`) or "
                          "`ternc simulate ART --rtl`")
    raise DriverError(f"unknown transport {kind!r}; transports: {', '.join(TRANSPORTS)}")
