"""Ternary weight encodings: the one definition of every packed layout ternc stores.

Weights are ternary int8 matrices `w_t` in torch Linear layout [N, K] (values -1, 0, 1) with one
f32 scale per tensor (the scale is never part of a packed layout here; it travels separately).

TL2 (TeLLMe / bitnet.cpp style): K is split into triples (k = 3j, 3j+1, 3j+2; K not a multiple
of 3 is padded with zero weights). A triple (w0, w1, w2) has value v = 9*w0 + 3*w1 + w2 in
[-13, 13]; it is stored as a sign bit (v < 0) and a 4-bit index |v| in 0..13. For an activation
triple (a0, a1, a2) the lookup table holds T[i] = the dot product of (a0, a1, a2) with the unique
balanced-ternary digits of i (i = 0..13), and the triple's contribution is (-1)**sign * T[|v|].

Byte layouts (`pack` / `unpack`). Every format packs each row n independently along K, so a packed
tensor is a set of uint8 arrays [N, bytes_per_row] (names and their order: `part_names(fmt)`); rows
never share a byte. Padding weights are zeros appended at the end of each row (k >= K) and are
ignored by `unpack`. "Bit 0" is the LSB.

  i2   {"codes": [N, 32 * ceil(K/128)]}             2 bits/weight, bitnet.cpp I2_S (x86, QK=128)
       code = w + 1 in {0, 1, 2} (3 is invalid). K is padded to a multiple of 128. Block b of a row
       (weights k = 128b .. 128b+127) is 32 bytes; byte j of the block holds the 4 weights
       k = 128b + 32g + j for g = 0..3, weight g in bits [7-2g : 6-2g] (g = 0 in the top two bits).
       (GGUF TQ2_0 uses the same grouping with the 2-bit fields in the opposite order: g in bits
       [2g+1 : 2g]; see `to_gguf_tq2_0`.)
  tl1  {"nibbles": [N, ceil(K/4)]}                  2 bits/weight (4-bit index per pair)
       pair p = (w[2p], w[2p+1]) -> index 3*w0 + w1 + 4 in 0..8 (9..15 invalid). K is padded to a
       multiple of 4; byte j holds pair 2j in bits 3..0 and pair 2j+1 in bits 7..4.
  tl2  {"nibbles": [N, ceil(T/2)], "signs": [N, ceil(T/8)]}, T = ceil(K/3)   5/3 bits/weight
       triple t -> (index, sign) from `tl2_encode`. nibbles byte j: triple 2j's index in bits 3..0,
       triple 2j+1's in bits 7..4; signs byte j: triple 8j+i's sign in bit i (LSB first). Padding
       triples (beyond T) are index 0, sign 0.
  tq1  {"trits": [N, ceil(K/5)]}                    1.6 bits/weight, base 3
       group g = w[5g .. 5g+4] (K padded to a multiple of 5), digits c_m = w[5g+m] + 1 in {0,1,2},
       value v = sum_m c_m * 3**(4-m) in 0..242 (first weight most significant), stored as the
       fixed-point fraction byte = ceil(256 * v / 243) -- the exact byte scheme of GGUF TQ1_0. It
       decodes without division: digit m = (((byte * 3**m) mod 256) * 3) >> 8. Only the 243 bytes
       that are images of some v are valid. (TQ1_0 differs only in which weights share a byte and
       in its per-256-block fp16 scale; see `to_gguf_tq1_0`.)

Interop helpers: `pack_hf_bitnet` / `unpack_hf_bitnet` (the transformers BitNet checkpoint layout,
which packs along N, not K) and `to_gguf_tq2_0` / `to_gguf_tq1_0` (GGUF quant blocks).
"""

from __future__ import annotations

import numpy as np

TL2_GROUP = 3


def _check_ternary(w_t: np.ndarray) -> np.ndarray:
    w_t = np.asarray(w_t)
    if w_t.ndim != 2:
        raise ValueError(f"ternary weight must be 2-D [N, K], got shape {w_t.shape}")
    if w_t.size and not np.isin(w_t, (-1, 0, 1)).all():
        bad = np.unique(w_t[~np.isin(w_t, (-1, 0, 1))])[:5]
        raise ValueError(f"ternary weight has values outside {{-1, 0, 1}} (e.g. {bad.tolist()})")
    return w_t.astype(np.int8)


def tlg_digits(index: np.ndarray, group: int) -> np.ndarray:
    """Balanced-ternary digits (w_0 .. w_{G-1}), most significant first, of v = sum w_j 3**(G-1-j)."""
    v = np.asarray(index, dtype=np.int64)
    digits = np.zeros(v.shape + (group,), dtype=np.int8)
    rest = v.copy()
    for pos in range(group - 1, -1, -1):  # least-significant trit first
        d = ((rest + 1) % 3) - 1  # in {-1, 0, 1}
        digits[..., pos] = d
        rest = (rest - d) // 3
    return digits


def tlg_encode(w_t: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    """TL2 generalized to G weights per index: (index [N, ceil(K/G)], sign [N, ceil(K/G)]), K zero-padded.

    The index is |v| for v = sum_j w_j 3**(G-1-j), in 0 .. (3**G - 1) / 2; the sign bit is v < 0."""
    w_t = _check_ternary(w_t)
    n, k = w_t.shape
    t = -(-k // group)
    padded = np.zeros((n, t * group), dtype=np.int64)
    padded[:, :k] = w_t
    v = (padded.reshape(n, t, group) * (3 ** np.arange(group - 1, -1, -1))).sum(-1)
    return np.abs(v).astype(np.uint8), (v < 0).astype(np.uint8)


def tl2_digits(index: np.ndarray) -> np.ndarray:
    """Balanced-ternary digits (w0, w1, w2) of v = 9*w0 + 3*w1 + w2, for v in [-13, 13]."""
    return tlg_digits(index, TL2_GROUP)


def tl2_encode(w_t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Field-level TL2 encoding: returns (index u8 [N, T] in 0..13, sign u8 [N, T] in 0..1), T = ceil(K/3)."""
    return tlg_encode(w_t, TL2_GROUP)


def tl2_decode(index: np.ndarray, sign: np.ndarray, k: int) -> np.ndarray:
    """Inverse of tl2_encode: returns w_t int8 [N, K]."""
    index = np.asarray(index, dtype=np.int64)
    if index.size and index.max() > 13:
        raise ValueError("TL2 index out of range 0..13")
    v = np.where(np.asarray(sign) != 0, -index, index)
    digits = tl2_digits(v)  # [N, T, 3]
    n = digits.shape[0]
    return digits.reshape(n, -1)[:, :k].astype(np.int8)


# --------------------------------------------------------------------------------------------
# Byte-level formats
# --------------------------------------------------------------------------------------------

FORMATS: tuple[str, ...] = ("i2", "tl1", "tl2", "tq1")

I2_BLOCK = 128  # weights per I2_S block (bitnet.cpp x86 QK_I2_S)
I2_LANES = 32  # bytes per I2_S block; weight g*32 + j of a block lives in byte j
TQ1_TRITS_PER_BYTE = 5
GGUF_QK_K = 256  # GGUF TQ1_0 / TQ2_0 block size (weights per block)

_BITS_PER_WEIGHT = {"i2": 2.0, "tl1": 2.0, "tl2": 5.0 / 3.0, "tq1": 8.0 / 5.0}
_POW3_DESC = np.array([81, 27, 9, 3, 1], dtype=np.int64)  # first trit most significant


def _check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown ternary packing format {fmt!r}; supported formats: {', '.join(FORMATS)}")
    return fmt


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _pad_cols(x: np.ndarray, multiple: int, fill: int) -> np.ndarray:
    cols = _ceil_div(x.shape[1], multiple) * multiple
    if cols == x.shape[1]:
        return x
    out = np.full((x.shape[0], cols), fill, dtype=x.dtype)
    out[:, : x.shape[1]] = x
    return out


def bits_per_weight(fmt: str) -> float:
    """Nominal storage cost of one weight (padding and the per-tensor scale excluded)."""
    return _BITS_PER_WEIGHT[_check_format(fmt)]


def _row_bytes(k: int, fmt: str) -> dict[str, int]:
    """Bytes per row of each named array of `fmt` for K = k."""
    if k < 1:
        raise ValueError(f"K must be >= 1, got {k}")
    if fmt == "i2":
        return {"codes": I2_LANES * _ceil_div(k, I2_BLOCK)}
    if fmt == "tl1":
        return {"nibbles": _ceil_div(k, 4)}
    if fmt == "tl2":
        t = _ceil_div(k, TL2_GROUP)
        return {"nibbles": _ceil_div(t, 2), "signs": _ceil_div(t, 8)}
    return {"trits": _ceil_div(k, TQ1_TRITS_PER_BYTE)}


def part_names(fmt: str) -> tuple[str, ...]:
    """Names of the arrays `pack` returns for `fmt`, in their canonical (stable) order."""
    return tuple(_row_bytes(1, _check_format(fmt)))


def packed_nbytes(n: int, k: int, fmt: str) -> int:
    """Exact bytes `pack` produces for an [n, k] weight (padding included, the f32 scale excluded)."""
    _check_format(fmt)
    if n < 1:
        raise ValueError(f"N must be >= 1, got {n}")
    return n * sum(_row_bytes(k, fmt).values())


def tq1_encode_groups(digits: np.ndarray) -> np.ndarray:
    """Base-3 byte of 5 digits in {0,1,2} (last axis, first digit most significant): ceil(256*v/243).

    This is the TQ1_0 byte scheme (a fixed-point fraction v/243 so decoding needs no division).
    """
    digits = np.asarray(digits, dtype=np.int64)
    v = digits @ _POW3_DESC
    return ((v * 256 + 242) // 243).astype(np.uint8)


def tq1_decode_bytes(trit_bytes: np.ndarray) -> np.ndarray:
    """Inverse of `tq1_encode_groups`: digits [..., 5] in {0,1,2}; digit m = ((byte*3**m mod 256)*3) >> 8."""
    b = np.asarray(trit_bytes, dtype=np.int64)
    digits = np.empty(b.shape + (TQ1_TRITS_PER_BYTE,), dtype=np.uint8)
    for m in range(TQ1_TRITS_PER_BYTE):
        digits[..., m] = (((b * 3**m) & 0xFF) * 3) >> 8
    return digits


# The 243 valid tq1 bytes; anything else cannot come from `pack` (decoding it would be ambiguous).
_TQ1_VALID_BYTE = np.zeros(256, dtype=bool)
_TQ1_VALID_BYTE[tq1_encode_groups(np.stack(np.unravel_index(np.arange(243), (3,) * 5), axis=-1))] = True


def pack(w_t: np.ndarray, fmt: str) -> dict[str, np.ndarray]:
    """Pack a ternary int [N, K] matrix into the named uint8 arrays of `fmt` (layouts: module doc)."""
    _check_format(fmt)
    w_t = _check_ternary(w_t)
    n, k = w_t.shape
    if n < 1 or k < 1:
        raise ValueError(f"ternary weight must have N, K >= 1, got shape {w_t.shape}")
    if fmt == "i2":
        codes = _pad_cols((w_t + 1).astype(np.uint8), I2_BLOCK, fill=1)  # pad with code 1 = weight 0
        blocks = codes.reshape(n, -1, 4, I2_LANES)
        packed = np.zeros((n, blocks.shape[1], I2_LANES), dtype=np.uint8)
        for g in range(4):
            packed |= blocks[:, :, g, :] << np.uint8(6 - 2 * g)
        return {"codes": packed.reshape(n, -1)}
    if fmt == "tl1":
        w = _pad_cols(w_t, 4, fill=0).astype(np.int16)
        index = (3 * w[:, 0::2] + w[:, 1::2] + 4).astype(np.uint8)  # [N, pairs], pairs even
        return {"nibbles": index[:, 0::2] | (index[:, 1::2] << np.uint8(4))}
    if fmt == "tl2":
        index, sign = tl2_encode(w_t)
        index = _pad_cols(index, 2, fill=0)
        sign = _pad_cols(sign, 8, fill=0).reshape(n, -1, 8)
        signs = np.zeros(sign.shape[:2], dtype=np.uint8)
        for bit in range(8):
            signs |= sign[:, :, bit] << np.uint8(bit)
        return {"nibbles": index[:, 0::2] | (index[:, 1::2] << np.uint8(4)), "signs": signs}
    digits = _pad_cols((w_t + 1).astype(np.uint8), TQ1_TRITS_PER_BYTE, fill=1)
    return {"trits": tq1_encode_groups(digits.reshape(n, -1, TQ1_TRITS_PER_BYTE))}


def _check_packed(packed: dict[str, np.ndarray], fmt: str, k: int) -> tuple[int, dict[str, np.ndarray]]:
    expected = _row_bytes(k, fmt)
    if set(packed) != set(expected):
        raise ValueError(f"{fmt} packing has arrays {sorted(expected)}, got {sorted(packed)}")
    arrays = {name: np.asarray(packed[name]) for name in expected}
    rows = {a.shape[0] if a.ndim == 2 else -1 for a in arrays.values()}
    for name, a in arrays.items():
        if a.dtype != np.uint8 or a.ndim != 2 or a.shape[1] != expected[name] or len(rows) != 1:
            raise ValueError(
                f"{fmt} array {name!r} must be uint8 [N, {expected[name]}] for K={k}, got {a.dtype} {a.shape}"
            )
    return rows.pop(), arrays


def unpack(packed: dict[str, np.ndarray], fmt: str, k: int) -> np.ndarray:
    """Inverse of `pack`: returns w_t int8 [N, k]. Raises ValueError on codes `pack` never emits."""
    _check_format(fmt)
    n, arrays = _check_packed(packed, fmt, k)
    if fmt == "i2":
        blocks = arrays["codes"].reshape(n, -1, 1, I2_LANES)
        shifts = np.array([6, 4, 2, 0], dtype=np.uint8).reshape(1, 1, 4, 1)
        codes = ((blocks >> shifts) & np.uint8(3)).reshape(n, -1)
        if (codes == 3).any():
            raise ValueError("i2 code 3 is invalid (codes are 0, 1, 2 for -1, 0, +1)")
        return (codes[:, :k].astype(np.int8) - 1).astype(np.int8)
    if fmt == "tl1":
        nib = arrays["nibbles"]
        index = np.stack([nib & np.uint8(0xF), nib >> np.uint8(4)], axis=-1).reshape(n, -1).astype(np.int16)
        if (index > 8).any():
            raise ValueError("tl1 index out of range 0..8")
        w = np.stack([index // 3 - 1, index % 3 - 1], axis=-1).reshape(n, -1)
        return w[:, :k].astype(np.int8)
    if fmt == "tl2":
        t = _ceil_div(k, TL2_GROUP)
        nib = arrays["nibbles"]
        index = np.stack([nib & np.uint8(0xF), nib >> np.uint8(4)], axis=-1).reshape(n, -1)[:, :t]
        bits = np.arange(8, dtype=np.uint8).reshape(1, 1, 8)
        sign = ((arrays["signs"][:, :, None] >> bits) & np.uint8(1)).reshape(n, -1)[:, :t]
        return tl2_decode(index, sign, k)
    trit_bytes = arrays["trits"]
    if not _TQ1_VALID_BYTE[trit_bytes].all():
        raise ValueError("tq1 byte is not a valid base-3 group (not ceil(256*v/243) for v in 0..242)")
    digits = tq1_decode_bytes(trit_bytes).reshape(n, -1)
    return (digits[:, :k].astype(np.int8) - 1).astype(np.int8)


# --------------------------------------------------------------------------------------------
# Interop: transformers BitNet checkpoints and GGUF TQ1_0 / TQ2_0 blocks
# --------------------------------------------------------------------------------------------

HF_VALUES_PER_BYTE = 4


def pack_hf_bitnet(w_t: np.ndarray) -> np.ndarray:
    """The transformers BitNet packed-checkpoint layout (uint8 [ceil(N/4), K]; packs along N).

    With R = ceil(N/4): byte [r, k] holds code(w[i*R + r, k]) = w + 1 in bits 2i+1..2i, i = 0..3
    (row block i in bits 2i); bits of rows i*R + r >= N stay 0. Byte-exact with
    `transformers.integrations.bitnet.pack_weights` (checked in tests).
    """
    w_t = _check_ternary(w_t)
    n, k = w_t.shape
    r = _ceil_div(n, HF_VALUES_PER_BYTE)
    packed = np.zeros((r, k), dtype=np.uint8)
    codes = (w_t + 1).astype(np.uint8)
    for i in range(HF_VALUES_PER_BYTE):
        rows = codes[i * r : (i + 1) * r]
        packed[: rows.shape[0]] |= rows << np.uint8(2 * i)
    return packed


def unpack_hf_bitnet(packed: np.ndarray, n: int) -> np.ndarray:
    """Inverse of `pack_hf_bitnet`: uint8 [ceil(n/4), K] -> w_t int8 [n, K]."""
    packed = np.asarray(packed)
    if packed.dtype != np.uint8 or packed.ndim != 2 or packed.shape[0] != _ceil_div(n, HF_VALUES_PER_BYTE):
        raise ValueError(f"HF BitNet packing must be uint8 [ceil({n}/4), K], got {packed.dtype} {packed.shape}")
    codes = np.concatenate([(packed >> np.uint8(2 * i)) & np.uint8(3) for i in range(HF_VALUES_PER_BYTE)])[:n]
    if (codes == 3).any():
        raise ValueError("HF BitNet code 3 is invalid")
    return (codes.astype(np.int8) - 1).astype(np.int8)


def _gguf_block_scales(w_t: np.ndarray, scale: float) -> np.ndarray:
    """fp16 d per 256-weight block as GGUF's quantizers compute it: max|block| (0 for all-zero blocks)."""
    scale = float(scale)
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"weight scale must be finite and > 0, got {scale}")
    n, k = w_t.shape
    nonzero = (w_t.reshape(n, k // GGUF_QK_K, GGUF_QK_K) != 0).any(axis=-1)
    d = np.where(nonzero, np.float32(scale), np.float32(0)).astype(np.float16)
    return d.view(np.uint8).reshape(n, k // GGUF_QK_K, 2)


def _check_gguf_shape(w_t: np.ndarray, name: str) -> np.ndarray:
    w_t = _check_ternary(w_t)
    if w_t.shape[1] % GGUF_QK_K:
        raise ValueError(f"{name} needs K to be a multiple of {GGUF_QK_K}, got K={w_t.shape[1]}")
    return w_t


def to_gguf_tq2_0(w_t: np.ndarray, scale: float) -> np.ndarray:
    """GGUF TQ2_0 bytes of w_t * scale: uint8 [N, K/256 * 66], as `gguf.quants.quantize(x, TQ2_0)`.

    Block (256 weights): 64 bytes qs then fp16 d. qs is our i2 layout of the block's two 128-weight
    halves with each byte's four 2-bit fields in reverse order (weight 32g + j of a half in bits
    2g+1..2g of byte j). d = fp16(scale) (0 for an all-zero block), so the scale is rounded to fp16.
    """
    w_t = _check_gguf_shape(w_t, "TQ2_0")
    n, k = w_t.shape
    i2 = pack(w_t, "i2")["codes"]
    fields = [(i2 >> np.uint8(s)) & np.uint8(3) for s in (6, 4, 2, 0)]
    qs = (fields[0] | fields[1] << np.uint8(2) | fields[2] << np.uint8(4) | fields[3] << np.uint8(6)).astype(np.uint8)
    qs = qs.reshape(n, k // GGUF_QK_K, GGUF_QK_K // 4)
    return np.concatenate([qs, _gguf_block_scales(w_t, scale)], axis=-1).reshape(n, -1)


def _tq1_0_block_positions() -> np.ndarray:
    """[52, 5] weight position inside a 256-block for each trit of each TQ1_0 byte (-1: unused trit).

    qs[0:32]: byte j <- weights j + 32m (m = 0..4); qs[32:48]: byte j <- 160 + j + 16m;
    qh[0:4]: byte j <- 240 + j + 4m for m = 0..3, the fifth trit unused (digit 0).
    """
    pos = np.full((52, 5), -1, dtype=np.int64)
    m5 = np.arange(5)
    pos[0:32] = np.arange(32)[:, None] + 32 * m5
    pos[32:48] = 160 + np.arange(16)[:, None] + 16 * m5
    pos[48:52, :4] = 240 + np.arange(4)[:, None] + 4 * m5[:4]
    return pos


def to_gguf_tq1_0(w_t: np.ndarray, scale: float) -> np.ndarray:
    """GGUF TQ1_0 bytes of w_t * scale: uint8 [N, K/256 * 54], as `gguf.quants.quantize(x, TQ1_0)`.

    Block (256 weights): 48 qs bytes + 4 qh bytes (the tq1 byte scheme, `tq1_encode_groups`, over
    the strided groups of `_tq1_0_block_positions`), then fp16 d (see `to_gguf_tq2_0`).
    """
    w_t = _check_gguf_shape(w_t, "TQ1_0")
    n, k = w_t.shape
    codes = (w_t + 1).astype(np.uint8).reshape(n, k // GGUF_QK_K, GGUF_QK_K)
    pos = _tq1_0_block_positions()
    digits = np.where(pos >= 0, codes[..., np.maximum(pos, 0)], 0)  # [N, blocks, 52, 5]
    qs = tq1_encode_groups(digits)
    return np.concatenate([qs, _gguf_block_scales(w_t, scale)], axis=-1).reshape(n, -1)
