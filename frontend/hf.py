"""Model sources beyond ONNX: a Hugging Face model folder (config.json + safetensors).

The graph comes from transformers: the folder is loaded offline (`local_files_only`), exported with
the dynamo exporter (`export_decoder`) and imported like any ONNX decoder. Ternary weights do not
take their values from that export: for the transformers BitNet layout (uint8 codes packed along N
plus `weight_scale`), every TernaryLinear's constant is decoded straight from the packed source
bytes (`ir.packing.unpack_hf_bitnet`), and the load fails unless each one equals the weight the
graph computes with and every packed source tensor found its TernaryLinear.

Imports are cached under $TERNC_CACHE/sources (default ~/.cache/ternc), keyed by the sha256 of the
source files, so the second load of a model skips the export.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np

from ..ir.core import Const, Module
from ..ir.ops import Op
from ..ir.types import DType
from .onnx_import import FrontendError

# Bump when the import of a source changes, so stale cached modules are not reused.
LOADER_VERSION = "1"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def cache_dir() -> Path:
    return Path(os.environ.get("TERNC_CACHE", Path.home() / ".cache" / "ternc")) / "sources"


def is_hf_folder(path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / "config.json").is_file()


def check_local(source: str | os.PathLike) -> Path:
    """The local path of `source`, or a clear error (a hub id is never downloaded)."""
    p = Path(source)
    if p.exists():
        return p
    if _HUB_ID.match(str(source)) and not str(source).endswith((".onnx", ".gguf", ".ternc")):
        raise FrontendError(f"{source}: no such file or folder. It looks like a Hugging Face hub id; ternc works "
                            f"offline and never downloads models: download it first (e.g. `hf download {source} "
                            f"--local-dir DIR`) and pass the local folder")
    raise FrontendError(f"{source}: no such file or directory")


def sha256_files(paths) -> str:
    h = hashlib.sha256(LOADER_VERSION.encode())
    for p in sorted(Path(q) for q in paths):
        h.update(p.name.encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def quiet_transformers():
    """transformers' config/loading chatter (progress bars, bos/eos range warnings) off normal runs."""
    try:
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except ImportError:
        pass


def unwrap_bitlinear(lm) -> None:
    """transformers wraps BitLinear's quantization helpers in torch.compile; export the plain functions."""
    from transformers.integrations.bitnet import BitLinear

    for mod in lm.modules():
        if isinstance(mod, BitLinear):
            for name in ("activation_quant", "post_quant_process"):
                meth = getattr(BitLinear, name)
                fn = getattr(meth, "_torchdynamo_orig_callable", None) or getattr(meth, "__wrapped__", meth)
                setattr(mod, name, fn.__get__(mod))


def import_torch_lm(lm, key: str, name: str, source_meta: dict, ternary_sources: dict | None = None,
                    require_act_quant: bool = True, progress=None) -> Module:
    """Export a transformers causal LM, import it as a decoder module, and bind ternary source weights.

    ternary_sources: {source tensor name: (w_t int8 [N, K], scale f32)} decoded from the source file;
    every TernaryLinear found by `raise-ternary` gets its constant from here (matched by content).
    """
    from ..ir.serialize import load_module, save_module
    from . import from_onnx
    from .decoder import make_decoder
    from .torch_export import export_decoder

    cached = cache_dir() / f"{key}.ternc"
    if cached.is_file():
        return load_module(cached)
    with tempfile.TemporaryDirectory() as d:
        onnx_path = Path(d) / f"{name}.onnx"
        _step(progress, "export (torch.onnx, dynamo)")
        export_decoder(lm, onnx_path)
        _step(progress, "import + raise")
        module = from_onnx(onnx_path, name=name)
    module = make_decoder(module) if any(n.op == Op.Attention for n in module.func("main").nodes) else module
    if ternary_sources:
        _step(progress, "bind ternary weights")
        module = bind_ternary_sources(module, ternary_sources, require_act_quant)
    gen = getattr(lm, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None) if gen is not None else None
    if eos is not None:
        source_meta = {**source_meta, "eos_token_id": eos}
    module = module.replace(meta={**module.meta, "source": {**module.meta.get("source", {}), **source_meta}})
    cached.parent.mkdir(parents=True, exist_ok=True)
    save_module(module, cached)
    return module


def _step(progress, what: str) -> None:
    if progress is not None:
        progress(what)


def bind_ternary_sources(module: Module, sources: dict, require_act_quant: bool = True) -> Module:
    """Raise the ternary linears and give each its trits from `sources` (exact, checked)."""
    from ..passes.pipeline import compile as run_passes

    spec = "fold,raise-ternary" + ("" if require_act_quant else "{require_act_quant=false}")
    module, _ = run_passes(module, passes=spec, report=False)
    by_content: dict[tuple, str] = {}
    for src_name, (w_t, _scale) in sources.items():
        by_content.setdefault((w_t.shape, hashlib.sha256(np.ascontiguousarray(w_t).tobytes()).hexdigest()),
                              src_name)
    consts = dict(module.constants)
    bound: dict[str, str] = {}
    for fn in module.functions:
        for n in fn.nodes:
            if n.op != Op.TernaryLinear or n.inputs[2] in bound:
                continue
            c = consts[n.inputs[2]]
            w = np.asarray(c.data, dtype=np.int8)
            src = by_content.get((w.shape, hashlib.sha256(np.ascontiguousarray(w).tobytes()).hexdigest()))
            if src is None:
                raise FrontendError(f"TernaryLinear {n.label}: its weight @{n.inputs[2]} matches no ternary tensor "
                                    f"of the source (the graph's weights differ from the source file)")
            # The constant now holds the source's own decoded trits (equal by the match above).
            consts[n.inputs[2]] = Const.of(np.ascontiguousarray(sources[src][0], dtype=np.int8), DType.T2)
            bound[n.inputs[2]] = src
    missing = sorted(set(sources) - set(bound.values()))
    if missing:
        raise FrontendError(f"{len(missing)} ternary source tensor(s) were not raised to TernaryLinear "
                            f"(e.g. {missing[0]}); refusing to silently run them in float")
    meta = {**module.meta, "ternary_weights": {"bound": len(bound), "from_source": sorted(set(bound.values())),
                                               "act_quant_added": not require_act_quant}}
    return module.replace(constants=consts, meta=meta)


def hf_bitnet_sources(folder: Path, config: dict) -> dict:
    """Packed BitNet weights of an HF folder: {tensor name: (w_t int8 [N, K], scale)} (scale = 1/weight_scale)."""
    from safetensors import safe_open

    from ..ir.packing import unpack_hf_bitnet

    qc = config.get("quantization_config") or {}
    if qc.get("quant_method") != "bitnet":
        return {}
    if qc.get("linear_class", "bitlinear") != "bitlinear" or qc.get("quantization_mode", "offline") != "offline":
        raise FrontendError(f"{folder}: BitNet quantization_config {qc} is not supported (only the packed "
                            f"'bitlinear' / 'offline' layout)")
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), "np") as st:
            keys = set(st.keys())
            for k in sorted(keys):
                if not k.endswith(".weight") or f"{k[:-len('.weight')]}.weight_scale" not in keys:
                    continue
                packed = st.get_tensor(k)
                if packed.dtype != np.uint8:
                    continue
                rows = _out_features(config, k)
                if rows is None:
                    raise FrontendError(f"{f.name}: cannot tell the output size of packed tensor {k}")
                scale = st.get_tensor(f"{k[:-len('.weight')]}.weight_scale").astype(np.float32).reshape(-1)
                out[k] = (unpack_hf_bitnet(packed, rows), np.float32(1.0) / scale[0])
    return out


def _out_features(cfg: dict, key: str) -> int | None:
    """Output size N of a BitNet projection (the packed tensor holds ceil(N/4) rows)."""
    h, inter = cfg.get("hidden_size"), cfg.get("intermediate_size")
    heads = cfg.get("num_attention_heads")
    kvh = cfg.get("num_key_value_heads") or heads
    hd = cfg.get("head_dim") or (h // heads if h and heads else None)
    for suffix, n in ((".q_proj.weight", heads * hd if heads and hd else None),
                      (".k_proj.weight", kvh * hd if kvh and hd else None),
                      (".v_proj.weight", kvh * hd if kvh and hd else None), (".o_proj.weight", h),
                      (".gate_proj.weight", inter), (".up_proj.weight", inter), (".down_proj.weight", h)):
        if key.endswith(suffix):
            return n
    return None


def load_hf_folder(folder: str | os.PathLike, progress=None) -> Module:
    """An HF causal-LM folder (offline) -> decoder Module; BitNet packed weights bound exactly."""
    folder = Path(folder)
    if not is_hf_folder(folder):
        raise FrontendError(f"{folder}: not a Hugging Face model folder (no config.json)")
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise FrontendError(f"{folder / 'config.json'}: cannot read: {e}") from None
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise FrontendError(f"{folder}: no *.safetensors weights (ternc reads safetensors only, never pickle)")
    _refuse_unsupported(folder, config)
    key = "hf-" + sha256_files([folder / "config.json", *weights])
    cached = cache_dir() / f"{key}.ternc"
    source_meta = {"kind": "hf", "path": str(folder.resolve()), "model_type": config.get("model_type")}
    if cached.is_file():
        from ..ir.serialize import load_module

        return load_module(cached)
    sources = hf_bitnet_sources(folder, config)
    quiet_transformers()
    import torch
    from transformers import AutoModelForCausalLM

    _step(progress, "load (transformers)")
    try:
        lm = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32,
                                                  use_safetensors=True).eval()
    except (OSError, ValueError, KeyError) as e:
        raise FrontendError(f"{folder}: transformers cannot load this folder: {e}") from None
    unwrap_bitlinear(lm)
    name = re.sub(r"\W", "_", folder.resolve().name) or "model"
    return import_torch_lm(lm, key, name, source_meta, sources, progress=progress)


def _refuse_unsupported(folder: Path, config: dict) -> None:
    window = config.get("sliding_window")
    if window and config.get("use_sliding_window", True) and window < (config.get("max_position_embeddings") or 0):
        # The ONNX export's windowed mask is raised as plain causal attention (wrong past the window).
        raise FrontendError(f"{folder}: {config.get('model_type')} sliding-window attention (window {window}) is not "
                            f"supported: ternc's Attention is plain causal and would be wrong beyond {window} "
                            f"tokens")
