"""Element types and tensor types of the ternc IR.

Shapes mix concrete ints, symbolic dims (identifiers such as `batch`, `seq`, `past`) and `?`
(unknown). A tensor of unknown rank has `shape=None` and prints as `f32[*]`.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

import numpy as np

try:
    import ml_dtypes
except ImportError:  # a deployment bundle's runtime (numpy only; its artifacts hold no bf16 tensors)
    ml_dtypes = None


class DType(enum.Enum):
    F64 = "f64"
    F32 = "f32"
    F16 = "f16"
    BF16 = "bf16"
    I64 = "i64"
    I32 = "i32"
    I16 = "i16"
    I8 = "i8"
    U64 = "u64"
    U32 = "u32"
    U16 = "u16"
    U8 = "u8"
    BOOL = "bool"
    STR = "str"
    # Ternary values {-1, 0, 1}, one per int8 element when unpacked. Packed forms are u8 buffers
    # whose layout is named by the consuming op's `format` attribute (see ir/packing.py).
    T2 = "t2"
    # Low-bit integer codes (KV-cache quantization); stored one per int8/uint8 element unpacked.
    I4 = "i4"
    U4 = "u4"
    U2 = "u2"

    @property
    def np(self) -> np.dtype:
        return np.dtype(_TO_NP[self])

    @property
    def is_float(self) -> bool:
        return self in (DType.F64, DType.F32, DType.F16, DType.BF16)

    @property
    def is_int(self) -> bool:
        return not self.is_float and self not in (DType.BOOL, DType.STR)

    @staticmethod
    def from_np(dt) -> "DType":
        dt = np.dtype(dt)
        for k, v in _TO_NP.items():
            if np.dtype(v) == dt and k not in (DType.T2, DType.I4, DType.U4, DType.U2):
                return k
        if dt.kind in ("U", "O", "S"):
            return DType.STR
        raise TypeError(f"no ternc dtype for numpy dtype {dt}")


_TO_NP = {
    DType.F64: np.float64,
    DType.F32: np.float32,
    DType.F16: np.float16,
    **({DType.BF16: ml_dtypes.bfloat16} if ml_dtypes is not None else {}),
    DType.I64: np.int64,
    DType.I32: np.int32,
    DType.I16: np.int16,
    DType.I8: np.int8,
    DType.U64: np.uint64,
    DType.U32: np.uint32,
    DType.U16: np.uint16,
    DType.U8: np.uint8,
    DType.BOOL: np.bool_,
    DType.STR: np.object_,
    DType.T2: np.int8,
    DType.I4: np.int8,
    DType.U4: np.uint8,
    DType.U2: np.uint8,
}

Dim = int | str  # int, a symbol name, or "?"
_SYM = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class TensorType:
    dtype: DType
    shape: tuple[Dim, ...] | None

    def __post_init__(self):
        if self.shape is not None:
            for d in self.shape:
                if isinstance(d, bool) or not (
                    (isinstance(d, int) and d >= 0) or (isinstance(d, str) and (d == "?" or _SYM.match(d)))
                ):
                    raise ValueError(f"bad dimension {d!r} in shape {self.shape}")

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def is_static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)

    def __str__(self) -> str:
        if self.shape is None:
            return f"{self.dtype.value}[*]"
        return f"{self.dtype.value}[{','.join(str(d) for d in self.shape)}]"

    @staticmethod
    def parse(text: str) -> "TensorType":
        m = re.fullmatch(r"\s*([a-z0-9]+)\[(.*)\]\s*", text)
        if not m:
            raise ValueError(f"bad tensor type {text!r}")
        dtype = DType(m.group(1))
        body = m.group(2).strip()
        if body == "*":
            return TensorType(dtype, None)
        if body == "":
            return TensorType(dtype, ())
        dims: list[Dim] = []
        for tok in body.split(","):
            tok = tok.strip()
            dims.append(int(tok) if tok.isdigit() else tok)
        return TensorType(dtype, tuple(dims))

    @staticmethod
    def of(array: np.ndarray, dtype: DType | None = None) -> "TensorType":
        return TensorType(dtype or DType.from_np(array.dtype), tuple(int(d) for d in array.shape))


def unknown(dtype: DType) -> TensorType:
    return TensorType(dtype, None)
