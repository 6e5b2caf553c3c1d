"""pack-ternary: packed weights give bit-identical outputs and int32 accumulators in every format."""

import numpy as np
import pytest

from ternc.ir import packing
from ternc.ir.interp import Interpreter
from ternc.ir.ops import Op
from ternc.passes import pack_ternary, split_ternary
from ternc.passes.registry import SpecError, parse_spec

TL = """
module @m {
  const @s: f32[] = [0.5]
  const @w: t2[2,4] = [1, 0, -1, 1, 0, 0, 1, -1]
  func @main(%x: f32[3,4]) -> (%y) {
    %y: f32[3,2] = TernaryLinear(%x, @s, @w) {eps = 1e-05, format = "t2", has_bias = 0, k = 4, n = 2}
    return %y
  }
}
"""


def test_pack_before_after_tl1(hp):
    m = hp.ir(TL)
    out = pack_ternary.run(m, pack_ternary.PackTernaryOptions("tl1")).module
    # tl1: pairs (w0, w1) -> 3*w0 + w1 + 4, two pairs per byte, low nibble first
    # row 0 (1, 0, -1, 1): 7 | 2 << 4 = 39; row 1 (0, 0, 1, -1): 4 | 6 << 4 = 100
    assert hp.text(out) == hp.text(hp.ir("""
    module @m {
      const @s: f32[] = [0.5]
      const @w.tl1.nibbles: u8[2,1] = [39, 100]
      func @main(%x: f32[3,4]) -> (%y) {
        %y: f32[3,2] = TernaryLinear(%x, @s, @w.tl1.nibbles) {eps = 1e-05, format = "tl1", has_bias = 0, k = 4, n = 2}
        return %y
      }
    }
    """))
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    hp.assert_same_outputs(m, out, {"main": {"x": x}})


def _accumulators(module, inputs):
    """Every TernaryMatMul's int32 output, by node output name, for every entry point."""
    accs = {}
    for entry, feeds in inputs.items():
        def observe(node, outs, entry=entry):
            if node.op == Op.TernaryMatMul:
                accs[(entry, node.outputs[0].name)] = outs[0]
        Interpreter(module, observe).run(entry, feeds)
    return accs


@pytest.mark.parametrize("fmt", packing.FORMATS)
def test_pack_model_bit_identical(hp, fmt, bitnet_ternary, bitnet_inputs):
    res = pack_ternary.run(bitnet_ternary, pack_ternary.PackTernaryOptions(fmt))
    packed = res.module
    assert res.stats["packed_weights"] == 14  # 7 projections x 2 layers, shared by main/prefill/decode
    nodes = [n for f in packed.functions for n in f.nodes if n.op == Op.TernaryLinear]
    assert nodes and all(n.attr("format") == fmt for n in nodes)
    assert all(packed.constants[p].type.dtype.value == "u8" for n in nodes for p in n.inputs[2:])
    hp.assert_same_outputs(bitnet_ternary, packed, bitnet_inputs)
    # int32 accumulators, compared exactly after splitting both
    ref = _accumulators(split_ternary.run(bitnet_ternary).module, bitnet_inputs)
    got = _accumulators(split_ternary.run(packed).module, bitnet_inputs)
    assert ref.keys() == got.keys() and len(ref) == 3 * 14  # 3 entry points x 14 projections
    for k in ref:
        assert got[k].dtype == np.int32
        np.testing.assert_array_equal(got[k], ref[k], err_msg=str(k))
    # bytes: exactly what packing says, per weight
    t2 = {n.inputs[2]: bitnet_ternary.constants[n.inputs[2]] for f in bitnet_ternary.functions for n in f.nodes
          if n.op == Op.TernaryLinear}
    want = sum(packing.packed_nbytes(*c.type.shape, fmt) for c in t2.values())
    assert bitnet_ternary.weight_bytes - packed.weight_bytes == sum(c.nbytes for c in t2.values()) - want


def test_pack_options_and_idempotence(hp):
    with pytest.raises(ValueError, match="tl1, tl2"):
        pack_ternary.PackTernaryOptions("i3")
    with pytest.raises(SpecError, match="i2, tl1, tl2, tq1"):
        parse_spec("pack-ternary{format=q4}")
    once = pack_ternary.run(hp.ir(TL), pack_ternary.PackTernaryOptions("tl2")).module
    twice = pack_ternary.run(once, pack_ternary.PackTernaryOptions("i2"))
    assert twice.stats["packed_nodes"] == 0 and hp.text(twice.module) == hp.text(once)  # already packed


def test_packed_bytes_per_format(bitnet_ternary, capsys):
    sizes = {fmt: pack_ternary.run(bitnet_ternary, pack_ternary.PackTernaryOptions(fmt)).module.weight_bytes
             for fmt in packing.FORMATS}
    with capsys.disabled():
        print("\nweight bytes (tiny-bitnet): t2", bitnet_ternary.weight_bytes, sizes)
    assert sizes["tq1"] < sizes["tl2"] < sizes["tl1"] < bitnet_ternary.weight_bytes
