"""AXI4 burst masters and the AXI4-Lite register file: cocotb benches against cocotbext-axi
(AxiRam, AxiLiteMaster) on Verilator, random stalls on every channel; register-map outputs."""

import json

import pytest

from ternc.hw.regfile import Reg, RegMap, default_accel_regmap


def _need():
    from ternc.sim.rtl import have_simulator
    if not have_simulator("verilator"):
        pytest.skip("verilator not installed")
    pytest.importorskip("cocotbext.axi")


@pytest.mark.rtl
def test_dma_copy_bursts_and_throughput():
    _need()
    from ternc.sim.rtl import run_axi_bench
    res = {r["kind"]: r for r in run_axi_bench(64, seed=3, pause=0.3, p=0.6)}
    c = res["dma_copy"]
    assert c["ok_read"] and c["ok_write"] and c["bursts_ok"] and c["gaps_untouched"]
    assert c["ar_bursts"] > len([1, 15, 16, 17, 33, 100, 2, 64])  # long commands were split
    t = res["dma_read_throughput"]
    assert t["ok"] and t["peak_bursts_in_flight"] >= 2
    print("AXI DMA figures:", json.dumps(res))


@pytest.mark.rtl
def test_regfile_axil():
    _need()
    from ternc.sim.rtl import run_regfile_bench
    (r,) = run_regfile_bench(seed=2, pause=0.3)
    assert r["ok"] and r["slverr"] == [2, 2]


def test_regmap_json_and_header_roundtrip(tmp_path):
    rm = default_accel_regmap()
    rm.write_json(tmp_path / "regmap.json")
    back = RegMap.from_json(json.loads((tmp_path / "regmap.json").read_text()))
    assert back == rm
    h = rm.c_header()
    assert "#define TERNC_ACCEL_CTRL_OFFSET 0x008u" in h
    assert "#define TERNC_ACCEL_STATUS_ERROR_MASK 0x00000004u" in h
    assert rm.size == 128


def test_regmap_rejects_bad_maps():
    with pytest.raises(ValueError, match="share offset"):
        RegMap("x", (Reg("A", 0, "rw", ""), Reg("B", 0, "ro", "")))
    with pytest.raises(ValueError, match="aligned"):
        RegMap("x", (Reg("A", 2, "rw", ""),))
    with pytest.raises(ValueError, match="kind"):
        RegMap("x", (Reg("A", 0, "wo", ""),))
