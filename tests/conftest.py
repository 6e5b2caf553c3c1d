"""Shared fixtures: tiny HF models exported once per machine (file cache, safe under xdist)."""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("TERNC_TEST_CACHE", REPO / ".cache" / "test-models"))

TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256)


def build_hf(arch: str, seed: int = 0):
    import torch
    from transformers import BitNetConfig, BitNetForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(**TINY)).eval()
    if arch == "bitnet":
        return BitNetForCausalLM(BitNetConfig(**TINY)).eval()
    if arch == "smollm2":
        import sys

        sys.path.insert(0, str(Path(__file__).parent / "models"))
        import smollm2

        return smollm2.load_hf()[0]
    if arch == "tiny-bitnet":
        from ternc.models import tiny_bitnet

        return tiny_bitnet.build()
    raise ValueError(arch)


def cached_export(arch: str, with_past: bool) -> Path:
    """Export once per machine; a lock keeps parallel workers from exporting the same file twice."""
    from ternc.frontend.torch_export import export_decoder

    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"{arch}{'-kv' if with_past else ''}.onnx"
    with open(CACHE / f"{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            tmp = path.with_suffix(".tmp.onnx")
            export_decoder(build_hf(arch), tmp, with_past=with_past)
            os.replace(tmp, path)
    return path


@pytest.fixture(scope="session")
def hf_model():
    cache = {}

    def get(arch):
        if arch not in cache:
            cache[arch] = build_hf(arch)
        return cache[arch]

    return get


@pytest.fixture(scope="session")
def onnx_export():
    return cached_export


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def _has_gpu() -> bool:
    import shutil as _sh
    import subprocess

    if not _sh.which("nvidia-smi"):
        return False
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=20).returncode == 0
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if any(item.get_closest_marker("gpu") for item in items) and not _has_gpu():
        skip = pytest.mark.skip(reason="needs an NVIDIA GPU (none found)")
        for item in items:
            if item.get_closest_marker("gpu"):
                item.add_marker(skip)


# --- model sources (frontend/hf.py, frontend/gguf.py): tiny files the tests write themselves

def tiny_tokenizer():
    """A byte-level BPE tokenizer (256 byte tokens, no merges) + 3 specials, with a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>",
                                  additional_special_tokens=["<|endoftext|>", "<|im_start|>"])
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                         "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    return tok


def write_hf_bitnet(folder: Path, seed: int = 7) -> Path:
    """A small random BitNet b1.58 folder in transformers' packed layout (uint8 codes + weight_scale)."""
    import torch
    from transformers import BitNetConfig, BitNetForCausalLM
    from transformers.integrations.bitnet import BitLinear, pack_weights

    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    cfg = BitNetConfig(**{**TINY, "vocab_size": len(tok)}, eos_token_id=tok.eos_token_id, bos_token_id=None,
                       pad_token_id=None)
    cfg.quantization_config = {"quant_method": "bitnet", "linear_class": "bitlinear", "quantization_mode": "offline"}
    lm = BitNetForCausalLM(cfg).eval()
    gen = torch.Generator().manual_seed(seed)
    for name, mod in list(lm.named_modules()):
        if isinstance(mod, torch.nn.Linear) and not name.endswith("lm_head"):
            bl = BitLinear(mod.in_features, mod.out_features, bias=False, dtype=torch.float32)
            w_t = torch.randint(-1, 2, (mod.out_features, mod.in_features), generator=gen).to(torch.float32)
            bl.weight.copy_(pack_weights(w_t))
            bl.weight_scale.fill_(float(torch.empty(()).uniform_(20, 60, generator=gen)))
            lm.set_submodule(name, bl)
    folder.mkdir(parents=True, exist_ok=True)
    lm.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def hf_bitnet_folder():
    """Written once per machine into the test cache (same bytes every time, so ternc's import cache hits)."""
    path = CACHE / "hf-bitnet-tiny"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "hf-bitnet-tiny.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (path / "config.json").exists():
            tmp = CACHE / f".hf-bitnet-tiny.{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            write_hf_bitnet(tmp)
            os.replace(tmp, path)
    return path
