"""The built-in default model: a tiny BitNet-b1.58-architecture decoder with ternary weights.

Fixed config and seed, built offline from transformers' `BitNetForCausalLM` with its BitLinear
layers (packed 2-bit ternary weights, per-token int8 activation quantization), then exported with
the dynamo ONNX exporter. Dimensions suit every packing format and the TLMM engine: hidden 168
= 2 x 84 (TeLLMe's 28 tables x G=3), FFN 336, divisible by 2 (tl1), 3 (tl2) and 4 (i2).
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_NAME = "tiny-bitnet"
CONFIG = dict(
    vocab_size=256, hidden_size=168, intermediate_size=336, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=10000.0,
    tie_word_embeddings=False,
)
SEED = 1234


def build(seed: int = SEED):
    """The torch model: BitNetForCausalLM with BitLinear (ternary) projections; lm_head stays float."""
    import torch
    from transformers import BitNetConfig, BitNetForCausalLM
    from transformers.integrations.bitnet import BitLinear, pack_weights

    torch.manual_seed(seed)
    lm = BitNetForCausalLM(BitNetConfig(**CONFIG)).eval()
    gen = torch.Generator().manual_seed(seed)
    for name, mod in list(lm.named_modules()):
        if isinstance(mod, torch.nn.Linear) and not name.endswith("lm_head"):
            bl = BitLinear(mod.in_features, mod.out_features, bias=mod.bias is not None, dtype=torch.float32)
            # Ternary weights with ~1/3 zeros, like absmean-quantized BitNet weights.
            w_t = torch.randint(-1, 2, (mod.out_features, mod.in_features), generator=gen).to(torch.int8)
            bl.weight.copy_(pack_weights(w_t.to(torch.float32)))
            # transformers divides by weight_scale (it stores 1/mean|W|), so a value near 1/0.02.
            bl.weight_scale.fill_(1.0 / 0.02)
            bl.activation_quant = _plain(BitLinear.activation_quant, bl)
            bl.post_quant_process = _plain(BitLinear.post_quant_process, bl)
            lm.set_submodule(name, bl)
    return lm.eval()


def _plain(method, obj):
    """BitLinear's helpers are wrapped in torch.compile; call the undecorated function for export."""
    fn = getattr(method, "_torchdynamo_orig_callable", None) or getattr(method, "__wrapped__", method)
    return fn.__get__(obj)


def cache_dir() -> Path:
    return Path(os.environ.get("TERNC_CACHE", Path.home() / ".cache" / "ternc"))


def default_onnx(with_past: bool = False, refresh: bool = False) -> Path:
    """Path of the default model's ONNX export, building it (deterministically) on first use."""
    from ternc.frontend.torch_export import export_decoder

    path = cache_dir() / f"{DEFAULT_NAME}{'-kv' if with_past else ''}.onnx"
    if refresh or not path.exists():
        tmp = path.with_suffix(".tmp.onnx")
        export_decoder(build(), tmp, with_past=with_past)
        os.replace(tmp, path)
    return path
