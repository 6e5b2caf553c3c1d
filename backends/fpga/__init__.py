"""The kv260 FPGA backend: schedule (IR -> program), images (DDR map, TL2 weight beats), top (RTL
units, resources, Vivado inputs), artifact, host driver, functional executor. See README "FPGA backend".

The two functions below are the backend contract of the target table (branch `targets`: a row's
``backend`` module exposes ``build_artifact`` / ``load_artifact``); set kv260's row to
``backend="ternc.backends.fpga"`` when that table is on main.
"""

from __future__ import annotations


def build_artifact(module, target: str, out, **options):
    """Write the kv260 artifact of a post-pipeline module at ``out`` (options: context, clock_mhz,
    lm_head, engine, budget, synth, rtl, pipeline (recorded), source)."""
    import json

    from ..artifact import Artifact
    from .build import TARGET
    from .build import build_artifact as build

    if target != TARGET:
        raise ValueError(f"the FPGA backend builds target {TARGET!r}, not {target!r}")
    if "pipeline" in options:
        options["pipeline_desc"] = options.pop("pipeline")
    options.setdefault("context", int(module.meta.get("max_context", 512)))
    path = build(module, out, **options)
    return Artifact(path, json.loads((path / "manifest.json").read_text()),
                    json.loads((path / "report.json").read_text()))


def load_artifact(path, manifest=None, **options):
    """A Runner (``.meta``, ``.run(entry, inputs)``) over the artifact's program on the functional
    executor (checksums verified by ``build.load_artifact``)."""
    from .build import load_runner

    if options:
        raise ValueError(f"kv260 artifacts take no load options, got {sorted(options)}")
    return load_runner(path)
