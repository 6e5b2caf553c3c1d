"""What each fuzz case runs, inside a forked child of the zygote (see harness.py).

Each target returns normally for a correct result and lets a ternc error propagate for refused input.
Payloads are JSON values (bytes decoded). Absolute imports only: the zygote imports this file as a
top-level module (it runs harness.py as a script from this folder).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np


def warm_up() -> None:
    """Import once in the zygote what every child needs (children start warm)."""
    import onnx  # noqa: F401

    import ternc  # noqa: F401
    from ternc.frontend import onnx_import, raising  # noqa: F401
    from ternc.ir import interp, serialize  # noqa: F401
    from ternc.passes import pipeline, registry  # noqa: F401

    if os.environ.get("TERNC_FUZZ_TVM") == "1":
        from ternc.backends import artifact  # noqa: F401
        from ternc.backends.tvm import runtime  # noqa: F401


class _Scratch:
    def __enter__(self) -> Path:
        self.dir = Path(tempfile.mkdtemp(prefix="ternc-fuzz-"))
        return self.dir

    def __exit__(self, *exc):
        shutil.rmtree(self.dir, ignore_errors=True)


def onnx_load(payload: dict) -> None:
    """ternc.load on a (mutated) ONNX file, next to a small external-data file it may reference."""
    import ternc
    from ternc.ir import Module, verify

    with _Scratch() as d:
        (d / "model.onnx").write_bytes(payload["model"])
        (d / "w.bin").write_bytes(np.arange(64, dtype=np.float32).tobytes())
        m = ternc.load(d / "model.onnx")
        assert isinstance(m, Module)
        verify(m)


def module_load(payload: dict) -> None:
    """ternc.load on a (mutated) .ternc module file; a loaded module must verify and run."""
    import ternc
    from ternc.frontend.raising import random_inputs
    from ternc.ir import verify

    with _Scratch() as d:
        p = d / "m.ternc"
        p.write_bytes(payload["file"])
        m = ternc.load(p)
        verify(m)
        if payload.get("run"):
            fn = m.functions[0]
            try:
                inputs = random_inputs(fn, module=m)
            except Exception:  # inputs for a crafted signature may not be drawable: loading was the point
                return
            ternc.interpret(m, inputs, fn.name)


def _rehash(art: Path, manifest) -> None:
    if isinstance(manifest, dict) and isinstance(manifest.get("files"), dict):
        for rel, info in manifest["files"].items():
            p = art / rel if isinstance(rel, str) else None
            if p is not None and isinstance(info, dict) and "\0" not in rel:
                try:
                    if p.is_file():
                        info["sha256"] = hashlib.sha256(p.read_bytes()).hexdigest()
                        info["bytes"] = p.stat().st_size
                except OSError:
                    pass


def artifact_load(payload: dict) -> None:
    """load_artifact on a tampered copy of a real artifact; a loaded one must run prefill correctly."""
    import ternc

    with _Scratch() as d:
        art = d / "art"
        shutil.copytree(payload["seed"], art)
        if payload.get("weights_cut") is not None:
            w = art / "weights.safetensors"
            w.write_bytes(w.read_bytes()[: payload["weights_cut"]])
        if payload.get("outside_lib"):
            shutil.copy(art / "lib" / "model.so", d / "outside.so")
        if payload.get("manifest") is not None:  # JSON text (which may itself be `null`)
            manifest = json.loads(payload["manifest"])
            if payload.get("rehash"):
                _rehash(art, manifest)
            (art / "manifest.json").write_text(json.dumps(manifest))
        elif payload.get("manifest_raw") is not None:
            (art / "manifest.json").write_bytes(payload["manifest_raw"])
        runner = ternc.load_artifact(art)
        # the seed's prefill must still run and give finite [1, 3, vocab] logits (a tampered manifest
        # that loaded has to describe the library truthfully)
        out = runner.run("prefill", {"input_ids": np.array([[1, 2, 3]], np.int64)})
        logits = np.asarray(out["logits"])
        assert logits.shape[:2] == (1, 3) and np.isfinite(logits).all()


def pass_spec(payload: dict) -> None:
    """parse_spec on a generated spec; with `module`, also run the parsed pipeline on that model."""
    from ternc.passes.registry import parse_spec

    steps = parse_spec(payload["spec"])
    if payload.get("module") and steps:
        import ternc

        m = ternc.load(payload["module"])
        ternc.compile(m, passes=payload["spec"], report=False)
