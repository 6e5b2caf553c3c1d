"""raise-ternary: BitNet act-quant + ternary matmul + dequant patterns -> TernaryLinear."""

import numpy as np
import pytest

from ternc.ir import interpret, verify
from ternc.ir.interp import IMPLS, Interpreter
from ternc.ir.ops import Op
from ternc.passes import raise_ternary
from ternc.passes.pipeline import compile

# The BitLinear pattern as the dynamo exporter emits it (K=4, N=2, weight scale c=2 => w_scale 1/2).
BITLINEAR = """
module @m {
  const @axes: i64[1] = [-1]
  const @eps: f32[] = [1e-05]
  const @q: f32[] = [127.0]
  const @qmin: f32[] = [-128.0]
  const @c: f32[] = [2.0]
  const @w: f32[2,4] = [WEIGHTS]
  func @main(%x: f32[3,4]) -> (%y) {
    %abs: f32[3,4] = Abs(%x)
    %amax: f32[3,1] = ReduceMax(%abs, @axes) {keepdims = 1}
    %clip: f32[3,1] = Clip(%amax, @eps)
    %rec: f32[3,1] = Reciprocal(%clip)
    %a: f32[3,1] = Mul(%rec, @q)
    %xs: f32[3,4] = Mul(%x, %a)
    %r: f32[3,4] = Round(%xs)
    %xc: f32[3,4] = Clip(%r, @qmin, @q)
    %xi: i8[3,4] = Cast(%xc) {to = "i8"}
    %xf: f32[3,4] = Cast(%xi) {to = "f32"}
    %mm: f32[3,2] = Linear(%xf, @w)
    %d: f32[3,1] = Mul(@c, %a)
    %y: f32[3,2] = Div(%mm, %d)
    return %y
  }
}
"""


def test_raise_before_after(hp):
    m = hp.ir(BITLINEAR.replace("WEIGHTS", "3.0, 0.0, -3.0, 3.0, 0.0, 0.0, 3.0, -3.0"))
    res = raise_ternary.run(m)
    assert res.stats["raised"] == 1
    # weight = 3 * T, dequant divides by 2: w_scale = 3/2
    assert hp.text(res.module) == hp.text(hp.ir("""
    module @m {
      const @w.t2: t2[2,4] = [1, 0, -1, 1, 0, 0, 1, -1]
      const @w_scale: f32[] = [1.5]
      func @main(%x: f32[3,4]) -> (%y) {
        %y: f32[3,2] = TernaryLinear(%x, @w_scale, @w.t2) {eps = 9.999999747378752e-06, format = "t2", has_bias = 0, k = 4, n = 2}
        return %y
      }
    }
    """))
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32) * 3
    a, b = interpret(m, {"x": x})["y"], interpret(res.module, {"x": x})["y"]
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)


def test_non_ternary_or_unquantized_linears_stay(hp):
    m = hp.ir(BITLINEAR.replace("WEIGHTS", "3.0, 0.0, -3.0, 3.0, 0.0, 0.0, 3.0, -2.9"))
    assert raise_ternary.run(m).stats["raised"] == 0
    float_act = hp.ir("""
    module @m {
      const @w: f32[2,4] = [0.5, 0.0, -0.5, 0.5, 0.0, 0.0, 0.5, -0.5]
      func @main(%x: f32[3,4]) -> (%y) {
        %y: f32[3,2] = Linear(%x, @w)
        return %y
      }
    }
    """)
    assert raise_ternary.run(float_act).stats["raised"] == 0  # exact by default: no act quant in graph
    lossy = raise_ternary.run(float_act, raise_ternary.RaiseTernaryOptions(require_act_quant=False))
    assert lossy.stats["float_activations"] == 1
    assert [n.op for n in lossy.module.func("main").nodes] == [Op.TernaryLinear]


def test_fake_quant_form(hp):
    m = hp.ir("""
    module @m {
      const @axes: i64[1] = [-1]
      const @eps: f32[] = [1e-05]
      const @q: f32[] = [127.0]
      const @qmin: f32[] = [-128.0]
      const @w: f32[2,4] = [0.5, 0.0, -0.5, 0.5, 0.0, 0.0, 0.5, -0.5]
      const @b: f32[2] = [1.0, 2.0]
      func @main(%x: f32[3,4]) -> (%y) {
        %abs: f32[3,4] = Abs(%x)
        %amax: f32[3,1] = ReduceMax(%abs, @axes) {keepdims = 1}
        %clip: f32[3,1] = Clip(%amax, @eps)
        %a: f32[3,1] = Div(@q, %clip)
        %xs: f32[3,4] = Mul(%x, %a)
        %r: f32[3,4] = Round(%xs)
        %xc: f32[3,4] = Clip(%r, @qmin, @q)
        %xd: f32[3,4] = Div(%xc, %a)
        %y: f32[3,2] = Linear(%xd, @w, @b)
        return %y
      }
    }
    """)
    res = raise_ternary.run(m)
    assert res.stats["fake_quant"] == 1
    (node,) = res.module.func("main").nodes
    assert node.op == Op.TernaryLinear and node.attr("has_bias") == 1 and node.inputs[-1] == "b"
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_allclose(interpret(res.module, {"x": x})["y"], interpret(m, {"x": x})["y"], rtol=1e-6)


def test_raise_on_bitnet_export_vs_onnxruntime(bitnet, bitnet_path, bitnet_ternary, capsys):
    """The raised module vs onnxruntime on the export: each TernaryLinear agrees to f32 rounding given the
    same input; end to end, a 1-ulp scale difference can flip an int8 rounding, which later layers
    re-quantize, so the logits agree less tightly (measured, bounded here)."""
    ort = pytest.importorskip("onnxruntime")
    verify(bitnet_ternary)
    main = bitnet_ternary.func("main")
    assert sum(n.op == Op.TernaryLinear for n in main.nodes) == 14
    assert not any(n.op in (Op.Round, Op.ReduceMax, Op.MatMul) for n in main.nodes)
    assert [n.op for n in main.nodes if n.op == Op.Linear] == [Op.Linear]  # lm_head stays float
    ids = np.random.default_rng(3).integers(0, 256, (1, 12)).astype(np.int64)
    ref = ort.InferenceSession(str(bitnet_path)).run(None, {"input_ids": ids})[0]
    got = interpret(bitnet_ternary, {"input_ids": ids})["logits"]
    end_to_end = float(np.abs(got - ref).max())
    # per linear: feed the imported module's own input to each TernaryLinear
    env = {}
    Interpreter(bitnet, lambda n, outs: env.update({o.name: v for o, v in zip(n.outputs, outs)})).run(
        "main", {"input_ids": ids})
    per_linear = 0.0
    for n in main.nodes:
        if n.op == Op.TernaryLinear:
            args = [env[n.inputs[0]]] + [bitnet_ternary.constants[i].data for i in n.inputs[1:]]
            y = IMPLS[n.op](n, args)[0]
            per_linear = max(per_linear, float(np.abs(y - env[n.outputs[0].name]).max() / np.abs(y).max()))
    with capsys.disabled():
        print(f"\nraise-ternary vs onnxruntime: logits max|err| {end_to_end:.3g} (max|logit| "
              f"{np.abs(ref).max():.3g}); per-linear max rel err {per_linear:.3g}")
    assert per_linear < 1e-6
    assert end_to_end < 0.02 * np.abs(ref).max()
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.9


def test_raise_through_pipeline_generates_same_tokens(bitnet):
    import ternc

    from ternc.passes.pipeline import TVM_PIPELINE

    out, rep = compile(bitnet, TVM_PIPELINE, report=False)
    assert rep.row("raise-ternary").stats["raised"] == 42  # 14 per entry point
    ids = np.array([[5, 17, 99, 3]])
    assert (ternc.generate(out, ids, 5) == ternc.generate(bitnet, ids, 5)).all()
