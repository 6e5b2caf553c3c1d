"""KV eviction (KVEvict): StreamingLLM (sinks + window) and H2O (heavy hitters), after attention."""

from __future__ import annotations

from tvm import relax, te, tirx

from ....ir.ops import Op
from .attention import _attend
from .common import _dim_min, _simplify, impl


@impl(Op.KVEvict)
def _kv_evict(L, node, args):
    """policy=streaming: attention over past + new, then the cache keeps the first `sinks` and the
    most recent budget - sinks tokens (kvevict.streaming_keep) as two slices."""
    out, k_all, v_all, p = _attend(L, node, args)
    if node.attr("policy") == "h2o":
        return _h2o_evict(L, node, args, out, k_all, v_all, p)
    sinks, window = int(node.attr("sinks", 0)), int(node.attr("budget", 0)) - int(node.attr("sinks", 0))

    def keep(t):
        n = L.shape_of(t)[2]
        a = _dim_min(n, sinks)
        b = max(a, n - window) if isinstance(n, int) else _simplify(tirx.max(a, n - window))
        head = L.emit(relax.op.strided_slice(t, [2], [0], [a], assume_inbound=True))
        tail = L.emit(relax.op.strided_slice(t, [2], [b], [n], assume_inbound=True))
        return L.emit(relax.op.concat([head, tail], axis=2))

    return [out, keep(k_all), keep(v_all)]


def _h2o_evict(L, node, args, out, k_all, v_all, p):
    """policy=h2o (ir/interp.py): acc = state (zeros for new tokens) + this call's attention
    probabilities summed over each GQA group and the query rows; keep per KV head the `sinks` first,
    `recent` newest and highest-acc others, budget in all (ties -> lower index), ascending ->
    (out, K, V, acc) gathered at the kept indices. Ranking and compaction are O(n^2) per head."""
    b, hq, sq, n = L.shape_of(p)
    hkv = L.shape_of(k_all)[1]
    state = L.tensor(args[5]) if len(args) > 5 and args[5] is not None else None
    budget, recent, sinks = int(node.attr("budget")), int(node.attr("recent")), int(node.attr("sinks", 0))
    kk = _dim_min(n, budget)
    acc = L.bb.emit_te(_h2o_acc_te, p, state, hq // hkv, primfunc_name_hint="h2o_accumulate")
    sel = L.bb.emit_te(_h2o_select_te, acc, kk, budget, recent, sinks, primfunc_name_hint="h2o_select")
    gk = L.bb.emit_te(_gather_tokens_te, k_all, sel, primfunc_name_hint="h2o_gather")
    gv = L.bb.emit_te(_gather_tokens_te, v_all, sel, primfunc_name_hint="h2o_gather")
    ga = L.bb.emit_te(lambda a, ix: te.compute(ix.shape, lambda bb, h, o: a[bb, h, ix[bb, h, o]], name="h2o_acc_keep"),
                      acc, sel, primfunc_name_hint="h2o_gather_acc")
    return [out, gk, gv, ga]


def _h2o_acc_te(p, state, group: int):
    """acc[b, g, j] = sum_i sum_(q heads of group g) p[b, q, i, j] (+ state[b, g, j] for old tokens)."""
    b, hq, sq, n = p.shape
    rg = te.reduce_axis((0, group), name="rg")
    grouped = te.compute((b, hq // group, sq, n), lambda bb, g, i, j: te.sum(p[bb, g * group + rg, i, j], axis=rg),
                         name="h2o_group")
    ri = te.reduce_axis((0, sq), name="ri")
    fresh = te.compute((b, hq // group, n), lambda bb, g, j: te.sum(grouped[bb, g, ri, j], axis=ri), name="h2o_fresh")
    if state is None:
        return fresh
    n_old = state.shape[2]
    return te.compute(fresh.shape, lambda bb, g, j: fresh[bb, g, j] + tirx.Select(
        j < n_old, state[bb, g, tirx.min(j, n_old - 1)], tirx.const(0.0, "float32")), name="h2o_acc")


def _h2o_select_te(acc, kk, budget: int, recent: int, sinks: int):
    """Ascending indices [b, g, kk] of the kept tokens (kvevict.h2o_keep): forced (first `sinks`,
    last `recent`) rank above all, then by acc descending, ties to the lower index; when n <= budget
    all are kept (kk = n)."""
    b, g, n = acc.shape
    inf = tirx.const(float("inf"), "float32")

    def score(bb, h, j):
        forced = tirx.any(j < sinks, j >= n - recent)
        return tirx.Select(forced, inf, acc[bb, h, j])

    ri = te.reduce_axis((0, n), name="ri")
    rank = te.compute(acc.shape, lambda bb, h, j: te.sum(tirx.Select(tirx.any(
        score(bb, h, ri) > score(bb, h, j), tirx.all(score(bb, h, ri) == score(bb, h, j), ri < j)),
        tirx.const(1, "int64"), tirx.const(0, "int64")), axis=ri), name="h2o_rank")
    rp = te.reduce_axis((0, n), name="rp")
    before = te.compute(acc.shape, lambda bb, h, j: te.sum(tirx.Select(tirx.all(rp < j, rank[bb, h, rp] < kk),
                                                                     tirx.const(1, "int64"), tirx.const(0, "int64")),
                                                          axis=rp), name="h2o_prefix")
    rs = te.reduce_axis((0, n), name="rs")
    return te.compute((b, g, kk), lambda bb, h, o: te.sum(tirx.Select(
        tirx.all(rank[bb, h, rs] < kk, before[bb, h, rs] == o.astype("int64")), rs.astype("int64"),
        tirx.const(0, "int64")), axis=rs), name="h2o_keep")


def _gather_tokens_te(x, sel):
    """x[b, h, sel[b, h, o], :] -> [b, h, kk, d]."""
    b, h, kk = sel.shape
    return te.compute((b, h, kk, x.shape[3]), lambda bb, hh, o, c: x[bb, hh, sel[bb, hh, o], c], name="gather_tokens")
