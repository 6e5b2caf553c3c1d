"""Fixtures for the pass tests: tiny exported models (loaded once per session) and text helpers."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

import ternc
from ternc.ir.decoder import DecoderSpec, decode_feeds
from ternc.ir import interpret, parse


def ir(text: str):
    """A module from its text form (tests write tiny modules inline; constants of <= 8 elements)."""
    return parse(textwrap.dedent(text))


def text(module) -> str:
    return str(module)


def run_all(module, inputs_by_entry):
    return {e: interpret(module, inputs, e) for e, inputs in inputs_by_entry.items()}


def assert_same_outputs(a, b, inputs_by_entry):
    """Bit-identical results for every entry point."""
    ra, rb = run_all(a, inputs_by_entry), run_all(b, inputs_by_entry)
    for e in ra:
        assert ra[e].keys() == rb[e].keys()
        for k in ra[e]:
            np.testing.assert_array_equal(ra[e][k], rb[e][k], err_msg=f"@{e} %{k}")


def decoder_inputs(module, seq: int = 6, past: int = 4, seed: int = 0):
    """Inputs for main (if present), prefill and decode of a decoder module."""
    rng = np.random.default_rng(seed)
    dec = DecoderSpec.of(module)
    vocab = max(c.type.shape[0] for c in module.constants.values()
                if c.type.shape and len(c.type.shape) == 2 and c.type.dtype.is_float)
    ids = rng.integers(0, vocab, (1, seq)).astype(np.int64)
    out = {dec.prefill: {dec.input_ids: ids}}
    if "main" in module.entry_names:
        out["main"] = {dec.input_ids: ids}
    pre = interpret(module, out[dec.prefill], dec.prefill)
    out[dec.decode] = decode_feeds(dec, pre, ids[:, -1:])
    return out


@pytest.fixture(scope="session")
def llama_path(onnx_export):
    return onnx_export("llama", False)


@pytest.fixture(scope="session")
def llama(llama_path):
    """Tiny float Llama (hidden 64, 2 layers, vocab 128) with prefill/decode entry points."""
    return ternc.load(llama_path)


@pytest.fixture(scope="session")
def bitnet_path(onnx_export):
    return onnx_export("tiny-bitnet", False)


@pytest.fixture(scope="session")
def bitnet(bitnet_path):
    """The default tiny BitNet (transformers BitLinear layers, hidden 168, 2 layers), as imported."""
    return ternc.load(bitnet_path)


@pytest.fixture(scope="session")
def bitnet_ternary(bitnet):
    """The tiny BitNet after fold + raise-ternary: every projection a TernaryLinear (t2)."""
    from ternc.passes.pipeline import compile

    return compile(bitnet, passes="fold,raise-ternary", report=False)[0]


@pytest.fixture(scope="session")
def bitnet_inputs(bitnet_ternary):
    return decoder_inputs(bitnet_ternary)


@pytest.fixture(scope="session")
def llama_inputs(llama):
    return decoder_inputs(llama)


@pytest.fixture(scope="session")
def hp():
    """Helpers (test files cannot import conftest under --import-mode=importlib)."""
    from types import SimpleNamespace

    return SimpleNamespace(ir=ir, text=text, assert_same_outputs=assert_same_outputs, decoder_inputs=decoder_inputs,
                           run_all=run_all)
