"""The op set of the ternc IR: one enum, one signature table.

Primitive ops carry ONNX's names and (latest-opset) semantics, so the frontend maps them 1:1 and
onnx's own node tests check the interpreter. High-level ops are raised from patterns by the
frontend or introduced by passes; their meaning is defined in `ir/interp.py`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Op(enum.Enum):
    # --- elementwise unary
    Abs = "Abs"; Neg = "Neg"; Sqrt = "Sqrt"; Reciprocal = "Reciprocal"; Exp = "Exp"; Log = "Log"
    Tanh = "Tanh"; Sigmoid = "Sigmoid"; Relu = "Relu"; Erf = "Erf"; Sin = "Sin"; Cos = "Cos"
    Floor = "Floor"; Ceil = "Ceil"; Round = "Round"; Sign = "Sign"; Not = "Not"; IsNaN = "IsNaN"
    IsInf = "IsInf"; Identity = "Identity"; Softplus = "Softplus"; Gelu = "Gelu"; HardSigmoid = "HardSigmoid"
    LeakyRelu = "LeakyRelu"; Elu = "Elu"; Selu = "Selu"; Atan = "Atan"; Asin = "Asin"; Acos = "Acos"; Tan = "Tan"
    Sinh = "Sinh"; Cosh = "Cosh"; Asinh = "Asinh"; Acosh = "Acosh"; Atanh = "Atanh"; Mish = "Mish"
    Softsign = "Softsign"; HardSwish = "HardSwish"; BitwiseNot = "BitwiseNot"; ThresholdedRelu = "ThresholdedRelu"
    Celu = "Celu"
    # --- elementwise binary / n-ary (numpy broadcasting)
    Add = "Add"; Sub = "Sub"; Mul = "Mul"; Div = "Div"; Pow = "Pow"; Mod = "Mod"
    Max = "Max"; Min = "Min"; Sum = "Sum"; Mean = "Mean"
    Equal = "Equal"; Less = "Less"; Greater = "Greater"; LessOrEqual = "LessOrEqual"
    GreaterOrEqual = "GreaterOrEqual"; And = "And"; Or = "Or"; Xor = "Xor"
    BitwiseAnd = "BitwiseAnd"; BitwiseOr = "BitwiseOr"; BitwiseXor = "BitwiseXor"; BitShift = "BitShift"
    PRelu = "PRelu"
    Where = "Where"; Clip = "Clip"; Cast = "Cast"; CastLike = "CastLike"
    # --- shape and data movement
    Reshape = "Reshape"; Transpose = "Transpose"; Squeeze = "Squeeze"; Unsqueeze = "Unsqueeze"
    Flatten = "Flatten"; Concat = "Concat"; Split = "Split"; Slice = "Slice"; Gather = "Gather"
    GatherElements = "GatherElements"; GatherND = "GatherND"; ScatterND = "ScatterND"
    ScatterElements = "ScatterElements"; Expand = "Expand"; Tile = "Tile"; Shape = "Shape"; Size = "Size"
    ConstantOfShape = "ConstantOfShape"; Range = "Range"; Trilu = "Trilu"; Pad = "Pad"; CumSum = "CumSum"
    OneHot = "OneHot"; NonZero = "NonZero"; TopK = "TopK"; DepthToSpace = "DepthToSpace"
    SpaceToDepth = "SpaceToDepth"; EyeLike = "EyeLike"; ReverseSequence = "ReverseSequence"
    # --- reductions
    ReduceMean = "ReduceMean"; ReduceSum = "ReduceSum"; ReduceMax = "ReduceMax"; ReduceMin = "ReduceMin"
    ReduceProd = "ReduceProd"; ReduceSumSquare = "ReduceSumSquare"; ReduceL1 = "ReduceL1"
    ReduceL2 = "ReduceL2"; ReduceLogSum = "ReduceLogSum"; ReduceLogSumExp = "ReduceLogSumExp"
    ArgMax = "ArgMax"; ArgMin = "ArgMin"
    # --- linear algebra and normalisation
    MatMul = "MatMul"; Gemm = "Gemm"; Einsum = "Einsum"; Softmax = "Softmax"; LogSoftmax = "LogSoftmax"
    LayerNormalization = "LayerNormalization"; RMSNormalization = "RMSNormalization"
    MatMulInteger = "MatMulInteger"; RotaryEmbedding = "RotaryEmbedding"; Hardmax = "Hardmax"
    BatchNormalization = "BatchNormalization"
    InstanceNormalization = "InstanceNormalization"; GlobalAveragePool = "GlobalAveragePool"
    GlobalMaxPool = "GlobalMaxPool"; Det = "Det"; Shrink = "Shrink"; Compress = "Compress"
    # --- quantization
    QuantizeLinear = "QuantizeLinear"; DequantizeLinear = "DequantizeLinear"
    DynamicQuantizeLinear = "DynamicQuantizeLinear"; QLinearMatMul = "QLinearMatMul"
    # ONNX's own Attention (opset 23). Renamed because `Attention` is the high-level op below; the
    # frontend maps ONNX `Attention` nodes to it (see ONNX_NAMES).
    OnnxAttention = "OnnxAttention"

    # --- high-level ops raised from patterns (semantics in interp.py)
    Linear = "Linear"            # (x, w[N,K], bias?) -> x @ w.T + bias
    RMSNorm = "RMSNorm"          # (x, weight) {eps} -> x / sqrt(mean(x^2, -1) + eps) * weight
    LayerNorm = "LayerNorm"      # (x, scale, bias?) {eps}
    RoPE = "RoPE"                # (x[b,h,s,d], cos, sin) -> x*cos + rotate_half(x)*sin
    Attention = "Attention"      # (q, k, v, past_k?, past_v?) {scale, causal} -> out[, present_k, present_v]
    GatedAct = "GatedAct"        # (gate, up) {act: silu|relu2} -> act(gate) * up (the gated-MLP core)
    # --- ternary / integer contract (ir/semantics.py)
    QuantizeAct = "QuantizeAct"  # (x) -> (x_q i8, a_scale f32[...,1])   per-token absmax
    TernaryMatMul = "TernaryMatMul"  # (x_q, *packed) {format, k, n} -> i32 accumulators
    Dequantize = "Dequantize"    # (acc, a_scale, w_scale) -> f32
    TernaryLinear = "TernaryLinear"  # (x, w_scale, *packed) {format, k, n, has_bias} composite
    # --- KV cache (ir/kvquant.py, ir/kvevict.py); defined by the passes
    KVQuantAttention = "KVQuantAttention"
    KVEvict = "KVEvict"
    FusedLinear = "FusedLinear"


@dataclass(frozen=True)
class OpSig:
    min_in: int
    max_in: int  # -1: variadic
    n_out: int  # -1: set by the node (variadic outputs)


_DEFAULT = OpSig(1, 1, 1)
_BINARY = OpSig(2, 2, 1)
_BIN_OPS = {Op.Add, Op.Sub, Op.Mul, Op.Div, Op.Pow, Op.Mod, Op.Equal, Op.Less, Op.Greater, Op.LessOrEqual,
            Op.GreaterOrEqual, Op.And, Op.Or, Op.Xor, Op.BitwiseAnd, Op.BitwiseOr, Op.BitwiseXor, Op.BitShift,
            Op.PRelu, Op.CastLike, Op.Expand, Op.Tile, Op.GatherElements, Op.GatherND, Op.MatMul, Op.GatedAct}
SIGNATURES: dict[Op, OpSig] = {op: _BINARY for op in _BIN_OPS}
SIGNATURES.update({
    Op.Max: OpSig(1, -1, 1), Op.Min: OpSig(1, -1, 1), Op.Sum: OpSig(1, -1, 1), Op.Mean: OpSig(1, -1, 1),
    Op.Where: OpSig(3, 3, 1), Op.Clip: OpSig(1, 3, 1), Op.Reshape: OpSig(2, 2, 1),
    Op.Squeeze: OpSig(1, 2, 1), Op.Unsqueeze: OpSig(2, 2, 1), Op.Concat: OpSig(1, -1, 1),
    Op.Split: OpSig(1, 2, -1), Op.Slice: OpSig(3, 5, 1), Op.Gather: OpSig(2, 2, 1),
    Op.ScatterND: OpSig(3, 3, 1), Op.ScatterElements: OpSig(3, 3, 1), Op.Range: OpSig(3, 3, 1),
    Op.Trilu: OpSig(1, 2, 1), Op.Pad: OpSig(2, 4, 1), Op.CumSum: OpSig(2, 2, 1), Op.OneHot: OpSig(3, 3, 1),
    Op.TopK: OpSig(2, 2, 2), Op.ReverseSequence: OpSig(2, 2, 1),
    Op.ReduceMean: OpSig(1, 2, 1), Op.ReduceSum: OpSig(1, 2, 1), Op.ReduceMax: OpSig(1, 2, 1),
    Op.ReduceMin: OpSig(1, 2, 1), Op.ReduceProd: OpSig(1, 2, 1), Op.ReduceSumSquare: OpSig(1, 2, 1),
    Op.ReduceL1: OpSig(1, 2, 1), Op.ReduceL2: OpSig(1, 2, 1), Op.ReduceLogSum: OpSig(1, 2, 1),
    Op.ReduceLogSumExp: OpSig(1, 2, 1),
    Op.Gemm: OpSig(2, 3, 1), Op.Einsum: OpSig(1, -1, 1), Op.LayerNormalization: OpSig(2, 3, -1),
    Op.RMSNormalization: OpSig(2, 2, 1), Op.MatMulInteger: OpSig(2, 4, 1), Op.RotaryEmbedding: OpSig(3, 4, 1),
    Op.BatchNormalization: OpSig(5, 5, -1), Op.InstanceNormalization: OpSig(3, 3, 1), Op.Compress: OpSig(2, 2, 1),
    Op.QuantizeLinear: OpSig(2, 3, 1), Op.DequantizeLinear: OpSig(2, 3, 1), Op.DynamicQuantizeLinear: OpSig(1, 1, 3),
    Op.QLinearMatMul: OpSig(8, 8, 1), Op.OnnxAttention: OpSig(3, 6, -1),
    Op.Linear: OpSig(2, 3, 1), Op.RMSNorm: OpSig(2, 2, 1), Op.LayerNorm: OpSig(2, 3, 1),
    Op.RoPE: OpSig(3, 3, 1), Op.Attention: OpSig(3, 5, -1),
    Op.QuantizeAct: OpSig(1, 1, 2), Op.TernaryMatMul: OpSig(2, -1, 1), Op.Dequantize: OpSig(3, 3, 1),
    Op.TernaryLinear: OpSig(3, -1, 1),
    Op.KVQuantAttention: OpSig(3, -1, -1), Op.KVEvict: OpSig(1, -1, -1), Op.FusedLinear: OpSig(2, -1, 1),
})


# Primitive ops whose IR name differs from the ONNX op they implement.
ONNX_NAMES: dict[Op, str] = {Op.OnnxAttention: "Attention"}


def signature(op: Op) -> OpSig:
    return SIGNATURES.get(op, _DEFAULT)


HIGH_LEVEL = {Op.Linear, Op.RMSNorm, Op.LayerNorm, Op.RoPE, Op.Attention, Op.GatedAct, Op.QuantizeAct,
              Op.TernaryMatMul, Op.Dequantize, Op.TernaryLinear, Op.KVQuantAttention, Op.KVEvict, Op.FusedLinear}


# --- attribute schemas -------------------------------------------------------------------------
@dataclass(frozen=True)
class AttrSchema:
    """One attribute of an op. `semantic`: a value other than `default` changes what the op computes
    (not just how it is stored or scheduled), so a backend must implement that value or refuse it."""

    name: str
    default: object
    values: tuple | None = None  # the legal values (None: not enumerated)
    semantic: bool = False


# `numerics = "fx"` (the hw-numerics pass) makes the interpreter follow the FPGA datapath's number
# formats (ir/hw_numerics.py): a backend that computes in float gives other numbers.
_NUMERICS = AttrSchema("numerics", "float", ("float", "fx"), semantic=True)
ATTR_SCHEMAS: dict[Op, dict[str, AttrSchema]] = {
    op: {"numerics": _NUMERICS} for op in (Op.TernaryLinear, Op.FusedLinear, Op.RoPE, Op.GatedAct)
}


def semantic_attrs(op: Op) -> dict[str, AttrSchema]:
    """The attributes of `op` whose non-default values change its meaning (see ATTR_SCHEMAS)."""
    return {k: a for k, a in ATTR_SCHEMAS.get(op, {}).items() if a.semantic}
