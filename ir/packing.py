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
which packs along N, not K) and `to_gguf_tq2_0` / `to_gguf_tq1_0` with their inverses
`from_gguf_tq2_0` / `from_gguf_tq1_0` (GGUF quant blocks, registered in `GGUF_FORMATS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

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
# Byte-level formats: one object per layout, in one registry
# --------------------------------------------------------------------------------------------
#
# A format is everything a consumer needs to know about a layout: its parts (names, dtypes, in
# canonical order), bytes per row, how many weights a row holds (capacity, padding included), its
# block geometry, and pack/unpack. Consumers (the pack-ternary pass, the interpreter, the TVM
# kernels, the hardware's beat builder) look a format up with `get_format(name)` and ask it; none
# of them tests format names to learn a geometry. Adding a layout = one subclass + one registry
# entry here (plus whatever kernels choose to decode it).

I2_BLOCK = 128  # weights per I2_S block (bitnet.cpp x86 QK_I2_S)
I2_LANES = 32  # bytes per I2_S block; weight g*32 + j of a block lives in byte j
TQ1_TRITS_PER_BYTE = 5
GGUF_QK_K = 256  # GGUF TQ1_0 / TQ2_0 block size (weights per block)

_POW3_DESC = np.array([81, 27, 9, 3, 1], dtype=np.int64)  # first trit most significant


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _pad_cols(x: np.ndarray, multiple: int, fill: int) -> np.ndarray:
    cols = _ceil_div(x.shape[1], multiple) * multiple
    if cols == x.shape[1]:
        return x
    out = np.full((x.shape[0], cols), fill, dtype=x.dtype)
    out[:, : x.shape[1]] = x
    return out


def _check_k(k: int) -> int:
    if k < 1:
        raise ValueError(f"K must be >= 1, got {k}")
    return int(k)


@dataclass(frozen=True)
class Part:
    """One named array of a layout: [N, row_bytes(K)[name]] of `dtype` (a numpy dtype name)."""

    name: str
    dtype: str = "uint8"


class TernaryFormat:
    """A ternary weight layout. Subclasses set the class attributes and implement `_row_bytes`,
    `_pack` and `_unpack`; everything else (shapes, checks, byte counts) is derived here."""

    name: str
    parts: tuple[Part, ...]
    bits_per_weight: float  # nominal storage cost of one weight (padding, per-tensor scale excluded)
    packed: bool = True  # False only for the unpacked int8 layout `t2`

    # ---- geometry
    def _row_bytes(self, k: int) -> tuple[int, ...]:
        raise NotImplementedError

    def row_bytes(self, k: int) -> dict[str, int]:
        """Bytes (elements) per row of each part for K = k, in canonical order."""
        return dict(zip(self.part_names, self._row_bytes(_check_k(k))))

    def capacity(self, k: int) -> int:
        """Weights per row the parts hold (K plus padding); positions k..capacity-1 decode to 0."""
        raise NotImplementedError

    @property
    def part_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parts)

    @property
    def part_dtypes(self) -> tuple[str, ...]:
        return tuple(p.dtype for p in self.parts)

    def part_shapes(self, n: int, k: int) -> list[tuple[int, int]]:
        return [(n, b) for b in self._row_bytes(_check_k(k))]

    def nbytes(self, n: int, k: int) -> int:
        """Exact bytes `pack` produces for an [n, k] weight (padding included, the f32 scale excluded)."""
        if n < 1:
            raise ValueError(f"N must be >= 1, got {n}")
        return n * sum(b * np.dtype(p.dtype).itemsize for b, p in zip(self._row_bytes(_check_k(k)), self.parts))

    # ---- pack / unpack
    def pack(self, w_t: np.ndarray) -> dict[str, np.ndarray]:
        """Pack a ternary int [N, K] matrix into this layout's named arrays (canonical order)."""
        w_t = _check_ternary(w_t)
        if w_t.shape[0] < 1 or w_t.shape[1] < 1:
            raise ValueError(f"ternary weight must have N, K >= 1, got shape {w_t.shape}")
        return dict(zip(self.part_names, self._pack(w_t)))

    def unpack(self, packed: dict[str, np.ndarray], k: int) -> np.ndarray:
        """Inverse of `pack`: w_t int8 [N, k]. Raises ValueError on codes `pack` never emits."""
        n, arrays = self.check_parts(packed, k)
        return self._unpack(arrays, n, k)

    def check_parts(self, packed: dict[str, np.ndarray], k: int) -> tuple[int, dict[str, np.ndarray]]:
        """(N, the parts as arrays) after checking names, dtypes and shapes against K = k."""
        expected = self.row_bytes(k)
        if set(packed) != set(expected):
            raise ValueError(f"{self.name} packing has arrays {sorted(expected)}, got {sorted(packed)}")
        arrays = {name: np.asarray(packed[name]) for name in expected}
        rows = {a.shape[0] if a.ndim == 2 else -1 for a in arrays.values()}
        for p in self.parts:
            a = arrays[p.name]
            if a.dtype != np.dtype(p.dtype) or a.ndim != 2 or a.shape[1] != expected[p.name] or len(rows) != 1:
                raise ValueError(f"{self.name} array {p.name!r} must be {p.dtype} [N, {expected[p.name]}] "
                                 f"for K={k}, got {a.dtype} {a.shape}")
        return rows.pop(), arrays

    def _pack(self, w_t: np.ndarray) -> tuple[np.ndarray, ...]:
        raise NotImplementedError

    def _unpack(self, arrays: dict[str, np.ndarray], n: int, k: int) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<ternary format {self.name}>"


class T2Format(TernaryFormat):
    """Unpacked: the ternary matrix itself, int8 [N, K] (what raise-ternary emits before packing)."""

    name, parts, bits_per_weight, packed = "t2", (Part("w", "int8"),), 8.0, False

    def _row_bytes(self, k):
        return (k,)

    def capacity(self, k):
        return _check_k(k)

    def _pack(self, w_t):
        return (w_t,)

    def unpack(self, packed, k):
        # any integer dtype holding ternary values is accepted (the interpreter's historical contract)
        if set(packed) != {"w"}:
            raise ValueError(f"t2 packing has arrays ['w'], got {sorted(packed)}")
        w = _check_ternary(packed["w"])
        if w.shape[1] != _check_k(k):
            raise ValueError(f"t2 array 'w' must be [N, {k}], got {w.shape}")
        return w


class I2Format(TernaryFormat):
    """bitnet.cpp I2_S: 128-weight blocks of 32 bytes; byte j of a block holds weights 32g + j
    (g = 0..3) as codes w + 1 in bits 7-2g..6-2g. The block geometry is defined here only."""

    name, parts, bits_per_weight = "i2", (Part("codes"),), 2.0
    block, lanes, groups = I2_BLOCK, I2_LANES, I2_BLOCK // I2_LANES  # weights, bytes, 2-bit fields per byte

    def blocks(self, k: int) -> int:
        return _ceil_div(_check_k(k), self.block)

    def _row_bytes(self, k):
        return (self.lanes * self.blocks(k),)

    def capacity(self, k):
        return self.block * self.blocks(k)

    def words_per_row(self, k: int) -> int:
        """The codes of a row as little-endian int32 words (what dp4a kernels read)."""
        return self._row_bytes(k)[0] // 4

    def byte_of(self, k):
        """(byte index in the row, bit shift of the 2-bit code) of weight k; k may be a PrimExpr
        (only //, %, *, + and - are used)."""
        return (k // self.block) * self.lanes + k % self.lanes, 6 - 2 * ((k % self.block) // self.lanes)

    def _pack(self, w_t):
        n = w_t.shape[0]
        codes = _pad_cols((w_t + 1).astype(np.uint8), self.block, fill=1)  # pad with code 1 = weight 0
        blocks = codes.reshape(n, -1, self.groups, self.lanes)
        packed = np.zeros((n, blocks.shape[1], self.lanes), dtype=np.uint8)
        for g in range(self.groups):
            packed |= blocks[:, :, g, :] << np.uint8(6 - 2 * g)
        return (packed.reshape(n, -1),)

    def _unpack(self, arrays, n, k):
        blocks = arrays["codes"].reshape(n, -1, 1, self.lanes)
        shifts = np.array([6, 4, 2, 0], dtype=np.uint8).reshape(1, 1, self.groups, 1)
        codes = ((blocks >> shifts) & np.uint8(3)).reshape(n, -1)
        if (codes == 3).any():
            raise ValueError("i2 code 3 is invalid (codes are 0, 1, 2 for -1, 0, +1)")
        return (codes[:, :k].astype(np.int8) - 1).astype(np.int8)


class TL1Format(TernaryFormat):
    """Pairs (w0, w1) -> 4-bit index 3*w0 + w1 + 4; two pairs (4 weights) per byte."""

    name, parts, bits_per_weight = "tl1", (Part("nibbles"),), 2.0
    group, weights_per_byte = 2, 4

    def _row_bytes(self, k):
        return (_ceil_div(k, self.weights_per_byte),)

    def capacity(self, k):
        return self.weights_per_byte * _ceil_div(_check_k(k), self.weights_per_byte)

    def groups(self, k: int) -> int:
        return _ceil_div(_check_k(k), self.group)

    def _pack(self, w_t):
        w = _pad_cols(w_t, self.weights_per_byte, fill=0).astype(np.int16)
        index = (3 * w[:, 0::2] + w[:, 1::2] + 4).astype(np.uint8)  # [N, pairs], pairs even
        return (index[:, 0::2] | (index[:, 1::2] << np.uint8(4)),)

    def _unpack(self, arrays, n, k):
        nib = arrays["nibbles"]
        index = np.stack([nib & np.uint8(0xF), nib >> np.uint8(4)], axis=-1).reshape(n, -1).astype(np.int16)
        if (index > 8).any():
            raise ValueError("tl1 index out of range 0..8")
        w = np.stack([index // 3 - 1, index % 3 - 1], axis=-1).reshape(n, -1)
        return w[:, :k].astype(np.int8)


class TL2Format(TernaryFormat):
    """Triples -> (4-bit index |v|, sign v < 0) of v = 9*w0 + 3*w1 + w2 (`tl2_encode`); two
    indices per nibbles byte, eight signs per signs byte. The TLMM engine's weight fields."""

    name, parts, bits_per_weight = "tl2", (Part("nibbles"), Part("signs")), 5.0 / 3.0
    group, indices_per_byte, signs_per_byte, entries = TL2_GROUP, 2, 8, 14  # entries: |v| in 0..13

    def groups(self, k: int) -> int:
        """Triples per row, T = ceil(K/3)."""
        return _ceil_div(_check_k(k), self.group)

    def _row_bytes(self, k):
        t = self.groups(k)
        return _ceil_div(t, self.indices_per_byte), _ceil_div(t, self.signs_per_byte)

    def capacity(self, k):
        nib, sgn = self._row_bytes(_check_k(k))
        return self.group * min(self.indices_per_byte * nib, self.signs_per_byte * sgn)

    def _pack(self, w_t):
        n = w_t.shape[0]
        index, sign = tl2_encode(w_t)
        index = _pad_cols(index, self.indices_per_byte, fill=0)
        sign = _pad_cols(sign, self.signs_per_byte, fill=0).reshape(n, -1, self.signs_per_byte)
        signs = np.zeros(sign.shape[:2], dtype=np.uint8)
        for bit in range(self.signs_per_byte):
            signs |= sign[:, :, bit] << np.uint8(bit)
        return index[:, 0::2] | (index[:, 1::2] << np.uint8(4)), signs

    def fields(self, packed: dict[str, np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
        """The TL2 fields straight from the packed bytes, without decoding weights: (index u8
        [N, T] in 0..13, sign u8 [N, T]), T = ceil(K/3); the inverse of the byte packing of
        `tl2_encode`'s output."""
        n, arrays = self.check_parts(packed, k)
        t = self.groups(k)
        nib = arrays["nibbles"]
        index = np.stack([nib & np.uint8(0xF), nib >> np.uint8(4)], axis=-1).reshape(n, -1)[:, :t]
        if index.size and index.max() > self.entries - 1:
            raise ValueError("TL2 index out of range 0..13")
        bits = np.arange(self.signs_per_byte, dtype=np.uint8).reshape(1, 1, -1)
        sign = ((arrays["signs"][:, :, None] >> bits) & np.uint8(1)).reshape(n, -1)[:, :t]
        return np.ascontiguousarray(index), np.ascontiguousarray(sign)

    def _unpack(self, arrays, n, k):
        return tl2_decode(*self.fields(arrays, k), k)

    def tlmm_weight_beats(self, packed: dict[str, np.ndarray], k: int, tables: int, columns: int) -> list[list]:
        """The TLMM engine's weight beats (hw/tlmm.py `weight_beat_layout(3, tables, columns)`)
        for a tile of N <= `columns` output rows, read from this format's PACKED bytes.

        Beat j (one per activation chunk of 3 * `tables` weights) is beat[c][t] = {"index", "sign"}:
        the TL2 field of row c for triple j * tables + t; rows N..columns-1 and triples past
        ceil(K/3) are index 0, sign 0 (zero weights). This is the one place the FPGA side turns IR
        packed constants into engine beats (`hw.tlmm.weight_beats` delegates here)."""
        index, sign = self.fields(packed, k)
        n_rows = index.shape[0]
        if n_rows > columns:
            raise ValueError(f"tile has {n_rows} rows > {columns} columns")
        if tables < 1:
            raise ValueError(f"tables must be >= 1, got {tables}")
        chunks = _ceil_div(k, self.group * tables)
        idx = np.zeros((columns, chunks * tables), dtype=np.int64)
        sgn = np.zeros((columns, chunks * tables), dtype=np.int64)
        idx[:n_rows, : index.shape[1]] = index
        sgn[:n_rows, : sign.shape[1]] = sign
        return [[[{"index": int(idx[c, j * tables + t]), "sign": int(sgn[c, j * tables + t])}
                  for t in range(tables)] for c in range(columns)] for j in range(chunks)]


class TQ1Format(TernaryFormat):
    """Five trits per byte as the fixed-point fraction ceil(256 * v / 243) (GGUF TQ1_0's byte scheme)."""

    name, parts, bits_per_weight = "tq1", (Part("trits"),), 8.0 / 5.0
    weights_per_byte = TQ1_TRITS_PER_BYTE

    def _row_bytes(self, k):
        return (_ceil_div(k, self.weights_per_byte),)

    def capacity(self, k):
        return self.weights_per_byte * _ceil_div(_check_k(k), self.weights_per_byte)

    def _pack(self, w_t):
        n = w_t.shape[0]
        digits = _pad_cols((w_t + 1).astype(np.uint8), self.weights_per_byte, fill=1)
        return (tq1_encode_groups(digits.reshape(n, -1, self.weights_per_byte)),)

    def _unpack(self, arrays, n, k):
        trit_bytes = arrays["trits"]
        if not _TQ1_VALID_BYTE[trit_bytes].all():
            raise ValueError("tq1 byte is not a valid base-3 group (not ceil(256*v/243) for v in 0..242)")
        digits = tq1_decode_bytes(trit_bytes).reshape(n, -1)
        return (digits[:, :k].astype(np.int8) - 1).astype(np.int8)


T2, I2, TL1, TL2, TQ1 = T2Format(), I2Format(), TL1Format(), TL2Format(), TQ1Format()
REGISTRY: dict[str, TernaryFormat] = {f.name: f for f in (T2, I2, TL1, TL2, TQ1)}
UNPACKED = T2.name  # the `format` attribute of a ternary op whose weight is the plain int8 matrix
FORMATS: tuple[str, ...] = tuple(n for n, f in REGISTRY.items() if f.packed)  # the built-in packed layouts


def register(layout: TernaryFormat) -> TernaryFormat:
    """Add a format to the registry (a name may be registered once)."""
    if layout.name in REGISTRY:
        raise ValueError(f"ternary format {layout.name!r} is already registered")
    REGISTRY[layout.name] = layout
    return layout


def packed_formats() -> tuple[str, ...]:
    """Every registered packed layout (what pack-ternary accepts)."""
    return tuple(n for n, f in REGISTRY.items() if f.packed)


def get_format(fmt: str | TernaryFormat) -> TernaryFormat:
    """The format object for a name (or the object itself); ValueError names the known formats."""
    if isinstance(fmt, TernaryFormat):
        return fmt
    try:
        return REGISTRY[fmt]
    except (KeyError, TypeError):
        raise ValueError(f"unknown ternary packing format {fmt!r}; supported formats: "
                         f"{', '.join(REGISTRY)}") from None


def bits_per_weight(fmt: str) -> float:
    """Nominal storage cost of one weight (padding and the per-tensor scale excluded)."""
    return get_format(fmt).bits_per_weight


def part_names(fmt: str) -> tuple[str, ...]:
    """Names of the arrays `pack` returns for `fmt`, in their canonical (stable) order."""
    return get_format(fmt).part_names


def packed_nbytes(n: int, k: int, fmt: str) -> int:
    """Exact bytes `pack` produces for an [n, k] weight (padding included, the f32 scale excluded)."""
    return get_format(fmt).nbytes(n, k)


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
    """Pack a ternary int [N, K] matrix into the named arrays of `fmt` (layouts: module doc)."""
    return get_format(fmt).pack(w_t)


def unpack(packed: dict[str, np.ndarray], fmt: str, k: int) -> np.ndarray:
    """Inverse of `pack`: returns w_t int8 [N, k]. Raises ValueError on codes `pack` never emits."""
    return get_format(fmt).unpack(packed, k)

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


def _gguf_blocks(blocks: np.ndarray, k: int, block_bytes: int, name: str) -> np.ndarray:
    blocks = np.asarray(blocks)
    if blocks.dtype != np.uint8 or blocks.ndim != 2 or k % GGUF_QK_K or blocks.shape[1] != k // GGUF_QK_K * block_bytes:
        raise ValueError(f"{name} rows must be uint8 [N, {k}/{GGUF_QK_K}*{block_bytes}], got {blocks.dtype} "
                         f"{blocks.shape}")
    return blocks.reshape(blocks.shape[0], k // GGUF_QK_K, block_bytes)


def _gguf_d(b: np.ndarray, at: int) -> np.ndarray:
    return np.ascontiguousarray(b[..., at:at + 2]).view(np.float16)[..., 0].astype(np.float32)


def from_gguf_tq2_0(blocks: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of `to_gguf_tq2_0`: rows uint8 [N, K/256*66] -> (w_t int8 [N, K], d f32 [N, K/256]).
    The 2-bit fields are reordered into our i2 layout and decoded by i2's decoder."""
    b = _gguf_blocks(blocks, k, GGUF_QK_K // 4 + 2, "TQ2_0")
    n = b.shape[0]
    qs = b[..., :GGUF_QK_K // 4]
    f = [(qs >> np.uint8(2 * g)) & np.uint8(3) for g in range(4)]
    if (np.stack(f) == 3).any():
        raise ValueError("TQ2_0 code 3 is invalid")
    i2 = (f[0] << np.uint8(6) | f[1] << np.uint8(4) | f[2] << np.uint8(2) | f[3]).astype(np.uint8)
    return unpack({"codes": i2.reshape(n, -1)}, "i2", k), _gguf_d(b, GGUF_QK_K // 4)


def from_gguf_tq1_0(blocks: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of `to_gguf_tq1_0`: rows uint8 [N, K/256*54] -> (w_t int8 [N, K], d f32 [N, K/256])."""
    b = _gguf_blocks(blocks, k, 54, "TQ1_0")
    n = b.shape[0]
    digits = tq1_decode_bytes(b[..., :52])  # [N, blocks, 52, 5]
    pos = _tq1_0_block_positions()
    codes = np.zeros((n, k // GGUF_QK_K, GGUF_QK_K), dtype=np.int8)
    used = pos >= 0
    codes[..., pos[used]] = digits[..., used]
    return (codes.reshape(n, k) - 1).astype(np.int8), _gguf_d(b, 52)


@dataclass(frozen=True)
class GgufBlockFormat:
    """A GGUF ternary quant type: 256-weight blocks of `block_bytes` bytes with one fp16 scale each;
    `encode(w_t, scale)` -> rows, `decode(rows, k)` -> (w_t, per-block d)."""

    name: str
    block_bytes: int
    encode: Callable[[np.ndarray, float], np.ndarray]
    decode: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


# GGUF ternary block formats by their gguf.GGMLQuantizationType name (frontend/gguf.py reads through this)
GGUF_FORMATS = {f.name: f for f in (GgufBlockFormat("TQ2_0", GGUF_QK_K // 4 + 2, to_gguf_tq2_0, from_gguf_tq2_0),
                                    GgufBlockFormat("TQ1_0", 54, to_gguf_tq1_0, from_gguf_tq1_0))}
