"""The in-place KV cache (backends/tvm/kvcache.py, the decode__kv_inplace entry): token-exact with the
interpreter, the cache written in place across steps, and views that stay correct when a past is
decoded twice or the cache outgrows its capacity -- compared with the same artifact run the old way
(every step concatenating the cache)."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

import ternc  # noqa: E402
from ternc.backends.tvm.kvcache import MIN_CAPACITY, KVView  # noqa: E402
from ternc.ir.decoder import DecoderSpec, decode_feeds  # noqa: E402


@pytest.fixture(scope="module")
def art(tiny_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("kv") / "llama-cpu"
    res = ternc.compile(tiny_llama, target="cpu", out=out, kernel_policy="dot")
    return res


@pytest.fixture()
def runners(art):
    inplace = ternc.load_artifact(art.artifact)
    concat = ternc.load_artifact(art.artifact)
    concat._kv_inplace = None  # the same library, decode called as the IR states it
    return inplace, concat


def test_manifest_names_the_inplace_entry(art, runners):
    plan = art.manifest["kv_inplace"]
    dec = DecoderSpec.from_meta(art.manifest["model"]["meta"]["decoder"])
    assert plan["decode"] == dec.decode and plan["entry"] == dec.decode + "__kv_inplace"
    assert sorted(plan["caches"]) == sorted(t.past for t in dec.carried)
    assert runners[0]._kv_inplace == plan


def test_generate_token_exact_past_capacity(art, prompt):
    """More new tokens than the first buffer's capacity: the cache grows once, tokens stay the
    interpreter's."""
    runner = ternc.load_artifact(art.artifact)
    n = MIN_CAPACITY - prompt.shape[1] + 8
    np.testing.assert_array_equal(ternc.generate(runner, prompt, n), ternc.generate(art.module, prompt, n))


def test_cache_written_in_place_and_branches(runners, prompt):
    inplace, concat = runners
    dec = DecoderSpec.from_meta(inplace.meta["decoder"])
    a, b = inplace.run(dec.prefill, {dec.input_ids: prompt}), concat.run(dec.prefill, {dec.input_ids: prompt})
    a1 = inplace.run(dec.decode, decode_feeds(dec, a, [[7]]))
    b1 = concat.run(dec.decode, decode_feeds(dec, b, [[7]]))
    key = dec.carried[0].present
    assert isinstance(a1[key], KVView)
    buf = a1[key].buffer
    a2 = inplace.run(dec.decode, decode_feeds(dec, a1, [[9]]))
    assert a2[key].buffer is buf and buf.tip == prompt.shape[1] + 2  # no copy: the same buffer, one more row
    b2 = concat.run(dec.decode, decode_feeds(dec, b1, [[9]]))
    # decode the step-1 past again with another token: a1 is no longer its buffer's tip -> copied
    a2x = inplace.run(dec.decode, decode_feeds(dec, a1, [[11]]))
    b2x = concat.run(dec.decode, decode_feeds(dec, b1, [[11]]))
    assert a2x[key].buffer is not buf
    for got, ref in ((a1, b1), (a2, b2), (a2x, b2x)):
        assert set(got) == set(ref)
        for name in ref:
            np.testing.assert_allclose(np.asarray(got[name]), np.asarray(ref[name]), rtol=1e-6, atol=1e-6,
                                       err_msg=name)
    # the first branch's views still read what they held
    np.testing.assert_array_equal(np.asarray(a2[key]), np.asarray(b2[key]))


def test_host_arrays_as_past(runners, prompt):
    """A past given as host arrays (not the runner's views) is copied into a buffer first."""
    inplace, concat = runners
    dec = DecoderSpec.from_meta(inplace.meta["decoder"])
    a = inplace.run(dec.prefill, {dec.input_ids: prompt})
    host = {k: np.asarray(v) for k, v in a.items()}
    got = inplace.run(dec.decode, decode_feeds(dec, host, [[5]]))
    want = concat.run(dec.decode, decode_feeds(dec, host, [[5]]))
    np.testing.assert_allclose(got[dec.logits], want[dec.logits], rtol=1e-6, atol=1e-6)
