"""The contract between the sequencer (hw/top.py) and the per-opcode controllers (hw/ctl_*.py).

The accelerator executes one instruction at a time. For the instruction it dispatches, the sequencer
hands one controller the decoded words and the call's parameters (``ctl``) and connects that
controller's memory ports to the DMA engines of the HP ports (hw/axi.py); the other controllers'
ports are idle. A controller therefore sees DDR as beats of ``BEAT_BITS`` through:

* a **read port** (:func:`read_port_signature`, controller side): ``cmd`` {addr, beats} out, ``data``
  {data, last} in -- exactly an :class:`hw.axi.AxiReadMaster`'s ``cmd``/``out``. ``addr`` is a byte
  offset from DDR_BASE (the sequencer adds the base), aligned to ``BEAT_BYTES``; ``last`` marks each
  command's final beat. Beats of successive commands arrive in command order.
* a **write port** (:func:`write_port_signature`): ``cmd`` {addr, beats} out, ``data`` {data} out,
  ``done`` in (one beat per command once DDR has it) -- :class:`hw.axi.AxiWriteMaster`'s
  ``cmd``/``data``/``done``. Full beats only (every byte strobed): a controller never writes past the
  row it owns, so rows are whole beats (the schedule keeps widths a multiple of 4 words).

Control (:func:`op_control_signature`, controller side): ``start`` is a one-cycle pulse with ``instr``
(the 8 words of isa.py's encoding), ``n_tokens`` and ``pos`` (TOKEN_POS) valid and held stable until
the controller is idle again. ``busy`` rises the cycle after ``start`` and falls when the instruction
is complete *including* the ``done`` of every write it issued (so the next instruction reads what
this one wrote). ``error`` (sticky until the next ``start``) reports a fault the controller detects
(e.g. a token id out of range); ``busy`` still falls. Ordering between a controller's own reads and
writes to the same addresses is the controller's business (read ports and the write port are
independent AXI channels).

Memory model for tests: ``ternc.sim.memport_tb`` serves these ports from a numpy byte array in
Amaranth's simulator with random valid/ready, so every controller is checked bit-exact against the
functional executor (backends/fpga/executor.py) one instruction at a time.
"""

from __future__ import annotations

from amaranth import unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["BEAT_BITS", "BEAT_BYTES", "WORDS_PER_BEAT", "ADDR_BITS", "LEN_BITS", "INSTR_WORDS",
           "read_port_signature", "write_port_signature", "op_control_signature"]

BEAT_BITS = 128            # the KV260 HP ports' data width
BEAT_BYTES = BEAT_BITS // 8
WORDS_PER_BEAT = BEAT_BITS // 32
ADDR_BITS = 32             # offsets inside the DDR window (isa.py: a 4 GiB window)
LEN_BITS = 24              # beats per command (hw/axi.py len_bits)
INSTR_WORDS = 8


def read_port_signature() -> wiring.Signature:
    """Controller side (the DMA side is ``.flip()``)."""
    return wiring.Signature({
        "cmd": Out(stream.Signature(data.StructLayout({"addr": unsigned(ADDR_BITS), "beats": unsigned(LEN_BITS)}))),
        "data": In(stream.Signature(data.StructLayout({"data": unsigned(BEAT_BITS), "last": unsigned(1)}))),
    })


def write_port_signature() -> wiring.Signature:
    """Controller side (the DMA side is ``.flip()``)."""
    return wiring.Signature({
        "cmd": Out(stream.Signature(data.StructLayout({"addr": unsigned(ADDR_BITS), "beats": unsigned(LEN_BITS)}))),
        "data": Out(stream.Signature(data.StructLayout({"data": unsigned(BEAT_BITS)}))),
        "done": In(stream.Signature(unsigned(1))),
    })


def op_control_signature() -> wiring.Signature:
    """Controller side: In = driven by the sequencer."""
    return wiring.Signature({
        "start": In(1),
        "instr": In(data.ArrayLayout(unsigned(32), INSTR_WORDS)),
        "n_tokens": In(16),
        "pos": In(16),
        "busy": Out(1),
        "error": Out(1),
    })
