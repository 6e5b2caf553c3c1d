"""ir/graph.py: the graph view and rewriter the pattern matchers share."""

import numpy as np

from ternc.ir import parse
from ternc.ir.graph import Builder, Graph, fresh, rewrite
from ternc.ir.ops import Op
from ternc.ir.types import DType, TensorType

SRC = """
module @m {
  const @two: f32[] = [2.0]
  const @v: f32[2] = [1.0, 2.0]
  func @main(%x: f32[2]) -> (%y, %b) {
    %a: f32[2] = Mul(%x, @two)
    %b: f32[2] = Neg(%a)
    %c: f32[2] = Add(%a, @v)
    %y: f32[2] = Relu(%c)
    return %y, %b
  }
}
"""


def test_view_answers_matcher_questions():
    m = parse(SRC)
    g = Graph(m.func("main"), m.constants)
    assert g.node("a").op == Op.Mul and g.node("a", Op.Add) is None and g.node("x") is None
    assert g.n_users("a") == 2 and not g.sole_use("a")
    assert g.sole_use("c") and g.sole_producer("c", Op.Add).outputs[0].name == "c"
    assert not g.sole_use("b")  # a result: a rewrite must keep it
    assert g.scalar("two") == 2.0 and g.scalar("v") is None and g.const("x") is None
    np.testing.assert_array_equal(g.const("v"), [1.0, 2.0])
    assert g.back_to("y", {Op.Mul}).outputs[0].name == "a"
    assert g.back_to("y", {Op.Sub}) is None
    assert g.types["c"] == TensorType(DType.F32, (2,))


def test_builder_fresh_names_and_rewrite_drops_dead_nodes():
    m = parse(SRC)
    fn = m.func("main")
    taken = {"a", "a_1"}
    assert fresh("a", taken) == "a_2" and "a_2" in taken
    consts = dict(m.constants)
    b = Builder(consts, set(consts) | {o.name for n in fn.nodes for o in n.outputs})
    k = b.const("two", np.float32(3.0))
    assert k == "two_1" and consts[k].data == 3.0
    nodes = []
    out = b.emit(nodes, Op.Sub, ["x", k], "c", TensorType(DType.F32, (2,)))
    assert out == "c_1" and nodes[0].inputs == ("x", "two_1")
    # replace Relu(c) by Relu(c_1): Add(a, v) dies, Mul(a) stays (Neg(a) is a result)
    relu = fn.nodes[3]
    new = relu.__class__(relu.op, (out,), relu.outputs, relu.attrs, relu.origin)
    fn2 = rewrite(fn.with_nodes(list(fn.nodes[:3]) + nodes + [relu]), {id(relu): new})
    assert [n.op for n in fn2.nodes] == [Op.Mul, Op.Neg, Op.Sub, Op.Relu]


def test_rewrite_moves_a_reader_after_its_raised_producer():
    """A raised node replacing a pattern root may produce a value an earlier node reads (TorchScript
    exports take Shape of the concatenated KV before the attention MatMul): rewrite restores the order,
    moving as little as possible."""
    from ternc.ir.core import Node, Value
    from ternc.ir.graph import stable_topological_order

    m = parse(SRC)
    fn = m.func("main")
    a, b, c, y = fn.nodes
    # Neg reads %c, produced later: only Neg moves (after Add), the rest keep their order
    neg = Node(Op.Neg, ("c",), b.outputs, b.attrs, b.origin)
    assert [n.op for n in stable_topological_order([a, neg, c, y])] == [Op.Mul, Op.Add, Op.Neg, Op.Relu]
    fn2 = rewrite(fn, {id(b): neg})
    assert [n.op for n in fn2.nodes] == [Op.Mul, Op.Add, Op.Neg, Op.Relu]
    # a cycle is left as it came (the verifier reports it)
    loop = Node(Op.Neg, ("y",), (Value("a", TensorType(DType.F32, (2,))),))
    assert stable_topological_order([loop, c, y]) == [loop, c, y]
