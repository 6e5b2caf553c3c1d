"""The load-time raising check (issue 14 items 4-5, issue 15's check): runs only when something was
raised, draws inputs the graph can run on, stays small in memory, and falls back to the primitive graph
(saying why) on a mismatch or an exception."""

from __future__ import annotations

import resource
import time
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import ternc
from ternc.frontend import conformance as C
from ternc.frontend.onnx_import import from_onnx
from ternc.frontend.raising import CHECK_INPUT_BYTES, differential_check, random_inputs
from ternc.ir import Op


def _model(nodes, inputs, outputs, inits=(), opset=18):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def test_scalar_input_loads_and_stays_scalar():
    m = _model([helper.make_node("Neg", ["x"], ["y"])], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])])
    mod = ternc.load(m)
    assert mod.meta["raised"] == {} and "raising" not in mod.meta
    assert random_inputs(mod.func("main"))["x"].shape == ()
    assert ternc.interpret(mod, {"x": np.float32(2.0)})["y"] == -2.0


def test_nothing_raised_runs_nothing_even_for_a_huge_input():
    """A valid one-node model with a 1 GiB input loads at once (the check used to allocate it in f64)."""
    m = _model([helper.make_node("Relu", ["x"], ["y"])],
               [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1 << 28])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1 << 28])])
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    mod = ternc.load(m)
    assert time.perf_counter() - t0 < 5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 200 * 1024  # KiB
    assert mod.meta["raised"] == {}


def _linear_model(n: int):
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3], np.arange(12, dtype=np.float32).tolist())
    return _model([helper.make_node("MatMul", ["x", "w"], ["y"])],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, 4])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, 3])], [w])


def test_raised_small_model_is_checked_and_kept():
    mod = ternc.load(_linear_model(7))
    assert mod.meta["raised"] == {"Linear": 1} and "raising" not in mod.meta
    assert [n.op for n in mod.func("main").nodes] == [Op.Linear]


def test_huge_declared_input_is_never_allocated():
    """Something raised, but the declared input is over the check's budget: the primitive graph is kept
    and meta says why; nothing near the declared size is allocated."""
    n = (CHECK_INPUT_BYTES // 16) * 64  # 64x the budget
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.warns(UserWarning, match="keeping the primitive graph"):
        mod = ternc.load(_linear_model(n))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 200 * 1024
    assert "check budget" in mod.meta["raising"]
    assert [n.op for n in mod.func("main").nodes] == [Op.MatMul]


def test_exception_in_raised_graph_falls_back(monkeypatch):
    """An exception while running the raised graph is a failed check (primitive graph kept), not a load error."""
    from ternc.ir import interp

    real = interp.Interpreter.run

    def flaky(self, entry, inputs):
        if any(n.op == Op.Linear for n in self.module.func(entry).nodes):
            raise RuntimeError("boom")
        return real(self, entry, inputs)

    monkeypatch.setattr(interp.Interpreter, "run", flaky)
    with pytest.warns(UserWarning, match="keeping the primitive graph"):
        mod = ternc.load(_linear_model(3))
    assert "the raised graph fails where the primitive one runs (RuntimeError: boom)" in mod.meta["raising"]
    assert [n.op for n in mod.func("main").nodes] == [Op.MatMul]


def test_nan_in_different_places_is_a_mismatch():
    from ternc.frontend.raising import _compare

    assert _compare({"y": np.array([1.0, np.nan])}, {"y": np.array([1.0, 2.0])}, 1e-4)
    assert _compare({"y": np.array([1.0, np.nan])}, {"y": np.array([1.0, np.nan])}, 1e-4) is None
    assert _compare({"y": np.array([np.inf])}, {"y": np.array([-np.inf])}, 1e-4)


CASES = {c.name: c for c in C.collect_cases()}


def test_drawn_inputs_run_every_claimed_node_test():
    """For every onnx node-test model the frontend claims, the check's drawn inputs (indices in range,
    axes distinct, reshape targets that fit, scalars as scalars) let the graph run: were something
    raised in it, the check could verify it instead of rejecting the model."""
    bad, ran = [], 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, case in CASES.items():
            if not set(C.case_ops(case.model)) <= set(C.SUPPORTED_ONNX_OPS) or C._type_problem(case.model):
                continue
            model, _, _ = C.usable_model(case)
            if model is None:
                continue
            mod = from_onnx(model, raise_patterns=False)
            ran += 1
            why = differential_check(mod, mod)
            if why:
                bad.append(f"{name}: {why}")
    assert ran > 1000
    assert not bad, "\n".join(bad[:20])


def test_conformance_runs_with_the_raising_check():
    """`python -m ternc.frontend.conformance` loads like ternc.load (raising + check on)."""
    r = C.run_case(CASES["test_gather_0"])
    assert r.status == "pass", r.detail
    r = C.run_case(CASES["test_clip_default_min"])
    assert r.status == "pass", r.detail


def _export(lm, path, **kw):
    import torch

    from ternc.frontend.torch_export import _quiet

    ids = torch.randint(0, 128, (1, 7), generator=torch.Generator().manual_seed(0))
    with _quiet(), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(lm, (ids, torch.ones(1, 7, dtype=torch.int64)), str(path), **kw)
    return path


def test_sliding_window_beyond_the_default_lengths_is_caught(tmp_path):
    """Mistral with a window of 8: the check's default 5 tokens stay inside the window, where plain causal
    attention agrees; the check must also run past the window (found from the mask's constants) and keep
    the primitive graph, which is exact."""
    torch = pytest.importorskip("torch")
    from transformers import MistralConfig, MistralForCausalLM

    from ternc.frontend.raising import _window_hint
    from ..conftest import TINY

    import fcntl
    import os

    from ..conftest import CACHE

    torch.manual_seed(0)
    lm = MistralForCausalLM(MistralConfig(**TINY, sliding_window=8)).eval()
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / "mistral-window8.onnx"  # exported once per machine (the dynamo export takes a while)
    with open(CACHE / "mistral-window8.onnx.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            from ternc.frontend.torch_export import export_decoder

            export_decoder(lm, tmp_path / "m.onnx")
            os.replace(tmp_path / "m.onnx", path)
    plain = from_onnx(path, raise_patterns=False)
    assert _window_hint(plain.func("main"), plain) == 8
    # The attention matcher finds the window in the mask and refuses it by name (ternc's Attention is
    # plain causal); the raising check's run past the window is the second line of defence.
    from ternc.frontend.onnx_import import FrontendError

    with pytest.raises(FrontendError, match=r"sliding-window attention \(window 8\) is not supported"):
        ternc.load(path)
    # without raising, the primitive graph is exact past the window
    ids = np.random.default_rng(0).integers(0, 128, (1, 14))
    got = ternc.interpret(plain, {"input_ids": ids})["logits"]
    with torch.no_grad():
        ref = lm(input_ids=torch.as_tensor(ids)).logits.numpy()
    assert np.max(np.abs(got - ref)) < 1e-4 * np.max(np.abs(ref)) + 1e-5


def test_torchscript_export_with_mask_loads(tmp_path):
    """A legacy TorchScript export (attention_mask whose dims are named by dynamic_axes) used to fail in
    the check (every unknown dim drawn as 2), then in the attention raising (the transposed,
    head-expanded K) and the decoder setup ("cannot find the rotary position Range"). Now the mask is
    bound to ones, attention is raised and kept by the check, and the model generates what torch does."""
    torch = pytest.importorskip("torch")
    from transformers import LlamaConfig, LlamaForCausalLM

    from ternc.frontend.torch_export import export_decoder_torchscript, torch_greedy

    from ..conftest import TINY

    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(**TINY)).eval()
    path = export_decoder_torchscript(lm, tmp_path / "llama-ts.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mod = ternc.load(path)
    assert "raising" not in mod.meta and mod.meta["raised"]["Attention"] == 2
    assert "ones [batch, seq]" in mod.meta["bound_inputs"]["attention_mask"]
    ids = np.random.default_rng(1).integers(0, 128, (1, 6))
    got = ternc.interpret(mod, {"input_ids": ids})["logits"]
    with torch.no_grad():
        ref = lm(input_ids=torch.as_tensor(ids)).logits.numpy()
    assert np.max(np.abs(got - ref)) < 1e-4 * np.max(np.abs(ref)) + 1e-5
    np.testing.assert_array_equal(ternc.generate(mod, [3, 17, 42], 8), torch_greedy(lm, [3, 17, 42], 8))
    with pytest.raises(Exception, match=r"unknown inputs \['attention_mask'\]; %attention_mask was bound at load"):
        ternc.interpret(mod, {"input_ids": ids, "attention_mask": np.ones((1, 6), np.int64)})
