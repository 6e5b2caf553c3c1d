"""The KV260 bitstream build inputs, through Amaranth's Xilinx platform (toolchain Vivado).

`build_plan(cfg)` elaborates the system top (:class:`Kv260System`: the accelerator behind the Zynq
UltraScale+ PS block design's ports) with :class:`KV260Platform` (part xck26-sfvc784-2LV-c) and returns
Amaranth's build plan **without running Vivado**: ``ternc_kv260.v`` (the generated Verilog),
``ternc_kv260.tcl`` (Amaranth's Vivado project script: synth, place, route, reports, bitstream),
``ternc_kv260.xdc`` (the clock constraint of the chosen frequency on the accelerator's clock net) and
``build_ternc_kv260.sh`` (the one command a user with Vivado runs). The block-design step is
``ps_bd.tcl``, written through :class:`Tcl` (a small command builder that quotes every word) and sourced
by the project script after reading the sources: the PS (``zynq_ultra_ps_e``) with pl_clk0 at the
chosen frequency, M_AXI_HPM0_FPD -> AXI SmartConnect -> the accelerator's AXI4-Lite register file
(0xA000_0000, 64 KiB), the accelerator's AXI4 masters -> S_AXI_HP0..2_FPD (128-bit), a
proc_sys_reset, address assignment, the BD wrapper and the hardware handoff (.hwh, copied next to the
.bit with the same stem for PYNQ).

Unverified without Vivado: the generation is deterministic and checked here (files, references,
Verilator lint of the generated Verilog against a stub of the BD wrapper with the same ports), but
the Tcl has not been run by Vivado.

The accelerator is the composed top (hw/top.py ``Accelerator`` via top.accelerator_component: register
file, sequencer, controllers, AXI masters): ``axil`` to HPM0, ``hp<i>_rd_axi`` to S_AXI_HP<i>_FPD's read
channels, ``hp0_wr_axi`` to S_AXI_HP0_FPD's write channels (the write channels of HP1/HP2 are tied idle).
"""

from __future__ import annotations

import re

from amaranth import ClockDomain, ClockSignal, Elaboratable, Instance, Module, ResetSignal, Signal
from amaranth.vendor import XilinxPlatform

from .top import K26_PART, AcceleratorConfig

NAME = "ternc_kv260"
BD = "ternc_ps"
CTRL_BASE = 0xA000_0000
CTRL_RANGE = 0x1_0000
PS_VLNV = "xilinx.com:ip:zynq_ultra_ps_e"
# S_AXI_HP0..3_FPD are the PS configuration's SAXIGP2..5
HP_GP = {0: 2, 1: 3, 2: 4, 3: 5}


# ---------------------------------------------------------------------------------------------- Tcl
class TclSub:
    """A command substitution ``[cmd args]``: a Tcl word that is evaluated, never quoted."""

    def __init__(self, *words):
        self.words = words

    def render(self) -> str:
        return "[" + " ".join(tcl_word(w) for w in self.words) + "]"


class TclBody:
    """A braced script or expression: ``{...}`` (a Tcl builder's commands, or an expression whose
    words are rendered by tcl_word), passed to if/foreach without substitution."""

    def __init__(self, *parts):
        self.parts = parts

    def render(self) -> str:
        if len(self.parts) == 1 and isinstance(self.parts[0], Tcl):
            body = "\n".join("    " + line for line in self.parts[0].lines)
            return "{\n" + body + "\n}"
        return "{" + " ".join(tcl_word(w) for w in self.parts) + "}"


class TclVar:
    def __init__(self, name: str):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"bad Tcl variable name {name!r}")
        self.name = name

    def render(self) -> str:
        return "$" + self.name


_BARE = re.compile(r"[A-Za-z0-9_.,:/+=@%*-]+")


def tcl_word(w) -> str:
    """One Tcl word: substitutions and variables as such, lists as a quoted list, anything else
    quoted so that Tcl reads back exactly the string (braces when they are balanced and nothing
    ends in a backslash, else backslash escapes)."""
    if isinstance(w, (TclSub, TclVar, TclBody)):
        return w.render()
    if isinstance(w, (list, tuple)):
        return "{" + " ".join(tcl_word(x) for x in w) + "}" if all(
            not isinstance(x, (TclSub, TclVar)) for x in w) else "[list " + " ".join(tcl_word(x) for x in w) + "]"
    if isinstance(w, bool):
        w = int(w)
    s = str(w)
    if _BARE.fullmatch(s):
        return s
    depth = 0
    balanced = True
    for ch in s:
        depth += ch == "{"
        depth -= ch == "}"
        balanced &= depth >= 0
    if balanced and depth == 0 and "\\" not in s and "\n" not in s:
        return "{" + s + "}"
    return "".join("\\" + ch if ch in '{}[]$"\\; ' else ("\\n" if ch == "\n" else ch) for ch in s)


class Tcl:
    """Collects Tcl commands, each from words (quoted by :func:`tcl_word`)."""

    def __init__(self):
        self.lines: list[str] = []

    def __call__(self, *words) -> "Tcl":
        self.lines.append(" ".join(tcl_word(w) for w in words))
        return self

    def set(self, var: str, value) -> TclVar:
        self("set", TclVar(var).name, value)
        return TclVar(var)

    def comment(self, text: str) -> "Tcl":
        self.lines.extend("# " + line for line in text.splitlines())
        return self

    def config(self, obj, props: dict) -> "Tcl":
        """set_property -dict [list CONFIG.K V ...] obj (sorted: deterministic)."""
        flat = []
        for k in sorted(props):
            flat += [f"CONFIG.{k}", props[k]]
        return self("set_property", "-dict", TclSub("list", *flat), obj)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _pins(path: str) -> TclSub:
    return TclSub("get_bd_pins", path)


def _intf_pins(path: str) -> TclSub:
    return TclSub("get_bd_intf_pins", path)


# ------------------------------------------------------------------------------------ block design
def axi_port_props(protocol: str, data_bits: int, addr_bits: int, clock_mhz: float, id_bits: int = 0) -> dict:
    """Interface properties of an external AXI port: only the signals the accelerator has (no lock,
    QoS, region, user)."""
    p = {"PROTOCOL": protocol, "DATA_WIDTH": data_bits, "ADDR_WIDTH": addr_bits,
         "FREQ_HZ": int(round(clock_mhz * 1e6)), "HAS_LOCK": 0, "HAS_QOS": 0, "HAS_REGION": 0,
         "HAS_PROT": 1, "HAS_BRESP": 1, "HAS_RRESP": 1, "HAS_WSTRB": 1}
    if protocol == "AXI4":
        p.update({"ID_WIDTH": id_bits, "HAS_BURST": 1, "HAS_CACHE": 1, "ARUSER_WIDTH": 0, "AWUSER_WIDTH": 0,
                  "MAX_BURST_LENGTH": 16})
    else:
        p.update({"HAS_BURST": 0, "HAS_CACHE": 0})
    return p


def block_design_tcl(cfg: AcceleratorConfig, hp_ports: int | None = None) -> str:
    """ps_bd.tcl: the PS block design the accelerator sits in (sourced by Amaranth's project script
    after the sources are read; creates the BD, its wrapper ``ternc_ps_wrapper`` and the handoff)."""
    n_hp = cfg.hp_ports if hp_ports is None else hp_ports
    if not 1 <= n_hp <= 4:
        raise ValueError(f"the K26 PS has 4 S_AXI_HP*_FPD ports, not {n_hp}")
    t = Tcl()
    t.comment(f"ternc: KV260 block design -- Zynq UltraScale+ PS, pl_clk0 {cfg.clock_mhz:g} MHz, register file on\n"
              f"M_AXI_HPM0_FPD at 0x{CTRL_BASE:08X}, {n_hp} AXI4 masters on S_AXI_HP0..{n_hp - 1}_FPD. Generated by\n"
              "ternc.backends.fpga.vivado (not run through Vivado by ternc).")
    # the KV260 board files (Vivado's board store), when installed: the PS gets the SOM's DDR/MIO preset
    kv260_boards = TclSub("get_board_parts", "-quiet", "xilinx.com:kv260_som:*")
    have_board = TclBody(TclSub("llength", kv260_boards))
    t("if", have_board, TclBody(Tcl()("set_property", "board_part", TclSub("lindex", kv260_boards, "end"),
                                      TclSub("current_project"))))
    t("create_bd_design", BD)
    ps = t.set("ps", TclSub("create_bd_cell", "-type", "ip", "-vlnv", PS_VLNV, "zynq_ultra_ps_e_0"))
    t("if", have_board, TclBody(Tcl()("apply_bd_automation", "-rule", "xilinx.com:bd_rule:zynq_ultra_ps_e",
                                      "-config", TclBody("apply_board_preset", 1),
                                      TclSub("get_bd_cells", "zynq_ultra_ps_e_0"))))
    ps_cfg = {"PSU__USE__M_AXI_GP0": 1, "PSU__MAXIGP0__DATA_WIDTH": 32, "PSU__USE__M_AXI_GP1": 0,
              "PSU__USE__M_AXI_GP2": 0, "PSU__FPGA_PL0_ENABLE": 1,
              "PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ": f"{cfg.clock_mhz:g}"}
    for i in range(n_hp):
        ps_cfg[f"PSU__USE__S_AXI_GP{HP_GP[i]}"] = 1
        ps_cfg[f"PSU__SAXIGP{HP_GP[i]}__DATA_WIDTH"] = cfg.axi_data_bits
    t.config(ps, ps_cfg)
    # clock and reset
    t("create_bd_port", "-dir", "O", "-type", "clk", "pl_clk0")
    t("create_bd_port", "-dir", "O", "-type", "rst", "pl_resetn")
    busif = ":".join(["M_AXI_CTRL"] + [f"S_AXI_HP{i}" for i in range(n_hp)])
    t.config(TclSub("get_bd_ports", "pl_clk0"), {"ASSOCIATED_BUSIF": busif, "ASSOCIATED_RESET": "pl_resetn",
                                                  "FREQ_HZ": int(round(cfg.clock_mhz * 1e6))})
    rst = t.set("rst", TclSub("create_bd_cell", "-type", "ip", "-vlnv", "xilinx.com:ip:proc_sys_reset", "rst_pl0"))
    _ = rst
    clk_sinks = ["rst_pl0/slowest_sync_clk", "zynq_ultra_ps_e_0/maxihpm0_fpd_aclk", "smartconnect_ctrl/aclk"]
    clk_sinks += [f"zynq_ultra_ps_e_0/saxihp{i}_fpd_aclk" for i in range(n_hp)]
    # control: HPM0 (AXI4) -> SmartConnect (protocol conversion) -> the register file (AXI4-Lite)
    sc = t.set("sc", TclSub("create_bd_cell", "-type", "ip", "-vlnv", "xilinx.com:ip:smartconnect",
                            "smartconnect_ctrl"))
    t.config(sc, {"NUM_SI": 1, "NUM_MI": 1})
    t("create_bd_intf_port", "-mode", "Master", "-vlnv", "xilinx.com:interface:aximm_rtl:1.0", "M_AXI_CTRL")
    t.config(TclSub("get_bd_intf_ports", "M_AXI_CTRL"),
             axi_port_props("AXI4LITE", 32, (CTRL_RANGE - 1).bit_length(), cfg.clock_mhz))
    t("connect_bd_intf_net", _intf_pins("zynq_ultra_ps_e_0/M_AXI_HPM0_FPD"), _intf_pins("smartconnect_ctrl/S00_AXI"))
    t("connect_bd_intf_net", _intf_pins("smartconnect_ctrl/M00_AXI"), TclSub("get_bd_intf_ports", "M_AXI_CTRL"))
    # data: one AXI4 master of the accelerator per HP port
    for i in range(n_hp):
        t("create_bd_intf_port", "-mode", "Slave", "-vlnv", "xilinx.com:interface:aximm_rtl:1.0", f"S_AXI_HP{i}")
        t.config(TclSub("get_bd_intf_ports", f"S_AXI_HP{i}"),
                 axi_port_props("AXI4", cfg.axi_data_bits, 40, cfg.clock_mhz, id_bits=1))
        t("connect_bd_intf_net", TclSub("get_bd_intf_ports", f"S_AXI_HP{i}"),
          _intf_pins(f"zynq_ultra_ps_e_0/S_AXI_HP{i}_FPD"))
    t("connect_bd_net", _pins("zynq_ultra_ps_e_0/pl_clk0"), TclSub("get_bd_ports", "pl_clk0"),
      *[_pins(p) for p in clk_sinks])
    t("connect_bd_net", _pins("zynq_ultra_ps_e_0/pl_resetn0"), _pins("rst_pl0/ext_reset_in"))
    t("connect_bd_net", _pins("rst_pl0/peripheral_aresetn"), TclSub("get_bd_ports", "pl_resetn"),
      _pins("smartconnect_ctrl/aresetn"))
    # addresses: the register file at a fixed place (the driver's default), the HP ports see all DDR
    t("assign_bd_address", "-offset", f"0x{CTRL_BASE:08X}", "-range", f"0x{CTRL_RANGE:X}",
      "-target_address_space", TclSub("get_bd_addr_spaces", "zynq_ultra_ps_e_0/Data"),
      TclSub("get_bd_addr_segs", "M_AXI_CTRL/Reg"), "-force")
    t("assign_bd_address")
    t("validate_bd_design")
    t("save_bd_design")
    bd = t.set("bd", TclSub("get_files", f"{BD}.bd"))
    t("set_property", "synth_checkpoint_mode", "None", bd)
    t("generate_target", "all", bd)
    t("add_files", "-norecurse", TclSub("make_wrapper", "-files", bd, "-top"))
    t.set("ternc_hwh", TclSub("lindex", TclSub("get_files", "-all", "-of_objects", bd, f"{BD}.hwh"), 0))
    return t.text()


def after_bitstream_tcl() -> str:
    """Copy the hardware handoff beside the .bit with the same stem (what pynq.Overlay looks for)."""
    t = Tcl()
    t("file", "copy", "-force", TclVar("ternc_hwh"), f"{NAME}.hwh")
    t("write_hw_platform", "-fixed", "-include_bit", "-force", f"{NAME}.xsa")
    return t.text()


# ----------------------------------------------------------------------------------- Amaranth side
class KV260Platform(XilinxPlatform):
    """The K26 SoM's programmable logic (xck26-sfvc784-2LV-c) for Amaranth's Vivado flow. No pins: on the
    KV260 the accelerator talks only to the PS (through the block design)."""

    device = "xck26"
    package = "sfvc784"
    speed = "2LV-c"
    default_clk = None
    resources = []
    connectors = []


def _axi_ports(prefix: str, iface) -> dict:
    """Instance port arguments connecting `iface` (an AXI interface object of the accelerator, whose
    signature is seen from the accelerator: Out = it drives the signal) to the BD wrapper's
    `prefix_<signal>` ports (the accelerator's outputs are the wrapper's inputs)."""
    from amaranth.lib.wiring import Flow

    args = {}
    for name, member in iface.signature.members.items():
        args[("i_" if member.flow == Flow.Out else "o_") + f"{prefix}_{name}"] = getattr(iface, name)
    return args


def hp_interfaces(accel) -> list[dict]:
    """Per HP port, the accelerator's AXI manager interfaces on it: ``{"rd": iface, "wr": iface}`` from
    its members ``hp<i>_rd_axi`` / ``hp<i>_wr_axi`` (hw/top.py naming)."""
    members = accel.signature.members
    ports = []
    for i in range(4):
        got = {ch: getattr(accel, f"hp{i}_{ch}_axi") for ch in ("rd", "wr") if f"hp{i}_{ch}_axi" in members}
        if not got:
            break
        ports.append(got)
    return ports


class Kv260System(Elaboratable):
    """Chip top: the PS block design's wrapper (an Instance: clock, reset, AXI ports) around the
    accelerator, whose sync domain is pl_clk0."""

    def __init__(self, accel, cfg: AcceleratorConfig):
        self.accel, self.cfg = accel, cfg
        self.hp = hp_interfaces(accel)
        self.clk = Signal(name="pl_clk0")
        self.ports: dict = {}

    def wrapper_ports(self) -> dict:
        a = self.accel
        ports = {"o_pl_clk0": self.clk, "o_pl_resetn": Signal(name="pl_resetn")}
        ctrl = _axi_ports("M_AXI_CTRL", a.axil)
        # the BD port is 16 address bits (64 KiB); the register file decodes its own low bits
        for k in ("o_M_AXI_CTRL_awaddr", "o_M_AXI_CTRL_araddr"):
            narrow = ctrl[k]
            wide = Signal((CTRL_RANGE - 1).bit_length(), name=k[2:])
            ctrl[k] = wide
            self._narrow.append((narrow, wide))
        ports.update(ctrl)
        from ...hw.axi import axi4_write_signature

        for i, chans in enumerate(self.hp):
            for ch, iface in chans.items():
                ports.update(_axi_ports(f"S_AXI_HP{i}", iface))
            if "wr" not in chans:   # a read-only port: the wrapper's write channel tied idle (zero inputs)
                rd = chans["rd"]
                sig = axi4_write_signature(len(rd.araddr), len(rd.rdata), len(rd.arid))
                for name, member in sig.members.items():
                    if member.flow.name == "Out":
                        ports[f"i_S_AXI_HP{i}_{name}"] = Signal(member.shape, name=f"hp{i}_idle_{name}")
        return ports

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = ClockDomain("sync")
        self._narrow = []
        self.ports = self.wrapper_ports()
        m.submodules.ps = Instance(f"{BD}_wrapper", **self.ports)
        m.d.comb += [ClockSignal("sync").eq(self.clk), ResetSignal("sync").eq(~self.ports["o_pl_resetn"])]
        for narrow, wide in self._narrow:
            m.d.comb += narrow.eq(wide[:len(narrow)])
        m.submodules.accel = self.accel
        if platform is not None:
            platform.add_clock_constraint(self.clk, self.cfg.clock_mhz * 1e6)
        return m


def wrapper_stub(system: Kv260System) -> str:
    """A Verilog module with the BD wrapper's ports (from the Instance): lets Verilator lint the top
    here, and documents the names the block design must produce."""
    lines, names = [], []
    for key, sig in system.ports.items():
        direction = {"i": "input", "o": "output"}[key[0]]
        name = key[2:]
        width = len(sig)
        lines.append(f"  {direction} wire {'[' + str(width - 1) + ':0] ' if width > 1 else ''}{name}")
        names.append(name)
    body = ",\n".join(lines)
    outs = "\n".join(f"  assign {k[2:]} = '0;" for k in system.ports if k[0] == "o")
    return (f"// lint stub of the Vivado block design wrapper (ps_bd.tcl generates the real one)\n"
            f"/* verilator lint_off UNUSEDSIGNAL */\nmodule {BD}_wrapper (\n{body}\n);\n{outs}\nendmodule\n"
            f"/* verilator lint_on UNUSEDSIGNAL */\n")


def build_plan(cfg: AcceleratorConfig, accel=None) -> tuple[dict[str, str], Kv260System]:
    """The Vivado build files (name -> text) for the KV260, from Amaranth's Xilinx platform
    (`prepare`, Vivado not run), plus ps_bd.tcl and the lint stub. Deterministic. `accel`: default the
    composed top for `cfg` (top.accelerator_component)."""
    from .top import accelerator_component

    system = Kv260System(accel if accel is not None else accelerator_component(cfg), cfg)
    platform = KV260Platform(toolchain="Vivado")
    plan = platform.prepare(
        system, name=NAME,
        script_after_read="source [file join [file dirname [info script]] ps_bd.tcl]",
        script_after_bitstream=after_bitstream_tcl(),
        synth_design_opts="-flatten_hierarchy rebuilt",
        emit_src=False)
    files = {}
    for name, content in sorted(plan.files.items()):
        if name.endswith((".bat", ".debug.v")):   # Windows script; a second copy of the Verilog
            continue
        files[name] = content if isinstance(content, str) else content.decode()
    files["ps_bd.tcl"] = block_design_tcl(cfg, len(system.hp))
    files[f"{BD}_wrapper_stub.v"] = wrapper_stub(system)
    files["README.md"] = (f"# KV260 bitstream build (generated by ternc; not run through Vivado by ternc)\n\n"
                          f"    sh build_{NAME}.sh      # Vivado on PATH: writes {NAME}.bit, {NAME}.hwh, {NAME}.xsa\n\n"
                          f"Part {K26_PART}, pl_clk0 {cfg.clock_mhz:g} MHz ({NAME}.xdc constrains the accelerator's "
                          f"clock net to it). {NAME}.tcl is Amaranth's Vivado script; it sources ps_bd.tcl (the PS "
                          f"block design) after reading {NAME}.v. {BD}_wrapper_stub.v is for linting only: do not "
                          f"add it to the project.\n")
    return files, system
