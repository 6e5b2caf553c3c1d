"""compile_to: the `ternc compile` flow (pass pipeline, then the target's build)."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

from .ir.core import Module



class TargetError(ValueError):
    pass


def compile_to(module: Module, target: str = "reference", passes: str | None = None, out: str | None = None,
               context: int = 512, source: str = "", mcpu: str | None = None, tokenizer=None) -> str:
    """Run the target's pipeline (or `passes`), then write the target's output. Returns a summary."""
    from .passes.pipeline import PIPELINES
    from .passes.pipeline import compile as run_pipeline

    if target not in PIPELINES:  # the targets are the pipelines' keys: one list
        raise TargetError(f"unknown target {target!r}; choose one of {', '.join(PIPELINES)}")

    t0 = time.time()
    # the pipeline prints its per-pass table (nodes, weight bytes, KV bytes/token) as it runs
    module, _report = run_pipeline(module, target=target, passes=passes,
                                   report=lambda text: print(text, file=sys.stderr))
    # The per-pass table travels with the output (for `ternc report`); timings stay out (deterministic builds).
    rows = [{k: v for k, v in dataclasses.asdict(r).items() if k != "seconds"} for r in _report.rows]
    module = module.replace(meta={**module.meta, "max_context": context, "pass_report": rows})
    lines = []
    is_lm = "decoder" in module.meta
    run_hint = ("ternc generate {out} " + ("--prompt \"Hello\"" if tokenizer is not None else "--prompt-ids 1,2,3")
                + " -n 16") if is_lm else "ternc run {out} --input NAME=FILE.npy --out DIR"
    from .ir.ops import Op

    if target != "reference" and not any(n.op == Op.TernaryLinear for f in module.functions for n in f.nodes):
        lines.append("  note: no ternary weights were found, so every linear stays float (f32); ternc's packed "
                     "ternary kernels apply to BitNet-style graphs (see raise-ternary)")
    if target == "reference":
        from .ir.serialize import save_module

        path = Path(out or f"out/{module.name}.ternc")
        save_module(module, path)
        lines.append(f"compiled @{module.name} for target '{target}' in {time.time() - t0:.1f}s")
        lines.append(f"  wrote {path} ({path.stat().st_size / 1e6:.2f} MB): the transformed module (IR text + "
                     f"weights); run it with `{run_hint.format(out=path)}`")
        return "\n".join(lines)
    if target == "kv260":
        raise TargetError("target 'kv260': the FPGA backend (schedule + Amaranth top + bitstream inputs) is not "
                          "available yet; the TLMM engine itself is in ternc.hw (see README)")
    _refuse_unlowerable(module, target)
    from .backends.tvm.build import build_artifact

    out_dir = Path(out or f"out/{module.name}-{target}")
    extra = {"mcpu": mcpu} if mcpu else {}
    art = build_artifact(module, target=target, out_dir=out_dir,
                         pipeline=passes or f"default:{target}", source=source, **extra)
    if tokenizer is not None:
        from .backends.artifact import add_files
        from .tokenizer import TOKENIZER_DIR, tokenizer_files

        add_files(out_dir, {f"{TOKENIZER_DIR}/{k}": v for k, v in tokenizer_files(tokenizer).items()},
                  role=("tokenizer", f"{TOKENIZER_DIR}/tokenizer_config.json"))
    lines.append(f"compiled @{module.name} for target '{target}' in {time.time() - t0:.1f}s")
    lines.append(f"  wrote artifact {out_dir}/ :")
    for p in sorted(q for q in Path(out_dir).rglob("*") if q.is_file()):
        lines.append(f"    {str(p.relative_to(out_dir)):<40} {p.stat().st_size / 1e6:8.2f} MB")
    lines.append(f"  run it: {run_hint.format(out=out_dir)}")
    _ = art
    return "\n".join(lines)


def _refuse_unlowerable(module: Module, target: str) -> None:
    """Name every op the TVM backend cannot lower before building anything (not the first one mid-build)."""
    from .backends.tvm.lower import IMPLS, SYM_IMPLS

    missing: dict[str, list[str]] = {}
    for f in module.functions:
        for n in f.nodes:
            if n.op not in IMPLS and n.op not in SYM_IMPLS:
                missing.setdefault(n.op.value, []).append(f"@{f.name}:{n.label}")
    if missing:
        detail = "; ".join(f"{op} ({len(v)}x, e.g. {v[0]})" for op, v in sorted(missing.items()))
        raise TargetError(f"target '{target}': the TVM backend has no lowering for {len(missing)} op(s) in this "
                          f"model: {detail}. Nothing was built; the reference target (interpreter) runs it")
