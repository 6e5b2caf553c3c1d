"""The torch peer of the synthetic BitNet (TorchFP16, bench/gpu_decode.py's reference) must compute
the same model as ternc's IR: on a tiny 2B4T-like config (GQA, ReLU^2, sub-norms, tied f16
embeddings) the torch graph, run on the CPU in float32, matches the IR interpreter's logits for a
prefill and greedy decode steps."""

from __future__ import annotations

from dataclasses import replace

import numpy as np


def test_torch_peer_matches_interpreter():
    import torch

    from ternc.ir.decoder import DecoderSpec, decode_feeds
    from ternc.ir.interp import Interpreter

    from ternc.models import synthetic_bitnet as syn

    cfg = replace(syn.B2B4T, layers=2, hidden=256, ffn=384, heads=4, kv_heads=2, vocab=300, max_pos=64)
    module = syn.build_module(cfg, "i2", seed=3, static_decode=1)
    dec = DecoderSpec.of(module)
    interp = Interpreter(module)
    ids = np.array([[5, 17, 250, 3, 99]], np.int64)
    res = interp.run("prefill", {"input_ids": ids})
    ours = [res[dec.logits].reshape(-1)]
    toks = [int(np.argmax(ours[0]))]
    for _ in range(3):
        res = interp.run("decode", decode_feeds(dec, res, np.array([[toks[-1]]], np.int64)))
        ours.append(res[dec.logits].reshape(-1))
        toks.append(int(np.argmax(ours[-1])))

    peer = syn.TorchFP16(cfg, seed=3, max_len=16, device="cpu", dtype="float32")
    with torch.no_grad():
        theirs = [peer.prefill(ids[0]).numpy()]
        for s in range(3):
            theirs.append(peer.decode_eager(toks[s], ids.shape[1] + s).numpy())
    for a, b in zip(ours, theirs):
        rel = np.linalg.norm(a - b) / np.linalg.norm(a)
        assert rel < 1e-4, rel
    # and the check is not vacuous: another seed's weights disagree
    other = syn.TorchFP16(cfg, seed=4, max_len=16, device="cpu", dtype="float32")
    with torch.no_grad():
        far = other.prefill(ids[0]).numpy()
    assert np.linalg.norm(ours[0] - far) / np.linalg.norm(ours[0]) > 0.1


def test_compiled_twin_shares_weights_and_keeps_its_own_cache():
    """The torch.compile peer (TorchFP16.compiled_twin): same weights, its own KV cache, the same
    logits (traced by dynamo; the `eager` backend keeps the test free of a C++ toolchain)."""
    import torch

    from ternc.models import synthetic_bitnet as syn

    cfg = replace(syn.B2B4T, layers=2, hidden=128, ffn=192, heads=4, kv_heads=2, vocab=200, max_pos=32)
    peer = syn.TorchFP16(cfg, seed=3, max_len=12, device="cpu", dtype="float32")
    twin = peer.compiled_twin(backend="eager")
    assert twin.w is peer.w and all(a is not b for a, b in zip(twin.k, peer.k))
    ids = np.array([5, 17, 150, 3], np.int64)
    with torch.no_grad():
        a = [peer.prefill(ids).numpy(), peer.decode_eager(7, 4).numpy()]
        b = [twin.prefill(ids).numpy(), twin.decode_eager(7, 4).numpy()]
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)
    assert not torch.equal(peer.k[0], torch.zeros_like(peer.k[0]))
