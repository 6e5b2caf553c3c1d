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
