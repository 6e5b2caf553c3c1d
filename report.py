"""`ternc report ART`: one self-contained HTML page about a compiled artifact (or a .ternc module).

Sections: the model and target; the pass table `ternc compile` ran (nodes, weight bytes, KV bytes
per token, pass notes); the files with sizes and sha256; the kernel choice per linear shape; the
decoder entry points; target figures (kv260 resources and projections) when the metadata has them.
Plain HTML with inline CSS, no scripts, so it opens anywhere and diffs cleanly.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

_CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:70em;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f2f2f2}td.n{text-align:right;font-variant-numeric:tabular-nums}code{font-size:.95em}
.muted{color:#777}"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _bytes(n) -> str:
    if not isinstance(n, (int, float)):
        return _e(n)
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return f"{int(n)} B"


def _table(head: list[str], rows: list[list[Any]], numeric: set[int] = frozenset()) -> str:
    if not rows:
        return '<p class="muted">(none)</p>'
    out = ["<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    for r in rows:
        out.append("<tr>" + "".join(f'<td{" class=n" if i in numeric else ""}>{c}</td>' for i, c in enumerate(r))
                   + "</tr>")
    return "".join(out) + "</table>"


def _pass_rows(meta: dict) -> list[list[str]]:
    rows = []
    for r in meta.get("pass_report") or []:
        notes = " ".join(f"{k}={v}" for k, v in (r.get("stats") or {}).items() if v)
        rows.append([f"<code>{_e(r.get('spec', r.get('name')))}</code>",
                     f"{r.get('nodes_before')} &rarr; {r.get('nodes_after')}",
                     f"{_bytes(r.get('weight_bytes_before'))} &rarr; {_bytes(r.get('weight_bytes_after'))}",
                     f"{_e(r.get('kv_bytes_per_token_before'))} &rarr; {_e(r.get('kv_bytes_per_token_after'))}",
                     _e(notes)])
    return rows


def _kernel_rows(choices) -> list[list[str]]:
    rows = []
    items = choices.items() if isinstance(choices, dict) else enumerate(choices or [])
    for key, val in items:
        rows.append([f"<code>{_e(key)}</code>", _e(json.dumps(val) if not isinstance(val, str) else val)])
    return rows


def _build_seconds(path: Path, man: dict):
    from .backends.artifact import read_report

    rep = read_report(path)
    return rep.get("compile_seconds", rep.get("seconds", man.get("compile_seconds", "?")))


def render(source: str | os.PathLike) -> str:
    """The report page for an artifact folder or a .ternc module file."""
    p = Path(source)
    parts = []
    if p.is_dir():
        from .backends.artifact import read_manifest

        man = read_manifest(p)
        meta = man["model"].get("meta") or {}
        title = f"{man['model']['name']} for {man['target']['name']}"
        summary = [["target", _e(man["target"]["name"])], ["TVM target", f"<code>{_e(man['target'].get('tvm'))}</code>"],
                   ["pipeline", f"<code>{_e(man.get('pipeline'))}</code>"],
                   ["ternc / TVM", _e(f"{man.get('ternc_version')} / {man.get('tvm_version')}")],
                   ["compile time", _e(f"{_build_seconds(p, man)} s")],
                   ["total size", _bytes(sum(f["bytes"] for f in man["files"].values()))]]
        files = [[f"<code>{_e(k)}</code>", _bytes(v["bytes"]), f"<code>{_e(v['sha256'][:16])}…</code>"]
                 for k, v in sorted(man["files"].items())]
        kernels = man.get("kernels") or {}
        entries = [[f"<code>{_e(k)}</code>", _e(", ".join(i.get("name", "?") if isinstance(i, dict) else str(i)
                                                          for i in (v.get("inputs") or [])))]
                   for k, v in (man.get("entries") or {}).items()]
    else:
        from .ir.serialize import load_module

        m = load_module(p)
        meta = dict(m.meta)
        title = f"{m.name} (module file)"
        counts: dict[str, int] = {}
        for f in m.functions:
            for n in f.nodes:
                counts[n.op.value] = counts.get(n.op.value, 0) + 1
        summary = [["weights", _bytes(m.weight_bytes)],
                   ["ops", _e(", ".join(f"{k}×{v}" for k, v in sorted(counts.items())))]]
        files, kernels = [], {}
        entries = [[f"<code>@{_e(f.name)}</code>", _e(", ".join(v.name for v in f.params))] for f in m.functions]
    src = meta.get("source") or {}
    if src:
        summary.append(["source", _e(f"{src.get('kind', src.get('format'))}: {src.get('path', '')}")])
    if meta.get("ternary_weights"):
        tw = meta["ternary_weights"]
        summary.append(["ternary weights", _e(f"{tw.get('bound')} bound from the source file"
                                              + (" (activation quantization added)" if tw.get("act_quant_added")
                                                 else ""))])
    dec = meta.get("decoder") or {}
    if dec:
        summary.append(["decoder", _e(f"{len(dec.get('past', []) or [])} layers with a KV cache, context "
                                      f"{meta.get('max_context', dec.get('max_context', '?'))}")])
    parts.append(f"<h1>ternc report: {_e(title)}</h1>")
    parts.append("<h2>Summary</h2>" + _table(["", ""], summary))
    parts.append("<h2>Passes</h2>" + _table(["pass", "nodes", "weight bytes", "KV bytes/token", "notes"],
                                            _pass_rows(meta)))
    if kernels:
        parts.append(f"<h2>Kernel choices</h2><p>policy: <code>{_e(kernels.get('policy'))}</code></p>"
                     + _table(["linear", "choice"], _kernel_rows(kernels.get("choices"))))
    parts.append("<h2>Entry points</h2>" + _table(["entry", "inputs"], entries))
    if files:
        parts.append("<h2>Files</h2>" + _table(["file", "size", "sha256"], files, numeric={1}))
    for key in ("kv260", "fpga", "resources", "projection"):
        if key in meta:
            parts.append(f"<h2>Target figures: {_e(key)}</h2><pre>{_e(json.dumps(meta[key], indent=1))}</pre>")
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>ternc report: {_e(title)}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>\n")


def write_report(source: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    p = Path(source)
    if not p.exists():
        raise FileNotFoundError(f"{source}: no such artifact or module file")
    dest = Path(out) if out else (p / "report.html" if p.is_dir() else p.with_suffix(".html"))
    dest.write_text(render(p), encoding="utf-8")
    return dest


def token_divergence(ref: tuple, other: tuple, noise_floor: float) -> dict:
    """Where two greedy runs (tokens, per-step logits) part, and why. At the first differing step both
    engines had been fed the same tokens, so their logits differ by float rounding (summation order,
    fused kernels) as amplified by the model. It is called a near-tie when the reference's top-2
    margin is within the logit difference and the logits differ (relative L2, at that step and
    before) by no more than `noise_floor` -- what one ulp of input noise does to this model, measured
    in the same run; anything else is reported as a real difference."""
    import numpy as np

    ta, la = ref
    tb, lb = other
    d = next((i for i, (a, b) in enumerate(zip(ta, tb)) if a != b), None)
    if d is None:
        return {"same_tokens": True, "steps": len(ta)}
    a, b = la[d], lb[d]
    top2 = np.sort(a)[-2:]
    diff = float(np.max(np.abs(a - b)))
    margin = float(top2[1] - top2[0])
    rel = [float(np.linalg.norm(la[i] - lb[i]) / np.linalg.norm(la[i])) for i in range(d + 1)]
    tie = margin <= 2 * diff and max(rel) <= noise_floor
    return {"same_tokens": False, "first_differing_step": d, "tokens": [int(ta[d]), int(tb[d])],
            "ref_top2_margin": margin, "max_abs_logit_diff_at_step": diff,
            "max_rel_l2_logits_before": max(rel[:-1]) if d else None, "rel_l2_logits_at_step": rel[-1],
            "noise_floor": noise_floor,
            "reason": ("near-tie: the top-2 margin is within the engines' logit difference, which is within "
                       "the model's rounding sensitivity" if tie else
                       "logits differ by more than rounding explains")}
