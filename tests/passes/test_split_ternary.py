"""split-ternary: TernaryLinear -> QuantizeAct + TernaryMatMul + Dequantize (+ bias Add), exactly."""

import numpy as np

from ternc.ir.ops import Op
from ternc.passes import split_ternary

TL = """
module @m {
  const @s: f32[] = [0.5]
  const @w: t2[2,4] = [1, 0, -1, 1, 0, 0, 1, -1]
  const @b: f32[2] = [0.25, -1.0]
  func @main(%x: f32[3,4]) -> (%y) {
    %y: f32[3,2] = TernaryLinear(%x, @s, @w, @b) {eps = 1e-05, format = "t2", has_bias = 1, k = 4, n = 2}
    return %y
  }
}
"""


def test_split_before_after(hp):
    m = hp.ir(TL)
    out = split_ternary.run(m).module
    assert hp.text(out) == hp.text(hp.ir("""
    module @m {
      const @s: f32[] = [0.5]
      const @w: t2[2,4] = [1, 0, -1, 1, 0, 0, 1, -1]
      const @b: f32[2] = [0.25, -1.0]
      func @main(%x: f32[3,4]) -> (%y) {
        %y.x_q: i8[3,4], %y.a_scale: f32[3,1] = QuantizeAct(%x) {eps = 1e-05}
        %y.acc: i32[3,2] = TernaryMatMul(%y.x_q, @w) {format = "t2", k = 4, n = 2}
        %y.dequantize: f32[3,2] = Dequantize(%y.acc, %y.a_scale, @s)
        %y: f32[3,2] = Add(%y.dequantize, @b)
        return %y
      }
    }
    """))
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    hp.assert_same_outputs(m, out, {"main": {"x": x}})


def test_split_model_exact(hp, bitnet_ternary, bitnet_inputs):
    out = split_ternary.run(bitnet_ternary)
    assert out.stats["split"] == sum(n.op == Op.TernaryLinear for f in bitnet_ternary.functions for n in f.nodes) > 0
    assert not any(n.op == Op.TernaryLinear for f in out.module.functions for n in f.nodes)
    hp.assert_same_outputs(bitnet_ternary, out.module, bitnet_inputs)
