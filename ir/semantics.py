"""The integer contract for ternary linears, written down once.

Every consumer (the IR interpreter, the packing passes, TVM kernels, the RTL golden model in the
cocotb benches) calls these functions; nobody re-derives the arithmetic.

    x (float, [..., K])  --quantize_act-->  x_q int8 [..., K], a_scale f32 [..., 1]
    w (ternary {-1,0,1}, [N, K]) with one f32 weight scale per tensor
    acc = ternary_matmul_i32(x_q, w_t)            exact int32, [..., N]
    y   = dequantize(acc, a_scale, w_scale)        f32, [..., N]

`a_scale` is BitNet's `127 / max|x|` (a multiplier): x ~= x_q / a_scale, so y = acc / a_scale * w_scale.
"""

from __future__ import annotations

import numpy as np

ACT_QMAX = 127
ACT_QMIN = -128
ACT_EPS = 1e-5


def quantize_act(x: np.ndarray, eps: float = ACT_EPS) -> tuple[np.ndarray, np.ndarray]:
    """Per-token absmax int8 quantization (BitNet b1.58): returns (x_q int8, a_scale f32 [..., 1]).

    a_scale = 127 / clip(max|x|, eps); x_q = clip(round_half_even(x * a_scale), -128, 127).
    Computed in float32, as the exported graphs do.
    """
    x = np.asarray(x, dtype=np.float32)
    amax = np.max(np.abs(x), axis=-1, keepdims=True).astype(np.float32)
    a_scale = (np.float32(ACT_QMAX) / np.maximum(amax, np.float32(eps))).astype(np.float32)
    x_q = np.clip(np.round(x * a_scale), ACT_QMIN, ACT_QMAX).astype(np.int8)
    return x_q, a_scale


def ternary_matmul_i32(x_q: np.ndarray, w_t: np.ndarray) -> np.ndarray:
    """Exact int32 accumulation: acc[..., n] = sum_k x_q[..., k] * w_t[n, k].

    x_q: int8 [..., K]; w_t: int8 with values in {-1, 0, 1}, layout [N, K] (torch Linear layout).
    |acc| <= 128 * K, so int32 is exact for K < 2**24.
    """
    x_q = np.asarray(x_q)
    w_t = np.asarray(w_t)
    if x_q.dtype != np.int8:
        raise TypeError(f"activations must be int8, got {x_q.dtype}")
    if w_t.ndim != 2 or x_q.shape[-1] != w_t.shape[1]:
        raise ValueError(f"shape mismatch: x_q {x_q.shape} vs w_t {w_t.shape} (expects [N, K])")
    # int64 matmul is exact; the result provably fits int32 for the K we accept.
    acc = np.matmul(x_q.astype(np.int64), w_t.astype(np.int64).T)
    return acc.astype(np.int32)


def dequantize(acc: np.ndarray, a_scale: np.ndarray, w_scale: float | np.ndarray) -> np.ndarray:
    """y = acc / a_scale * w_scale in float32."""
    return (acc.astype(np.float32) / np.asarray(a_scale, np.float32) * np.float32(w_scale)).astype(np.float32)


def ternarize_absmean(w: np.ndarray, eps: float = 1e-5) -> tuple[np.ndarray, np.float32]:
    """BitNet b1.58 weight quantization: w_t = clip(round(w / mean|w|), -1, 1), scale = mean|w|.

    Lossy for float weights; returns (w_t int8 [N, K], w_scale f32).
    """
    w = np.asarray(w, dtype=np.float32)
    scale = np.float32(max(float(np.mean(np.abs(w))), eps))
    w_t = np.clip(np.round(w / scale), -1, 1).astype(np.int8)
    return w_t, scale


def ternary_linear(x: np.ndarray, w_t: np.ndarray, w_scale: float, eps: float = ACT_EPS) -> np.ndarray:
    """The whole contract: quantize activations, exact int32 matmul, dequantize."""
    x_q, a_scale = quantize_act(x, eps)
    return dequantize(ternary_matmul_i32(x_q, w_t), a_scale, w_scale)
