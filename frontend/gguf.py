"""Model sources beyond ONNX: a GGUF file (llama.cpp), read offline with the `gguf` package.

The graph comes from transformers' GGUF loader (it supports llama, mistral, qwen2, phi3, ... and
dequantizes every tensor), exported and imported like an HF folder (`frontend/hf.py`). Ternary
tensors (TQ1_0, TQ2_0) do not take their values from that float copy: their trits are decoded
straight from the GGUF blocks here and bound to the TernaryLinear constants, checked equal to the
weights the graph computes with. Their per-256-weight fp16 block scales must share one value (what
a BitNet conversion writes; all-zero blocks carry 0); a tensor whose blocks differ is not one
ternary matrix times one scale, and the load refuses it rather than approximate.

TernaryLinear quantizes activations to int8 per token (BitNet's arithmetic, ir/semantics.py).
Llama-family GGUF graphs have float activations, so binding TQ tensors adds that quantization: a
lossy step (llama.cpp's own TQ kernels quantize activations too, per 256 block); `meta
["ternary_weights"]["act_quant_added"]` says so, and the tests measure the error against the
dequantized float path. bitnet.cpp's I2_S is not a type the `gguf` package knows; it is refused.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from ..ir.core import Module
from ..ir import packing
from .hf import cache_dir, import_torch_lm, quiet_transformers, sha256_files
from .onnx_import import FrontendError

QK_K = packing.GGUF_QK_K


def _reader(path: Path):
    from gguf import GGUFReader

    try:
        return GGUFReader(str(path))
    except Exception as e:  # the reader raises ValueError/KeyError/struct errors on bad files
        msg = str(e)
        if "is not a valid GGMLQuantizationType" in msg:
            msg += " (bitnet.cpp's I2_S and other out-of-tree types are not supported; convert to TQ2_0/TQ1_0)"
        raise FrontendError(f"{path}: not a readable GGUF file: {msg}") from None


def _one_scale(name: str, w_t: np.ndarray, d: np.ndarray, path: Path) -> np.float32:
    """The tensor's single scale: the shared d of its non-zero blocks (all-zero blocks carry any d)."""
    n, k = w_t.shape
    nonzero = (w_t.reshape(n, k // QK_K, QK_K) != 0).any(-1)
    vals = np.unique(d[nonzero])
    if vals.size == 0:
        return np.float32(1.0)
    if vals.size > 1:
        raise FrontendError(f"{path}: ternary tensor {name} has {vals.size} different block scales "
                            f"({vals.min():g}..{vals.max():g}); ternc's TernaryLinear has one scale per tensor, "
                            f"so this file cannot be imported exactly")
    return np.float32(vals[0])


def gguf_ternary_sources(path: Path, reader, hf_config: dict, arch: str) -> dict:
    """{tensor name: (w_t int8 [N, K] in transformers' layout, scale)} for every TQ1_0/TQ2_0 tensor."""
    from gguf import GGMLQuantizationType as T
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor

    processor = TENSOR_PROCESSORS.get(arch, TensorProcessor)(config=hf_config)
    out = {}
    for t in reader.tensors:
        fmt = packing.GGUF_FORMATS.get(T(t.tensor_type).name)
        if fmt is None:
            continue
        k, n = int(t.shape[0]), int(np.prod(t.shape[1:]))
        blocks = np.asarray(t.data, dtype=np.uint8).reshape(n, -1)
        try:
            w_t, d = fmt.decode(blocks, k)
        except ValueError as e:
            raise FrontendError(f"{path}: tensor {t.name}: {e}") from None
        scale = _one_scale(t.name, w_t, d, path)
        # the same row permutation transformers applies to the float copy (llama q/k rope layout)
        w_t = np.asarray(processor.process(w_t, t.name).weights)
        out[t.name] = (np.ascontiguousarray(w_t, dtype=np.int8), scale)
    return out


def load_gguf(path: str | os.PathLike, progress=None) -> Module:
    """A GGUF decoder LM -> decoder Module (exact up to transformers' dequantization; TQ bound exactly)."""
    path = Path(path)
    if not path.is_file():
        raise FrontendError(f"{path}: no such file")
    reader = _reader(path)
    arch_field = reader.fields.get("general.architecture")
    arch = bytes(arch_field.parts[arch_field.data[0]]).decode() if arch_field else "?"
    quiet_transformers()
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    if arch not in GGUF_CONFIG_MAPPING:
        raise FrontendError(f"{path}: GGUF architecture {arch!r} is not supported (transformers' GGUF loader "
                            f"knows {', '.join(sorted(k for k in GGUF_CONFIG_MAPPING if k not in ('general', 'tokenizer')))})")
    key = "gguf-" + sha256_files([path])
    cached = cache_dir() / f"{key}.ternc"
    if cached.is_file():
        from ..ir.serialize import load_module

        return load_module(cached)
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    hf_config = load_gguf_checkpoint(str(path), return_tensors=False)["config"]
    window = hf_config.get("sliding_window")
    if window and window < (hf_config.get("max_position_embeddings") or 0):
        raise FrontendError(f"{path}: sliding-window attention (window {window}) is not supported: ternc's "
                            f"Attention is plain causal and would be wrong beyond {window} tokens")
    sources = gguf_ternary_sources(path, reader, hf_config, arch)
    if progress:
        progress("load (transformers, dequantize)")
    try:
        lm = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32,
                                                  local_files_only=True).eval()
    except (OSError, ValueError, KeyError, NotImplementedError) as e:
        raise FrontendError(f"{path}: transformers cannot load this GGUF: {e}") from None
    name = re.sub(r"\W", "_", path.stem) or "model"
    meta = {"kind": "gguf", "path": str(path.resolve()), "architecture": arch}
    return import_torch_lm(lm, key, name, meta, sources, require_act_quant=False, progress=progress)
