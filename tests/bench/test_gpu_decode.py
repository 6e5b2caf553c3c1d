"""report.token_divergence (bench/gpu_decode.py's disclosure of where two greedy runs part (no GPU needed))."""

from __future__ import annotations

import numpy as np

from ternc.report import token_divergence


def _run(tokens, logits):
    return list(tokens), [np.asarray(x, np.float32) for x in logits]


def test_divergence_same_tokens():
    a = _run([1, 2], [[0, 1, 0], [0, 0, 1]])
    assert token_divergence(a, a, 0.1) == {"same_tokens": True, "steps": 2}


def test_divergence_near_tie_vs_real_difference():
    ref = _run([1, 2, 0], [[0, 1, 0], [0, 0.50, 0.51], [1, 0, 0]])
    tie = _run([1, 1, 0], [[0, 1, 0], [0, 0.52, 0.50], [1, 0, 0]])  # 0.01 margin, 0.02 rounding
    d = token_divergence(ref, tie, noise_floor=0.1)
    assert d["first_differing_step"] == 1 and d["tokens"] == [2, 1]
    assert d["reason"].startswith("near-tie") and d["max_rel_l2_logits_before"] == 0.0
    # the same flip with logits far apart (beyond the model's rounding sensitivity) is no near-tie
    far = _run([1, 0, 0], [[0, 1, 0], [5, 0.50, 0.51], [1, 0, 0]])
    assert token_divergence(ref, far, noise_floor=0.1)["reason"].startswith("logits differ by more")
    assert token_divergence(ref, tie, noise_floor=0.01)["reason"].startswith("logits differ by more")
