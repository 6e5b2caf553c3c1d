"""The composed top (hw/top.py) in Verilator through cocotb (sim/cocotb_top.py, the board driver's
CocotbTransport): register file reads, the sequencer's fetch/decode/dispatch on hand-built programs
(EMBED rows checked in DDR), stop conditions (END, LM_HEAD host), PC, the counters' exact beat counts,
and every error code the RTL raises -- under random pauses on all AXI channels.

The top is configured as for the tiny BitNet with a small engine (the model test's configuration), so
both tests share one Verilator build."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from ternc.backends.fpga.isa import Flag, Instr, Opcode, Program
from ternc.backends.fpga.regmap import ID_VALUE, ISA_VERSION, STATUS_BITS
from ternc.backends.fpga.schedule import EngineConfig, schedule
from ternc.backends.fpga.top import accelerator_verilog, choose_config
from ternc.hw.top import ERR_BAD_OPCODE, ERR_CONTEXT, ERR_UNIT
from ternc.passes.pipeline import KV260_PIPELINE, compile
from ternc.sim.rtl import have_simulator, run_top

pytestmark = pytest.mark.skipif(not have_simulator("verilator"), reason="needs Verilator")

ENG = EngineConfig(3, 4, 8)
CTX = 16
PROG, IDS, TABLE, DST = 0x0, 0x1000, 0x2000, 0x6000
W = 8                     # table row width in words (2 beats)
DONE, ERROR, HOST = (1 << STATUS_BITS[k] for k in ("done", "error", "host"))


@pytest.fixture(scope="module")
def top_verilog(onnx_export):
    import ternc

    mod = compile(ternc.load(str(onnx_export("tiny-bitnet", False))), passes=KV260_PIPELINE, report=False)[0]
    cfg = choose_config(schedule(mod, CTX, ENG, "host"), None, 250.0, "host", ENG)
    assert cfg.vocab == 256 and cfg.context == CTX
    return accelerator_verilog(cfg)


def _embed(n_words=W):
    return Instr(Opcode.EMBED, {"table": TABLE, "dst": DST, "width": n_words, "ids": IDS})


def _case(prog: list, ids=(1, 2, 3), n=None, pos=0, prog_len=None, reads=()):
    blob = Program(prog).encode()
    return {"writes": [[PROG, blob.hex()], [IDS, struct.pack(f"<{len(ids)}i", *ids).hex()]],
            "regs": {"PROG_ADDR": PROG, "PROG_LEN": len(prog) if prog_len is None else prog_len,
                     "N_TOKENS": len(ids) if n is None else n, "TOKEN_POS": pos},
            "reads": list(reads)}


TABLE_BYTES = np.arange(256 * W, dtype="<i4").reshape(256, W) * 7 - 1000


def test_sequencer_cases(top_verilog):
    end, host = Instr(Opcode.END), Instr(Opcode.LM_HEAD, {"src": DST, "width": W, "vocab": 256}, flags=Flag.HOST)
    rows = 4 * W
    cases = [
        # 0: EMBED 3 tokens + END: rows in DDR, done, PC on END
        _case([_embed(), end], ids=(5, 0, 255), reads=[(DST, 3 * rows)]),
        # 1: EMBED + LM_HEAD(host): done + host, PC on the LM_HEAD
        _case([_embed(), host, end], ids=(9,), reads=[(DST, rows)]),
        # 2: bad opcode at PC 1
        _case([_embed(), Instr(Opcode.END)], ids=(1,)),
        # 3: TOKEN_POS + N_TOKENS > context
        _case([_embed(), end], ids=(1, 2), pos=CTX - 1),
        # 4: N_TOKENS = 0
        _case([_embed(), end], ids=(1,), n=0),
        # 5: token id out of range: unit fault at PC 0
        _case([_embed(), end], ids=(3, 256)),
        # 6: negative id
        _case([_embed(), end], ids=(-1,)),
        # 7: PC runs past PROG_LEN (no END within it)
        _case([_embed(), end], ids=(4,), prog_len=1),
        # 8: after the faults, a clean run again (recovery), at the last context position
        _case([_embed(), end], ids=(77,), pos=CTX - 1, reads=[(DST, rows)]),
    ]
    bad = bytearray(Program([_embed(), end]).encode())
    bad[32] = 0x7E                                   # opcode byte of instruction 1
    cases[2]["writes"][0][1] = bytes(bad).hex()
    for c in cases:
        c["writes"].append([TABLE, TABLE_BYTES.tobytes().hex()])
    for pause in (0.0, 0.3):
        res = run_top(top_verilog, {"kind": "cases", "cases": cases, "ddr_bytes": 1 << 16, "pause": pause,
                                    "poll_cycles": 16, "seed": 3})["results"]
        r = res[0]
        assert r["consts"] == {"ID": ID_VALUE, "VERSION": ISA_VERSION}
        assert r["regs"]["PROG_LEN"] == 2 and r["regs"]["N_TOKENS"] == 3
        assert (r["status"], r["error_code"], r["pc"]) == (DONE, 0, 1)
        got = np.frombuffer(bytes.fromhex(r["reads"][0]), "<i4").reshape(3, W)
        assert np.array_equal(got, TABLE_BYTES[[5, 0, 255]])
        c = r["counters"]
        # fetch 2 instructions x 2 beats + 3 id beats (one per token) + 3 rows; rows written
        assert c["RD_BEATS"] == 2 * 2 + 3 + 3 * W // 4 and c["WR_BEATS"] == 3 * W // 4, c
        assert c["INSTRS"] == 2 and 0 < c["CYC_DMA"] < c["CYCLES"], c
        assert c["CYC_LINEAR"] == c["CYC_ATTN"] == c["CYC_NORM"] == 0
        assert (res[1]["status"], res[1]["pc"]) == (DONE | HOST, 1)
        assert np.array_equal(np.frombuffer(bytes.fromhex(res[1]["reads"][0]), "<i4"), TABLE_BYTES[9])
        assert (res[2]["status"], res[2]["error_code"], res[2]["pc"]) == (ERROR, ERR_BAD_OPCODE, 1)
        assert (res[3]["status"], res[3]["error_code"]) == (ERROR, ERR_CONTEXT)
        assert res[3]["counters"]["INSTRS"] == 0          # refused before any fetch
        assert (res[4]["status"], res[4]["error_code"]) == (ERROR, ERR_CONTEXT)
        assert (res[5]["status"], res[5]["error_code"], res[5]["pc"]) == (ERROR, ERR_UNIT, 0)
        assert (res[6]["status"], res[6]["error_code"], res[6]["pc"]) == (ERROR, ERR_UNIT, 0)
        assert (res[7]["status"], res[7]["error_code"], res[7]["pc"]) == (ERROR, ERR_BAD_OPCODE, 1)
        assert (res[8]["status"], res[8]["error_code"]) == (DONE, 0)
        assert np.array_equal(np.frombuffer(bytes.fromhex(res[8]["reads"][0]), "<i4"), TABLE_BYTES[77])
