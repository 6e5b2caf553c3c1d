"""Shared fixtures for the TVM backend tests: tiny Llama / BitNet exports (hidden 64, 2 layers),
exported once per session with torch.onnx (dynamo) and loaded with ternc.load."""

from __future__ import annotations

import numpy as np
import pytest

PROMPT = np.array([[3, 17, 42, 99, 5, 64, 1]], dtype=np.int64)
N_NEW = 6


def _export(kind: str, path, with_past: bool = False):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    kw = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256)
    if kind == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kw)).eval()
    else:
        model = transformers.BitNetForCausalLM(transformers.BitNetConfig(**kw)).eval()
    ids = torch.randint(0, 128, (1, 7))
    seq = torch.export.Dim("seq")
    if not with_past:
        class W(torch.nn.Module):
            def __init__(s, m):
                super().__init__()
                s.m = m

            def forward(s, ids):
                return s.m(input_ids=ids, use_cache=False).logits

        ep = torch.onnx.export(W(model).eval(), (ids,), dynamo=True, dynamic_shapes=({1: seq},),
                               input_names=["input_ids"], output_names=["logits"])
    else:
        from transformers.cache_utils import DynamicCache

        n_layers = 2

        class K(torch.nn.Module):
            def __init__(s, m):
                super().__init__()
                s.m = m

            def forward(s, ids, *past):
                c = DynamicCache(config=s.m.config)
                for i in range(n_layers):
                    c.update(past[2 * i], past[2 * i + 1], i)
                out = s.m(input_ids=ids, past_key_values=c, use_cache=True)
                res = [out.logits]
                for i in range(n_layers):
                    res += [out.past_key_values.layers[i].keys, out.past_key_values.layers[i].values]
                return tuple(res)

        past = [torch.randn(1, 2, 3, 16) for _ in range(2 * n_layers)]
        pl = torch.export.Dim("past")
        names = ["input_ids"] + [f"past_key_values.{i}.{t}" for i in range(n_layers) for t in ("key", "value")]
        onames = ["logits"] + [f"present.{i}.{t}" for i in range(n_layers) for t in ("key", "value")]
        ep = torch.onnx.export(K(model).eval(), (ids, *past), dynamo=True,
                               dynamic_shapes=({1: seq}, tuple({2: pl} for _ in range(2 * n_layers))),
                               input_names=names, output_names=onames)
    ep.save(str(path))
    import ternc

    return ternc.load(str(path))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    return _export("llama", tmp_path_factory.mktemp("models") / "llama.onnx")


@pytest.fixture(scope="session")
def tiny_bitnet(tmp_path_factory):
    return _export("bitnet", tmp_path_factory.mktemp("models") / "bitnet.onnx")


@pytest.fixture(scope="session")
def tiny_llama_kv(tmp_path_factory):
    return _export("llama", tmp_path_factory.mktemp("models") / "llama_kv.onnx", with_past=True)


@pytest.fixture(scope="session")
def prompt():
    return PROMPT.copy()
