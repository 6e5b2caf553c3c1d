"""cse: identical nodes (op, inputs, attrs) and identical constants are merged."""

import numpy as np

from ternc.passes import cse


def test_cse_before_after(hp):
    m = hp.ir("""
    module @m {
      const @a: f32[2] = [1.0, 2.0]
      const @a_copy: f32[2] = [1.0, 2.0]
      func @main(%x: f32[2]) -> (%y) {
        %p: f32[2] = Mul(%x, @a)
        %q: f32[2] = Mul(%x, @a_copy)
        %e1: f32[2] = Exp(%p)
        %e2: f32[2] = Exp(%q)
        %s: f32[2] = Softmax(%e1) {axis = 0}
        %t: f32[2] = Softmax(%e2) {axis = -1}
        %u: f32[2] = Add(%s, %t)
        %y: f32[2] = Add(%u, %e2)
        return %y
      }
    }
    """)
    res = cse.run(m)
    assert hp.text(res.module) == hp.text(hp.ir("""
    module @m {
      const @a: f32[2] = [1.0, 2.0]
      func @main(%x: f32[2]) -> (%y) {
        %p: f32[2] = Mul(%x, @a)
        %e1: f32[2] = Exp(%p)
        %s: f32[2] = Softmax(%e1) {axis = 0}
        %t: f32[2] = Softmax(%e1) {axis = -1}
        %u: f32[2] = Add(%s, %t)
        %y: f32[2] = Add(%u, %e1)
        return %y
      }
    }
    """))  # different attrs (axis 0 vs -1) are not merged
    assert res.stats == {"merged_nodes": 2, "merged_constants": 1}
    hp.assert_same_outputs(m, res.module, {"main": {"x": np.array([0.5, -1], np.float32)}})


def test_cse_keeps_result_names_and_constants_option(hp):
    m = hp.ir("""
    module @m {
      const @a: f32[2] = [1.0, 2.0]
      const @b: f32[2] = [1.0, 2.0]
      func @main(%x: f32[2]) -> (%y, %z) {
        %y: f32[2] = Mul(%x, @a)
        %z: f32[2] = Mul(%x, @a)
        %w: f32[2] = Mul(%x, @b)
        return %y, %z
      }
    }
    """)
    out = cse.run(m, cse.CSEOptions(constants=False)).module
    assert [n.outputs[0].name for n in out.func("main").nodes] == ["y", "z"]
    assert set(out.constants) == {"a"}


def test_cse_on_models_is_exact(hp, llama, llama_inputs, bitnet, bitnet_inputs):
    for model, inputs in ((llama, llama_inputs), (bitnet, bitnet_inputs)):
        out = cse.run(model).module
        hp.assert_same_outputs(model, out, inputs)
