"""The ternary integer contract: activation quantization, packed-weight matmul kernels (exact
int32), dequantization (TernaryLinear, QuantizeAct, TernaryMatMul, Dequantize)."""

from __future__ import annotations

from tvm import relax, tirx

from ....ir import packing, semantics
from ....ir.ops import Op
from .. import kernels
from .common import Lazy, _as_int, _flatten_tokens, _simplify, impl


def _quantize(L, x2, k: int, eps: float):
    quant = L.kernel("quantize", (k, float(eps), L.tvm_target.gpu), lambda: kernels.quantize_func(k, eps, L.tvm_target))
    m = L.shape_of(x2)[0]
    out = L.emit(relax.call_tir(quant, [x2], [
        relax.TensorType([m, kernels.padded_k(k)], "int8"), relax.TensorType([m, 1], "float32")]))
    return L.emit(relax.TupleGetItem(out, 0)), L.emit(relax.TupleGetItem(out, 1))


def _tmatmul_dp4a(L, xq_padded, parts, k: int, n: int):
    """CUDA decode on i2 weights: dp4a over the packed bytes viewed as int32 words (zero copy)."""
    m = L.shape_of(xq_padded)[0]
    kw = kernels.DP4A_FORMAT.words_per_row(k)
    tile = 1 if L.tokens_hint == 1 else kernels.GEMM_TOKEN_TILE  # prefill: whole token tiles
    mp = m if tile == 1 else _simplify(tirx.floordiv(m + (tile - 1), tile) * tile)
    pack = L.kernel("dp4a_pack", (k, tile), lambda: kernels.dp4a_pack_func(k, tile))
    # q/k/v (gate/up) share one packed activation
    hit = next((r for v, kk, r in L.dp4a_packed if kk == k and v.same_as(xq_padded)), None)
    if hit is None:
        packed = L.emit(relax.call_tir(pack, [xq_padded], [
            relax.TensorType([mp, 4, kw], "int32"), relax.TensorType([mp], "int32")]))
        hit = (L.emit(relax.TupleGetItem(packed, 0)), L.emit(relax.TupleGetItem(packed, 1)))
        L.dp4a_packed.append((xq_padded, k, hit))
    xw, ssum = hit
    words = L.weight_as(parts[0], "int32", [n, kw])
    if words is None:
        words = L.emit(relax.op.memory.view(L.tensor(parts[0]), [n, kw], "int32"))
    if L.tokens_hint == 1:  # decode: one token per call
        gemv = L.kernel("dp4a_gemv", (k, n), lambda: kernels.dp4a_gemv_func(k, n))
    else:  # prefill: tiled GEMM, each weight word read once per 32 tokens
        gemm = L.kernel("dp4a_gemm", (k, n), lambda: kernels.dp4a_gemm_func(k, n))
        mb = _simplify(tirx.floordiv(m + (tile - 1), tile))
        acc = L.emit(relax.call_tir(gemm, [words, xw, ssum, relax.prim_value(mb)],
                                    relax.TensorType([mp, n], "int32")))
        acc = L.emit(relax.op.strided_slice(acc, [0], [0], [m], assume_inbound=True))
        if _as_int(L.shape_of(acc)[0]) is None and str(L.shape_of(acc)[0]) != str(m):
            acc = L.bb.match_cast(acc, relax.TensorType([m, n], "int32"))
        return acc
    return L.emit(relax.call_tir(gemv, [words, xw, ssum], relax.TensorType([m, n], "int32")))


def _tmatmul(L, node, xq_padded, parts, fmt: str, k: int, n: int, kind: str | None = None):
    if kind is None:
        kind = kernels.choose_kind(fmt, k, n, L.tokens_hint, L.tvm_target, L.kernel_policy, L.kernel_log,
                                   L.target, tuner=L.tuner)
    if kind == "dp4a":
        return _tmatmul_dp4a(L, xq_padded, parts, k, n)
    tmm = L.kernel("tmm", (fmt, k, n, kind), lambda: kernels.matmul_func(fmt, k, n, kind))
    m = L.shape_of(xq_padded)[0]
    layout = packing.get_format(fmt)
    ts = [L.tensor(p) for p in parts]
    for t, s, nm in zip(ts, layout.part_shapes(n, k), layout.part_names):
        if [_as_int(d) for d in L.shape_of(t)] != list(s):
            raise L.err(f"packed part {nm!r} has shape {L.shape_of(t)}, expected {list(s)} for {fmt} [N={n}, K={k}]")
    return L.emit(relax.call_tir(tmm, [xq_padded, *ts], relax.TensorType([m, n], "int32")))


def _format_attrs(L, node, n_parts: int):
    fmt, k, n = node.attr("format"), node.attr("k"), node.attr("n")
    if fmt not in kernels.TIR_DECODERS:
        raise L.err(f"ternary format {fmt!r} has no TVM kernel (supported: {', '.join(kernels.TIR_DECODERS)})")
    if k is None or n is None:
        raise L.err("ternary op without k/n attributes")
    n_names = len(packing.get_format(fmt).part_names)
    if n_parts != n_names:
        raise L.err(f"format {fmt} takes {n_names} packed arrays, got {n_parts}")
    return fmt, int(k), int(n)


def _dequant(L, acc, a_scale, w_scale):
    ws = L.tensor(w_scale)
    if L.ndim(ws) != 0:
        ws = L.emit(relax.op.reshape(ws, []))
    y = L.emit(relax.op.divide(L.emit(relax.op.astype(acc, "float32")), a_scale))
    return L.emit(relax.op.multiply(y, ws))


def _decode_dp4a_linear(L, node) -> bool:
    """Whether this TernaryLinear runs as the CUDA decode dp4a GEMV (kernels.choose_kind)."""
    if not (L.tvm_target.gpu and L.tokens_hint == 1) or node.attr("format") != kernels.DP4A_FORMAT.name:
        return False
    k, n = node.attr("k"), node.attr("n")
    return k is not None and n is not None and kernels.choose_kind(
        node.attr("format"), int(k), int(n), L.tokens_hint, L.tvm_target, L.kernel_policy, L.kernel_log,
        L.target, tuner=L.tuner) == "dp4a"


def fuse_rmsnorm_into_dp4a(L, node, args):
    """CUDA decode: an RMSNorm whose every reader is a dp4a TernaryLinear (BitNet's pre- and
    sub-norms) runs inside the activation quantize-and-pack kernel (kernels.quantize_dp4a_func with
    norm_eps): the linears find their packed activation in L.quantized, and the normalized tensor
    itself is only emitted (Lazy) if something else reads it. None when the pattern does not hold."""
    if not (L.tvm_target.gpu and L.tokens_hint == 1):
        return None
    out = node.outputs[0].name
    if not hasattr(L, "_consumers"):
        L._consumers = L.fn.consumers()
    readers = L._consumers.get(out, [])
    if (not readers or out in L.fn.results
            or any(r.op != Op.TernaryLinear or r.inputs[0] != out or not _decode_dp4a_linear(L, r) for r in readers)):
        return None
    keys = {(int(r.attr("k")), float(r.attr("eps", semantics.ACT_EPS))) for r in readers}
    if len(keys) != 1:
        return None
    (k, eps), = keys
    x, w = L.tensor(args[0]), L.tensor(args[1])
    if (L.dtype_of(x) != "float32" or L.dtype_of(w) != "float32" or _as_int(L.shape_of(x)[-1]) != k
            or [_as_int(d) for d in L.shape_of(w)] != [k]):
        return None
    norm_eps = float(node.attr("eps"))
    x2, lead = _flatten_tokens(L, x)
    m = L.shape_of(x2)[0]
    kw = kernels.DP4A_FORMAT.words_per_row(k)
    fused = L.kernel("rmsnorm_quantize_dp4a", (k, eps, norm_eps),
                     lambda: kernels.quantize_dp4a_func(k, eps, norm_eps=norm_eps))
    res = L.emit(relax.call_tir(fused, [x2, w], [relax.TensorType([m, 4, kw], "int32"),
                                                 relax.TensorType([m], "int32"),
                                                 relax.TensorType([m, 1], "float32")]))
    xw, ssum, a_scale = (L.emit(relax.TupleGetItem(res, i)) for i in range(3))
    L.quantized[("dp4a", out, k, eps)] = (xw, ssum, a_scale, lead)
    return Lazy(lambda: relax.op.nn.rms_norm(x, w, axes=[-1], epsilon=norm_eps), source=x, shape=L.shape_of(x))


@impl(Op.TernaryLinear)
def _ternary_linear(L, node, args):
    packed = list(args[2:])
    bias = None
    if node.attr("has_bias", 0):
        bias, packed = packed[-1], packed[:-1]
    fmt, k, n = _format_attrs(L, node, len(packed))
    eps = float(node.attr("eps", semantics.ACT_EPS))
    qkey = (node.inputs[0], k, eps)
    kind = kernels.choose_kind(fmt, k, n, L.tokens_hint, L.tvm_target, L.kernel_policy, L.kernel_log, L.target,
                               tuner=L.tuner)
    if kind == "dp4a" and L.tokens_hint == 1 and ("dp4a",) + qkey in L.quantized:
        # the producer (a fused RMSNorm) already quantized and packed this activation: the input
        # tensor itself is not read (reading it would emit the norm)
        dt = "float32"
        acc, a_scale, lead = _dp4a_decode(L, None, packed, k, n, eps, qkey)
    elif kind == "dp4a" and L.tokens_hint == 1:  # CUDA decode: quantize + pack in one kernel
        x = L.tensor(args[0])
        dt = L.dtype_of(x)
        acc, a_scale, lead = _dp4a_decode(L, x, packed, k, n, eps, qkey)
    else:
        x = L.tensor(args[0])
        dt = L.dtype_of(x)
        acc, a_scale, lead = _quantized_matmul(L, node, x, packed, fmt, k, n, eps, qkey, kind)
    y = _dequant(L, acc, a_scale, args[1])
    y = L.emit(relax.op.reshape(y, [*lead, n]))
    if bias is not None:
        y = L.emit(relax.op.add(y, L.tensor(bias)))
    if dt != "float32":
        y = L.emit(relax.op.astype(y, dt))
    return y


def _as_f32_tokens(L, x):
    x2, lead = _flatten_tokens(L, x)
    if L.dtype_of(x2) != "float32":
        x2 = L.emit(relax.op.astype(x2, "float32"))
    return x2, lead


def _dp4a_decode(L, x, packed, k: int, n: int, eps: float, qkey):
    """Decode on CUDA: the fused quantize-and-pack kernel (kernels.quantize_dp4a_func, one launch per
    activation, shared by the linears that read it) feeding the dp4a GEMV."""
    key = ("dp4a",) + qkey
    if key in L.quantized:
        xw, ssum, a_scale, lead = L.quantized[key]
    else:
        x2, lead = _as_f32_tokens(L, x)
        m = L.shape_of(x2)[0]
        kw = kernels.DP4A_FORMAT.words_per_row(k)
        quant = L.kernel("quantize_dp4a", (k, float(eps)), lambda: kernels.quantize_dp4a_func(k, eps))
        out = L.emit(relax.call_tir(quant, [x2], [relax.TensorType([m, 4, kw], "int32"),
                                                  relax.TensorType([m], "int32"),
                                                  relax.TensorType([m, 1], "float32")]))
        xw, ssum, a_scale = (L.emit(relax.TupleGetItem(out, i)) for i in range(3))
        L.quantized[key] = (xw, ssum, a_scale, lead)
    kw = kernels.DP4A_FORMAT.words_per_row(k)
    words = L.weight_as(packed[0], "int32", [n, kw])
    if words is None:
        words = L.emit(relax.op.memory.view(L.tensor(packed[0]), [n, kw], "int32"))
    gemv = L.kernel("dp4a_gemv", (k, n), lambda: kernels.dp4a_gemv_func(k, n))
    m = L.shape_of(xw)[0]
    return L.emit(relax.call_tir(gemv, [words, xw, ssum], relax.TensorType([m, n], "int32"))), a_scale, lead


def _quantized_matmul(L, node, x, packed, fmt: str, k: int, n: int, eps: float, qkey, kind: str):
    if qkey in L.quantized:  # linears reading the same activation quantize it once
        xq, a_scale, lead = L.quantized[qkey]
    else:
        x2, lead = _as_f32_tokens(L, x)
        xq, a_scale = _quantize(L, x2, k, eps)
        L.quantized[qkey] = (xq, a_scale, lead)
    return _tmatmul(L, node, xq, packed, fmt, k, n, kind), a_scale, lead


@impl(Op.QuantizeAct)
def _quantize_act(L, node, args):
    x = L.tensor(args[0])
    x2, lead = _flatten_tokens(L, x)
    k = L.shape_of(x)[-1]
    if not isinstance(k, int):
        raise L.err("QuantizeAct needs a static last dim")
    if L.dtype_of(x2) != "float32":
        x2 = L.emit(relax.op.astype(x2, "float32"))
    xq, a_scale = _quantize(L, x2, k, float(node.attr("eps", semantics.ACT_EPS)))
    xq = L.emit(relax.op.strided_slice(xq, [1], [0], [k]))
    return [L.emit(relax.op.reshape(xq, [*lead, k])), L.emit(relax.op.reshape(a_scale, [*lead, 1]))]


@impl(Op.TernaryMatMul)
def _ternary_matmul(L, node, args):
    fmt, k, n = _format_attrs(L, node, len(args) - 1)
    xq = L.tensor(args[0])
    x2, lead = _flatten_tokens(L, xq)
    kp = kernels.padded_k(k)
    if kp != k:
        x2 = L.emit(relax.op.nn.pad(x2, [0, 0, 0, kp - k]))
    acc = _tmatmul(L, node, x2, args[1:], fmt, k, n)
    return relax.op.reshape(acc, [*lead, n])


@impl(Op.Dequantize)
def _dequantize(L, node, args):
    acc, a_scale = L.tensor(args[0]), L.tensor(args[1])
    return _dequant(L, acc, a_scale, args[2])
