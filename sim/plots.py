"""PNG plots of the dataflow simulator: a roofline (per instruction kind: arithmetic intensity vs
attained ops/cycle against the engine and DDR ceilings) and a timeline of one call (one lane per
unit, DDR busy drawn beneath). matplotlib with the Agg backend (no display)."""

from __future__ import annotations

from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def roofline_png(model, rep: dict, path: Path) -> None:
    """x: ternary MACs per DDR byte; y: MACs per cycle. Points: each phase (prefill p, decode at each
    context) as a whole, plus its LINEAR / ATTN instructions."""
    from ternc.backends.fpga.isa import Opcode, unpack_heads, unpack_kn

    plt = _plt()
    cfg = model.cfg
    peak = cfg.group * cfg.tables * cfg.columns * cfg.engines
    bw = model.ddr.bytes_per_cycle
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=90)
    xs = [10 ** (i / 20) for i in range(-60, 81)]
    ax.plot(xs, [min(peak, x * bw) for x in xs], "k-", lw=2, label=f"roof: engine {peak} MAC/cycle, DDR {bw:.1f} B/cycle")

    def macs(ins, n, pos):
        if ins.op == Opcode.LINEAR:
            k, nn = unpack_kn(ins["kn"])
            return n * k * nn * (2 if ins.epilogue in (3, 4) else 1)
        if ins.op == Opcode.ATTN:
            hq, _, d = unpack_heads(ins["heads"])
            return hq * 2 * d * (n * pos + n * (n + 1) / 2)
        return 0

    pts = [("prefill 128", 128, 0, "tab:blue"), ("decode @64", 1, 63, "tab:orange"),
           ("decode @1024", 1, 1023, "tab:red")]
    for label, n, pos, color in pts:
        if pos + n > rep["context_compiled"]:
            continue
        r = model.call(n, pos)
        tm = tb = 0.0
        for c in r.costs:
            if c.unit == "host":
                continue
            m = macs(model.instrs[c.idx], n, pos)
            b = sum(v for k, v in c.bytes.items() if k != "host_lm_head")
            if m and b:
                ax.scatter([m / b], [m / max(c.cycles, 1)], s=10, color=color, alpha=0.35)
            tm += m * c.weight
            tb += b * c.weight
        ax.scatter([tm / tb], [tm / r.accel_cycles], s=80, color=color, marker="*", edgecolor="k",
                   label=f"{label}: whole call (dots: instructions)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("MACs per DDR byte")
    ax.set_ylabel("MACs per cycle")
    ax.set_title(f"roofline: {rep.get('model', '')} on {rep['board']} @ {cfg.clock_mhz:g} MHz")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def timeline_png(model, path: Path, n: int, pos: int) -> None:
    plt = _plt()
    r = model.call(n, pos)
    lanes = ["linear", "norm", "attn", "dma", "ddr", "host"]
    colors = {"linear": "tab:blue", "norm": "tab:green", "attn": "tab:red", "dma": "tab:gray",
              "ddr": "tab:orange", "host": "tab:purple"}
    fig, ax = plt.subplots(figsize=(9, 3.2), dpi=90)
    f = 1e3 / (model.cfg.clock_mhz * 1e6)   # cycles -> ms
    t_end = r.accel_cycles
    for c in r.costs:
        if c.unit == "host":
            ax.broken_barh([(t_end * f, c.cycles * f)], (lanes.index("host") - 0.4, 0.8), color=colors["host"])
            continue
        dur = c.cycles * c.weight
        if c.compute:
            ax.broken_barh([(c.start * f, dur * f * c.compute / c.cycles)], (lanes.index(c.unit) - 0.4, 0.8),
                           color=colors[c.unit])
        if c.ddr:
            ax.broken_barh([(c.start * f, dur * f * c.ddr / c.cycles)], (lanes.index("ddr") - 0.4, 0.8),
                           color=colors["ddr"], alpha=0.7)
    ax.set_yticks(range(len(lanes)))
    ax.set_yticklabels(lanes)
    ax.set_xlabel("ms")
    kind = f"prefill of {n} tokens" if n > 1 else f"decode step at context {pos + 1}"
    scaled = f"; layer instructions x{model.layer_scale:g}" if model.layer_scale != 1 else ""
    ax.set_title(f"timeline: {kind} ({r.seconds * 1e3:.2f} ms; bars = busy part of each instruction{scaled})")
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
