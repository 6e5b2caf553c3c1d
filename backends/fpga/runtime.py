"""Load a kv260 artifact (checksums verified) and run it behind the Runner interface: the part of the
FPGA backend a board needs. Imports numpy, the ISA and the functional executor only (no amaranth, no
TVM, no compiler): `ternc deploy --board kv260` ships it with the host driver (driver.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..artifact import ArtifactError, read_manifest
from .executor import Executor
from .isa import Program
from .schedule import EngineConfig

TARGET = "kv260"


@dataclass
class FpgaArtifact:
    """A loaded kv260 artifact (checksums verified): its program, images and map."""

    path: Path
    manifest: dict
    program: Program
    memmap: dict
    consts: bytes
    weights: bytes
    lm_head: np.ndarray

    @property
    def context(self) -> int:
        return int(self.manifest["accelerator"]["context"])

    @property
    def engine(self) -> EngineConfig:
        return EngineConfig(**self.manifest["accelerator"]["config"]["engine"])

    @property
    def meta(self) -> dict:
        return self.manifest["model"]["meta"]

    def module(self):
        from ...ir.serialize import load_module

        return load_module(self.path / self.manifest["roles"]["module"])

    def executor(self) -> Executor:
        return Executor(self.program, self.memmap, self.consts, self.weights, self.lm_head, self.engine,
                        self.context)


def load_artifact(path) -> FpgaArtifact:
    path = Path(path)
    manifest = read_manifest(path)
    if manifest["target"]["name"] != TARGET:
        raise ArtifactError(f"{path}: a {manifest['target']['name']} artifact, not {TARGET}")
    role = manifest["roles"]
    for r in ("program", "memmap", "consts", "weights", "lm_head"):
        if r not in role:
            raise ArtifactError(f"{path}: kv260 manifest lacks the {r!r} role (not a kv260 artifact, or corrupt)")
    if "accelerator" not in manifest:
        raise ArtifactError(f"{path}: kv260 manifest lacks 'accelerator'")
    rd = lambda r: (path / role[r]).read_bytes()  # noqa: E731
    lm = np.load(path / role["lm_head"], allow_pickle=False)
    return FpgaArtifact(path, manifest, Program.decode(rd("program"), {}), json.loads(rd("memmap")),
                        rd("consts"), rd("weights"), lm)


class FpgaRunner:
    """Runs a kv260 artifact's prefill/decode entries on the functional executor behind the Runner
    interface (`.meta`, `.run(entry, inputs)`) that `ternc.generate` uses: the past KV tensors (f32
    holding 24-bit KV words) are written into the DDR cache region and the present ones read back."""

    def __init__(self, art: FpgaArtifact):
        self.art = art
        self.ex = art.executor()
        self.meta = dict(art.meta)
        self.meta.setdefault("decoder", {})
        self.meta["decoder"] = {**self.meta["decoder"], "max_context": art.context}

    def run(self, entry: str, inputs: dict) -> dict:
        from ...ir import hw_numerics as hn

        dec = self.meta["decoder"]
        if entry not in (dec.get("prefill"), dec.get("decode")):
            raise ArtifactError(f"kv260 artifact: no entry {entry!r} (has {dec.get('prefill')}, {dec.get('decode')})")
        ids = np.asarray(inputs[dec["input_ids"]], np.int64).reshape(-1)
        syms = self.art.memmap["symbols"]
        ctx = self.art.context
        pos = 0
        if entry == dec["decode"]:
            pos = int(np.asarray(inputs[dec["past"][0][0]]).shape[2])
        if pos + ids.size > ctx:
            raise ArtifactError(f"{ids.size} tokens at position {pos} exceed the compiled context {ctx}")
        for layer, (pk, pv) in enumerate(dec["past"]):
            for which, name in (("k", pk), ("v", pv)):
                if pos:
                    past = np.asarray(inputs[name])[0]
                    h, _, d = past.shape
                    cache = self.ex.i32(syms[f"kv:{(layer, which)}"], h * ctx * d).reshape(h, ctx, d)
                    cache[:, :pos] = hn.kv_from_float(past)
        logits = self.ex.run(ids, pos)
        out = {dec["logits"]: logits}
        hkv, d = int(dec["kv_heads"]), int(dec["head_dim"])
        for layer, (ok, ov) in enumerate(dec["present"]):
            for which, name in (("k", ok), ("v", ov)):
                cache = self.ex.i32(syms[f"kv:{(layer, which)}"], hkv * ctx * d).reshape(hkv, ctx, d)
                out[name] = hn.kv_to_float(cache[None, :, :pos + ids.size])
        return out


def load_runner(path) -> FpgaRunner:
    return FpgaRunner(load_artifact(path))
