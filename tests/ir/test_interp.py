"""High-level ops that delegate to one definition: their results equal the primitive they name."""

from __future__ import annotations

import numpy as np

from ternc.ir import DType, Node, Op, TensorType, Value
from ternc.ir.interp import IMPLS


def test_layernorm_is_onnx_layernormalization_over_last_axis(rng):
    x = rng.standard_normal((2, 3, 8)).astype(np.float32)
    scale, bias = rng.standard_normal(8).astype(np.float32), rng.standard_normal(8).astype(np.float32)
    out = [Value("y", TensorType(DType.F32, None))]
    hl = IMPLS[Op.LayerNorm](Node.make(Op.LayerNorm, ["x", "s", "b"], out, eps=1e-3), [x, scale, bias])[0]
    prim = IMPLS[Op.LayerNormalization](Node.make(Op.LayerNormalization, ["x", "s", "b"], out, axis=-1, epsilon=1e-3),
                                        [x, scale, bias])[0]
    np.testing.assert_array_equal(hl, prim)
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    np.testing.assert_allclose(hl, (x - mean) / np.sqrt(var + 1e-3) * scale + bias, rtol=1e-5, atol=1e-5)
