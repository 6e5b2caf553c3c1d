"""CUDA: the whole model lowers and compiles for sm_90 here (nvcc builds the fatbins ahead of
time); running it needs a GPU (`gpu` marker; bench/gpu_check.py does the end-to-end run)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

import ternc  # noqa: E402
from ternc.backends import artifact as A  # noqa: E402

from .conftest import N_NEW  # noqa: E402
from .helpers import ternarize  # noqa: E402

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")


@pytest.fixture(scope="module")
def cuda_artifact(tiny_bitnet, tmp_path_factory):
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not installed")
    m = ternarize(tiny_bitnet, ["i2", "tl2"])
    return m, A.build_artifact(m, "cuda", tmp_path_factory.mktemp("cuda") / "art", pipeline_desc=["test"])


@needs_nvcc
def test_cuda_artifact_has_fatbins(cuda_artifact):
    _, art = cuda_artifact
    man = json.loads((art / "manifest.json").read_text())
    assert man["target"]["name"] == "cuda" and "sm_90" in man["target"]["tvm"]
    fatbins = [f for f in man["files"] if f.endswith(".fatbin")]
    assert fatbins, man["files"]
    for f in fatbins:
        data = (art / f).read_bytes()
        assert data[:4] == bytes.fromhex("50ed55ba")  # CUDA fatbin magic 0xba55ed50 (little-endian)
        src = (art / f.replace(".fatbin", ".cu")).read_text()
        # decode: dp4a GEMV on i2 (cuda_ternary.py), plain GEMV on tl2; prefill: GEMM; quantize
        for name in ("ternc_tmm_dp4a_i2", "ternc_dp4a_pack", "ternc_tmm_gemv_tl2", "ternc_tmm_gemm_i2",
                     "ternc_tmm_gemm_tl2", "ternc_quantize"):
            assert name in src, name
        assert "__dp4a" in src
    A.read_manifest(art)


@pytest.mark.gpu
def test_cuda_artifact_tokens_on_gpu(cuda_artifact, prompt):
    m, art = cuda_artifact
    runner = ternc.load_artifact(art)
    np.testing.assert_array_equal(ternc.generate(runner, prompt, N_NEW), ternc.generate(m, prompt, N_NEW))
