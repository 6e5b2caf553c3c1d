"""CUDA ternary GEMV: layout arithmetic emulated on the CPU, and CUDA code generation through TVM.

Running the kernels needs a GPU (bench/gpu_gemv.py run, marked gpu below); here we check that the
dp4a formulation over ternc's i2 layout computes exactly the integer contract.
"""

from __future__ import annotations

import re

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


@pytest.mark.parametrize("k,m", [(168, 1), (300, 3), (2560, 2)])
def test_fused_quantize_dp4a_matches_quantize_then_pack(k, m, rng):
    """The fused decode kernel's contract (kernels.quantize_dp4a_te), compiled for the CPU: a_scale,
    the dp4a words and the code sum equal semantics.quantize_act followed by pack_activations."""
    tvm = pytest.importorskip("tvm")
    from tvm import te

    from ternc.backends.tvm.kernels import quantize_dp4a_te

    x_np = (rng.standard_normal((m, k)) * rng.uniform(0.1, 30)).astype(np.float32)
    x_np[0, : min(k, 5)] = [0.5, -0.5, 1.5, 2.5, -2.5][: min(k, 5)]  # ties: round half to even
    tensors = quantize_dp4a_te(k, semantics.ACT_EPS, m=m)
    f = tvm.compile(tvm.IRModule({"main": te.create_prim_func(list(tensors))}), target="llvm")
    dev = tvm.cpu()
    kw = packing.I2.words_per_row(k)
    out = [tvm.runtime.empty(s, d, dev) for s, d in (((m, 4, kw), "int32"), ((m,), "int32"), ((m, 1), "float32"))]
    f["main"](tvm.runtime.tensor(x_np, dev), *out)
    x_q, a_scale = semantics.quantize_act(x_np)
    np.testing.assert_array_equal(out[2].numpy().reshape(-1), np.asarray(a_scale, np.float32).reshape(-1))
    np.testing.assert_array_equal(out[0].numpy(), pack_activations(x_q))
    np.testing.assert_array_equal(out[1].numpy(), x_q.astype(np.int64).sum(1).astype(np.int32))


def test_fused_quantize_dp4a_cuda_source_is_one_kernel():
    pytest.importorskip("tvm")
    import tvm

    from ternc.backends.tvm.kernels import quantize_dp4a_func
    from ternc.backends.tvm.kernels.cuda_ternary import cuda_target

    src = tvm.compile(tvm.IRModule({"main": quantize_dp4a_func(2560, semantics.ACT_EPS)}),
                      target=cuda_target()).mod.imports[0].inspect_source()
    import re

    kernels = set(re.findall(r"__global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\(", src))
    assert len(kernels) == 1 and src.count("__syncthreads") >= 2, kernels


@pytest.mark.parametrize("hq,hkv,d", [(4, 2, 42), (20, 5, 128)])
def test_decode_attention_kernels_reduce_across_a_warp_or_per_thread(hq, hkv, d):
    """Decode attention schedules: scores reduce the head dim with a warp shuffle (a lane-wide
    read-modify-write of the output would race), PV keeps one accumulator per thread in registers."""
    pytest.importorskip("tvm")
    import tvm

    from ternc.backends.tvm.kernels import gqa_decode_pv_func, gqa_decode_scores_func
    from ternc.backends.tvm.kernels.cuda_ternary import cuda_target

    def source(f):
        return tvm.compile(tvm.IRModule({"main": f}), target=cuda_target()).mod.imports[0].inspect_source()

    scores = source(gqa_decode_scores_func(hq, hkv, d))
    assert "__shfl_down_sync" in scores and "in_thread_scores" in scores
    pv = source(gqa_decode_pv_func(hq, hkv, d))
    body = pv[pv.index("{", pv.index("ternc_gqa_pv")):]
    # keys split over threadIdx.y: per-thread partial sums, then a synchronized shared-memory tree
    # (without it the key lanes would race on pv with unsynchronized +=)
    assert "in_thread_pv" in body and "red_buf0" in body and "__syncthreads()" in body, body
    assert len(re.findall(r"(?<![\w])pv_ptr\[", body)) == 1, body  # one store of the output: the final one
    assert "if (((int64_t)threadIdx.y) == (int64_t)0)" in body, body
    # no predicated tail on the output element (d = 42 is not a multiple of 32): idle lanes would
    # overwrite the next head's outputs (they did, found by gpu_check on the H200)
    assert "threadIdx.x) <" not in body, body


def test_fused_rmsnorm_quantize_dp4a_matches_tvm_rms_norm_then_quantize(rng):
    """The norm-fused variant (norm_eps) equals TVM's own rms_norm followed by the fused quantize
    kernel, bit for bit (CPU build of both contracts)."""
    tvm = pytest.importorskip("tvm")
    from tvm import te, topi

    from ternc.backends.tvm.kernels import quantize_dp4a_te

    m, k, norm_eps = 2, 2560, 1e-5
    x_np = (rng.standard_normal((m, k)) * 4).astype(np.float32)
    w_np = rng.uniform(0.5, 1.5, k).astype(np.float32)
    dev = tvm.cpu()
    kw = packing.I2.words_per_row(k)

    def outs():
        return [tvm.runtime.empty(s, d, dev) for s, d in (((m, 4, kw), "int32"), ((m,), "int32"), ((m, 1), "float32"))]

    fused = quantize_dp4a_te(k, semantics.ACT_EPS, m=m, norm_eps=norm_eps)
    f = tvm.compile(tvm.IRModule({"main": te.create_prim_func(list(fused))}), target="llvm")
    got = outs()
    f["main"](tvm.runtime.tensor(x_np, dev), tvm.runtime.tensor(w_np, dev), *got)

    x, w = te.placeholder((m, k), "float32", name="x"), te.placeholder((k,), "float32", name="w")
    y = topi.nn.rms_norm(x, w, axis=[1], epsilon=norm_eps)
    g = tvm.compile(tvm.IRModule({"main": te.create_prim_func([x, w, y])}), target="llvm")
    y_nd = tvm.runtime.empty((m, k), "float32", dev)
    g["main"](tvm.runtime.tensor(x_np, dev), tvm.runtime.tensor(w_np, dev), y_nd)
    plain = quantize_dp4a_te(k, semantics.ACT_EPS, m=m)
    h = tvm.compile(tvm.IRModule({"main": te.create_prim_func(list(plain))}), target="llvm")
    want = outs()
    h["main"](y_nd, *want)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_cuda_decode_fuses_rmsnorm_into_quantize():
    """Lowering for CUDA decode: BitNet's pre-/sub-norms (read only by dp4a linears) become one
    rmsnorm+quantize kernel each; the final norm (read by the fp16 LM head) stays an rms_norm."""
    pytest.importorskip("tvm")
    from dataclasses import replace

    from ternc.backends.tvm.lowering import lower_module
    from ternc.models import synthetic_bitnet as syn

    cfg = replace(syn.B2B4T, layers=2, hidden=256, ffn=384, heads=4, kv_heads=2, vocab=300, max_pos=64)
    low = lower_module(syn.build_module(cfg, "i2", seed=3, static_decode=1), None, "cuda", decode_tokens=1)
    decode = low.mod["decode"].script()
    names = [gv.name_hint for gv in low.mod.functions]
    assert decode.count("ternc_rmsnorm_quantize_dp4a") == 4 * cfg.layers, names  # per layer: 2 pre-, 2 sub-norms
    assert decode.count("R.nn.rms_norm") == 1  # the final norm
    assert "ternc_rmsnorm_quantize_dp4a" not in low.mod["prefill"].script()
