"""dce: dead nodes and unreferenced constants go; live ones stay."""

import numpy as np

from ternc.passes import dce


def test_dce_before_after(hp):
    m = hp.ir("""
    module @m {
      const @a: f32[2] = [1.0, 2.0]
      const @unused: f32[2] = [5.0, 6.0]
      func @main(%x: f32[2]) -> (%y) {
        %dead: f32[2] = Mul(%x, @unused)
        %dead2: f32[2] = Exp(%dead)
        %y: f32[2] = Add(%x, @a)
        return %y
      }
    }
    """)
    res = dce.run(m)
    assert hp.text(res.module) == hp.text(hp.ir("""
    module @m {
      const @a: f32[2] = [1.0, 2.0]
      func @main(%x: f32[2]) -> (%y) {
        %y: f32[2] = Add(%x, @a)
        return %y
      }
    }
    """))
    assert res.stats == {"removed_nodes": 2, "removed_constants": 1}
    assert len(m.func("main").nodes) == 3 and "unused" in m.constants  # input untouched
    hp.assert_same_outputs(m, res.module, {"main": {"x": np.array([1, 2], np.float32)}})


def test_dce_keeps_multi_output_nodes_with_one_live_output(hp):
    m = hp.ir("""
    module @m {
      const @k: i64[1] = [1]
      func @main(%x: f32[4]) -> (%i) {
        %v: f32[1], %i: i64[1] = TopK(%x, @k)
        return %i
      }
    }
    """)
    assert hp.text(dce.run(m).module) == hp.text(m)


def test_dce_on_model_is_noop(llama):
    out = dce.run(llama).module
    assert str(out) == str(llama)
