"""ternc's public Python API: load, interpret, generate, compile, load_artifact, save."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Protocol

import numpy as np

from .ir.core import Module


class Runner(Protocol):
    """Anything that runs a module's entry points: the interpreter, or a compiled artifact."""

    meta: Mapping[str, Any]

    def run(self, entry: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def load(source: str | os.PathLike | Any, decoder: bool = True, progress=None) -> Module:
    """Load a model as a ternc Module.

    `source`: an ONNX ModelProto, a path to an `.onnx` file, a `.ternc` module file, a Hugging Face
    model folder (config.json + safetensors) or a `.gguf` file (both offline; see frontend/hf.py and
    frontend/gguf.py). Decoder LMs (graphs with attention) get `prefill`/`decode` entry points with
    explicit KV-cache state. `progress(step)` is called at the start of each long step.
    """
    import onnx

    from .ir.serialize import load_module

    if isinstance(source, Module):
        return source
    if isinstance(source, (str, os.PathLike)) and Path(source).suffix == ".ternc":
        return load_module(source)
    if isinstance(source, (str, os.PathLike)) and Path(source).is_dir() and (Path(source) / "manifest.json").exists():
        raise ValueError(f"{source} is a compiled artifact; use ternc.load_artifact()")
    if isinstance(source, (str, os.PathLike)):
        from .frontend.hf import check_local, is_hf_folder

        check_local(source)
        if is_hf_folder(source):
            from .frontend.hf import load_hf_folder

            return load_hf_folder(source, progress=progress)
        if Path(source).suffix == ".gguf":
            from .frontend.gguf import load_gguf

            return load_gguf(source, progress=progress)
    from .frontend import from_onnx
    from .frontend.decoder import with_decoder

    if not isinstance(source, (onnx.ModelProto, str, os.PathLike)):
        raise TypeError(f"ternc.load takes a path or an onnx.ModelProto, not {type(source).__name__}")
    module = from_onnx(source)
    return with_decoder(module) if decoder else module


def save(module: Module, path: str | os.PathLike) -> Path:
    from .ir.serialize import save_module

    return save_module(module, path)


def interpret(module: Module, inputs: Mapping[str, np.ndarray], entry: str = "main") -> dict[str, np.ndarray]:
    from .ir.interp import interpret as _interp

    return _interp(module, inputs, entry)


def _runner(model) -> Runner:
    if isinstance(model, Module):
        from .backends.reference import ModuleRunner

        return ModuleRunner(model)
    if hasattr(model, "run") and hasattr(model, "meta"):
        return model
    raise TypeError(f"generate needs a ternc Module or a loaded artifact, not {type(model).__name__}")


class ContextLengthError(ValueError):
    pass


def generate(model, prompt_ids, max_new_tokens: int = 16, eos_token_id: int | list[int] | None = None,
             max_context: int | None = None, callback=None, temperature: float = 0.0, top_k: int = 0,
             top_p: float = 1.0, seed: int | None = None) -> np.ndarray:
    """Generate: prefill the prompt, then decode one token at a time with the KV cache.

    Greedy by default; temperature > 0 samples (top_k, top_p filters; `seed` makes it repeatable).
    Stops after `max_new_tokens` or at an `eos_token_id` (one id or a list). `callback(id)` sees
    each new token as it is chosen (streaming). Returns the prompt followed by the generated ids,
    shape [1, len(prompt) + n_generated]. Modules without decoder entry points are run by
    re-evaluating `main` on the whole sequence. For text, see `ternc.generate_text`.
    """
    from .ir.decoder import DecoderSpec, decode_feeds
    from .tokenizer import check_sampling, pick_token

    check_sampling(temperature, top_k, top_p)
    rng = np.random.default_rng(seed) if temperature > 0 else None
    stop = set() if eos_token_id is None else (
        {int(eos_token_id)} if np.isscalar(eos_token_id) else {int(i) for i in eos_token_id})

    def pick(logits):
        return pick_token(logits, rng, temperature, top_k, top_p)

    runner = _runner(model)
    ids = np.asarray(prompt_ids, dtype=np.int64).reshape(1, -1)
    if ids.shape[1] == 0:
        raise ValueError("prompt is empty")
    dec = DecoderSpec.from_meta(runner.meta["decoder"]) if runner.meta.get("decoder") else None
    limit = max_context or runner.meta.get("max_context")
    if limit and ids.shape[1] > limit:
        raise ContextLengthError(f"prompt has {ids.shape[1]} tokens; the model was compiled for a context of "
                                 f"{limit}")
    out = [ids]
    if not dec:
        seq = ids
        for _ in range(max_new_tokens):
            res = runner.run("main", {_ids_name(runner): seq})
            nxt = pick(next(iter(res.values()))[0, -1])
            seq = np.concatenate([seq, [[nxt]]], axis=1)
            if callback:
                callback(nxt)
            if nxt in stop:
                break
        return seq
    res = runner.run(dec.prefill, {dec.input_ids: ids})
    total = ids.shape[1]
    for step in range(max_new_tokens):
        nxt = pick(res[dec.logits][0, -1])
        out.append(np.array([[nxt]], dtype=np.int64))
        if callback:
            callback(nxt)
        if nxt in stop:
            break
        if step == max_new_tokens - 1:
            break
        total += 1
        if limit and total > limit:
            break
        res = runner.run(dec.decode, decode_feeds(dec, res, out[-1]))
    return np.concatenate(out, axis=1)


def generate_text(model, prompt: str | None = None, max_new_tokens: int = 16, **kw) -> dict:
    """Text generation with the model's own tokenizer (see `ternc.tokenizer.generate_text`)."""
    from .tokenizer import generate_text as _gt

    return _gt(model, prompt, max_new_tokens, **kw)


def _ids_name(runner) -> str:
    fn = runner.module.func("main") if hasattr(runner, "module") else None
    return fn.params[0].name if fn else "input_ids"


@dataclass
class CompileResult:
    """What `ternc.compile` returns: the transformed module and its pass report, and, when an
    output was asked for, the artifact's path and manifest (reference: the .ternc file, no manifest)."""

    target: str
    module: Module
    report: Any  # passes.pipeline.PassReport
    artifact: Path | None = None
    manifest: dict | None = None


def compile(model, target: str = "reference", passes: str | list | None = None, out: str | os.PathLike | None = None,
            *, context: int | None = None, report: Any = False, verify_each: bool | None = None,
            progress: Any = None, **build_options) -> CompileResult:
    """Run `target`'s pass pipeline (or `passes`) on `model` (a Module or anything `load` takes) and,
    with `out`, build the target's artifact there; returns a CompileResult.

        res = ternc.compile("model.onnx", target="cpu", out="art/")   # res.artifact, res.manifest
        res = ternc.compile(m, passes="quantize-kv{bits=2}")         # res.module, res.report

    The module is checked against the target's capabilities (refused before any build when it
    uses an attribute value the backend does not implement). `context`: the maximum context the
    artifact serves (meta `max_context`). `report`: True prints the per-pass table, a callable
    receives it. `progress(step)`: called with each step's name as it starts (each pass, the build),
    e.g. the CLI's progress bar. build_options go to the target's build (TVM: kernel_policy, kernels,
    mcpu, pipeline).
    """
    from .passes.pipeline import compile as run_pipeline
    from .targets import get

    tgt = get(target)
    module = model if isinstance(model, Module) else load(model)
    module, rep = run_pipeline(module, list(tgt.pipeline) if passes is None else passes,
                               verify_each=verify_each, report=report, target=tgt.name, progress=progress)
    if context is not None:
        if not isinstance(context, int) or isinstance(context, bool) or context < 1:
            raise ValueError(f"context must be a positive number of tokens, got {context!r}")
        module = module.replace(meta={**module.meta, "max_context": context})
    tgt.check(module)
    if out is None:
        if build_options:
            raise TypeError(f"build options {', '.join(sorted(build_options))} need `out`")
        return CompileResult(tgt.name, module, rep)
    build_options.setdefault("pipeline", rep.spec)
    # the per-pass table travels with the output (`ternc report`); no timings: builds stay deterministic
    import dataclasses
    import json

    rows = [{k: v for k, v in dataclasses.asdict(r).items() if k != "seconds"} for r in rep.rows]
    module = module.replace(meta={**module.meta, "pass_report": json.loads(json.dumps(rows, default=str))})
    if progress is not None:
        progress(f"build for {tgt.name}")
    art = tgt.build(module, out, **build_options)
    return CompileResult(tgt.name, module, rep, art.path, art.manifest if tgt.artifact == "folder" else None)


def load_artifact(path: str | os.PathLike, **options):
    """Load a compiled artifact (checks the manifest and every file's sha256) with its target's
    backend; returns a Runner. (TVM options: device.)"""
    from .targets import load_artifact as _load

    return _load(path, **options)
