"""Sliding-window attention (Mistral) is refused by name at load, with and without past K/V."""

from __future__ import annotations

import pytest

import ternc
from ternc.frontend import FrontendError


@pytest.mark.parametrize("with_past", [False, True])
def test_mistral_sliding_window_is_refused_at_load(with_past, tmp_path):
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    from ternc.frontend.torch_export import export_decoder

    torch.manual_seed(0)
    cfg = MistralConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, sliding_window=4)
    path = export_decoder(MistralForCausalLM(cfg).eval(), tmp_path / "mistral.onnx", with_past=with_past)
    with pytest.raises(FrontendError, match=r"sliding-window attention \(window 4\) is not supported"):
        ternc.load(path)
