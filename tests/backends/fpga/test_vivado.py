"""backends/fpga/vivado.py: the KV260 bitstream build inputs. Vivado is not available here, so what is
checked is what can be: Tcl quoting round-trips through a real Tcl interpreter, the plan is
deterministic, the project script parses and every file it reads exists (run under tclsh with the
Vivado commands stubbed), the clock constraint, the block design's connections, and Verilator lint of
the generated Verilog against a stub of the block-design wrapper."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from ternc.backends.fpga.schedule import EngineConfig
from ternc.backends.fpga.top import AcceleratorConfig
from ternc.backends.fpga.vivado import BD, NAME, Tcl, TclBody, TclSub, block_design_tcl, build_plan, tcl_word

TCLSH = shutil.which("tclsh")
needs_tcl = pytest.mark.skipif(TCLSH is None, reason="tclsh not installed")


@needs_tcl
@pytest.mark.parametrize("s", ["plain", "two words", "{unbalanced", "a}b{", "$var [cmd] \"q\"", "back\\slash",
                               "semi;colon", "new\nline", "", "{a b} {c}", "x\\"])
def test_tcl_word_round_trips(s):
    """tclsh reads back exactly the string the builder quoted."""
    script = f"puts -nonewline [list {tcl_word(s)}]\n" + f"set x {tcl_word(s)}\nputs -nonewline $x\n"
    r = subprocess.run([TCLSH], input=f"set x {tcl_word(s)}\nputs -nonewline $x\n", capture_output=True, text=True)
    assert r.returncode == 0, (script, r.stderr)
    assert r.stdout == s


def test_tcl_builder_substitutions_and_bodies():
    t = Tcl()
    t("connect_bd_net", TclSub("get_bd_pins", "a/b"), "x y")
    t("if", TclBody(TclSub("llength", "z")), TclBody(Tcl()("puts", "hi there")))
    assert t.text() == 'connect_bd_net [get_bd_pins a/b] {x y}\nif {[llength z]} {\n    puts {hi there}\n}\n'


@pytest.fixture(scope="module")
def plan():
    # a small engine keeps Verilog generation fast; the block design and scripts do not depend on it
    cfg = AcceleratorConfig(engine=EngineConfig(3, 4, 8), wbuf_depth=64, clock_mhz=200.0, norm_max_k=256,
                            head_dim=42, context=64, rope_max_width=256)
    files, system = build_plan(cfg)
    return cfg, files, system


@pytest.mark.slow
def test_plan_files_deterministic_and_clock(plan):
    cfg, files, _ = plan
    assert {f"{NAME}.v", f"{NAME}.tcl", f"{NAME}.xdc", f"build_{NAME}.sh", "ps_bd.tcl", f"{BD}_wrapper_stub.v"} <= set(files)
    again, _ = build_plan(cfg)
    assert again == files
    assert "create_clock -name pl_clk0 -period 5.0" in files[f"{NAME}.xdc"]             # 200 MHz
    tcl = files[f"{NAME}.tcl"]
    assert "-part xck26-sfvc784-2LV-c" in tcl and f"synth_design -top {NAME}" in tcl
    assert "source [file join [file dirname [info script]] ps_bd.tcl]" in tcl
    assert f"file copy -force $ternc_hwh {NAME}.hwh" in tcl and f"write_bitstream -force -bin_file {NAME}.bit" in tcl
    assert "vivado" in files[f"build_{NAME}.sh"] and f"-source {NAME}.tcl" in files[f"build_{NAME}.sh"]


def test_block_design_connections():
    cfg = AcceleratorConfig(clock_mhz=200.0)
    bd = block_design_tcl(cfg, 3)
    assert "CONFIG.PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ 200" in bd
    assert "connect_bd_intf_net [get_bd_intf_pins zynq_ultra_ps_e_0/M_AXI_HPM0_FPD] " \
           "[get_bd_intf_pins smartconnect_ctrl/S00_AXI]" in bd
    for i in range(3):
        assert f"connect_bd_intf_net [get_bd_intf_ports S_AXI_HP{i}] [get_bd_intf_pins zynq_ultra_ps_e_0/S_AXI_HP{i}_FPD]" in bd
        assert f"CONFIG.PSU__SAXIGP{i + 2}__DATA_WIDTH {cfg.axi_data_bits}" in bd
    assert "-offset 0xA0000000 -range 0x10000" in bd
    with pytest.raises(ValueError, match="4 S_AXI_HP"):
        block_design_tcl(cfg, 5)


@pytest.mark.slow
@needs_tcl
def test_project_script_runs_under_stubbed_vivado(plan, tmp_path):
    """Amaranth's project script + ps_bd.tcl under tclsh: Vivado's commands are stubs that log, the
    ones that read files check they exist; the .hwh lands beside the .bit with its stem."""
    _, files, _ = plan
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / f"{BD}.hwh").write_text("<hwh/>")
    stubs = r"""
set ::log {}
proc unknown {args} { lappend ::log $args; return "" }
foreach c {add_files read_xdc read_verilog} {
    proc $c {args} {
        foreach a $args { if {[string index $a 0] ne "-" && $a ne "" && ![file exists $a]} { error "missing file $a" } }
        lappend ::log [concat [lindex [info level 0] 0] $args]
    }
}
proc get_files {args} { if {[lsearch $args *.hwh] >= 0} { return [list ternc_ps.hwh] } ; return ternc_ps.bd }
proc make_wrapper {args} { return ternc_kv260.v }
proc quit {} {}
source ternc_kv260.tcl
puts [llength $::log]
"""
    r = subprocess.run([TCLSH], input=stubs, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout.split()[-1]) > 40
    assert (tmp_path / f"{NAME}.hwh").read_text() == "<hwh/>"


@pytest.mark.slow
def test_verilator_lint_of_the_top(plan, tmp_path):
    """The composed top's system wrapper (all controllers, 3 HP read + 1 write masters) lints clean."""
    from ternc.sim.rtl import lint

    _, files, system = plan
    assert len(system.hp) == 3 and "wr" in system.hp[0] and "wr" not in system.hp[1]
    v = tmp_path / f"{NAME}.v"
    v.write_text(files[f"{NAME}.v"] + "\n" + files[f"{BD}_wrapper_stub.v"])
    r = lint(v, NAME)
    if r.returncode != 0 and "not found" in (r.stderr or "").lower() and "verilator" in (r.stderr or "").lower():
        pytest.skip("verilator not installed")
    assert r.returncode == 0, r.stderr[-3000:]
