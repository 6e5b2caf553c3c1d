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
from ternc.backends.tvm import build as B  # noqa: E402

from .conftest import N_NEW  # noqa: E402
from .helpers import ternarize  # noqa: E402

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")


@pytest.fixture(scope="module")
def cuda_artifact(tiny_bitnet, tmp_path_factory):
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not installed")
    m = ternarize(tiny_bitnet, ["i2", "tl2"])
    return m, B.build_artifact(m, "cuda", tmp_path_factory.mktemp("cuda") / "art", pipeline=["test"]).path


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
        # decode: dp4a GEMV on i2 (cuda_ternary.py), plain GEMV on tl2; prefill: tiled dp4a GEMM on
        # i2, plain GEMM on tl2; quantize
        for name in ("ternc_tmm_dp4a_i2", "ternc_dp4a_pack", "ternc_tmm_gemv_tl2", "ternc_tmm_dp4a_gemm_i2",
                     "ternc_tmm_gemm_tl2", "ternc_quantize"):
            assert name in src, name
        assert "__dp4a" in src
    A.read_manifest(art)


@pytest.mark.gpu
def test_cuda_artifact_tokens_on_gpu(cuda_artifact, prompt):
    m, art = cuda_artifact
    runner = ternc.load_artifact(art)
    np.testing.assert_array_equal(ternc.generate(runner, prompt, N_NEW), ternc.generate(m, prompt, N_NEW))


@needs_nvcc
def test_cuda_artifact_stores_i2_codes_as_dp4a_words(cuda_artifact):
    """i2 codes are stored as the int32 words dp4a reads (a byte view, no copy): same bytes as the
    IR constant, and no view op left between decode's kernels (it would split CUDA-graph regions)."""
    from safetensors.numpy import load_file

    m, art = cuda_artifact
    w = load_file(str(art / B.WEIGHTS))
    codes = [n for n in w if n.endswith("codes") and m.constants[n].data.dtype == np.uint8
             and any(node.attr("format") == "i2" and n in node.inputs for f in m.functions for node in f.nodes)]
    assert codes
    for n in codes:
        assert w[n].dtype == np.int32
        assert w[n].tobytes() == np.ascontiguousarray(m.constants[n].data).tobytes()


def test_cuda_decode_fuses_and_captures_static_regions(tiny_bitnet):
    """Default CUDA build: Relax fusion on (scalar-parameter TIR functions kept out of fused groups,
    which TVM 0.27's FuseTIR cannot rename) and decode's static-shape regions captured as CUDA graphs."""
    from tvm import relax

    from ternc.backends.tvm import build as B
    from ternc.backends.tvm.lowering import lower_module

    m = ternarize(tiny_bitnet, ["i2"])
    tgt = B.make_target("cuda")
    low = lower_module(m, None, "cuda", decode_tokens=1)
    dec = low.entries["decode"]
    assert dec.inputs[0]["shape"] == [1, 1]  # one new token per decode call: static shapes
    for graph in (False, True):
        with tvm.transform.PassContext(config={"relax.backend.use_cuda_graph": graph}):
            mod = B._cuda_pipeline_pass(tgt, fuse=True, cuda_graph=graph)(low.mod)
        names = [gv.name_hint for gv in mod.functions]
        assert any(n.startswith("fused_") for n in names)
        captured = mod["decode"].script().count("cuda_graph.run_or_capture")
        assert (captured > 0) == graph, captured
    # the compile itself goes through (it failed in FuseTIR before scalar-param functions were kept apart)
    built = B.compile_module(m, "cuda")
    assert built.cuda_sources and relax is not None
