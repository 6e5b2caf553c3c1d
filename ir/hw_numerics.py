"""Number formats of the ternc FPGA datapath, written down once (numpy, pure functions).

The RTL in ``hw/`` implements exactly these functions, the cocotb/Amaranth benches compare against
them, and the IR interpreter calls them when it is asked to follow the hardware numerics. The integer
core of a ternary linear (int8 x ternary -> exact int32) is ``ir/semantics.py``; the TL2 field
encoding is ``ir/packing.py``. This file adds what the hardware needs around that core.

Formats
-------
* ``FX`` activations: signed 32-bit two's complement fixed point with ``FX_FRAC = 16`` fractional bits
  (Q15.16): real value = raw / 2**16, range [-32768, 32768), resolution 1.5e-5. Every elementwise
  input/output of the epilogue (residual stream, RoPE'd q/k, gated FFN output) is in this format.
  Results saturate to the int32 range (never wrap).
* Quantizer reciprocal: per token ``amax = max(max|x_raw|, 1)`` (an integer; 1 raw LSB plays the role
  of semantics' eps); ``e = bit_length(amax)``, ``s = e + RECIP_SHIFT``; ``recip = floor(((127 << s)
  + amax // 2) / amax)`` (an unsigned integer in [127*2**16, 127*2**17], 24 bits, computed once per
  token by a sequential divider); then per element ``x_q = clip((x_raw * recip + 2**(s-1)) >> s,
  -128, 127)`` (round half up). This is ``quantize_act_fx``. It differs from ``semantics.quantize_act`` (float32,
  round half to even) only when x*127/amax lies within ~2**-15 of a .5 tie. Measured
  (``tests/ir/test_hw_numerics.py``): 3 of 256,000 int8 values (1.2e-5) differ on N(0,1) tokens of
  256, 0 of 512,000 on scaled tokens with an outlier channel; a difference is always 1 LSB.
* Dequantize factor: ``F = amax/2**16 * w_scale / 127`` is held as a normalized pseudo-float
  ``(m, s)`` with ``m`` an 18-bit mantissa in [2**17, 2**18) and real value m * 2**-s. The weight
  scale enters as ``(ws_m, ws_s)`` = ``encode_wscale(w_scale)`` (w_scale/127 with the same 18-bit
  mantissa, folded on the host, once per layer). ``dq_factor(amax, ws_m, ws_s)`` computes (m, s) per
  token (one 32x18 multiply + normalize, truncating; s clipped to the 7-bit field 0..127).
  ``dequantize_fx(acc, m, s)`` returns the FX raw value ``sat((acc * m + 2**(sh-1)) >> sh)`` with
  ``sh = clip(s - 16, 1, 63)``, i.e. round_half_up(acc * F) for any factor F < 2.
* ReLU^2: ``relu2_fx(x) = sat((max(x,0)**2 + 2**15) >> 16)``.
* SiLU: sigmoid by a 1024-entry table over [-8, 8) (step 1/64, entries in Q0.16, value at the bin
  centre, 0 below -8, 1.0 (65536) at or above 8): ``silu_fx(x) = sat((x * sigmoid_fx(x) + 2**15) >> 16)``.
  ``silu_gate_fx(g, u) = sat((silu_fx(g) * u + 2**15) >> 16)`` (Llama-style gate*up);
  ``relu2_gate_fx(g, u)`` likewise with ReLU^2 (BitNet b1.58 2B4T).
* RoPE: cos/sin in signed Q1.14 (int16, ``ROPE_FRAC = 14``): ``rope_table(positions, dim, theta)``.
  ``rope_fx(x0, x1, c, s) = (sat((x0*c - x1*s + 2**13) >> 14), sat((x0*s + x1*c + 2**13) >> 14))``,
  rotating pair (x0, x1) = (x[i], x[i + dim/2]) (HF rotate_half convention).
* Residual add: ``add_fx(a, b) = sat(a + b)``.

All functions take and return numpy integer arrays (int64 internally; FX results as int32).
"""

from __future__ import annotations

import numpy as np

from ternc.ir import packing
from ternc.ir.semantics import ACT_QMAX, ACT_QMIN

FX_FRAC = 16
FX_BITS = 32
FX_MIN = -(1 << (FX_BITS - 1))
FX_MAX = (1 << (FX_BITS - 1)) - 1
RECIP_SHIFT = 16         # quantizer: s = bit_length(amax) + 16; recip in (127*2**16, 127*2**17]
RECIP_BITS = 24          # width of the quantizer reciprocal
DQ_MANT_BITS = 18        # mantissa width of dequantize factors (fits one DSP48E2 B input)
DQ_S_MAX = 127           # dequantize shift field is 7 bits
ROPE_FRAC = 14
SIG_LUT_BITS = 10        # 1024-entry sigmoid table
SIG_RANGE = 8            # table covers [-8, 8)
SIG_FRAC = 16


# --------------------------------------------------------------------------------------------------
# Generic TL-G weight groups (G = 3 is exactly ir/packing.py's TL2).
# --------------------------------------------------------------------------------------------------
def tlg_num_indices(group: int) -> int:
    """Number of table indices for a group of G trits: 0 .. (3**G - 1) / 2 (G=3: 14)."""
    return (3 ** group - 1) // 2 + 1


def tlg_index_bits(group: int) -> int:
    return max(1, (tlg_num_indices(group) - 1).bit_length())


# One definition of the TL-G encodings lives in ir/packing.py.
tlg_digits = packing.tlg_digits
tlg_encode = packing.tlg_encode


def tlg_table(a: np.ndarray, group: int) -> np.ndarray:
    """The lookup table of one activation group: T[i] = dot(a, tlg_digits(i)) for i in 0..(3**G-1)/2."""
    digits = tlg_digits(np.arange(tlg_num_indices(group)), group).astype(np.int64)
    return digits @ np.asarray(a, dtype=np.int64)


# --------------------------------------------------------------------------------------------------
# FX fixed point
# --------------------------------------------------------------------------------------------------
def sat_fx(v: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(v, dtype=np.int64), FX_MIN, FX_MAX).astype(np.int32)


def to_fx(x: np.ndarray) -> np.ndarray:
    """float -> FX raw (round half to even, saturate)."""
    return sat_fx(np.round(np.asarray(x, dtype=np.float64) * (1 << FX_FRAC)))


def from_fx(raw: np.ndarray) -> np.ndarray:
    return np.asarray(raw, dtype=np.float64) / (1 << FX_FRAC)


def _rshift_round(v: np.ndarray, s) -> np.ndarray:
    """Arithmetic right shift by s >= 1 with round half up (floor(v / 2**s + 1/2)); s may be an array."""
    v = np.asarray(v, dtype=object if np.max(np.abs(v), initial=0) >= 2 ** 62 else np.int64)
    s = np.asarray(s, dtype=np.int64)
    return (v + (np.int64(1) << (s - 1))) >> s


# --------------------------------------------------------------------------------------------------
# Quantizer
# --------------------------------------------------------------------------------------------------
def quant_amax(x_raw: np.ndarray) -> np.ndarray:
    """Per-token amax of FX raw activations ([..., K] -> [..., 1]), at least 1."""
    x = np.asarray(x_raw, dtype=np.int64)
    return np.maximum(np.max(np.abs(x), axis=-1, keepdims=True), 1)


def quant_shift(amax: np.ndarray) -> np.ndarray:
    amax = np.asarray(amax, dtype=np.int64)
    e = np.frompyfunc(lambda v: int(v).bit_length(), 1, 1)(amax).astype(np.int64)
    return e + RECIP_SHIFT


def quant_recip(amax: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(recip, shift) with recip = floor(((127 << shift) + amax // 2) / amax); recip < 2**RECIP_BITS."""
    amax = np.asarray(amax, dtype=np.int64)
    s = quant_shift(amax)
    recip = ((np.int64(ACT_QMAX) << s) + amax // 2) // amax
    return recip, s


def quantize_act_fx(x_raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hardware per-token int8 quantizer: FX raw [..., K] -> (x_q int8 [..., K], amax int64 [..., 1])."""
    x = np.asarray(x_raw, dtype=np.int64)
    amax = quant_amax(x)
    recip, s = quant_recip(amax)
    q = (x * recip + (np.int64(1) << (s - 1))) >> s
    return np.clip(q, ACT_QMIN, ACT_QMAX).astype(np.int8), amax


# --------------------------------------------------------------------------------------------------
# Dequantize
# --------------------------------------------------------------------------------------------------
def encode_wscale(w_scale: float) -> tuple[int, int]:
    """Per-layer constant: w_scale / 127 as (ws_m, ws_s), ws_m in [2**17, 2**18), value ws_m * 2**-ws_s."""
    v = float(w_scale) / ACT_QMAX
    if not v > 0:
        raise ValueError("w_scale must be positive")
    mant, exp = np.frexp(v)  # v = mant * 2**exp, mant in [0.5, 1)
    m = int(np.floor(mant * (1 << DQ_MANT_BITS)))
    return m, int(DQ_MANT_BITS - exp)


def dq_factor(amax: np.ndarray, ws_m: int, ws_s: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-token dequantize factor F = amax * 2**-16 * ws_m * 2**-ws_s as (m [2**17, 2**18), s).

    p = amax * ws_m (exact, <= 50 bits); m = p >> (bitlen(p) - 18) (truncation);
    s = clip(ws_s + 16 - (bitlen(p) - 18), 0, 127) (a 7-bit field in hardware).
    """
    p = np.asarray(amax, dtype=np.int64) * np.int64(ws_m)
    bl = np.frompyfunc(lambda v: int(v).bit_length(), 1, 1)(p).astype(np.int64)
    sh = bl - DQ_MANT_BITS
    m = np.where(sh >= 0, p >> np.maximum(sh, 0), p << np.maximum(-sh, 0))
    return m.astype(np.int64), np.clip(ws_s + FX_FRAC - sh, 0, DQ_S_MAX).astype(np.int64)


DQ_SHIFT_MIN = 1
DQ_SHIFT_MAX = 63


def dequantize_fx(acc: np.ndarray, m: np.ndarray, s: np.ndarray) -> np.ndarray:
    """FX raw output of an int32 accumulator: sat((acc * m + 2**(sh-1)) >> sh), sh = clip(s - 16, 1, 63).

    Exact for factors F = m * 2**-s < 2 (s >= 17); larger factors are clamped to that shift (a
    documented precondition: |y| < 2 |acc| covers any sane BitNet layer).
    """
    acc = np.asarray(acc, dtype=np.int64)
    sh = np.clip(np.asarray(s, dtype=np.int64) - FX_FRAC, DQ_SHIFT_MIN, DQ_SHIFT_MAX)
    prod = acc * np.asarray(m, dtype=np.int64)          # |acc| <= 2**31, m < 2**18: < 2**50
    return sat_fx((prod + (np.int64(1) << (sh - 1))) >> sh)


# --------------------------------------------------------------------------------------------------
# Elementwise
# --------------------------------------------------------------------------------------------------
def add_fx(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return sat_fx(np.asarray(a, np.int64) + np.asarray(b, np.int64))


def relu2_fx(x: np.ndarray) -> np.ndarray:
    r = np.maximum(np.asarray(x, dtype=np.int64), 0)
    r = np.minimum(r, 1 << 31)  # r**2 < 2**62
    return sat_fx((r * r + (1 << (FX_FRAC - 1))) >> FX_FRAC)


def sigmoid_lut() -> np.ndarray:
    """The 1024-entry sigmoid table (Q0.16) over [-8, 8), value at each bin centre."""
    n = 1 << SIG_LUT_BITS
    step = 2 * SIG_RANGE / n
    centres = -SIG_RANGE + (np.arange(n) + 0.5) * step
    return np.round((1 << SIG_FRAC) / (1 + np.exp(-centres))).astype(np.int64)


_SIG_LUT = sigmoid_lut()
SIG_IDX_SHIFT = FX_FRAC - (SIG_LUT_BITS - 4)  # bins of 1/64 = 2**-6: x_raw >> 10


def sigmoid_fx(x: np.ndarray) -> np.ndarray:
    """Q0.16 sigmoid of an FX raw value by table lookup (see module docstring)."""
    x = np.asarray(x, dtype=np.int64)
    idx = (x >> SIG_IDX_SHIFT) + (1 << (SIG_LUT_BITS - 1))
    inside = _SIG_LUT[np.clip(idx, 0, (1 << SIG_LUT_BITS) - 1)]
    return np.where(idx < 0, 0, np.where(idx >= (1 << SIG_LUT_BITS), 1 << SIG_FRAC, inside))


def silu_fx(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.int64)
    return sat_fx((x * sigmoid_fx(x) + (1 << (SIG_FRAC - 1))) >> SIG_FRAC)


def mul_fx(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    return sat_fx((a * b + (1 << (FX_FRAC - 1))) >> FX_FRAC)


def silu_gate_fx(g: np.ndarray, u: np.ndarray) -> np.ndarray:
    return mul_fx(silu_fx(g), u)


def relu2_gate_fx(g: np.ndarray, u: np.ndarray) -> np.ndarray:
    return mul_fx(relu2_fx(g), u)


def rope_table(positions: np.ndarray, dim: int, theta: float = 10000.0) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin) in Q1.14 int16, shape [len(positions), dim/2], for pairs (i, i + dim/2)."""
    pos = np.asarray(positions, dtype=np.float64)[:, None]
    inv = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    ang = pos * inv[None, :]
    c = np.round(np.cos(ang) * (1 << ROPE_FRAC)).astype(np.int16)
    s = np.round(np.sin(ang) * (1 << ROPE_FRAC)).astype(np.int16)
    return c, s


def rope_fx(x0: np.ndarray, x1: np.ndarray, c: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x0 = np.asarray(x0, np.int64)
    x1 = np.asarray(x1, np.int64)
    c = np.asarray(c, np.int64)
    s = np.asarray(s, np.int64)
    half = 1 << (ROPE_FRAC - 1)
    y0 = (x0 * c - x1 * s + half) >> ROPE_FRAC
    y1 = (x0 * s + x1 * c + half) >> ROPE_FRAC
    return sat_fx(y0), sat_fx(y1)


# ==================================================================================================
# Whole-decoder formats (fpga-compiler): the ternary linear as one function, RMSNorm, the KV-cache
# word, attention with an exp2 table. `passes/hw_numerics.py` marks RMSNorm and Attention nodes too,
# so the interpreter after the kv260 pipeline computes what the accelerator's program computes
# (`backends/fpga/executor.py` runs the program on these functions only). (To reconcile with the
# units' own definitions from branch fpga-hw when they land.)
#
# * Ternary linear: ``ternary_linear_fx(x_raw, w_t, w_scale)`` = quantize_act_fx -> exact int32 core
#   -> dq_factor/dequantize_fx (what TLMMPipeline computes).
# * RMSNorm: fpga-hw's norm unit below (``rmsnorm_fx``; the program carries its ``norm_consts``).
# * KV word: K and V are stored as 24-bit signed fixed point with ``KV_FRAC = 12`` fractional bits
#   (Q11.12, |x| < 2048, resolution 2.4e-4), converted from FX by ``kv_from_fx`` (round half up,
#   saturate), int32 words in DDR. The IR carries the cache as f32, which holds every 24-bit value
#   exactly, so the cache survives the decode-call boundary (a 32-bit FX cache would not).
# * Attention: fpga-hw's decode attention unit (``attention_decode_fx`` below: exact q.k, two-pass
#   softmax with a 1024-entry exp table, one reciprocal per head) applied to every query row with the
#   KV words widened to FX; ``attention_fx`` is that loop (GQA, causal by position).
# ==================================================================================================
KV_FRAC = 12
KV_BITS = 24
KV_MIN = -(1 << (KV_BITS - 1))
KV_MAX = (1 << (KV_BITS - 1)) - 1


def ternary_linear_fx(x_raw: np.ndarray, w_t: np.ndarray, w_scale: float) -> np.ndarray:
    """FX raw [..., K] x ternary int8 [N, K] -> FX raw [..., N]: the TLMM pipeline end to end."""
    return ternary_linear_fx_ws(x_raw, w_t, *encode_wscale(float(w_scale)))


def ternary_linear_fx_ws(x_raw: np.ndarray, w_t: np.ndarray, ws_m: int, ws_s: int) -> np.ndarray:
    """ternary_linear_fx with the weight scale already encoded (what a LINEAR instruction carries)."""
    from ternc.ir import semantics

    x_q, amax = quantize_act_fx(x_raw)
    acc = semantics.ternary_matmul_i32(x_q, w_t)
    m, s = dq_factor(amax, ws_m, ws_s)
    return dequantize_fx(acc, m, s)


def kv_row_words(head_dim: int) -> int:
    """Words per KV-cache row in the kv260's DDR (one token of one KV head): head_dim rounded up to whole
    16-byte beats, so every row starts on a beat (the KV_APPEND/ATTN controllers move whole beats; the
    pad words are 0 and never read as data)."""
    return -(-head_dim // 4) * 4


def kv_from_fx(raw: np.ndarray) -> np.ndarray:
    """FX raw -> the 24-bit KV word (Q11.12, round half up, saturate), as int64."""
    r = np.asarray(raw, dtype=np.int64)
    sh = FX_FRAC - KV_FRAC
    return np.clip((r + (1 << (sh - 1))) >> sh, KV_MIN, KV_MAX)


def kv_to_float(kv: np.ndarray) -> np.ndarray:
    """KV words -> their exact f32 values (what the IR carries as present/past)."""
    return (np.asarray(kv, np.int64).astype(np.float64) / (1 << KV_FRAC)).astype(np.float32)


def kv_from_float(x: np.ndarray) -> np.ndarray:
    """Inverse of kv_to_float for values on the KV grid; raises if a value is not a KV word."""
    v = np.asarray(x, np.float64) * (1 << KV_FRAC)
    r = np.round(v)
    if (r != v).any() or (r < KV_MIN).any() or (r > KV_MAX).any():
        raise ValueError("cache values are not 24-bit KV words (was the cache produced by the fx pipeline?)")
    return r.astype(np.int64)


def attention_fx(q_fx: np.ndarray, k_kv: np.ndarray, v_kv: np.ndarray, scale_fx: int,
                 q_pos: np.ndarray, k_pos: np.ndarray) -> np.ndarray:
    """Attention of every query row and head on fpga-hw's decode attention unit definition
    (``attention_decode_fx``): q FX [hq, sq, d]; k/v KV words [hkv, sk, d] (widened to FX by a shift,
    exact); query i sees key j iff k_pos[j] <= q_pos[i]; GQA: head h reads KV head h // (hq / hkv).
    Returns FX [hq, sq, d]. A prefill unit computes each row the same way (two-pass, any key order)."""
    q = np.asarray(q_fx, np.int64)
    k = np.asarray(k_kv, np.int64) << (FX_FRAC - KV_FRAC)
    v = np.asarray(v_kv, np.int64) << (FX_FRAC - KV_FRAC)
    hq, sq, d = q.shape
    hkv = k.shape[0]
    if hq % hkv:
        raise ValueError(f"query heads {hq} not a multiple of kv heads {hkv}")
    kp, qp = np.asarray(k_pos, np.int64), np.asarray(q_pos, np.int64)
    out = np.zeros((hq, sq, d), np.int64)
    for h in range(hq):
        g = h // (hq // hkv)
        for i in range(sq):
            vis = kp <= qp[i]
            out[h, i] = attention_decode_fx(q[h, i], k[g][vis], v[g][vis], int(scale_fx))
    return out.astype(np.int32)


# KV-cache quantization on KV words (quantize-kv under hw-numerics; KIVI grouping of ir/kvquant.py,
# integer arithmetic): a group's zero is its minimum word, its scale ceil((max - min) / qmax) words
# (integers, 0 for a constant group), code = round_half_up((x - zero) / scale) in 0..qmax, and the
# cache holds x_hat = zero + code * scale (a KV word again). Keys: per channel over each group of
# `group_size` tokens; values: per token over groups of min(group_size, d) channels. Rotation is not
# part of the hardware format.
def kivi_fx(words: np.ndarray, bits: int) -> np.ndarray:
    """Quantize-dequantize groups along the last axis of int KV words."""
    x = np.asarray(words, np.int64)
    qmax = (1 << bits) - 1
    mn = x.min(axis=-1, keepdims=True)
    scale = (x.max(axis=-1, keepdims=True) - mn + qmax - 1) // qmax
    safe = np.maximum(scale, 1)
    code = np.where(scale > 0, (2 * (x - mn) + safe) // (2 * safe), 0)
    return mn + code * scale


def kv_quant_span_fx(words: np.ndarray, lo: int, hi: int, bits: int, group_size: int, values: bool) -> np.ndarray:
    """words [heads, tokens, d] with tokens [lo, hi) (a whole number of token groups) quantized."""
    w = np.array(words, np.int64)
    if hi <= lo:
        return w
    span = w[:, lo:hi]
    h, n, d = span.shape
    if values:
        vg = min(group_size, d)
        q = kivi_fx(span.reshape(h, n, d // vg, vg), bits).reshape(h, n, d)
    else:
        g = span.reshape(h, n // group_size, group_size, d).transpose(0, 1, 3, 2)
        q = kivi_fx(g, bits).transpose(0, 1, 3, 2).reshape(h, n, d)
    w[:, lo:hi] = q
    return w
# Units beyond the linear pipeline (fpga-hw): RMSNorm, softmax/exp, attention, KV quantization.
# Each function below IS the semantics of one RTL unit (hw/norm.py, hw/attention.py); the RTL benches
# compare bit for bit. Python ints (dtype=object) where an intermediate exceeds 64 bits.
# ==================================================================================================

# ---- RMSNorm (hw/norm.py) ------------------------------------------------------------------------
# y = x * rsqrt(mean(x^2) + eps) * gamma, all FX (Q15.16):
#   ss    = min(sum_k (x_k^2 >> 8), 2**63 - 1)                    squares in Q.24, 64-bit saturating sum
#                                                                 (saturates only past ~2**19 squared units)
#   ms    = (ss * inv_k) >> 32 + eps_q                            inv_k = round(2**32 / K), eps_q = max(1, round(eps * 2**24))
#   rsqrt(ms) by table + one Newton step:
#     e = bit_length(ms) - 1, k = floor((e - 24) / 2)              ms * 2**-24 = mant * 4**k, mant in [1, 4)
#     mant_q = ms * 2**(-2k) (shifted, truncating)                Q.24, in [2**24, 2**26)
#     y0 = RSQRT_LUT[(mant_q >> 18) - 64]                          192 entries, Q.16, 1/sqrt at bin centres
#     h  = (mant_q * y0 * y0) >> 32                                Q.24 (~1.0)
#     y1 = (y0 * ((3 << 24) - h)) >> 18                            Q.23 = rsqrt(mant) (relative error < 3e-5)
#   n = sat((x * y1 + 2**(sh-1)) >> sh), sh = 23 + k               the normalized x (FX)
#   y = mul_fx(n, gamma)                                           gamma: the norm weight in FX
NORM_SQ_SHIFT = 8
NORM_SQ_FRAC = 2 * FX_FRAC - NORM_SQ_SHIFT   # 24
NORM_MANT_FRAC = 24
NORM_LUT_BITS = 6                             # table step 1/64 over [1, 4): 192 entries
NORM_Y_FRAC = 23
NORM_SS_MAX = (1 << 63) - 1


def rsqrt_lut() -> np.ndarray:
    n = 3 << NORM_LUT_BITS
    centres = 1.0 + (np.arange(n) + 0.5) / (1 << NORM_LUT_BITS)
    return np.round((1 << 16) / np.sqrt(centres)).astype(np.int64)


_RSQRT_LUT = rsqrt_lut()


def norm_consts(k: int, eps: float) -> tuple[int, int]:
    """Per-layer constants of the norm unit: (inv_k, eps_q)."""
    if k < 1:
        raise ValueError("K must be >= 1")
    return int(round((1 << 32) / k)), max(1, int(round(float(eps) * (1 << NORM_SQ_FRAC))))


def norm_sumsq(x_raw: np.ndarray) -> np.ndarray:
    """Saturating 64-bit sum of Q.24 squares over the last axis -> [..., 1] (Python ints)."""
    x = np.asarray(x_raw, dtype=np.int64)
    sq = (x * x) >> NORM_SQ_SHIFT                   # < 2**54 per element for |x_raw| <= 2**31
    out = np.empty(x.shape[:-1] + (1,), dtype=object)
    for idx in np.ndindex(*x.shape[:-1]):
        s = 0
        for v in sq[idx]:                            # the hardware saturates as it accumulates
            s = min(s + int(v), NORM_SS_MAX)
        out[idx + (0,)] = s
    return out


def norm_rsqrt(ms: int) -> tuple[int, int]:
    """(y1, k) for ms >= 1 (Q.24): rsqrt(ms * 2**-24) ~= y1 * 2**-23 * 2**-k."""
    ms = int(ms)
    e = ms.bit_length() - 1
    k = (e - NORM_SQ_FRAC) // 2
    sh = NORM_MANT_FRAC - NORM_SQ_FRAC - 2 * k
    mant = ms << sh if sh >= 0 else ms >> -sh
    y0 = int(_RSQRT_LUT[(mant >> (NORM_MANT_FRAC - NORM_LUT_BITS)) - (1 << NORM_LUT_BITS)])
    h = (mant * y0 * y0) >> 32
    y1 = (y0 * ((3 << NORM_MANT_FRAC) - h)) >> 18   # Q.16 * Q.24 = Q.40; /2 of Newton; -> Q.23
    return y1, k


def rmsnorm_fx(x_raw: np.ndarray, gamma_raw: np.ndarray, eps: float) -> np.ndarray:
    """The norm unit: FX [..., K] x FX gamma [K] -> FX [..., K] (see the formulas above)."""
    x = np.asarray(x_raw, dtype=np.int64)
    return rmsnorm_fx_consts(x, gamma_raw, *norm_consts(x.shape[-1], eps))


def rmsnorm_fx_consts(x_raw: np.ndarray, gamma_raw: np.ndarray, inv_k: int, eps_q: int) -> np.ndarray:
    """rmsnorm_fx with the per-layer constants already computed (what an RMSNORM instruction carries)."""
    x = np.asarray(x_raw, dtype=np.int64)
    ss = norm_sumsq(x)
    out = np.empty(x.shape, dtype=np.int64)
    for idx in np.ndindex(*x.shape[:-1]):
        ms = ((int(ss[idx + (0,)]) * inv_k) >> 32) + eps_q
        y1, kk = norm_rsqrt(ms)
        sh = NORM_Y_FRAC + kk
        n = sat_fx((x[idx] * y1 + (1 << (sh - 1))) >> sh)
        out[idx] = mul_fx(n, gamma_raw)
    return out.astype(np.int32)


# ---- exp and decode attention (hw/attention.py) --------------------------------------------------
# KV cache "hw format": FX (Q15.16, 32-bit) per element, exactly the values the datapath computed
# (lossless w.r.t. the FX pipeline; quantize-kv is the compressed alternative).
# exp_fx(x), x <= 0 FX -> Q0.16 unsigned:
#   u = min(-x, 2**22 - 1) ; y = (u * LOG2E_Q) >> 16 (Q.16 of u*log2(e)) ; ip = y >> 16, fp = y & 0xffff
#   p = EXP_LUT[fp >> 6] >> ip   (0 when ip >= 17)        EXP_LUT[i] = round(2**16 * 2**-((i + 0.5) / 1024))
# Decode attention of one query head over T cached tokens of its KV head (GQA: the KV head is
# chosen by address, head // (heads / kv_heads)):
#   qs  = mul_fx(q, scale_fx)                                   scale_fx = to_fx(1 / sqrt(head_dim))
#   s_t = sat_fx((sum_i qs_i * k_t,i + 2**15) >> 16)            exact integer dot product
#   m = max_t s_t ; p_t = exp_fx(s_t - m) ; l = sum_t p_t        (two passes: K, then V)
#   o_acc_i = sum_t p_t * v_t,i                                 exact
#   e = bit_length(l), R = floor(2**(e + 31) / l)               one reciprocal per head
#   o_i = sat_fx((o_acc_i * R + 2**(e + 30)) >> (e + 31))
EXP_LUT_BITS = 10
EXP_U_MAX = (1 << 22) - 1
LOG2E_Q = int(round(np.log2(np.e) * (1 << 16)))   # 94548


def exp_lut() -> np.ndarray:
    n = 1 << EXP_LUT_BITS
    return np.round((1 << 16) * 2.0 ** (-(np.arange(n) + 0.5) / n)).astype(np.int64)


_EXP_LUT = exp_lut()


def exp_fx(x_raw: np.ndarray) -> np.ndarray:
    """Q0.16 exp of FX values x <= 0 (see the formulas above); int64 array."""
    x = np.asarray(x_raw, dtype=np.int64)
    if np.any(x > 0):
        raise ValueError("exp_fx takes x <= 0 (scores minus their max)")
    u = np.minimum(-x, EXP_U_MAX)
    y = (u * LOG2E_Q) >> 16
    ip, fp = y >> 16, y & 0xFFFF
    p = _EXP_LUT[fp >> (16 - EXP_LUT_BITS)] >> np.minimum(ip, 63)
    return np.where(ip >= 17, 0, p)


def attention_decode_fx(q_raw: np.ndarray, k_raw: np.ndarray, v_raw: np.ndarray, scale_fx: int) -> np.ndarray:
    """The decode attention unit: q FX [d], k/v FX [T, d] -> o FX [d] (see the formulas above)."""
    q = np.asarray(q_raw, dtype=np.int64)
    qs = mul_fx(q, scale_fx).astype(np.int64)
    kk = np.asarray(k_raw, dtype=np.int64)
    vv = np.asarray(v_raw, dtype=np.int64)
    dots = [sum(int(a) * int(b) for a, b in zip(qs, row)) for row in kk]
    s = sat_fx(np.array([(d + (1 << 15)) >> 16 for d in dots], dtype=object).astype(np.int64))
    p = exp_fx(s.astype(np.int64) - int(s.max()))
    l_sum = int(p.sum())
    o_acc = [sum(int(p[t]) * int(vv[t, i]) for t in range(len(p))) for i in range(len(q))]
    e = l_sum.bit_length()
    r = (1 << (e + 31)) // l_sum
    return sat_fx(np.array([(a * r + (1 << (e + 30))) >> (e + 31) for a in o_acc], dtype=object).astype(np.int64))
