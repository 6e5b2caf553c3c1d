"""deploy_to: the `ternc deploy` flow (compile for the board or take an artifact, golden outputs from
the interpreter, then backends.deploy builds the bundle)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from .ir.core import Module


class DeployInputError(ValueError):
    pass


GOLDEN_PROMPTS = ([3, 17, 42, 99, 5, 64, 1], [1, 2, 3], [77])


def _module_for_artifact(art: Path, manifest: dict, model: str | None) -> Module:
    """The post-pass module an artifact was built from (for the interpreter's golden outputs):
    the model it names (or `model`) through the pipeline it records."""
    import ternc

    pipe = manifest.get("pipeline")
    src = model or (pipe.get("source") if isinstance(pipe, dict) else None)
    if not src or not Path(src).exists():
        raise DeployInputError(f"{art}: the golden outputs come from running the artifact's model in the interpreter; "
                               f"pass the model it was built from with --model (recorded source: {src!r})")
    passes = pipe.get("passes") if isinstance(pipe, dict) else pipe  # the pipeline spec the build ran
    if isinstance(passes, str) and passes.startswith("default:"):
        passes = None
    res = ternc.compile(src, target=manifest["target"]["name"], passes=passes,
                        context=manifest["model"]["meta"].get("max_context"))
    module = res.module
    if module.name != manifest["model"]["name"] or not set(manifest["entries"]) <= {f.name for f in module.functions}:
        raise DeployInputError(f"{art}: model {src} through pipeline {passes or 'default'} gives @{module.name} with entries "
                          f"{sorted(f.name for f in module.functions)}, not the artifact's @{manifest['model']['name']} "
                          f"{sorted(manifest['entries'])}; pass the right model with --model")
    return module


def deploy_to(source: str | None, board: str, out: str, tar: bool = False, model: str | None = None,
              passes: str | None = None, context: int = 512, n_golden: int = 16, python: str | None = None,
              log=print, synth: bool = True, lm_head_kernel: bool = True) -> str:
    """`ternc deploy`: a bundle for `board` from an artifact folder, or from a model (ONNX / .ternc /
    none = the default model) compiled here for the board. Golden outputs come from the IR
    interpreter on the same post-pass module. Returns a summary."""
    import numpy as np

    import ternc
    from .backends.artifact import read_manifest
    from .backends.deploy.boards import get_board
    from .backends.deploy.bundle import Golden, build_bundle, check_artifact_for_board

    b = get_board(board, python)
    t0 = time.time()
    tmp_art = None
    src = Path(source) if source else None
    if src is not None and src.is_dir() and (src / "manifest.json").exists():
        if passes:
            raise DeployInputError("--passes is for a model input; an artifact folder was compiled with its own pipeline")
        manifest = read_manifest(src)
        check_artifact_for_board(manifest, b, where=str(src))
        if b.accelerator == "fpga":   # a kv260 artifact carries its post-pipeline module (ir/model.ternc)
            from .backends.fpga.runtime import load_artifact

            module = load_artifact(src).module()
        else:
            module = _module_for_artifact(src, manifest, model)
        art = src
    else:
        if model:
            raise DeployInputError("--model is for an artifact folder's source model; give the model as ART instead")
        if src is None:
            from .models import tiny_bitnet

            log(f"[deploy] no model given: the built-in default model '{tiny_bitnet.DEFAULT_NAME}'")
            path = tiny_bitnet.default_onnx()
        else:
            path = src
        outp = Path(out).resolve()
        tmp_art = outp.parent / f".{outp.name}.artifact-{os.getpid()}"
        extra = {"cuda_arch": b.cuda_arch, "host_arch": b.arch} if b.cuda_arch else {}
        if b.accelerator == "fpga":
            extra = {"synth": synth}
        log(f"[deploy] compiling {path} for {b.name} (target {b.artifact_target}"
            + (f", {b.cuda_arch} fatbins, {b.arch} host code" if extra else "") + ")")
        res = ternc.compile(path, target=b.artifact_target, passes=passes, out=tmp_art, context=context,
                            report=lambda text: print(text, file=sys.stderr), **extra)
        module, art = res.module, res.artifact
    try:
        dec = module.meta["decoder"]
        logits = ternc.interpret(module, {dec["input_ids"]: np.array([GOLDEN_PROMPTS[0]])}, dec["prefill"])[dec["logits"]]
        vocab = logits.shape[-1]
        prompts = [[t % vocab for t in p] for p in GOLDEN_PROMPTS]
        if prompts[0] != list(GOLDEN_PROMPTS[0]):
            logits = ternc.interpret(module, {dec["input_ids"]: np.array([prompts[0]])}, dec["prefill"])[dec["logits"]]
        tokens = [ternc.generate(module, [p], n_golden)[0].tolist() for p in prompts]
        golden = Golden(prompts, n_golden, tokens, logits)
        if b.accelerator == "fpga":
            from .backends.deploy.kv260 import build_kv260_bundle

            info = build_kv260_bundle(art, b, out, golden, tar=tar, log=log, lm_head_kernel=lm_head_kernel)
        else:
            info = build_bundle(art, b, out, golden, tar=tar, log=log)
    finally:
        if tmp_art is not None:
            import shutil

            shutil.rmtree(tmp_art, ignore_errors=True)
    if b.accelerator == "fpga":
        return _kv260_summary(b, info, prompts, n_golden, time.time() - t0)
    lines = [f"bundle for {b.name} ({b.description}) in {time.time() - t0:.1f}s: {info.path}/",
             f"  {info.files} files, {info.bytes / 1e6:.1f} MB (runtime {info.runtime_bytes / 1e6:.1f} MB: runtime-only "
             f"tvm + tvm_ffi for {b.arch} / Python {b.python}, from "
             + ", ".join(f"{w['file']} ({'downloaded from PyPI' if w['downloaded'] else 'cached'})" for w in info.wheels)
             + ")",
             f"  golden: {len(prompts)} prompts x {n_golden} tokens from the IR interpreter"]
    if info.tar:
        lines.append(f"  archive: {info.tar} ({info.tar.stat().st_size / 1e6:.1f} MB)")
    lines.append(f"  on the board: python3 {info.path.name}/run.py --verify   (then --prompt-ids 1,2,3 / --bench)")
    return "\n".join(lines)


def _kv260_summary(b, info, prompts, n_golden, seconds) -> str:
    import json

    bundle = json.loads((info.path / "bundle.json").read_text())
    k = bundle["lm_head_kernel"]
    lines = [f"bundle for {b.name} ({b.description}) in {seconds:.1f}s: {info.path}/",
             f"  {info.files} files, {info.bytes / 1e6:.1f} MB; accelerator DDR window {bundle['ddr_window_bytes']:,} "
             f"bytes (CMA)",
             "  LM head on the ARM cores: " + (f"TVM kernel {k['file']} ({k['arch']}, [{k['vocab']} x {k['hidden']}]), "
                                               f"runtime-only tvm for Python {b.python}" if k else "numpy (no kernel)"),
             f"  bitstream build inputs: {len(bundle['bitstream']['build_inputs'])} files (artifact/vivado, "
             f"artifact/rtl); build the .bit + .hwh with Vivado: {info.path.name}/hw/BOARD.md",
             f"  golden: {len(prompts)} prompts x {n_golden} tokens from the IR interpreter"]
    if info.tar:
        lines.append(f"  archive: {info.tar} ({info.tar.stat().st_size / 1e6:.1f} MB)")
    lines.append(f"  here: python3 {info.path.name}/run.py --verify --transport model;  on the board: "
                 f"sudo -E python3 run.py --verify --transport pynq")
    return "\n".join(lines)
