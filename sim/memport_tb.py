"""DDR behind hw/ports.py's read/write ports in Amaranth's simulator (random valid/ready), for the
per-opcode controller benches: ``mem`` is a numpy uint8 array (e.g. ``Executor.ddr.copy()``).

Usage (in a testbench, one ``add_process`` per port, plus the control process)::

    sim.add_process(serve_reads(dut.rd0, mem, random.Random(1), p=0.8))
    sim.add_process(serve_writes(dut.wr, mem, random.Random(2), p=0.8))
    sim.add_testbench(run_instr(dut.ctl, instr, n_tokens, pos, result))

``serve_*`` are endless daemons; the control testbench ends the simulation. The read server answers a
command after a random latency (``latency`` cycles plus jitter) and checks alignment and bounds (an
out-of-range access fails the test with the address), so controllers are held to the contract.
"""

from __future__ import annotations

import random

import numpy as np

from ternc.hw.ports import BEAT_BYTES


class PortError(AssertionError):
    pass


def _check(mem: np.ndarray, addr: int, beats: int, what: str) -> None:
    if addr % BEAT_BYTES:
        raise PortError(f"{what}: address {addr:#x} not aligned to {BEAT_BYTES} bytes")
    if beats < 1:
        raise PortError(f"{what}: command of {beats} beats at {addr:#x}")
    if addr + beats * BEAT_BYTES > mem.size:
        raise PortError(f"{what}: [{addr:#x}, +{beats * BEAT_BYTES}) outside the {mem.size}-byte DDR")


def serve_reads(port, mem: np.ndarray, rng: random.Random, p: float = 1.0, latency: int = 4, log: list | None = None):
    """Daemon process: answer ``port.cmd`` with beats on ``port.data`` (``log`` gets (addr, beats))."""

    async def proc(ctx):
        pending: list[tuple[int, int]] = []
        cur = None   # [addr, beats left, wait]
        while True:
            ctx.set(port.cmd.ready, int(rng.random() < p))
            if cur is None and pending:
                a, b = pending.pop(0)
                cur = [a, b, latency + rng.randrange(3)]
            send = cur is not None and cur[2] == 0 and rng.random() < p
            if send:
                a = cur[0]
                ctx.set(port.data.payload.data, int.from_bytes(mem[a:a + BEAT_BYTES].tobytes(), "little"))
                ctx.set(port.data.payload.last, int(cur[1] == 1))
            ctx.set(port.data.valid, int(send))
            _, _, cvalid, cready, cpay, dready = await ctx.tick().sample(
                port.cmd.valid, port.cmd.ready, port.cmd.payload, port.data.ready)
            if cvalid and cready:
                addr, beats = int(cpay.addr), int(cpay.beats)
                _check(mem, addr, beats, "read")
                if log is not None:
                    log.append((addr, beats))
                pending.append((addr, beats))
            if cur is not None:
                if cur[2] > 0:
                    cur[2] -= 1
                elif send and dready:
                    cur[0] += BEAT_BYTES
                    cur[1] -= 1
                    if cur[1] == 0:
                        cur = None

    return proc


def serve_writes(port, mem: np.ndarray, rng: random.Random, p: float = 1.0, log: list | None = None):
    """Daemon process: accept ``port.cmd`` + ``port.data`` into ``mem``; one ``done`` beat per command."""

    async def proc(ctx):
        cmds: list[list[int]] = []   # [addr, beats left, cmd beats]
        dones = 0
        while True:
            ctx.set(port.cmd.ready, int(rng.random() < p))
            ctx.set(port.data.ready, int(bool(cmds) and rng.random() < p))
            ctx.set(port.done.valid, int(dones > 0))
            ctx.set(port.done.payload, 1)
            _, _, cvalid, cready, cpay, dvalid, dready, dpay, okv, okr = await ctx.tick().sample(
                port.cmd.valid, port.cmd.ready, port.cmd.payload, port.data.valid, port.data.ready,
                port.data.payload, port.done.valid, port.done.ready)
            if okv and okr:
                dones -= 1
            if dvalid and dready:
                c = cmds[0]
                v = int(dpay.data)
                mem[c[0]:c[0] + BEAT_BYTES] = np.frombuffer(v.to_bytes(BEAT_BYTES, "little"), np.uint8)
                c[0] += BEAT_BYTES
                c[1] -= 1
                if c[1] == 0:
                    cmds.pop(0)
                    dones += 1
            if cvalid and cready:
                addr, beats = int(cpay.addr), int(cpay.beats)
                _check(mem, addr, beats, "write")
                if log is not None:
                    log.append((addr, beats))
                cmds.append([addr, beats, beats])

    return proc


def run_instr(ctl, words: list[int], n_tokens: int, pos: int, result: dict, timeout: int = 2_000_000):
    """Testbench: pulse ``start`` with the instruction, wait for ``busy`` to fall; ``result`` gets
    ``cycles`` (start to idle) and ``error``."""

    async def tb(ctx):
        for i, w in enumerate(words):
            ctx.set(ctl.instr[i], w)
        ctx.set(ctl.n_tokens, n_tokens)
        ctx.set(ctl.pos, pos)
        ctx.set(ctl.start, 1)
        await ctx.tick()
        ctx.set(ctl.start, 0)
        cycles = 1
        while True:
            _, _, busy, err = await ctx.tick().sample(ctl.busy, ctl.error)
            cycles += 1
            if not busy:
                break
            if cycles > timeout:
                raise TimeoutError(f"controller still busy after {timeout} cycles")
        result["cycles"], result["error"] = cycles, int(err)

    return tb
