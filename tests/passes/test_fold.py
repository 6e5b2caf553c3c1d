"""fold: constant folding (through the interpreter) and static Shape/Size folding."""

import numpy as np
import pytest

from ternc.ir import verify
from ternc.passes import fold

def test_fold_before_after(hp):
    m = hp.ir("""
    module @m {
      const @a: f32[2] = [1.0, 2.0]
      const @b: f32[2] = [3.0, 4.0]
      const @three: i64[1] = [3]
      func @main(%x: f32[3,2]) -> (%y) {
        %s: f32[2] = Add(@a, @b)
        %t: f32[2] = Mul(%s, @a)
        %shp: i64[1] = Shape(%x) {start = 1}
        %shp2: i64[2] = Concat(@three, %shp) {axis = 0}
        %r: f32[3,2] = Add(%x, %t)
        %y: f32[3,2] = Reshape(%r, %shp2)
        return %y
      }
    }
    """)
    res = fold.run(m)
    assert hp.text(res.module) == hp.text(hp.ir("""
    module @m {
      const @t.fold: f32[2] = [4.0, 12.0]
      const @shp2.fold: i64[2] = [3, 2]
      func @main(%x: f32[3,2]) -> (%y) {
        %r: f32[3,2] = Add(%x, @t.fold)
        %y: f32[3,2] = Reshape(%r, @shp2.fold)
        return %y
      }
    }
    """))
    assert res.stats == {"folded": 3, "shape_folded": 1}
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    hp.assert_same_outputs(m, res.module, {"main": {"x": x}})
    assert "s" not in res.module.constants and len(m.func("main").nodes) == 6  # input untouched


def test_fold_respects_size_cap_and_dynamic_shapes(hp):
    m = hp.ir("""
    module @m {
      const @n: i64[1] = [100]
      const @one: f32[] = [1.0]
      func @main(%x: f32[seq,2]) -> (%y, %big, %z) {
        %big: f32[100] = Expand(@one, @n)
        %shp: i64[2] = Shape(%x)
        %z: i64[1] = Shape(%x) {start = 1}
        %y: f32[seq,2] = Reshape(%x, %shp)
        return %y, %big, %z
      }
    }
    """)
    capped = fold.run(m, fold.FoldOptions(max_elements=10)).module
    ops = [n.op.value for n in capped.func("main").nodes]
    assert ops.count("Expand") == 1 and ops.count("Shape") == 2  # too big; dynamic; result names kept
    m2 = hp.ir(hp.text(m).replace("-> (%y, %big, %z)", "-> (%y)"))
    folded = fold.run(m2, fold.FoldOptions(max_elements=10)).module
    assert [n.op.value for n in folded.func("main").nodes] == ["Shape", "Reshape"]  # seq is dynamic
    m3 = hp.ir(hp.text(m2).replace("%x: f32[seq,2]", "%x: f32[3,2]"))  # static: Shape folds
    folded = fold.run(m3).module
    assert [n.op.value for n in folded.func("main").nodes] == ["Reshape"]
    assert folded.constants[folded.func("main").nodes[0].inputs[1]].data.tolist() == [3, 2]


def test_fold_shares_constants_across_entry_points_and_stays_valid(hp, bitnet, bitnet_inputs):
    out = fold.run(bitnet)
    verify(out.module)
    assert out.stats["folded"] > 0
    # main and prefill fold the same weight unpacking: one constant each, not two
    assert not any(k.endswith(".fold_1") for k in out.module.constants)
    hp.assert_same_outputs(bitnet, out.module, bitnet_inputs)


def test_fold_options_validate():
    with pytest.raises(ValueError):
        fold.FoldOptions(max_elements=0)
