"""Architecture x exporter matrix (issue 15): every decoder the frontend claims is exact or refused.

Small random transformers configs (hidden 64, 2 layers, GQA 4/2) of Llama, Qwen2 (q/k/v bias), Gemma,
Phi-3 (fused qkv / gate_up: Split), BitNet and Mistral with a sliding window, each exported by the
dynamo exporter (`export_decoder`) and the legacy TorchScript one (`export_decoder_torchscript`, with
attention_mask), with and without past K/V. A supported model must raise its attention (the check
keeping it), generate the tokens torch generates (greedy, 10 new) in the interpreter, and, compiled
for cpu, in the artifact; Mistral must be refused by name. The default suite runs a small slice; the
rest is marked slow.
"""

from __future__ import annotations

import fcntl
import os
import warnings

import numpy as np
import pytest

from ..conftest import CACHE, TINY

ARCHS = ("llama", "qwen2", "gemma", "phi3", "bitnet", "mistral")
EXPORTERS = ("dynamo", "torchscript")
PROMPT = [3, 17, 42, 99, 5, 64, 1]
N_NEW = 10
# the default suite's slice: the TorchScript path end to end and Phi-3's Split on the cpu target
FAST = {("llama", "torchscript", True, "interp"), ("phi3", "dynamo", False, "cpu"),
        ("mistral", "torchscript", False, "interp")}


def build(arch: str):
    import torch
    import transformers as T

    torch.manual_seed(0)
    ids = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
    cfgs = {"llama": (T.LlamaForCausalLM, T.LlamaConfig, {}), "qwen2": (T.Qwen2ForCausalLM, T.Qwen2Config, {}),
            "gemma": (T.GemmaForCausalLM, T.GemmaConfig, {"head_dim": 16}),
            "phi3": (T.Phi3ForCausalLM, T.Phi3Config, {}), "bitnet": (T.BitNetForCausalLM, T.BitNetConfig, {}),
            "mistral": (T.MistralForCausalLM, T.MistralConfig, {"sliding_window": 4})}
    model, config, extra = cfgs[arch]
    return model(config(**TINY, **ids, **extra)).eval()


def exported(arch: str, exporter: str, with_past: bool, tmp_path):
    """The export, made once per machine (file cache with a lock, as tests/conftest.py does)."""
    from ternc.frontend.torch_export import export_decoder, export_decoder_torchscript

    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"matrix-{arch}-{exporter}{'-kv' if with_past else ''}.onnx"
    with open(f"{path}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            tmp = tmp_path / path.name
            export = export_decoder if exporter == "dynamo" else export_decoder_torchscript
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                export(build(arch), tmp, with_past=with_past)
            os.replace(tmp, path)
    return path


def _cases():
    for arch in ARCHS:
        for exporter in EXPORTERS:
            for with_past in (False, True):
                for where in (("interp",) if arch == "mistral" else ("interp", "cpu")):
                    marks = () if (arch, exporter, with_past, where) in FAST else (pytest.mark.slow,)
                    yield pytest.param(arch, exporter, with_past, where, marks=marks,
                                       id=f"{arch}-{exporter}-{'past' if with_past else 'nopast'}-{where}")


@pytest.mark.parametrize("arch,exporter,with_past,where", list(_cases()))
def test_exact_or_refused(arch, exporter, with_past, where, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import ternc
    from ternc.frontend import FrontendError
    from ternc.frontend.torch_export import torch_greedy

    path = exported(arch, exporter, with_past, tmp_path)
    if arch == "mistral":
        with pytest.raises(FrontendError, match=r"sliding-window attention \(window 4\)|not causal"):
            ternc.load(path)
        return
    module = ternc.load(path)
    assert "raising" not in module.meta, module.meta["raising"]  # the raised graph passed its check
    assert module.meta["raised"].get("Attention") == TINY["num_hidden_layers"]
    if exporter == "torchscript":
        assert "attention_mask" in module.meta["bound_inputs"]
    ref = torch_greedy(build(arch), PROMPT, N_NEW)
    if where == "interp":
        got = ternc.generate(module, PROMPT, N_NEW)
    else:
        res = ternc.compile(module, target="cpu", out=tmp_path / "art")
        got = ternc.generate(ternc.load_artifact(res.artifact), PROMPT, N_NEW)
    np.testing.assert_array_equal(got, ref)
