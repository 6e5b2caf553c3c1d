"""fuse-epilogue: residual Add / RoPE / gated activation folded into FusedLinear, exactly."""

import numpy as np
import pytest

from ternc.ir import verify
from ternc.ir.ops import Op
from ternc.passes import fuse_epilogue, pack_ternary
from ternc.passes.pipeline import compile

HEAD = """
module @m {
  const @s: f32[] = [0.5]
  const @wg: t2[2,4] = [1, 0, -1, 1, 0, 0, 1, -1]
  const @wu: t2[2,4] = [0, 1, 1, -1, 1, 0, 0, 1]
  const @wd: t2[4,2] = [1, -1, 0, 1, 1, 1, -1, 0]
"""
TL = 'eps = 1e-05, format = "t2", has_bias = 0'


def test_gated_and_residual_before_after(hp):
    m = hp.ir(HEAD + f"""
      func @main(%x: f32[3,4]) -> (%y) {{
        %g: f32[3,2] = TernaryLinear(%x, @s, @wg) {{{TL}, k = 4, n = 2}}
        %u: f32[3,2] = TernaryLinear(%x, @s, @wu) {{{TL}, k = 4, n = 2}}
        %h: f32[3,2] = GatedAct(%g, %u) {{act = "silu"}}
        %d: f32[3,4] = TernaryLinear(%h, @s, @wd) {{{TL}, k = 2, n = 4}}
        %y: f32[3,4] = Add(%x, %d)
        return %y
      }}
    }}
    """)
    res = fuse_epilogue.run(m)
    assert hp.text(res.module) == hp.text(hp.ir(HEAD + f"""
      func @main(%x: f32[3,4]) -> (%y) {{
        %h: f32[3,2] = FusedLinear(%x, @s, @wg, @s, @wu) {{epilogue = "gated_silu", {TL}, k = 4, linear = "TernaryLinear", linear_operands = 2, n = 2}}
        %y: f32[3,4] = FusedLinear(%h, @s, @wd, %x) {{epilogue = "residual_add", {TL}, k = 2, linear = "TernaryLinear", linear_operands = 2, n = 4}}
        return %y
      }}
    }}
    """))
    assert res.stats["gated_silu"] == 1 and res.stats["residual_add"] == 1
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    hp.assert_same_outputs(m, res.module, {"main": {"x": x}})
    # packing a fused module packs both fused linears and stays exact
    packed = pack_ternary.run(res.module, pack_ternary.PackTernaryOptions("tl2"))
    assert packed.stats["packed_nodes"] == 2 and packed.stats["packed_weights"] == 3
    gated = packed.module.func("main").nodes[0]
    assert gated.attr("linear_operands") == 3 and len(gated.inputs) == 1 + 2 * 3
    hp.assert_same_outputs(m, packed.module, {"main": {"x": x}})


def test_rope_before_after_float_linear(hp):
    m = hp.ir("""
    module @m {
      const @w: f32[4,2] = [0.5, -1.0, 0.25, 2.0, 1.0, 0.0, -0.5, 0.75]
      const @shape: i64[4] = [1, -1, 2, 2]
      func @main(%x: f32[1,3,2], %cos: f32[1,1,3,2], %sin: f32[1,1,3,2]) -> (%y) {
        %q: f32[1,3,4] = Linear(%x, @w)
        %v: f32[1,3,2,2] = Reshape(%q, @shape) {allowzero = 1}
        %t: f32[1,2,3,2] = Transpose(%v) {perm = [0, 2, 1, 3]}
        %y: f32[1,2,3,2] = RoPE(%t, %cos, %sin)
        return %y
      }
    }
    """)
    out = fuse_epilogue.run(m).module
    assert [str(n.op.value) for n in out.func("main").nodes] == ["FusedLinear"]
    (n,) = out.func("main").nodes
    assert n.inputs == ("x", "w", "shape", "cos", "sin")
    assert n.attr("epilogue") == "rope" and n.attr("perm") == (0, 2, 1, 3) and n.attr("linear") == "Linear"
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((1, 3, 2)).astype(np.float32),
             "cos": rng.standard_normal((1, 1, 3, 2)).astype(np.float32),
             "sin": rng.standard_normal((1, 1, 3, 2)).astype(np.float32)}
    hp.assert_same_outputs(m, out, {"main": feeds})


def test_no_fusion_when_intermediate_has_other_uses(hp):
    m = hp.ir(HEAD + f"""
      func @main(%x: f32[3,4]) -> (%y, %g) {{
        %g: f32[3,2] = TernaryLinear(%x, @s, @wg) {{{TL}, k = 4, n = 2}}
        %u: f32[3,2] = TernaryLinear(%x, @s, @wu) {{{TL}, k = 4, n = 2}}
        %y: f32[3,2] = GatedAct(%g, %u) {{act = "relu2"}}
        return %y, %g
      }}
    }}
    """)
    assert fuse_epilogue.run(m).stats["fused"] == 0
    only_add = fuse_epilogue.FuseEpilogueOptions(epilogues=("residual_add",))
    assert fuse_epilogue.run(hp.ir(hp.text(m).replace("-> (%y, %g)", "-> (%y)")), only_add).stats["fused"] == 0
    with pytest.raises(ValueError, match="gated_silu"):
        fuse_epilogue.FuseEpilogueOptions(epilogues=("gelu",))


def test_fuse_models_exact(hp, bitnet_ternary, bitnet_inputs, llama, llama_inputs):
    res = fuse_epilogue.run(bitnet_ternary)
    verify(res.module)
    # per entry point and layer: o/down + residual, q/k + RoPE, gate/up + relu2 -> 10 per entry point
    assert res.stats == {"fused": 30, "residual_add": 12, "rope": 12, "gated_silu": 0, "gated_relu2": 6}
    hp.assert_same_outputs(bitnet_ternary, res.module, bitnet_inputs)
    res = fuse_epilogue.run(llama)
    assert res.stats["gated_silu"] == 6 and res.stats["rope"] == 12 and res.stats["residual_add"] == 12
    hp.assert_same_outputs(llama, res.module, llama_inputs)


def test_kv260_pipeline_exact_vs_raised(hp, bitnet, bitnet_ternary, bitnet_inputs):
    from ternc.targets import get

    # Everything but the final hw-numerics step (lossy by design; tests/passes/test_hw_numerics.py).
    pipeline = get("kv260").pipeline
    assert pipeline[-1] == "hw-numerics"
    out, rep = compile(bitnet, passes=",".join(pipeline[:-1]), report=False)
    ops = {n.op for f in out.functions for n in f.nodes}
    assert Op.FusedLinear in ops and Op.TernaryLinear in ops  # v_proj has no epilogue
    assert all(n.attr("format") == "tl2" for f in out.functions for n in f.nodes
               if n.op in (Op.FusedLinear, Op.TernaryLinear) and n.attr("linear") != "Linear")
    hp.assert_same_outputs(bitnet_ternary, out, bitnet_inputs)
