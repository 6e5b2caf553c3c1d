"""onnx's own backend node tests, run through the frontend and the reference interpreter.

Every case whose ops are all claimed (SUPPORTED_ONNX_OPS) is one test: it must pass within the
case's own tolerances, or (element types the IR lacks) be rejected with FrontendError, or be
skipped as out of the frontend's opset range (17..23, after retargeting; see
ternc/frontend/conformance.py). No case is skipped for size: the whole suite runs in seconds.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import onnx
import pytest

from ternc.frontend import conformance as C
from ternc.frontend.onnx_import import (
    MAX_OPSET,
    MIN_OPSET,
    SUPPORTED_ONNX_OPS,
    FrontendError,
    UnsupportedOpError,
    from_onnx,
)

CLAIMED = frozenset(SUPPORTED_ONNX_OPS)
CASES = {c.name: c for c in C.collect_cases()}
CLAIMED_CASES = sorted(n for n, c in CASES.items() if set(C.case_ops(c.model)) <= CLAIMED)


@pytest.fixture(scope="module")
def report() -> C.Report:
    return C.run_all()


@pytest.mark.parametrize("name", CLAIMED_CASES)
def test_node_case(name):
    r = C.run_case(CASES[name])
    if r.status == "out_of_range":
        pytest.skip(r.detail)
    assert r.status in ("pass", "unsupported_type"), f"{name} [{', '.join(r.ops)}]: {r.detail}"


def test_suite_is_substantial_and_all_claimed_cases_pass(report):
    ran = report.ran
    assert len(report.results) == len(CASES)
    # Most cases of claimed ops must actually run (not hide behind out-of-range/type skips).
    claimed_total = sum(1 for r in report.results if r.status != "unsupported_op")
    assert len(ran) >= 0.8 * claimed_total, report.counts
    failures = "\n".join(f"{r.name}: {r.detail}" for r in report.failed)
    assert not report.failed, f"{len(report.failed)}/{len(ran)} claimed cases fail:\n{failures}"
    assert report.pass_rate == 1.0


def test_every_claimed_op_is_exercised(report):
    """The claim is honest: each claimed op has at least one onnx case that ran and passed."""
    passed = Counter(op for r in report.results if r.status == "pass" for op in r.ops)
    unexercised = sorted(op for op in CLAIMED if not passed[op])
    assert not unexercised, f"claimed ops without a passing onnx node test: {unexercised}"


def test_transformer_ops_are_claimed_and_pass(report):
    missing = sorted(C.TRANSFORMER_OPS - CLAIMED)
    assert not missing, f"transformer-export ops not claimed by the frontend: {missing}"
    per_op: dict[str, Counter] = defaultdict(Counter)
    for r in report.results:
        for op in r.ops:
            per_op[op][r.status] += 1
    bad = {op: dict(per_op[op]) for op in sorted(C.TRANSFORMER_OPS)
           if per_op[op]["pass"] == 0 or per_op[op]["fail"]}
    assert not bad, f"transformer-export ops without passing cases, or with failures: {bad}"


def test_unclaimed_ops_are_rejected_by_name():
    """A case using an op outside the claimed set is refused with UnsupportedOpError naming the op."""
    checked = 0
    for case in CASES.values():
        ops = C.case_ops(case.model)
        unclaimed = [op for op in ops if op not in CLAIMED]
        v = C.default_opset(case.model)
        if (not unclaimed or unclaimed == ["Dropout"] or v is None or not MIN_OPSET <= v <= MAX_OPSET
                or C._type_problem(case.model)):
            continue
        with pytest.raises(FrontendError) as ei:
            from_onnx(case.model, raise_patterns=False)
        if "invalid ONNX model" in str(ei.value):
            continue  # onnx's own checker refused it first (e.g. ops without a schema at this opset)
        assert isinstance(ei.value, UnsupportedOpError), f"{case.name}: {ei.value}"
        msg = str(ei.value)
        assert any(op.split("::")[-1] in msg for op in unclaimed), f"{case.name}: {msg}"
        checked += 1
    assert checked >= 20


def test_dropout_inference_only():
    """Dropout is converted for inference (identity) but not claimed: training mode is refused."""
    assert "Dropout" not in CLAIMED
    inference = [CASES[n] for n in ("test_dropout_default", "test_dropout_default_mask")]
    for case in inference:
        r = C.run_case(case, CLAIMED | {"Dropout"})
        assert r.status == "pass", r.detail
    for name in ("test_training_dropout", "test_training_dropout_zero_ratio"):
        with pytest.raises(UnsupportedOpError, match="training mode"):
            from_onnx(CASES[name].model, raise_patterns=False)


def test_retargeting_rules():
    """Older/newer-opset cases are retargeted only when the definition or onnx's reference agrees."""
    add = CASES["test_add"]  # Add-14, unchanged through opset 17
    assert C.default_opset(add.model) < MIN_OPSET
    m, target, why = C.usable_model(add)
    assert target == MIN_OPSET and not why and C.default_opset(m) == MIN_OPSET
    assert C.default_opset(add.model) < MIN_OPSET  # the case itself is untouched
    # SpaceToDepth's `mode` attribute only exists from opset 28: cannot be run at 23.
    m, target, why = C.usable_model(CASES["test_spacetodepth_crd_mode_example"])
    assert m is None and "mode" in why


def test_comparison_is_strict():
    """The comparison mirrors onnx's runner: dtype, shape and values all matter."""
    ref = [np.array([1.0, 2.0], np.float32)]
    assert C._outputs_close(ref, [np.array([1.0, 2.0], np.float32)], 1e-3, 1e-7) is None
    assert "dtype" in C._outputs_close(ref, [np.array([1.0, 2.0], np.float64)], 1e-3, 1e-7)
    assert "shape" in C._outputs_close(ref, [np.array([[1.0, 2.0]], np.float32)], 1e-3, 1e-7)
    assert C._outputs_close(ref, [np.array([1.0, 2.01], np.float32)], 1e-3, 1e-7) is not None
    assert C._outputs_close(ref, [], 1e-3, 1e-7) is not None


def test_cli_json(tmp_path, capsys):
    out = tmp_path / "conf.json"
    rc = C.main(["--op", "Trilu", "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and "pass rate" in text and "Trilu" in text
    import json

    data = json.loads(out.read_text())
    assert data["failed"] == 0 and data["passed"] >= 10 and data["onnx_version"] == onnx.__version__


@pytest.mark.parametrize("arch", ["tiny-bitnet", "llama"])
def test_real_exports_use_only_claimed_passing_ops(arch, onnx_export, report):
    """Ops of actual torch exports (conftest's tiny models; tiny-bitnet adds the bit-unpacking ops)."""
    model = onnx.load(str(onnx_export(arch, with_past=False)), load_external_data=False)
    used = set(C.case_ops(model))
    assert used <= CLAIMED, f"{arch} export uses unclaimed ops {sorted(used - CLAIMED)}"
    assert used <= C.TRANSFORMER_OPS | {"BitShift", "BitwiseAnd", "BitwiseOr"}, \
        f"TRANSFORMER_OPS is out of date: {arch} also uses {sorted(used - C.TRANSFORMER_OPS)}"
    passed = Counter(op for r in report.results if r.status == "pass" for op in r.ops)
    assert all(passed[op] for op in used), {op: passed[op] for op in used}


def test_onnx_attention_is_primitive_not_high_level():
    """ONNX's Attention maps to the primitive Op.OnnxAttention (the name `Attention` is the raised op)."""
    from ternc.ir.ops import Op

    assert "Attention" in CLAIMED and "OnnxAttention" not in CLAIMED
    case = CASES["test_attention_4d_gqa_with_past_and_present"]
    module = from_onnx(case.model, raise_patterns=False)
    assert [n.op for n in module.func("main").nodes] == [Op.OnnxAttention]
    assert C.run_case(case).status == "pass"
