"""Decoder entry points: KV-cache generation equals torch greedy decoding."""

from __future__ import annotations

import numpy as np
import pytest

import ternc
from ternc.frontend.torch_export import torch_greedy

PROMPT = [[3, 17, 99, 5, 42]]


@pytest.mark.parametrize("arch", ["llama", "bitnet", "tiny-bitnet"])
@pytest.mark.parametrize("with_past", [False, True])
def test_generate_matches_torch(onnx_export, hf_model, arch, with_past):
    m = ternc.load(onnx_export(arch, with_past))
    assert {"prefill", "decode"} <= set(m.entry_names)
    want = torch_greedy(hf_model(arch), PROMPT, 16)
    got = ternc.generate(m, PROMPT, 16)
    np.testing.assert_array_equal(got, want)


def test_kv_state_is_explicit(onnx_export):
    m = ternc.load(onnx_export("llama", False))
    dec = m.meta["decoder"]
    assert dec["n_layers"] == 2 and dec["kv_heads"] == 2 and dec["head_dim"] == 16
    decode = m.func("decode")
    names = {p.name for p in decode.params}
    for pk, pv in dec["past"]:
        assert pk in names and pv in names
    pre = ternc.interpret(m, {"input_ids": np.array([[1, 2, 3]])}, entry="prefill")
    k0 = pre[dec["present"][0][0]]
    assert k0.shape == (1, 2, 3, 16)
    step = ternc.interpret(m, {"input_ids": np.array([[4]]), **{
        p: pre[o] for (pk, pv), (ok, ov) in zip(dec["past"], dec["present"]) for p, o in ((pk, ok), (pv, ov))}},
        entry="decode")
    assert step[dec["present"][0][0]].shape == (1, 2, 4, 16)
    # decode's logits for the new token equal main's last-position logits on the full sequence
    full = ternc.interpret(m, {"input_ids": np.array([[1, 2, 3, 4]])})["logits"]
    np.testing.assert_allclose(step["logits"][0, -1], full[0, -1], rtol=1e-4, atol=1e-5)


def test_module_without_decoder_falls_back_to_recompute(onnx_export):
    m = ternc.load(onnx_export("llama", False), decoder=False)
    assert m.entry_names == ["main"]
    a = ternc.generate(m, PROMPT, 6)
    b = ternc.generate(ternc.load(onnx_export("llama", False)), PROMPT, 6)
    np.testing.assert_array_equal(a, b)


def test_prompt_longer_than_context_is_rejected(onnx_export):
    m = ternc.load(onnx_export("llama", False))
    with pytest.raises(ternc.api.ContextLengthError, match="context of 4"):
        ternc.generate(m, [[1, 2, 3, 4, 5]], 2, max_context=4)
