"""Logic depth and an fmax estimate from a mapped Yosys netlist (``write_json``), no Amaranth import
(runs wherever a netlist is). Used by hw/synth.py and bench/hw_figures.py.
"""

from __future__ import annotations

_FF = ("FDRE", "FDSE", "FDCE", "FDPE")


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
