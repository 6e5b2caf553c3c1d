"""KV-cache quantization numerics (KIVI-style, optional RotateKV-style Hadamard rotation).

These pure numpy functions DEFINE what a quantized KV cache holds; the IR interpreter and the TVM
kernels are compared against them.

Layout: k, v are [batch, kv_heads, seq, head_dim] (keys post-RoPE, as they sit in the cache).

Token partition (one boundary for keys and values, so a kernel sees a single quantized span):

    [0, s)        sinks: the first `sinks` tokens, kept in full precision (attention sinks)
    [s, s + nq)   quantized span; nq = ((seq - s - residual) // group_size) * group_size, >= 0
    [s + nq, seq) full-precision tail: the `residual` most recent tokens plus the < group_size
                  tokens that do not yet fill a key group (KIVI's streaming residual)

So the quantized span only ever grows by whole groups as tokens are appended, and quantizing a
prefix of the sequence gives a prefix of the codes (each group's statistics use only its tokens).

Quantization (asymmetric min/max, round-half-even, codes in 0 .. 2**bits - 1, one code per uint8
element here; storage accounting counts them at `bits` bits):
  keys   per channel: statistics over each group of `group_size` consecutive tokens, per channel
         -> scale/zero [B, H, nq / group_size, D]
  values per token:   statistics over each group of `value_group` = min(group_size, head_dim)
         consecutive channels -> scale/zero [B, H, nq, D / value_group]
  zero = the group minimum rounded DOWN to fp16; scale = (max - zero) / qmax rounded UP to fp16
  (both stored as fp16, 2 bytes each; the scale is bumped one fp16 step if f32 rounding would
  leave zero + qmax*scale below the max), so every value lies in [zero, zero + qmax*scale] and
  |x - x_hat| <= scale / 2 (up to f32 rounding); x_hat = code * scale + zero in f32. A constant
  group has scale 0 and is reproduced exactly.

Rotation (cfg.rotate): before quantization the head dim of every quantized key and value row is
multiplied by the orthonormal Walsh-Hadamard matrix H = hadamard(head_dim) (x_rot = x @ H), per
head, AFTER RoPE. Since H @ H.T = I, attention needs no un-rotation of keys if queries are rotated
the same way: (q @ H) . (k @ H) = q . k; for values, P @ (v @ H) = (P @ v) @ H, so the attention
output of the quantized span is rotated back with @ H.T. `dequantize_kv` returns everything in the
original basis; `dequantize_span(..., rotated=True)` gives the rotated span a kernel would hold.
Sinks and the tail are never rotated. (RotateKV rotates pre-RoPE, across grouped heads, with channel
reordering; ternc rotates per head post-RoPE, which keeps RoPE untouched and is exact for attention.)
The rotation is computed in float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

SUPPORTED_BITS = (2, 4, 8)
PARAM_BYTES = 2  # scales and zero-points are stored as fp16
FP16_MAX = float(np.finfo(np.float16).max)
FP_BYTES = 2  # full-precision tokens (sinks, tail) are stored as fp16 by default


@dataclass(frozen=True)
class KVQuantConfig:
    """bits in {2, 4, 8}; group_size: tokens per key group and (capped at head_dim) channels per
    value group; residual: most recent tokens kept in full precision; sinks: first tokens kept in
    full precision; rotate: Walsh-Hadamard rotation of the head dim before quantization."""

    bits: int = 2
    group_size: int = 32
    residual: int = 32
    sinks: int = 0
    rotate: bool = False

    def __post_init__(self) -> None:
        if self.bits not in SUPPORTED_BITS:
            raise ValueError(f"KV quantization bits must be one of {SUPPORTED_BITS}, got {self.bits}")
        if self.group_size < 1 or self.residual < 0 or self.sinks < 0:
            raise ValueError(f"need group_size >= 1, residual >= 0, sinks >= 0; got {self}")

    @property
    def qmax(self) -> int:
        return (1 << self.bits) - 1

    def value_group(self, head_dim: int) -> int:
        group = min(self.group_size, head_dim)
        if head_dim % group:
            raise ValueError(f"head_dim {head_dim} is not a multiple of the value group size {group}")
        return group


def quantized_span(seq_len: int, cfg: KVQuantConfig) -> tuple[int, int]:
    """[start, stop) of the quantized tokens of a `seq_len`-token cache (see module doc)."""
    start = min(cfg.sinks, seq_len)
    n_quant = max(0, (seq_len - start - cfg.residual) // cfg.group_size) * cfg.group_size
    return start, start + n_quant


# --------------------------------------------------------------------------------------------
# Hadamard matrices
# --------------------------------------------------------------------------------------------


def _paley_hadamard(q: int) -> np.ndarray:
    """Paley construction I: a Hadamard matrix of order q + 1 for a prime q = 3 (mod 4)."""
    squares = {(i * i) % q for i in range(1, q)}
    chi = np.array([0] + [1 if i in squares else -1 for i in range(1, q)])
    jacobsthal = np.array([[chi[(j - i) % q] for j in range(q)] for i in range(q)])
    s = np.zeros((q + 1, q + 1), dtype=np.int64)
    s[0, 1:] = 1
    s[1:, 0] = -1
    s[1:, 1:] = jacobsthal
    return s + np.eye(q + 1, dtype=np.int64)


_PALEY_BASES = {12: 11, 20: 19}  # non-power-of-two factors: head dims 96 = 12*8, 80 = 20*4, ...


@lru_cache(maxsize=None)
def _hadamard_cached(n: int) -> np.ndarray:
    base = 1
    for m in _PALEY_BASES:
        if n % m == 0 and (n // m) & (n // m - 1) == 0:
            base = m
            break
    power = n // base
    if n < 1 or power & (power - 1):
        raise ValueError(
            f"no Hadamard matrix built for n={n}; supported: 2**a, 12 * 2**a, 20 * 2**a (e.g. 64, 96, 128)"
        )
    h = np.ones((1, 1), dtype=np.int64) if base == 1 else _paley_hadamard(_PALEY_BASES[base])
    sylvester = np.array([[1, 1], [1, -1]], dtype=np.int64)
    while h.shape[0] < n:
        h = np.kron(sylvester, h)
    out = (h / np.sqrt(n)).astype(np.float32)
    out.setflags(write=False)
    return out


def hadamard(n: int) -> np.ndarray:
    """Orthonormal Hadamard matrix H [n, n] float32 (H @ H.T = I): Sylvester for 2**a, Paley x Sylvester
    for 12 * 2**a and 20 * 2**a. Rows of +-1/sqrt(n)."""
    return _hadamard_cached(int(n))


# --------------------------------------------------------------------------------------------
# Group quantization
# --------------------------------------------------------------------------------------------


def _round_to_fp16(x: np.ndarray, direction: float) -> np.ndarray:
    """fp16 nearest to x that is <= x (direction=-inf) or >= x (direction=+inf)."""
    h = x.astype(np.float16)
    off = (h.astype(np.float32) > x) if direction < 0 else (h.astype(np.float32) < x)
    return np.where(off, np.nextafter(h, np.float16(direction)), h)


def _quantize_groups(x: np.ndarray, axis: int, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric min/max quantization with statistics over `axis` (kept as size 1 in scale/zero)."""
    qmax = (1 << bits) - 1
    zero = _round_to_fp16(x.min(axis=axis, keepdims=True), -np.inf)
    zero_f, x_max = zero.astype(np.float32), x.max(axis=axis, keepdims=True)
    scale = _round_to_fp16((x_max - zero_f) / np.float32(qmax), np.inf)
    # f32 rounding of span/qmax can leave zero + qmax*scale an ulp short of the max: bump one fp16 step.
    short = zero_f + np.float32(qmax) * scale.astype(np.float32) < x_max
    scale = np.where(short, np.nextafter(scale, np.float16(np.inf)), scale)
    scale_f = scale.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(scale_f > 0, (x - zero.astype(np.float32)) / scale_f, 0.0)
    codes = np.clip(np.round(q), 0, qmax).astype(np.uint8)
    return codes, scale, zero


def _dequantize_groups(codes: np.ndarray, scale: np.ndarray, zero: np.ndarray) -> np.ndarray:
    return codes.astype(np.float32) * scale.astype(np.float32) + zero.astype(np.float32)


@dataclass(frozen=True)
class QuantizedKV:
    """A quantized cache of `seq_len` tokens (arrays are [B, H, tokens, D] unless noted).

    k_codes/v_codes: uint8 [B, H, nq, D] codes of the (rotated, if cfg.rotate) quantized span.
    k_scale/k_zero: fp16 [B, H, nq / group_size, D] (per channel per token group).
    v_scale/v_zero: fp16 [B, H, nq, D / value_group] (per token per channel group).
    k_sink/v_sink: the first tokens, k_tail/v_tail: the last tokens, both in the input dtype.
    """

    cfg: KVQuantConfig
    seq_len: int
    k_sink: np.ndarray
    v_sink: np.ndarray
    k_codes: np.ndarray
    k_scale: np.ndarray
    k_zero: np.ndarray
    v_codes: np.ndarray
    v_scale: np.ndarray
    v_zero: np.ndarray
    k_tail: np.ndarray
    v_tail: np.ndarray

    @property
    def n_quantized(self) -> int:
        return self.k_codes.shape[2]

    def storage_bytes(self, fp_bytes: int = FP_BYTES) -> int:
        """Bytes this cache occupies with codes bit-packed at cfg.bits, fp16 scales/zeros and
        full-precision tokens at `fp_bytes` each."""
        code_bits = (self.k_codes.size + self.v_codes.size) * self.cfg.bits
        params = (self.k_scale.size + self.k_zero.size + self.v_scale.size + self.v_zero.size) * PARAM_BYTES
        fp = (self.k_sink.size + self.v_sink.size + self.k_tail.size + self.v_tail.size) * fp_bytes
        return -(-code_bits // 8) + params + fp


def _check_kv(k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    k, v = np.asarray(k), np.asarray(v)
    if k.ndim != 4 or k.shape != v.shape:
        raise ValueError(f"k and v must both be [batch, kv_heads, seq, head_dim], got {k.shape} and {v.shape}")
    if not (np.issubdtype(k.dtype, np.floating) and np.issubdtype(v.dtype, np.floating)):
        raise ValueError(f"k and v must be floating point, got {k.dtype} and {v.dtype}")
    if not (np.isfinite(k).all() and np.isfinite(v).all()):
        raise ValueError("k and v must be finite")
    if max(np.abs(k).max(initial=0), np.abs(v).max(initial=0)) > FP16_MAX:
        raise ValueError(f"|k|, |v| must be <= {FP16_MAX} (group zero-points and scales are fp16)")
    return k, v


def quantize_kv(k: np.ndarray, v: np.ndarray, cfg: KVQuantConfig) -> QuantizedKV:
    """Quantize a KV cache per the module doc."""
    k, v = _check_kv(k, v)
    b, h, seq, d = k.shape
    group, value_group = cfg.group_size, cfg.value_group(d)
    start, stop = quantized_span(seq, cfg)
    k_mid = k[:, :, start:stop].astype(np.float32)
    v_mid = v[:, :, start:stop].astype(np.float32)
    if cfg.rotate:
        rot = hadamard(d)
        k_mid, v_mid = k_mid @ rot, v_mid @ rot
    n_groups = (stop - start) // group
    k_codes, k_scale, k_zero = _quantize_groups(k_mid.reshape(b, h, n_groups, group, d), axis=3, bits=cfg.bits)
    v_codes, v_scale, v_zero = _quantize_groups(
        v_mid.reshape(b, h, stop - start, d // value_group, value_group), axis=4, bits=cfg.bits
    )
    return QuantizedKV(
        cfg=cfg,
        seq_len=seq,
        k_sink=k[:, :, :start].copy(),
        v_sink=v[:, :, :start].copy(),
        k_codes=k_codes.reshape(b, h, stop - start, d),
        k_scale=k_scale[:, :, :, 0, :],
        k_zero=k_zero[:, :, :, 0, :],
        v_codes=v_codes.reshape(b, h, stop - start, d),
        v_scale=v_scale[..., 0],
        v_zero=v_zero[..., 0],
        k_tail=k[:, :, stop:].copy(),
        v_tail=v[:, :, stop:].copy(),
    )


def dequantize_span(q: QuantizedKV, rotated: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The quantized span dequantized, f32 [B, H, nq, D]; with rotated=True (and cfg.rotate) it stays
    in the Hadamard basis (what a kernel that rotates queries would multiply with)."""
    b, h, nq, d = q.k_codes.shape
    group, value_group = q.cfg.group_size, q.cfg.value_group(d)
    k_mid = _dequantize_groups(
        q.k_codes.reshape(b, h, nq // group, group, d), q.k_scale[:, :, :, None, :], q.k_zero[:, :, :, None, :]
    ).reshape(b, h, nq, d)
    v_mid = _dequantize_groups(
        q.v_codes.reshape(b, h, nq, d // value_group, value_group), q.v_scale[..., None], q.v_zero[..., None]
    ).reshape(b, h, nq, d)
    if q.cfg.rotate and not rotated:
        rot_t = hadamard(d).T
        k_mid, v_mid = k_mid @ rot_t, v_mid @ rot_t
    return k_mid, v_mid


def dequantize_kv(q: QuantizedKV) -> tuple[np.ndarray, np.ndarray]:
    """(k_hat, v_hat) f32 [B, H, seq, D] in the original basis; sinks and tail are exact."""
    k_mid, v_mid = dequantize_span(q)
    k_hat = np.concatenate([q.k_sink.astype(np.float32), k_mid, q.k_tail.astype(np.float32)], axis=2)
    v_hat = np.concatenate([q.v_sink.astype(np.float32), v_mid, q.v_tail.astype(np.float32)], axis=2)
    return k_hat, v_hat


# --------------------------------------------------------------------------------------------
# Memory accounting
# --------------------------------------------------------------------------------------------


def kv_bytes_per_token(cfg: KVQuantConfig, kv_heads: int, head_dim: int, n_layers: int) -> float:
    """Steady-state bytes one more quantized token adds to the whole model's cache (K and V):
    codes at cfg.bits plus the fp16 scale+zero overhead (keys: 2 per channel amortized over a token
    group; values: 2 per channel group). Sinks and the tail are a fixed cost: see `kv_cache_bytes`."""
    value_groups = head_dim // cfg.value_group(head_dim)
    codes = 2 * head_dim * cfg.bits / 8
    params = 2 * PARAM_BYTES * (head_dim / cfg.group_size + value_groups)
    return (codes + params) * kv_heads * n_layers


def fp_kv_bytes_per_token(kv_heads: int, head_dim: int, n_layers: int, fp_bytes: int = FP_BYTES) -> int:
    """Bytes per token of an unquantized (fp16 by default) cache, K and V."""
    return 2 * head_dim * kv_heads * n_layers * fp_bytes


def kv_cache_bytes(
    cfg: KVQuantConfig,
    seq_len: int,
    kv_heads: int,
    head_dim: int,
    n_layers: int,
    batch: int = 1,
    fp_bytes: int = FP_BYTES,
) -> int:
    """Exact bytes of a `seq_len`-token quantized cache (= QuantizedKV.storage_bytes summed over layers)."""
    start, stop = quantized_span(seq_len, cfg)
    n_quant, n_fp = stop - start, seq_len - (stop - start)
    rows = batch * kv_heads
    code_bits = 2 * rows * n_quant * head_dim * cfg.bits
    key_params = 2 * rows * (n_quant // cfg.group_size) * head_dim
    value_params = 2 * rows * n_quant * (head_dim // cfg.value_group(head_dim))
    per_layer = -(-code_bits // 8) + (key_params + value_params) * PARAM_BYTES + 2 * rows * n_fp * head_dim * fp_bytes
    return per_layer * n_layers
