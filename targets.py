"""The targets, as data: one table that `ternc.compile`, `ternc.load_artifact` and the CLI read.

Each row (`Target`) names a target and says
  - `pipeline`: its pass pipeline (a plain list from passes/pipeline.py),
  - `capabilities`: which op attribute values its backend implements (ir/capabilities.py); a module
    using anything else is refused before any build, naming the node and attribute,
  - `backend`: the module that builds and loads its artifacts, imported only when needed.

Adding a target = one row here (plus its pipeline list in passes/pipeline.py if it needs a new one).
A backend module is any module with two functions, the backend contract:

    build_artifact(module: Module, target: str, out: Path, **options) -> backends.artifact.Artifact
        Compile the post-pass `module` (already checked against the row's capabilities) and write
        the artifact folder `out` with `backends.artifact.write_artifact` (checksummed manifest,
        crash-safe replace, unhashed report.json). `ternc.compile` passes `pipeline` (the spec
        string it ran) plus the caller's options; refuse unknown ones.
    load_artifact(path: Path, manifest: dict, **options) -> Runner
        Load a folder whose common manifest keys and file checksums `read_manifest` has verified;
        check the backend's own manifest keys; return a Runner (`.meta`, `.run(entry, inputs)`).

The FPGA backend (`ternc.backends.fpga`) builds kv260: program, DDR images, RTL units, resources,
Vivado script; its loader runs the program on the functional executor.
The reference target's backend (backends/reference.py) writes the transformed module as a `.ternc`
file and runs it on the interpreter.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .backends.tvm.target import CAPABILITIES as TVM_CAPABILITIES
from .ir.capabilities import EVERYTHING, Capabilities
from .ir.core import Module
from .passes import pipeline as P


class TargetError(ValueError):
    pass


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    pipeline: tuple[str, ...]
    capabilities: Capabilities
    backend: str | None  # module implementing build/load (see the module docstring); None: not yet
    missing_backend: str = ""  # why `backend` is None (the error `build`/`load` raise)
    default_out: Callable[[Module], str] = field(default=lambda m: f"out/{m.name}")
    artifact: str = "folder"  # what `build` writes: "folder" (an artifact) or "file" (.ternc)
    build_options: tuple[str, ...] = ()  # target-specific build options its backend takes (CLI flags)

    def _backend(self):
        if self.backend is None:
            raise TargetError(f"target {self.name!r}: {self.missing_backend}")
        return importlib.import_module(self.backend)

    def check(self, module: Module) -> None:
        """Refuse (ir.capabilities.UnsupportedError) what this target's backend does not implement."""
        self.capabilities.check(module, f"target {self.name!r}")

    def build(self, module: Module, out: str | os.PathLike, **options):
        """Write `module` (already through the pipeline) as this target's artifact at `out`."""
        self.check(module)
        return self._backend().build_artifact(module, self.name, Path(out), **options)

    def load(self, path: str | os.PathLike, manifest: dict | None = None, **options):
        """A Runner for an artifact of this target (`manifest`: its verified manifest)."""
        return self._backend().load_artifact(Path(path), manifest, **options)


_TVM = "ternc.backends.tvm"
TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("reference", "the IR interpreter: writes the transformed module (.ternc) for `ternc generate`",
           tuple(P.REFERENCE_PIPELINE), EVERYTHING, "ternc.backends.reference", artifact="file",
           default_out=lambda m: f"out/{m.name}.ternc"),
    Target("cpu", "TVM/LLVM for this machine's CPU (or --mcpu), I2_S ternary kernels",
           tuple(P.TVM_PIPELINE), TVM_CAPABILITIES, _TVM, default_out=lambda m: f"out/{m.name}-cpu"),
    Target("aarch64", "TVM/LLVM cross-compiled for aarch64 Linux boards (needs aarch64-linux-gnu-gcc)",
           tuple(P.TVM_PIPELINE), TVM_CAPABILITIES, _TVM, default_out=lambda m: f"out/{m.name}-aarch64"),
    Target("cuda", "TVM CUDA (sm_90), W2A8 dp4a kernels, CUDA graphs; device code prebuilt with nvcc",
           tuple(P.TVM_PIPELINE), TVM_CAPABILITIES, _TVM, default_out=lambda m: f"out/{m.name}-cuda"),
    # The TLMM engine computes in the hw-numerics formats, which the interpreter defines bit-exactly.
    Target("kv260", "Xilinx KV260 TLMM accelerator (TL2 weights, FX numerics): program, DDR images, RTL units",
           tuple(P.KV260_PIPELINE), EVERYTHING, "ternc.backends.fpga",
           build_options=("engine", "clock_mhz", "lm_head", "synth"),
           default_out=lambda m: f"out/{m.name}-kv260"),
)}


def get(name: str) -> Target:
    if isinstance(name, Target):
        return name
    try:
        return TARGETS[name]
    except (KeyError, TypeError):
        raise TargetError(f"unknown target {name!r}; choose one of {', '.join(TARGETS)}") from None


def load_artifact(path: str | os.PathLike, **options):
    """Verify an artifact folder (manifest schema, target name, sha256 of every file) and load it
    with its target's backend; a `.ternc` file loads on the interpreter."""
    from .backends.artifact import read_manifest

    p = Path(path)
    if p.is_file() and p.suffix == ".ternc":
        return TARGETS["reference"].load(p, None, **options)
    manifest = read_manifest(p, known_targets=TARGETS)
    return TARGETS[manifest["target"]["name"]].load(p, manifest, **options)


def describe() -> str:
    """One line per target, for help texts."""
    return "\n".join(f"  {t.name:<10} {t.description}" for t in TARGETS.values())


def names() -> list[str]:
    return list(TARGETS)
