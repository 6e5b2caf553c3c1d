"""The accelerator's AXI4-Lite register map, as data: one ``hw.regfile.RegMap`` that generates the RTL
register file (``hw.regfile.AxiLiteRegFile``), ``regmap.json`` and the C header, and that the host
driver (``driver.py``) reads its offsets and status bits from.

It extends ``hw.regfile.default_accel_regmap``'s layout for this ISA: one DDR window (every program
address is an offset from DDR_BASE), the program's place and length, the sequencer's PC and error
code, and a HOST status bit (stopped at LM_HEAD for the ARM cores). Counters are 32-bit (wrap),
cleared by CLEAR.
"""

from __future__ import annotations

import json

ID_VALUE = 0x54524E43          # 'TRNC'
ISA_VERSION = 1
COUNTERS = ("CYCLES", "CYC_LINEAR", "CYC_ATTN", "CYC_NORM", "CYC_DMA", "RD_BEATS", "WR_BEATS", "INSTRS")
STATUS_BITS = {"busy": 0, "done": 1, "error": 2, "host": 3}

# (name, offset, kind, doc, reset, fields) as plain data: the host driver reads it on the board, where
# amaranth (hw.regfile) is not installed; hw.regfile.Reg objects are made from it on the compiler side.
REGISTERS: tuple[tuple, ...] = (
    ("ID", 0x00, "const", "magic 'TRNC'", ID_VALUE, None),
    ("VERSION", 0x04, "const", "ISA / register map version (backends/fpga/isa.py)", ISA_VERSION, None),
    ("CTRL", 0x08, "pulse", "write 1: run the program (PROG_ADDR, PROG_LEN) for N_TOKENS at TOKEN_POS", 0, None),
    ("CLEAR", 0x0C, "pulse", "write 1: clear STATUS.done/error/host and the counters", 0, None),
    ("STATUS", 0x10, "ro", "sequencer state", 0, {k: (v, 1) for k, v in STATUS_BITS.items()}),
    ("TOKEN_POS", 0x14, "rw", "tokens already in the KV cache (position of the call's first token)", 0, None),
    ("N_TOKENS", 0x18, "rw", "tokens of this call (prompt length in prefill, 1 in decode)", 0, None),
    ("DDR_BASE_LO", 0x20, "rw", "physical address of the DDR window, bits 31:0 (program addresses are "
     "offsets from it)", 0, None),
    ("DDR_BASE_HI", 0x24, "rw", "bits 63:32", 0, None),
    ("PROG_ADDR", 0x28, "rw", "program offset in the window", 0, None),
    ("PROG_LEN", 0x2C, "rw", "number of 32-byte instructions", 0, None),
    ("PC", 0x30, "ro", "instruction being executed, or the one that stopped the run", 0, None),
    ("ERROR_CODE", 0x34, "ro", "1 bad opcode (or none built for it, or PC past PROG_LEN), 2 address "
     "outside the window (reserved), 3 AXI error response, 4 TOKEN_POS + N_TOKENS > context or N_TOKENS = 0, "
     "5 unit fault (e.g. token id out of range)", 0, None),
) + tuple((f"PERF_{c}", 0x40 + 4 * i, "ro", f"performance counter {c.lower()}", 0, None)
          for i, c in enumerate(COUNTERS))


def accel_regmap():
    from ...hw.regfile import Reg, RegMap

    regs = [Reg(name, off, kind, doc, reset=reset, **({"fields": fields} if fields else {}))
            for name, off, kind, doc, reset, fields in REGISTERS]
    return RegMap("ternc_kv260", tuple(regs), version=ISA_VERSION)


def _regmap():
    if "REGMAP" not in globals():
        globals()["REGMAP"] = accel_regmap()
    return globals()["REGMAP"]


def __getattr__(name):
    # REGMAP (a hw.regfile.RegMap) is built on first use: importing this module needs no amaranth
    if name == "REGMAP":
        return _regmap()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def offsets() -> dict[str, int]:
    return {r[0]: r[1] for r in REGISTERS}


def kinds() -> dict[int, str]:
    """offset -> kind ("const" / "pulse" / "ro" / "rw")."""
    return {r[1]: r[2] for r in REGISTERS}


def resets() -> dict[int, int]:
    return {r[1]: r[4] for r in REGISTERS}


def to_json() -> str:
    return json.dumps(_regmap().to_json(), indent=1, sort_keys=True) + "\n"


def c_header() -> str:
    return _regmap().c_header()
