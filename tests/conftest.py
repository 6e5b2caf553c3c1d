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
# measured kernel choices stay in memory (no ~/.cache/ternc file): tests are hermetic
os.environ.setdefault("TERNC_KERNEL_CACHE", "off")

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
        from ternc.models import smollm2

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


def write_tiny_gguf(path: Path, seed: int = 0, H: int = 256, F: int = 512, L: int = 2, nh: int = 4, nkv: int = 2) -> Path:
    """A tiny Llama GGUF: float embeddings/norms/head, every projection ternary (TQ2_0 and TQ1_0 mixed,
    one scale per tensor as a BitNet conversion writes), a byte-level gpt2 tokenizer with a chat template."""
    import gguf

    from ternc.ir.packing import to_gguf_tq1_0, to_gguf_tq2_0

    rng = np.random.default_rng(seed)
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    toks = sorted(bytes_to_unicode().values()) + ["Ġt", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    V = len(toks)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-ternary-llama")
    w.add_context_length(256)
    w.add_embedding_length(H)
    w.add_block_count(L)
    w.add_feed_forward_length(F)
    w.add_head_count(nh)
    w.add_head_count_kv(nkv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(H // nh)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(toks)
    w.add_token_types([1] * (V - 3) + [3] * 3)
    w.add_token_merges(["Ġ t"])
    w.add_token_scores([0.0] * V)
    w.add_eos_token_id(V - 1)
    w.add_bos_token_id(V - 3)
    w.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    def f32(*s):
        return (rng.standard_normal(s) * 0.5).astype(np.float32)

    w.add_tensor("token_embd.weight", f32(V, H))
    hd = H // nh
    shapes = {"attn_q": (H, H), "attn_k": (nkv * hd, H), "attn_v": (nkv * hd, H), "attn_output": (H, H),
              "ffn_gate": (F, H), "ffn_up": (F, H), "ffn_down": (H, F)}
    for i in range(L):
        w.add_tensor(f"blk.{i}.attn_norm.weight", 1 + 0.1 * f32(H))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", 1 + 0.1 * f32(H))
        for j, (nm, (n, k)) in enumerate(shapes.items()):
            t = rng.integers(-1, 2, (n, k)).astype(np.int8)
            scale = float(rng.uniform(0.02, 0.08))
            q = gguf.GGMLQuantizationType.TQ2_0 if (i + j) % 2 == 0 else gguf.GGMLQuantizationType.TQ1_0
            data = (to_gguf_tq2_0 if q == gguf.GGMLQuantizationType.TQ2_0 else to_gguf_tq1_0)(t, scale)
            w.add_tensor(f"blk.{i}.{nm}.weight", data, raw_dtype=q)
    w.add_tensor("output_norm.weight", 1 + 0.1 * f32(H))
    w.add_tensor("output.weight", f32(V, H))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="session")
def tiny_gguf():
    path = CACHE / "tiny-ternary-llama.gguf"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "tiny-ternary-llama.gguf.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            tmp = CACHE / f".tiny-ternary-llama.{os.getpid()}.gguf"
            write_tiny_gguf(tmp)
            os.replace(tmp, path)
    return path


@pytest.fixture(scope="session")
def tiny_tok():
    return tiny_tokenizer()
