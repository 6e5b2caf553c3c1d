"""ir/decoder.py: the typed decoder contract and the decode-step feed builder."""

import numpy as np
import pytest

from ternc.ir.decoder import DecoderSpec, DecoderSpecError, StateKind, StateTensor, decode_feeds

META = {"prefill": "prefill", "decode": "decode", "input_ids": "input_ids", "logits": "logits",
        "past": [["past.0.key", "past.0.value"], ["past.1.key", "past.1.value"]],
        "present": [["present.0.key", "present.0.value"], ["present.1.key", "present.1.value"]],
        "n_layers": 2, "kv_heads": 2, "head_dim": 16, "kv_dtype": "f32"}


def test_round_trip_keeps_the_json_layout():
    spec = DecoderSpec.from_meta(META)
    assert spec.n_layers == 2 and spec.entries == ("prefill", "decode")
    assert spec.kv[1][0] == StateTensor("past.1.key", "present.1.key", StateKind.KEY, 1)
    assert spec.to_meta() == META
    st = spec.with_state([StateTensor("past.seen", "present.seen", StateKind.SEEN_TOKENS)], kv_budget=8)
    meta = st.to_meta()
    assert meta["state"] == [["past.seen", "present.seen"]] and meta["kv_budget"] == 8
    assert DecoderSpec.from_meta(meta) == st
    # state written without kinds (older modules) still loads
    old = {**META, "state": [["past.seen", "present.seen"]]}
    assert DecoderSpec.from_meta(old).state[0].kind == StateKind.EXTRA


def test_malformed_meta_is_refused():
    with pytest.raises(DecoderSpecError, match="lacks logits"):
        DecoderSpec.from_meta({k: v for k, v in META.items() if k != "logits"})
    with pytest.raises(DecoderSpecError, match="n_layers 3"):
        DecoderSpec.from_meta({**META, "n_layers": 3})


def test_decode_feeds_carry_kv_and_state():
    spec = DecoderSpec.from_meta(META).with_state([StateTensor("past.seen", "present.seen", StateKind.SEEN_TOKENS)])
    results = {o: np.full(1, i) for i, o in enumerate(
        ["present.0.key", "present.0.value", "present.1.key", "present.1.value", "present.seen", "logits"])}
    feeds = decode_feeds(spec, results, [[7]])
    assert set(feeds) == {"input_ids", "past.0.key", "past.0.value", "past.1.key", "past.1.value", "past.seen"}
    assert feeds["past.1.value"] is results["present.1.value"] and feeds["input_ids"].dtype == np.int64
