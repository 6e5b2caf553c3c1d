"""DDR + AXI port model: how many accelerator cycles a set of streams takes.

A stream of ``nbytes`` moves in INCR bursts of ``burst_len`` beats of ``port_bits`` (hw/axi.py: 16
beats, split at burst-aligned boundaries). Bandwidth is the smaller of (a) the ports the streams use,
``port_bytes`` per cycle each, and (b) the DDR's sustained rate ``peak x efficiency``. A partial
last burst costs a whole burst slot (the controller's efficiency drops for short bursts). The first
beat arrives after ``latency`` (request -> data); with ``max_outstanding`` bursts in flight a long
stream hides it, so it is paid once per instruction (not per burst).
"""

from __future__ import annotations

from dataclasses import dataclass

from .boards import Board


@dataclass(frozen=True)
class DDRModel:
    clock_mhz: float
    peak_gbps: float
    efficiency: float
    ports: int
    port_bytes: int
    latency_cycles: float
    burst_len: int = 16

    @staticmethod
    def of(board: Board, clock_mhz: float, ports: int, port_bits: int | None = None) -> "DDRModel":
        pb = (port_bits or board.port_bits) // 8
        return DDRModel(clock_mhz, board.ddr_peak_gbps, board.ddr_efficiency, min(ports, board.max_ports), pb,
                        board.ddr_latency_ns * clock_mhz / 1e3)

    @property
    def burst_bytes(self) -> int:
        return self.burst_len * self.port_bytes

    @property
    def ddr_bytes_per_cycle(self) -> float:
        """Sustained DDR bytes per accelerator cycle (all ports together)."""
        return self.peak_gbps * 1e9 * self.efficiency / (self.clock_mhz * 1e6)

    @property
    def bytes_per_cycle(self) -> float:
        return min(self.ports * self.port_bytes, self.ddr_bytes_per_cycle)

    def wire_bytes(self, nbytes: float, transfers: float = 1.0) -> float:
        """Bytes the DDR moves for ``transfers`` equal streams totalling ``nbytes`` (bursts rounded up)."""
        if nbytes <= 0:
            return 0.0
        per = nbytes / max(transfers, 1.0)
        bursts = -(-per // self.burst_bytes)
        return bursts * self.burst_bytes * max(transfers, 1.0)

    def cycles(self, streams: list[tuple[float, float]], ports: int | None = None) -> float:
        """Cycles to move ``streams`` [(bytes, transfers)] concurrently over ``ports`` (default all)."""
        wire = sum(self.wire_bytes(b, t) for b, t in streams)
        if wire <= 0:
            return 0.0
        bw = min((ports or self.ports) * self.port_bytes, self.ddr_bytes_per_cycle)
        return wire / bw

    def describe(self) -> dict:
        return {"peak_GBps": self.peak_gbps, "efficiency": self.efficiency,
                "sustained_GBps": round(self.ddr_bytes_per_cycle * self.clock_mhz * 1e6 / 1e9, 2),
                "ports": self.ports, "port_bytes_per_cycle": self.port_bytes,
                "ports_GBps": round(self.ports * self.port_bytes * self.clock_mhz * 1e6 / 1e9, 2),
                "effective_bytes_per_cycle": round(self.bytes_per_cycle, 2),
                "burst": f"{self.burst_len} beats x {self.port_bytes} B = {self.burst_bytes} B, a partial "
                         "burst costs a full one", "latency_cycles": round(self.latency_cycles, 1)}
