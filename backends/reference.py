"""The reference target's backend: the transformed module itself, as a `.ternc` file (IR text plus
weights, checksummed by ir/serialize.py), run by the IR interpreter (the semantics)."""

from __future__ import annotations

from pathlib import Path

from ..ir.core import Module
from .artifact import Artifact


class ModuleRunner:
    """A loaded `.ternc` file on the interpreter: `.module`, `.meta`, `.run(entry, inputs)`."""

    def __init__(self, module: Module):
        from ..ir.interp import Interpreter

        self.module = module
        self.meta = module.meta
        self._interp = Interpreter(module)

    def run(self, entry, inputs):
        return self._interp.run(entry, inputs)


def build_artifact(module: Module, target: str, out: Path, *, pipeline: str | None = None) -> Artifact:
    from ..ir.serialize import save_module

    path = Path(save_module(module, out))
    return Artifact(path, {"target": {"name": target}, "model": {"name": module.name}, "pipeline": pipeline})


def load_artifact(path: Path, manifest: dict | None = None) -> ModuleRunner:
    from ..ir.serialize import load_module

    return ModuleRunner(load_module(path))
