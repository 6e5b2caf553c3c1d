"""TVM backend: lower ternc IR to Relax + TensorIR (lowering/, kernels/), compile (build.py),
run artifacts on the TVM runtime only (runtime.py); per-target differences are data (target.py).
Submodules are imported lazily so that the runtime path never loads the TVM compiler library.

The target table (`ternc.targets`) calls the two entry points below (the backend contract)."""

from __future__ import annotations


def build_artifact(module, target: str, out, **options):
    """Compile `module` for TVM target `target` into the artifact folder `out` -> artifact.Artifact."""
    import sys

    if "tvm" in sys.modules:  # (importing runtime.py first would itself load tvm without its compiler)
        from .runtime import require_compiler

        require_compiler(target)
    from .build import build_artifact as build

    return build(module, target, out, **options)


def load_artifact(path, manifest: dict, **options):
    """A Runner for a verified artifact (manifest already checked by backends/artifact.read_manifest)."""
    from .runtime import load_artifact as load

    return load(path, manifest, **options)
