"""Boards as data: programmable-logic resources, the DDR the accelerator streams from, the ports that
reach it, and the host CPU that runs the LM head when the artifact puts it there.

Every figure is a datasheet value or a stated assumption (``notes``); the dataflow simulator
(sim/dataflow.py) reads nothing else about a board.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Host:
    """The CPU that computes the host-side LM head (f32/int8 GEMV over [vocab, hidden])."""

    name: str
    mem_gbps: float          # sustained read bandwidth a GEMV achieves from the shared DDR
    gflops: float            # sustained f32 multiply-add throughput (2 flops per MAC)
    call_overhead_s: float   # per accelerator call: register writes, polling, result readback
    notes: str = ""


@dataclass(frozen=True)
class Board:
    name: str
    part: str
    resources: dict                       # LUT, FF, DSP, BRAM (36 Kb), URAM
    ddr_peak_gbps: float
    ddr_efficiency: float                 # sustained / peak for long sequential bursts
    ddr_bytes: int
    max_ports: int                        # PL <-> DDR AXI ports the accelerator may use
    port_bits: int                        # data width of one port
    ddr_latency_ns: float                 # first-beat read latency through the port (request -> data)
    host: Host
    notes: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


KV260 = Board(
    name="kv260", part="xck26-sfvc784-2LV-c",
    resources={"LUT": 117_120, "FF": 234_240, "DSP": 1_248, "BRAM": 144, "URAM": 64},
    ddr_peak_gbps=19.2, ddr_efficiency=0.85, ddr_bytes=4 << 30, max_ports=6, port_bits=128,
    ddr_latency_ns=200.0,
    host=Host("4x Cortex-A53 @ 1.333 GHz (NEON)", mem_gbps=5.0, gflops=20.0, call_overhead_s=50e-6,
              notes="A53 cluster: ~5 GB/s sustained streaming read from the PS DDR and ~20 GFLOP/s f32 "
                    "(4 cores x 4-wide NEON FMA at 1.333 GHz = 42.7 peak, ~half sustained): assumptions, "
                    "not measured here (no board)"),
    notes={"ddr": "64-bit DDR4-2400 on the PS: 19.2 GB/s peak; TeLLMe v2 lists 17.1 GB/s usable (0.89); "
                  "0.85 is assumed for the PS DDR controller under mixed read/write traffic",
           "ports": "HP0-HP3 + HPC0-HPC1: six 128-bit PL->PS ports; one port moves 16 B per PL cycle",
           "latency": "~200 ns request-to-first-beat through an HP port (assumed; hidden by outstanding "
                      "bursts on long streams)"},
)

# A larger board with the same flow (a board is data): Alveo U280, HBM2 (8 GB, 32 pseudo-channels).
# The host is the PCIe-attached x86 server; the LM head there reads the server's own DRAM.
U280 = Board(
    name="u280", part="xcu280-fsvh2892-2L-e",
    resources={"LUT": 1_303_680, "FF": 2_607_360, "DSP": 9_024, "BRAM": 2_016, "URAM": 960},
    ddr_peak_gbps=460.0, ddr_efficiency=0.80, ddr_bytes=8 << 30, max_ports=32, port_bits=256,
    ddr_latency_ns=300.0,
    host=Host("x86 server (8 cores, AVX2)", mem_gbps=40.0, gflops=200.0, call_overhead_s=20e-6,
              notes="assumed server figures; PCIe round trip folded into call_overhead_s"),
    notes={"ddr": "HBM2: 32 pseudo-channels x 256-bit AXI at 450 MHz, 460 GB/s peak; 0.80 assumed",
           "ports": "one AXI port per HBM pseudo-channel (32)"},
)

# The RTL simulation's memory (sim/cocotb_top.py: cocotbext-axi AxiRam / AxiRamRead on HP0-HP2 of
# the composed top in Verilator), so the dataflow model can be compared with the top's counters
# (sim/calibrate.py): a RAM that never limits beyond the ports' beat per cycle, and the read latency
# the controllers see through AxiReadMaster (RTL_SIM_LATENCY_CYCLES, measured there) at 250 MHz.
RTL_SIM_LATENCY_CYCLES = 7
RTL_SIM = Board(
    name="rtl-sim", part=KV260.part, resources=KV260.resources,
    ddr_peak_gbps=3 * 16 * 0.25, ddr_efficiency=1.0, ddr_bytes=KV260.ddr_bytes, max_ports=3, port_bits=128,
    ddr_latency_ns=RTL_SIM_LATENCY_CYCLES * 4.0, host=KV260.host,
    notes={"ddr": "cocotbext-axi RAM models: one beat per cycle per port, no DDR behind them",
           "latency": "read command -> first data beat as the controllers see it (sim/calibrate.py)"},
)

BOARDS = {b.name: b for b in (KV260, U280, RTL_SIM)}


def get_board(name: str) -> Board:
    try:
        return BOARDS[name]
    except KeyError:
        raise ValueError(f"unknown board {name!r}; known: {sorted(BOARDS)}") from None
