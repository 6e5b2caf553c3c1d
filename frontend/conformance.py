"""External conformance: onnx's own backend node tests through the frontend and the interpreter.

The onnx package ships the generators of its backend node tests (`onnx.backend.test.case.node`);
each case is a small model plus input and expected output arrays and tolerances. This module
generates them (in-process, a few seconds), sorts every case into one of these classes, and runs
the runnable ones through `from_onnx(model)` (pattern raising and its load-time check on, as in
`ternc.load`; `--no-raising` converts only) + `ternc.ir.interpret`:

  pass / fail        every op of the case is claimed (SUPPORTED_ONNX_OPS), its element types are
                     ones the IR has, and its default-domain opset is usable (see below); compared
                     like onnx's runner: same shape, same dtype, `assert_allclose(rtol, atol)`
                     with the case's own tolerances (onnx's default: rtol=1e-3, atol=1e-7).
  unsupported_op     some node's op is not claimed (or is in a non-default domain).
  unsupported_type   claimed ops, but a value is a sequence/optional/map or has an element type
                     the IR lacks (float8, int4, complex, ...). The frontend must reject these with
                     FrontendError; a crash or a silent conversion counts as a failure.
  out_of_range       claimed ops and types, but the case's opset is outside the frontend's 17..23
                     and cannot be retargeted (below).

Opset handling. onnx writes each case at the `since_version` of its op, so most cases use an
opset outside the frontend's supported 17..23 (e.g. Add is at 14, Reshape at 25). Such a case is
*retargeted* to the nearest supported opset (17 or 23; only its default-domain opset import is
rewritten) when that keeps its meaning:
  * the checker (with type inference) accepts the model at the target opset (so every attribute,
    input and element type exists there), and
  * either every node resolves to the very same schema (same since_version) at both opsets, i.e.
    the op definitions did not change in between, or onnx's own reference evaluator, run at the
    target opset, reproduces the case's expected outputs within the case's tolerances.
Retargeted cases are counted and listed separately from native ones. MIN_OPSET/MAX_OPSET of the
frontend are not changed.

CLI: `python -m ternc.frontend.conformance [--json OUT] [--all] [--op OP ...]`.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import io
import json
import sys
import time
import warnings
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from .onnx_import import MAX_OPSET, MIN_OPSET, ONNX_DTYPES, SUPPORTED_ONNX_OPS, FrontendError

# Ops the transformer exports (HF Llama / BitNet / SmolLM style, torch.onnx) use; every one must be
# claimed and pass its cases.
TRANSFORMER_OPS = frozenset({
    "Mul", "MatMul", "Slice", "Reshape", "Add", "Unsqueeze", "Concat", "Transpose", "Expand", "Shape", "Pow",
    "ReduceMean", "Sqrt", "Reciprocal", "GatherND", "Neg", "Where", "Sub", "Equal", "Cast", "Max", "And",
    "Softmax", "IsNaN", "Sigmoid", "Squeeze", "Gather", "Range", "Not", "CumSum", "LessOrEqual", "Cos", "Sin",
    "Relu", "Round", "Clip", "ReduceMax", "Div", "Constant", "ConstantOfShape", "Trilu", "ScatterND", "Greater",
    "Less", "Tanh", "Erf", "Exp", "Identity", "Split", "Abs",
})

DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass
class CaseResult:
    name: str
    ops: list[str]
    opset: int | None
    status: str  # pass | fail | unsupported_op | unsupported_type | out_of_range
    detail: str = ""
    retargeted: int | None = None  # the opset the case ran at, when it was rewritten


@dataclass
class Report:
    results: list[CaseResult]
    claimed_ops: list[str]
    seconds: float = 0.0
    counts: dict = field(default_factory=dict)

    def __post_init__(self):
        self.counts = dict(Counter(r.status for r in self.results))

    @property
    def ran(self) -> list[CaseResult]:
        return [r for r in self.results if r.status in ("pass", "fail")]

    @property
    def failed(self) -> list[CaseResult]:
        return [r for r in self.results if r.status == "fail"]

    @property
    def pass_rate(self) -> float:
        ran = self.ran
        return sum(r.status == "pass" for r in ran) / len(ran) if ran else 0.0

    def unsupported_ops(self) -> list[str]:
        """Ops that appear in onnx's cases but are not claimed (with domain prefix if not default)."""
        seen = {op for r in self.results for op in r.ops}
        return sorted(op for op in seen if op not in set(self.claimed_ops))

    def per_op(self) -> dict[str, Counter]:
        out: dict[str, Counter] = defaultdict(Counter)
        for r in self.results:
            for op in r.ops:
                out[op][r.status] += 1
        return out

    def to_json(self) -> dict:
        return {
            "onnx_version": onnx.__version__,
            "frontend_opsets": [MIN_OPSET, MAX_OPSET],
            "total_cases": len(self.results),
            "counts": self.counts,
            "claimed_cases": len(self.ran),
            "passed": self.counts.get("pass", 0),
            "failed": self.counts.get("fail", 0),
            "pass_rate": self.pass_rate,
            "retargeted": sum(r.retargeted is not None for r in self.ran),
            "claimed_ops": self.claimed_ops,
            "unsupported_ops": self.unsupported_ops(),
            "seconds": round(self.seconds, 2),
            "cases": [asdict(r) for r in self.results],
        }


# ------------------------------------------------------------------------------ collecting
@functools.lru_cache(maxsize=1)
def collect_cases() -> tuple:
    """All of onnx's node test cases (generated once per process; onnx's collector is not re-entrant)."""
    from onnx.backend.test.case import node as node_cases

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        with np.errstate(all="ignore"):
            cases = node_cases.collect_testcases()
    return tuple(c for c in cases if c.kind == "node" and c.model is not None and c.data_sets)


def _all_nodes(graph: onnx.GraphProto) -> Iterable[onnx.NodeProto]:
    for n in graph.node:
        yield n
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from _all_nodes(g)


def _op_name(n: onnx.NodeProto) -> str:
    return n.op_type if n.domain in DEFAULT_DOMAINS else f"{n.domain}::{n.op_type}"


def case_ops(model: onnx.ModelProto) -> list[str]:
    return sorted({_op_name(n) for n in _all_nodes(model.graph)})


def default_opset(model: onnx.ModelProto) -> int | None:
    for o in model.opset_import:
        if o.domain in DEFAULT_DOMAINS:
            return int(o.version)
    return None


def _type_problem(model: onnx.ModelProto) -> str | None:
    """Why the IR cannot represent some value of the case (None when it can)."""
    g = model.graph

    def check_type(tp: onnx.TypeProto, what: str) -> str | None:
        kind = tp.WhichOneof("value")
        if kind is None:
            return None
        if kind != "tensor_type":
            return f"{what} is a {kind.replace('_type', '')}, not a tensor"
        if tp.tensor_type.elem_type and tp.tensor_type.elem_type not in ONNX_DTYPES:
            return f"{what} has element type {onnx.TensorProto.DataType.Name(tp.tensor_type.elem_type)}"
        return None

    for vi in list(g.input) + list(g.output) + list(g.value_info):
        p = check_type(vi.type, f"value {vi.name!r}")
        if p:
            return p
    for t in g.initializer:
        if t.data_type not in ONNX_DTYPES:
            return f"initializer {t.name!r} has element type {onnx.TensorProto.DataType.Name(t.data_type)}"
    for n in _all_nodes(g):
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type not in ONNX_DTYPES:
                return f"{n.op_type} attribute {a.name!r} has element type " \
                       f"{onnx.TensorProto.DataType.Name(a.t.data_type)}"
            if a.type == onnx.AttributeProto.SPARSE_TENSOR:
                return f"{n.op_type} attribute {a.name!r} is a sparse tensor"
            if (a.name in ("to", "dtype", "output_dtype", "precision") and a.type == onnx.AttributeProto.INT
                    and a.i and a.i not in ONNX_DTYPES):
                return f"{n.op_type} {a.name}={onnx.TensorProto.DataType.Name(a.i)}"
    return None


# ------------------------------------------------------------------------------ opset retargeting
def _with_opset(model: onnx.ModelProto, version: int) -> onnx.ModelProto:
    m = copy.deepcopy(model)
    for o in m.opset_import:
        if o.domain in DEFAULT_DOMAINS:
            o.version = version
    need = onnx.helper.find_min_ir_version_for(list(m.opset_import), ignore_unknown=True)
    m.ir_version = max(m.ir_version, need)
    return m


def _schema_since(op: str, domain: str, version: int) -> int | None:
    try:
        return onnx.defs.get_schema(op, version, domain).since_version
    except Exception:
        return None


def _same_schema(n: onnx.NodeProto, v: int, target: int) -> bool:
    if n.domain not in DEFAULT_DOMAINS:
        return True
    a = _schema_since(n.op_type, "", v)
    return a is not None and a == _schema_since(n.op_type, "", target)


def _check(model: onnx.ModelProto) -> str | None:
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:
        return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return None


def _outputs_close(ref: Sequence[np.ndarray], out: Sequence, rtol: float, atol: float) -> str | None:
    """onnx's runner comparison (Runner.assert_similar_outputs); None when close, else the first error line."""
    try:
        np.testing.assert_equal(len(out), len(ref), err_msg="number of outputs")
        for i, (o, r) in enumerate(zip(out, ref)):
            o, r = np.asarray(o), np.asarray(r)
            np.testing.assert_array_equal(o.shape, r.shape, err_msg=f"output {i} has incorrect shape")
            if r.dtype == object:
                np.testing.assert_array_equal(o, r, err_msg=f"output {i}")
                continue
            np.testing.assert_equal(o.dtype, r.dtype, err_msg=f"output {i} dtype")
            rt = rtol
            if o.dtype.name == "bfloat16":
                rt = max(rtol, 2**-6)
                o, r = o.astype(np.float32), r.astype(np.float32)
            np.testing.assert_allclose(o, r, rtol=rt, atol=atol, err_msg=f"output {i}")
    except AssertionError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        return " | ".join(lines[:4])
    return None


def _arrays(items) -> list:
    return [numpy_helper.to_array(x) if isinstance(x, onnx.TensorProto) else x for x in items]


def _reference_agrees(model: onnx.ModelProto, case) -> str | None:
    """None when onnx's ReferenceEvaluator (at the model's opset) reproduces the expected outputs."""
    from onnx.reference import ReferenceEvaluator

    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            sess = ReferenceEvaluator(model)
            names = [i.name for i in model.graph.input]
            for inputs, expected in case.data_sets:
                got = sess.run(None, dict(zip(names, _arrays(inputs))))
                err = _outputs_close(_arrays(expected), got, case.rtol, case.atol)
                if err:
                    return f"reference evaluator disagrees at opset {default_opset(model)}: {err}"
    except Exception as e:
        return f"reference evaluator cannot run it at opset {default_opset(model)}: " \
               f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


def usable_model(case) -> tuple[onnx.ModelProto | None, int | None, str]:
    """(model to run, retargeted opset or None, reason when unusable)."""
    model, v = case.model, default_opset(case.model)
    if v is None:
        return None, None, "no default-domain opset import"
    if MIN_OPSET <= v <= MAX_OPSET:
        return model, None, ""
    target = MIN_OPSET if v < MIN_OPSET else MAX_OPSET
    m = _with_opset(model, target)
    err = _check(m)
    if err:
        return None, None, f"opset {v}, invalid at opset {target}: {err}"
    if not all(_same_schema(n, v, target) for n in _all_nodes(model.graph)):
        err = _reference_agrees(m, case)
        if err:
            return None, None, f"opset {v}: {err}"
    return m, target, ""


# ------------------------------------------------------------------------------ running
def run_model(model: onnx.ModelProto, inputs: Sequence[np.ndarray], raising: bool = True) -> list[np.ndarray]:
    """Frontend + reference interpreter; outputs in graph-output order. With `raising` (the default, as
    `ternc.load` does) pattern raising and its load-time differential check run too, so a case the
    check wrongly rejects fails here."""
    from ..ir import interpret
    from .onnx_import import from_onnx

    module = from_onnx(model, raise_patterns=raising)
    fn = module.func("main")
    if len(fn.params) != len(inputs):
        raise FrontendError(f"module takes {len(fn.params)} inputs, the case has {len(inputs)}")
    with np.errstate(all="ignore"):
        res = interpret(module, {p.name: a for p, a in zip(fn.params, inputs)})
    return [res[r] for r in fn.results]


def run_case(case, claimed: frozenset[str] | set[str] | None = None, raising: bool = True) -> CaseResult:
    claimed = frozenset(SUPPORTED_ONNX_OPS if claimed is None else claimed)
    ops = case_ops(case.model)
    v = default_opset(case.model)
    res = CaseResult(case.name, ops, v, "unsupported_op")
    missing = [op for op in ops if op not in claimed]
    if missing:
        res.detail = "not claimed: " + ", ".join(missing)
        return res
    tp = _type_problem(case.model)
    if tp:
        # The IR cannot hold it: the frontend must say so (FrontendError), not crash or convert wrongly.
        res.status, res.detail = "unsupported_type", tp
        try:
            m = case.model
            if v is not None and not MIN_OPSET <= v <= MAX_OPSET:
                m = _with_opset(m, MIN_OPSET if v < MIN_OPSET else MAX_OPSET)
            run_model(m, _arrays(case.data_sets[0][0]), raising)
        except FrontendError:
            return res
        except Exception as e:
            res.status, res.detail = "fail", f"{tp}, and the frontend did not reject it cleanly: " \
                                             f"{type(e).__name__}: {_first_line(e)}"
            return res
        res.status, res.detail = "fail", f"{tp}, but the frontend accepted it"
        return res
    model, target, why = usable_model(case)
    if model is None:
        res.status, res.detail = "out_of_range", why
        return res
    res.retargeted = target
    try:
        for inputs, expected in case.data_sets:
            out = run_model(model, _arrays(inputs), raising)
            err = _outputs_close(_arrays(expected), out, case.rtol, case.atol)
            if err:
                res.status, res.detail = "fail", err
                return res
    except Exception as e:
        res.status, res.detail = "fail", f"{type(e).__name__}: {_first_line(e)}"
        return res
    res.status = "pass"
    return res


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0][:300] if s else ""


def run_all(claimed: Iterable[str] | None = None, ops: Iterable[str] | None = None,
            names: Iterable[str] | None = None, raising: bool = True) -> Report:
    """Run (or classify) every case; `ops`/`names` restrict to cases using those ops / with those names."""
    claimed_set = frozenset(SUPPORTED_ONNX_OPS if claimed is None else claimed)
    want_ops = set(ops) if ops else None
    want_names = set(names) if names else None
    t0 = time.perf_counter()
    results = []
    for case in collect_cases():
        if want_names is not None and case.name not in want_names:
            continue
        if want_ops is not None and not (set(case_ops(case.model)) & want_ops):
            continue
        results.append(run_case(case, claimed_set, raising))
    return Report(results, sorted(claimed_set), time.perf_counter() - t0)


# ------------------------------------------------------------------------------ CLI
def format_report(rep: Report, show_all: bool = False) -> str:
    lines = []
    c = rep.counts
    ran = rep.ran
    rt = sum(r.retargeted is not None for r in ran)
    lines.append(f"onnx {onnx.__version__} backend node tests through ternc (frontend opsets "
                 f"{MIN_OPSET}..{MAX_OPSET}), {rep.seconds:.1f} s")
    lines.append(f"  total cases           {len(rep.results)}")
    lines.append(f"  claimed (ran)         {len(ran)}  ({len(ran) - rt} native opset, {rt} retargeted)")
    lines.append(f"    passed              {c.get('pass', 0)}")
    lines.append(f"    failed              {c.get('fail', 0)}")
    lines.append(f"    pass rate           {100 * rep.pass_rate:.2f}%")
    lines.append(f"  unsupported op        {c.get('unsupported_op', 0)}")
    lines.append(f"  unsupported type      {c.get('unsupported_type', 0)}  (rejected with FrontendError)")
    lines.append(f"  opset out of range    {c.get('out_of_range', 0)}")
    lines.append(f"  claimed ops           {len(rep.claimed_ops)}")
    lines.append("")
    lines.append(f"{'op':<28}{'pass':>6}{'fail':>6}{'type':>6}{'range':>7}")
    per_op = rep.per_op()
    for op in sorted(o for o in per_op if o in set(rep.claimed_ops)):
        k = per_op[op]
        lines.append(f"{op:<28}{k['pass']:>6}{k['fail']:>6}{k['unsupported_type']:>6}{k['out_of_range']:>7}")
    if rep.failed:
        lines.append("")
        lines.append("FAILED:")
        for r in rep.failed:
            lines.append(f"  {r.name} [{','.join(r.ops)} @opset {r.opset}"
                         f"{'->' + str(r.retargeted) if r.retargeted else ''}]: {r.detail}")
    lines.append("")
    lines.append("unsupported ops (in onnx's cases, not claimed): " + ", ".join(rep.unsupported_ops()))
    claimed_ops = set(rep.claimed_ops)
    no_cases = sorted(op for op in claimed_ops if not per_op.get(op, Counter())["pass"]
                      and not per_op.get(op, Counter())["fail"])
    if no_cases:
        lines.append("claimed ops without a runnable case: " + ", ".join(no_cases))
    if show_all:
        lines.append("")
        lines.append("cases not run:")
        for r in rep.results:
            if r.status not in ("pass", "fail", "unsupported_op"):
                lines.append(f"  {r.status:<16} {r.name}: {r.detail}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ternc.frontend.conformance", description=__doc__.split("\n")[0])
    ap.add_argument("--json", metavar="OUT", help="write the full report (every case) as JSON")
    ap.add_argument("--op", action="append", help="only cases that use this op (repeatable)")
    ap.add_argument("--all", action="store_true", help="also list every case that was not run and why")
    ap.add_argument("--no-raising", action="store_true",
                    help="convert only (no pattern raising, so no load-time raising check)")
    args = ap.parse_args(argv)
    rep = run_all(ops=args.op, raising=not args.no_raising)
    print(format_report(rep, show_all=args.all))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rep.to_json(), f, indent=1)
        print(f"\nwrote {args.json}")
    return 0 if not rep.failed else 1


if __name__ == "__main__":
    sys.exit(main())
