"""cocotb bench of :class:`ternc.hw.axi.AxiDma` (burst read + write masters) against cocotbext-axi's
AxiRam, and of :class:`ternc.hw.regfile.AxiLiteRegFile` through cocotbext-axi's AxiLiteMaster.

Env (set by sim/rtl.py): AXI_DW (data width), AXI_SEED, AXI_PAUSE (probability that a channel of the
RAM / the AXI-Lite master pauses in a cycle), AXI_P (valid/ready probability of the bench's own
stream ends), BENCH_OUT (JSON results), REGMAP_JSON (the register map, for the regfile bench).
"""

from __future__ import annotations

import itertools
import json
import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

from ternc.sim.cocotb_tlmm import Cycle, sink, source


def _env():
    e = os.environ
    return dict(dw=int(e.get("AXI_DW", 64)), seed=int(e.get("AXI_SEED", 1)),
                pause=float(e.get("AXI_PAUSE", 0.0)), p=float(e.get("AXI_P", 1.0)),
                out=e.get("BENCH_OUT"), regmap=e.get("REGMAP_JSON"))


def _write(cfg, res):
    if cfg["out"]:
        prev = json.load(open(cfg["out"])) if os.path.exists(cfg["out"]) else []
        prev.append(res)
        with open(cfg["out"], "w") as f:
            json.dump(prev, f, indent=1)


def _pauser(rng: random.Random, p: float):
    while True:
        yield int(rng.random() < p)


async def _reset(dut):
    Clock(dut.clk, 10, unit="ns").start()
    dut.rst.value = 1
    for _ in range(3):
        await RisingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.rst.value = 0


class _ArMonitor:
    """Records (cycle, addr, len) of every AR/AW handshake and the peak number of bursts in flight."""

    def __init__(self, dut, ch: str, cyc: Cycle):
        self.dut, self.ch, self.cyc = dut, ch, cyc
        self.bursts: list[tuple[int, int, int]] = []
        self.peak = 0

    async def run(self, data_done_signal):
        d = self.dut
        p = "rd_axi__ar" if self.ch == "ar" else "wr_axi__aw"
        valid, ready = getattr(d, p + "valid"), getattr(d, p + "ready")
        addr, ln = getattr(d, p + "addr"), getattr(d, p + "len")
        inflight = 0
        while True:
            await RisingEdge(d.clk)
            await ReadOnly()
            if int(valid.value) and int(ready.value):
                self.bursts.append((self.cyc.n, int(addr.value), int(ln.value)))
                inflight += 1
            if data_done_signal():
                inflight -= 1
            self.peak = max(self.peak, inflight)


def _split_ok(bursts, nbytes, max_len=16):
    for _, addr, ln in bursts:
        beats = ln + 1
        if beats > max_len or addr // 4096 != (addr + beats * nbytes - 1) // 4096 or addr % nbytes:
            return False
    return True


@cocotb.test()
async def test_dma_copy(dut):
    """Read regions (lengths 1..100 beats, unaligned to bursts, across 4 KiB) through the read
    master, hand the beats to the write master (random stalls on both streams and on every AXI
    channel), and check the data, the `last` flags, the bursts and the copies in the RAM."""
    from cocotbext.axi import AxiBus, AxiRam, AxiReadBus, AxiWriteBus

    cfg = _env()
    nb = cfg["dw"] // 8
    rng = random.Random(cfg["seed"])
    await _reset(dut)
    ram = AxiRam(AxiBus(AxiWriteBus.from_prefix(dut, "wr_axi_"), AxiReadBus.from_prefix(dut, "rd_axi_")),
                 dut.clk, dut.rst, size=1 << 20)
    if cfg["pause"] > 0:
        for ch in (ram.read_if.ar_channel, ram.read_if.r_channel, ram.write_if.aw_channel,
                   ram.write_if.w_channel, ram.write_if.b_channel):
            ch.set_pause_generator(_pauser(random.Random(rng.random()), cfg["pause"]))
    src = bytes(rng.randrange(256) for _ in range(1 << 16))
    ram.write(0, src)
    lengths = [1, 15, 16, 17, 33, 100, 2, 64]
    starts = [0, 3, 4096 // nb - 5, 17, 250, 4096 // nb - 1, 1000, 1]
    cmds_r, cmds_w, expect = [], [], []
    dst0 = 1 << 18
    dst = dst0
    for ln, st in zip(lengths, starts):
        cmds_r.append((st * nb) | (ln << 40))
        cmds_w.append(dst | (ln << 40))
        expect.append((st * nb, dst, ln))
        dst += (ln + 3) * nb
    total = sum(lengths)
    cyc = Cycle(dut.clk)
    cocotb.start_soon(cyc.run())
    ar = _ArMonitor(dut, "ar", cyc)
    aw = _ArMonitor(dut, "aw", cyc)
    cocotb.start_soon(ar.run(lambda: int(dut.rd_axi__rvalid.value) and int(dut.rd_axi__rready.value)
                             and int(dut.rd_axi__rlast.value)))
    cocotb.start_soon(aw.run(lambda: int(dut.wr_axi__bvalid.value) and int(dut.wr_axi__bready.value)))
    for s in ("rd_cmd", "wr_cmd", "wr_data"):
        getattr(dut, f"{s}__valid").value = 0
    dut.rd_out__ready.value = 0
    dut.wr_done__ready.value = 0
    got = []
    c0 = cyc.n
    cocotb.start_soon(source(dut, "rd_cmd", cmds_r, random.Random(1), cfg["p"], cyc))
    cocotb.start_soon(source(dut, "wr_cmd", cmds_w, random.Random(2), cfg["p"], cyc))
    await sink(dut, "rd_out", total, random.Random(3), cfg["p"], cyc, got)
    read_cycles = cyc.n - c0
    data_beats = [v & ((1 << cfg["dw"]) - 1) for v in got]
    lasts = [v >> cfg["dw"] for v in got]
    ok_read, i = True, 0
    for (sa, _, ln) in expect:
        for j in range(ln):
            want = int.from_bytes(src[sa + j * nb: sa + (j + 1) * nb], "little")
            ok_read &= data_beats[i] == want and lasts[i] == int(j == ln - 1)
            i += 1
    await source(dut, "wr_data", data_beats, random.Random(4), cfg["p"], cyc)
    done = []
    await sink(dut, "wr_done", len(lengths), random.Random(5), cfg["p"], cyc, done)
    ok_write = all(ram.read(d, ln * nb) == src[sa:sa + ln * nb] for sa, d, ln in expect)
    gaps_untouched = all(ram.read(d + ln * nb, 3 * nb) == bytes(3 * nb) for _, d, ln in expect)
    res = dict(kind="dma_copy", dw=cfg["dw"], ok_read=bool(ok_read), ok_write=bool(ok_write),
               gaps_untouched=gaps_untouched, beats=total, read_cycles=read_cycles,
               ar_bursts=len(ar.bursts), aw_bursts=len(aw.bursts),
               bursts_ok=_split_ok(ar.bursts, nb) and _split_ok(aw.bursts, nb),
               error=int(dut.error.value), rd_beats=int(dut.rd_beats.value), wr_beats=int(dut.wr_beats.value))
    _write(cfg, res)
    assert ok_read and ok_write and gaps_untouched and res["bursts_ok"] and not res["error"], res
    assert res["rd_beats"] == total == res["wr_beats"], res


@cocotb.test()
async def test_dma_read_throughput(dut):
    """Long read (1,024 beats) with a ready sink and a RAM that never pauses: beats per cycle and
    the number of bursts in flight (several outstanding)."""
    from cocotbext.axi import AxiBus, AxiRam, AxiReadBus, AxiWriteBus

    cfg = _env()
    nb = cfg["dw"] // 8
    await _reset(dut)
    ram = AxiRam(AxiBus(AxiWriteBus.from_prefix(dut, "wr_axi_"), AxiReadBus.from_prefix(dut, "rd_axi_")),
                 dut.clk, dut.rst, size=1 << 20)
    n = 1024
    ram.write(0, bytes(i % 251 for i in range(n * nb)))
    cyc = Cycle(dut.clk)
    cocotb.start_soon(cyc.run())
    ar = _ArMonitor(dut, "ar", cyc)
    cocotb.start_soon(ar.run(lambda: int(dut.rd_axi__rvalid.value) and int(dut.rd_axi__rlast.value)))
    for s in ("rd_cmd", "wr_cmd", "wr_data"):
        getattr(dut, f"{s}__valid").value = 0
    dut.wr_done__ready.value = 0
    got, log = [], []
    cocotb.start_soon(source(dut, "rd_cmd", [0 | (n << 40)], random.Random(1), 1.0, cyc))
    c0 = cyc.n
    await sink(dut, "rd_out", n, random.Random(3), 1.0, cyc, got, log)
    ok = all((v & ((1 << cfg["dw"]) - 1)) == int.from_bytes(bytes((i * nb + k) % 251 for k in range(nb)), "little")
             for i, v in enumerate(got))
    steady = (n - 1) / (log[-1] - log[0]) if len(log) > 1 else 0
    res = dict(kind="dma_read_throughput", dw=cfg["dw"], ok=ok, beats=n, first_beat_latency=log[0] - c0,
               cycles=log[-1] - c0 + 1, beats_per_cycle_steady=round(steady, 3),
               peak_bursts_in_flight=ar.peak, bursts=len(ar.bursts))
    _write(cfg, res)
    assert ok, res
    assert ar.peak >= 2, res  # several bursts outstanding


@cocotb.test()
async def test_dma_write_throughput(dut):
    from cocotbext.axi import AxiBus, AxiRam, AxiReadBus, AxiWriteBus

    cfg = _env()
    nb = cfg["dw"] // 8
    await _reset(dut)
    ram = AxiRam(AxiBus(AxiWriteBus.from_prefix(dut, "wr_axi_"), AxiReadBus.from_prefix(dut, "rd_axi_")),
                 dut.clk, dut.rst, size=1 << 20)
    n = 512
    cyc = Cycle(dut.clk)
    cocotb.start_soon(cyc.run())
    for s in ("rd_cmd", "wr_cmd", "wr_data"):
        getattr(dut, f"{s}__valid").value = 0
    dut.rd_out__ready.value = 0
    words = [(i * 0x9E3779B97F4A7C15) & ((1 << cfg["dw"]) - 1) for i in range(n)]
    log, done = [], []
    cocotb.start_soon(source(dut, "wr_cmd", [4096 | (n << 40)], random.Random(1), 1.0, cyc))
    c0 = cyc.n
    cocotb.start_soon(source(dut, "wr_data", words, random.Random(2), 1.0, cyc, log))
    await sink(dut, "wr_done", 1, random.Random(3), 1.0, cyc, done)
    ok = ram.read(4096, n * nb) == b"".join(w.to_bytes(nb, "little") for w in words)
    res = dict(kind="dma_write_throughput", dw=cfg["dw"], ok=ok, beats=n, cycles_to_done=cyc.n - c0,
               beats_per_cycle_steady=round((n - 1) / (log[-1] - log[0]), 3))
    _write(cfg, res)
    assert ok, res


@cocotb.test()
async def test_regfile(dut):
    """Only meaningful for the regfile top (skipped otherwise): every register through AXI4-Lite
    with random channel pauses, byte strobes, ro inputs, pulses, unmapped addresses."""
    if not hasattr(dut, "axil__awaddr"):
        return
    from cocotbext.axi import AxiLiteBus, AxiLiteMaster

    from ternc.hw.regfile import RegMap

    cfg = _env()
    rm = RegMap.from_json(json.load(open(cfg["regmap"])))
    rng = random.Random(cfg["seed"])
    await _reset(dut)
    m = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "axil_"), dut.clk, dut.rst)
    if cfg["pause"] > 0:
        for ch in (m.write_if.aw_channel, m.write_if.w_channel, m.write_if.b_channel,
                   m.read_if.ar_channel, m.read_if.r_channel):
            ch.set_pause_generator(_pauser(random.Random(rng.random()), cfg["pause"]))
    pulses = {r.name: 0 for r in rm.regs if r.kind == "pulse"}

    async def count_pulses():
        while True:
            await RisingEdge(dut.clk)
            await ReadOnly()
            for name in pulses:
                pulses[name] += int(getattr(dut, name.lower()).value)

    cocotb.start_soon(count_pulses())
    errors = []
    model = {r.name: r.reset for r in rm.regs}
    for r in rm.regs:  # ro inputs get random values
        if r.kind == "ro":
            model[r.name] = rng.randrange(1 << 32)
            getattr(dut, r.name.lower()).value = model[r.name]
    # Reset values / consts.
    for r in rm.regs:
        v = int.from_bytes((await m.read(r.offset, 4)).data, "little")
        want = 0 if r.kind == "pulse" else model[r.name]
        if v != want:
            errors.append(("read", r.name, v, want))
    # Full-word and byte-strobed writes to rw registers; writes to ro/const are ignored.
    for r, k in itertools.product(rm.regs, range(2)):
        if r.kind in ("rw", "ro", "const"):
            val = rng.randrange(1 << 32)
            if k == 0:
                await m.write(r.offset, val.to_bytes(4, "little"))
                if r.kind == "rw":
                    model[r.name] = val
            else:
                b = rng.randrange(4)
                await m.write(r.offset + b, bytes([val & 0xFF]))
                if r.kind == "rw":
                    model[r.name] = (model[r.name] & ~(0xFF << 8 * b)) | ((val & 0xFF) << 8 * b)
            if r.kind == "rw" and int(getattr(dut, r.name.lower()).value) != model[r.name]:
                errors.append(("port", r.name))
    for r in rm.regs:
        if r.kind != "pulse":
            v = int.from_bytes((await m.read(r.offset, 4)).data, "little")
            if v != model[r.name]:
                errors.append(("readback", r.name, v, model[r.name]))
    # Pulses: bit 0 set -> one pulse, bit 0 clear -> none.
    for name in pulses:
        off = rm.reg(name).offset
        await m.write(off, (1).to_bytes(4, "little"))
        await m.write(off, (2).to_bytes(4, "little"))
        await m.write(off, (3).to_bytes(4, "little"))
    for _ in range(4):
        await RisingEdge(dut.clk)
    pulse_ok = all(v == 2 for v in pulses.values())
    # Unmapped address: SLVERR on both.
    hole = rm.size - 4 if all(r.offset != rm.size - 4 for r in rm.regs) else None
    slverr = None
    if hole is not None:
        rr = await m.read(hole, 4)
        wr = await m.write(hole, b"\x01\x02\x03\x04")
        slverr = (int(rr.resp), int(wr.resp))
    res = dict(kind="regfile", ok=not errors and pulse_ok, errors=errors[:5], pulses=pulses,
               slverr=slverr, n_regs=len(rm.regs))
    _write(cfg, res)
    assert not errors and pulse_ok, res
    assert slverr in (None, (2, 2)), res
