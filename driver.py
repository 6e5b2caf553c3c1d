"""compile_to: the `ternc compile` flow (pass pipeline, then the target's build)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from .ir.core import Module



class TargetError(ValueError):
    pass


def compile_to(module: Module, target: str = "reference", passes: str | None = None, out: str | None = None,
               context: int = 512, source: str = "", mcpu: str | None = None) -> str:
    """Run the target's pipeline (or `passes`), then write the target's output. Returns a summary."""
    from .passes.pipeline import PIPELINES
    from .passes.pipeline import compile as run_pipeline

    if target not in PIPELINES:  # the targets are the pipelines' keys: one list
        raise TargetError(f"unknown target {target!r}; choose one of {', '.join(PIPELINES)}")
    if target not in ("reference", "kv260") and "tvm" in sys.modules:  # (importing runtime would load tvm)
        from .backends.tvm.runtime import require_compiler

        require_compiler(target)

    t0 = time.time()
    # the pipeline prints its per-pass table (nodes, weight bytes, KV bytes/token) as it runs
    module, _report = run_pipeline(module, target=target, passes=passes,
                                   report=lambda text: print(text, file=sys.stderr))
    module = module.replace(meta={**module.meta, "max_context": context})
    lines = []
    if target == "reference":
        from .ir.serialize import save_module

        path = Path(out or f"out/{module.name}.ternc")
        save_module(module, path)
        lines.append(f"compiled @{module.name} for target '{target}' in {time.time() - t0:.1f}s")
        lines.append(f"  wrote {path} ({path.stat().st_size / 1e6:.2f} MB): the transformed module (IR text + "
                     f"weights); run it with `ternc generate {path} --prompt-ids 1,2,3`")
        return "\n".join(lines)
    if target == "kv260":
        raise TargetError("target 'kv260': the FPGA backend (schedule + Amaranth top + bitstream inputs) is not "
                          "available yet; the TLMM engine itself is in ternc.hw (see README)")
    from .backends.tvm.build import build_artifact

    out_dir = Path(out or f"out/{module.name}-{target}")
    extra = {"mcpu": mcpu} if mcpu else {}
    art = build_artifact(module, target=target, out_dir=out_dir,
                         pipeline=passes or f"default:{target}", source=source, **extra)
    lines.append(f"compiled @{module.name} for target '{target}' in {time.time() - t0:.1f}s")
    lines.append(f"  wrote artifact {out_dir}/ :")
    for p in sorted(q for q in Path(out_dir).rglob("*") if q.is_file()):
        lines.append(f"    {str(p.relative_to(out_dir)):<40} {p.stat().st_size / 1e6:8.2f} MB")
    lines.append(f"  run it: ternc generate {out_dir} --prompt-ids 1,2,3 -n 16")
    _ = art
    return "\n".join(lines)
