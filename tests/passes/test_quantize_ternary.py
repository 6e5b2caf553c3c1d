"""quantize-ternary (LOSSY): float linears -> absmean ternary; the error vs the float model is measured."""

import numpy as np

from ternc.ir import interpret, semantics
from ternc.ir.ops import Op
from ternc.passes import quantize_ternary
from ternc.passes.registry import parse_spec


def test_quantize_before_after(hp):
    m = hp.ir("""
    module @m {
      const @w: f32[2,4] = [0.4, 0.01, -0.5, 0.3, 0.0, -0.02, 0.6, -0.2]
      func @main(%x: f32[3,4]) -> (%y) {
        %y: f32[3,2] = Linear(%x, @w)
        return %y
      }
    }
    """)
    out = quantize_ternary.run(m, quantize_ternary.QuantizeTernaryOptions(keep_lm_head=False)).module
    # mean|w| = 0.25375: round(w / 0.25375) clipped to [-1, 1]
    assert hp.text(out) == hp.text(hp.ir("""
    module @m {
      const @w.t2: t2[2,4] = [1, 0, -1, 1, 0, 0, 1, -1]
      const @w.scale: f32[] = [0.25375]
      func @main(%x: f32[3,4]) -> (%y) {
        %y: f32[3,2] = TernaryLinear(%x, @w.scale, @w.t2) {eps = 1e-05, format = "t2", has_bias = 0, k = 4, n = 2}
        return %y
      }
    }
    """))
    # a function result is the LM head: kept float by default
    assert quantize_ternary.run(m).stats == {"quantized": 0, "skipped": 1}


def test_quantize_llama_error_and_skips(hp, llama, llama_inputs, capsys):
    res = quantize_ternary.run(llama)
    q = res.module
    main = q.func("main")
    assert sum(n.op == Op.TernaryLinear for n in main.nodes) == 14
    lm_head = [n for n in main.nodes if n.op == Op.Linear]
    assert [n.outputs[0].name for n in lm_head] == ["logits"]  # the vocab projection stays float
    # every quantized weight follows the contract exactly
    for n in main.nodes:
        if n.op == Op.TernaryLinear:
            assert set(np.unique(q.constants[n.inputs[2]].data)) <= {-1, 0, 1}
    # measured error vs the float model (random-init weights: a worst case, nothing is trained ternary)
    ref = interpret(llama, llama_inputs["main"])["logits"]
    got = interpret(q, llama_inputs["main"])["logits"]
    rel = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
    with capsys.disabled():
        print(f"\nquantize-ternary on tiny Llama: relative logits error {rel:.3f}, "
              f"max|err| {np.abs(got - ref).max():.3g}, top-1 agreement "
              f"{(got.argmax(-1) == ref.argmax(-1)).mean():.2f}")
    assert 1e-4 < rel < 1.0  # lossy, but not garbage
    # weights shrink 4x for quantized linears (f32 -> t2 int8 storage before packing)
    assert q.weight_bytes < llama.weight_bytes
    # skip patterns (fnmatch on weight / output / source names)
    (_, opts), = parse_spec("quantize-ternary{skip=[linear_1*,linear]}")
    partial = quantize_ternary.run(llama, opts).module
    kept = [n.outputs[0].name for n in partial.func("main").nodes if n.op == Op.Linear]
    assert kept == ["linear", "linear_1", "linear_10", "linear_11", "linear_12", "linear_13", "logits"]
    # the contract for one layer: TernaryLinear == semantics applied to its weight
    n = next(n for n in main.nodes if n.op == Op.TernaryLinear)
    w = llama.constants[next(m for m in llama.func("main").nodes if m.outputs == n.outputs).inputs[1]].data
    w_t, s = semantics.ternarize_absmean(w)
    np.testing.assert_array_equal(q.constants[n.inputs[2]].data, w_t)
    assert q.constants[n.inputs[1]].data == s
