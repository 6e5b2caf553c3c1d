"""Fixtures for the TVM backend tests: the tiny Llama / BitNet exports (hidden 64, 2 layers) from the
repo's shared, file-cached `onnx_export` fixture (tests/conftest.py), loaded with ternc.load."""

from __future__ import annotations

import numpy as np
import pytest

PROMPT = np.array([[3, 17, 42, 99, 5, 64, 1]], dtype=np.int64)
N_NEW = 6


def _load(onnx_export, arch: str, with_past: bool = False):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import ternc

    return ternc.load(str(onnx_export(arch, with_past)))


@pytest.fixture(scope="session")
def tiny_llama(onnx_export):
    return _load(onnx_export, "llama")


@pytest.fixture(scope="session")
def tiny_bitnet(onnx_export):
    return _load(onnx_export, "bitnet")


@pytest.fixture(scope="session")
def tiny_llama_kv(onnx_export):
    return _load(onnx_export, "llama", with_past=True)


@pytest.fixture(scope="session")
def prompt():
    return PROMPT.copy()
