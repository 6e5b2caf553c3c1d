"""Sampling, streaming detokenization and text generation (tokenizer.py)."""

from __future__ import annotations

import numpy as np
import pytest

import ternc
from ternc.tokenizer import StreamDecoder, pick_token


def test_pick_token_greedy_topk_topp_and_seed():
    logits = np.array([0.0, 3.0, 2.9, -1.0, 1.0])
    assert pick_token(logits, None, 0.0) == 1
    rng = np.random.default_rng(0)
    assert {pick_token(logits, rng, 1.0, top_k=1) for _ in range(20)} == {1}
    # top_p at T=1: token 1 holds 0.47 of the mass, tokens 1+2 0.90
    assert {pick_token(logits, rng, 1.0, top_p=0.4) for _ in range(20)} == {1}
    assert {pick_token(logits, rng, 1.0, top_p=0.6) for _ in range(40)} == {1, 2}
    draws = {pick_token(logits, rng, 5.0) for _ in range(200)}
    assert len(draws) >= 4  # a high temperature reaches the tail
    a = [pick_token(logits, np.random.default_rng(3), 1.0, top_k=3) for _ in range(5)]
    b = [pick_token(logits, np.random.default_rng(3), 1.0, top_k=3) for _ in range(5)]
    assert a == b


def test_sampling_distribution_matches_softmax():
    logits = np.array([1.0, 2.0, 0.5])
    rng = np.random.default_rng(1)
    n = 20000
    counts = np.bincount([pick_token(logits, rng, 0.7) for _ in range(n)], minlength=3) / n
    p = np.exp(logits / 0.7)
    p /= p.sum()
    np.testing.assert_allclose(counts, p, atol=0.015)


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_k=-2), dict(top_p=0.0), dict(top_p=1.5)])
def test_bad_sampling_options_are_refused(bad):
    from ternc.models import tiny_bitnet

    with pytest.raises(ValueError):
        ternc.generate(ternc.load(tiny_bitnet.default_onnx()), [[1, 2]], 2, **bad)


def test_stream_decoder_never_splits_a_character(tiny_tok):
    ids = tiny_tok("é ü ok")["input_ids"]  # two-byte characters: one byte token each half
    dec = StreamDecoder(tiny_tok)
    pieces = [dec.push(t) for t in ids]
    assert "".join(pieces) == "é ü ok"
    assert all("\ufffd" not in p for p in pieces)


def test_generate_sampling_is_seeded_and_stops_at_eos():
    from ternc.models import tiny_bitnet

    m = ternc.load(tiny_bitnet.default_onnx())
    a = ternc.generate(m, [[1, 2, 3]], 6, temperature=0.9, top_k=20, seed=11)
    b = ternc.generate(m, [[1, 2, 3]], 6, temperature=0.9, top_k=20, seed=11)
    np.testing.assert_array_equal(a, b)
    greedy = ternc.generate(m, [[1, 2, 3]], 6)
    first = int(greedy[0, 3])
    stopped = ternc.generate(m, [[1, 2, 3]], 6, eos_token_id=[first])
    assert stopped.shape[1] == 4  # stopped right after the EOS token
