"""KV cache pieces of attention: appending new keys/values and the KIVI fake quantization of
the rows that join the quantized span (ir/kvquant.py)."""

from __future__ import annotations

from tvm import te, tirx

from .common import _i64


def _fp16_directed(x, up: bool):
    """The fp16 value nearest to f32 `x` that is >= x (up) or <= x, as f32 (kvquant._round_to_fp16):
    round to nearest even, then one fp16 step toward the bound if that overshot."""
    h = x.astype("float16")
    hf = h.astype("float32")
    bits = tirx.reinterpret("uint16", h).astype("int32")
    neg = tirx.bitwise_and(bits, tirx.const(0x8000, "int32")) != 0
    if up:  # scales are >= 0: the next fp16 above a non-negative h is bits + 1
        fix = tirx.Select(neg, bits - 1, bits + 1)
        bad = hf < x
    else:  # next fp16 below: magnitude + 1 for negatives (incl. -0), - 1 for positives
        fix = tirx.Select(neg, bits + 1, bits - 1)
        bad = hf > x
    stepped = tirx.reinterpret("float16", fix.astype("uint16")).astype("float32")
    return tirx.Select(bad, stepped, hf)


def _kv_span(n, n_past, cfg: dict):
    """(start, lo, hi) for a cache of n tokens after n_past: the sinks end at start, and rows
    [lo, hi) join the quantized span in this call (kvquant.quantized_span of n_past and n)."""
    grp, resid, sinks = cfg["group_size"], cfg["residual"], cfg["sinks"]

    def stop(m):
        start = tirx.min(_i64(m), _i64(sinks))
        return start + tirx.max(_i64(0), tirx.floordiv(_i64(m) - start - _i64(resid), _i64(grp))) * _i64(grp)

    start_n = tirx.min(_i64(n), _i64(sinks))
    return start_n, tirx.max(stop(n_past), start_n), stop(n)


def _kv_span_select_te(y, x, n_past, cfg: dict):
    """Rows of y where they join the quantized span in this call, else x."""
    _, lo, hi = _kv_span(x.shape[2], n_past, cfg)
    return te.compute(x.shape, lambda bb, hh, t, c: tirx.Select(tirx.all(t >= lo, t < hi), y[bb, hh, t, c],
                                                                 x[bb, hh, t, c]), name="kv_span_select")


def _kv_fake_quant_te(x, n_past, cfg: dict, keys: bool):
    """ir/kvquant.py's KIVI quantize-dequantize of the rows [lo, stop(n)) of a cache x [b, h, n, d]
    that join the quantized span in this call (lo = max(stop(n_past), sinks)); other rows pass
    through. Keys: statistics per channel over each group of `group_size` tokens; values: per
    token over groups of min(group_size, d) channels. zero = min rounded down to fp16, scale =
    (max - zero) / qmax rounded up to fp16 (+ one fp16 step if zero + qmax * scale < max), codes
    round half to even, x_hat = code * scale + zero (f32)."""
    b, h, n, d = x.shape
    bits, grp = cfg["bits"], cfg["group_size"]
    qmax = float((1 << bits) - 1)
    i64 = _i64
    start_n, lo, hi = _kv_span(n, n_past, cfg)
    vg = min(grp, int(d))
    r = te.reduce_axis((0, grp if keys else vg), name="r")

    def member(bb, hh, t, c, rr):
        if keys:  # the token group holding t (aligned at the sinks), same channel
            t0 = start_n + tirx.floordiv(t - start_n, i64(grp)) * i64(grp)
            return x[bb, hh, tirx.min(t0 + rr, n - 1), c]
        return x[bb, hh, t, tirx.floordiv(c, vg) * vg + rr]  # the channel group holding c, same token

    mn = te.compute(x.shape, lambda bb, hh, t, c: te.min(member(bb, hh, t, c, r), axis=r), name="kvq_min")
    r2 = te.reduce_axis((0, grp if keys else vg), name="r2")
    mx = te.compute(x.shape, lambda bb, hh, t, c: te.max(member(bb, hh, t, c, r2), axis=r2), name="kvq_max")

    def fq(bb, hh, t, c):
        xv = x[bb, hh, t, c]
        zero = _fp16_directed(mn[bb, hh, t, c], up=False)
        top = mx[bb, hh, t, c]
        scale = _fp16_directed((top - zero) / tirx.const(qmax, "float32"), up=True)
        short = zero + tirx.const(qmax, "float32") * scale < top
        bump = tirx.reinterpret("float16", (tirx.reinterpret("uint16", scale.astype("float16")).astype("int32")
                                            + 1).astype("uint16")).astype("float32")
        scale = tirx.Select(short, bump, scale)
        q = tirx.Select(scale > tirx.const(0.0, "float32"), (xv - zero) / scale, tirx.const(0.0, "float32"))
        code = tirx.min(tirx.max(tirx.nearbyint(q), tirx.const(0.0, "float32")), tirx.const(qmax, "float32"))
        xhat = code * scale + zero
        return tirx.Select(tirx.all(t >= lo, t < hi), xhat, xv)

    return te.compute(x.shape, fq, name="kv_fake_quant")
