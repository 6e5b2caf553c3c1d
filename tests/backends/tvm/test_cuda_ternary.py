"""CUDA ternary GEMV: layout arithmetic emulated on the CPU, and CUDA code generation through TVM.

Running the kernels needs a GPU (bench/gpu_gemv.py run, marked gpu below); here we check that the
dp4a formulation over ternc's i2 layout computes exactly the integer contract.
"""

from __future__ import annotations

import numpy as np
import pytest

from ternc.backends.tvm.kernels.cuda_ternary import pack_activations, weight_words
from ternc.ir import packing, semantics


def _emulate(words: np.ndarray, xw: np.ndarray, s: np.ndarray) -> np.ndarray:
    """numpy emulation of the kernel: sum over (word, group) of dp4a(codes, xword) - S."""
    n, kw = words.shape
    m = xw.shape[0]
    out = np.zeros((m, n), np.int64)
    for w in range(kw):
        for g in range(4):
            codes = ((words[:, w] >> np.int32(6 - 2 * g)) & np.int32(0x03030303)).view(np.uint8).reshape(n, 4)
            xg = np.ascontiguousarray(xw[:, g, w]).view(np.int8).reshape(m, 4).astype(np.int64)
            out += (codes.astype(np.int64) @ xg.T).T
    return (out - s[:, None]).astype(np.int32)


@pytest.mark.parametrize("n,k,m", [(5, 128, 1), (7, 300, 3), (16, 2560, 2)])
def test_dp4a_formulation_is_exact(n, k, m, rng):
    w_t = rng.integers(-1, 2, size=(n, k), dtype=np.int8)
    x_q = rng.integers(-128, 128, size=(m, k), dtype=np.int8)
    words = weight_words(packing.pack(w_t, "i2")["codes"])
    xw = pack_activations(x_q)
    s = x_q.astype(np.int64).sum(1).astype(np.int32)
    np.testing.assert_array_equal(_emulate(words, xw, s).reshape(m, n), semantics.ternary_matmul_i32(x_q, w_t))


def test_cuda_source_uses_dp4a_and_warp_reduction():
    pytest.importorskip("tvm")
    from ternc.backends.tvm.kernels.cuda_ternary import compile_gemv

    src = compile_gemv(64, 256, 1).mod.imports[0].inspect_source()
    assert "__dp4a" in src and "__shfl_down_sync" in src
