"""Fuzzing the pass-pipeline spec parser (and, for a fifth of the specs that parse, running the
pipeline on a tiny decoder): grammar-shaped specs with hostile values, mutated valid specs, and
arbitrary text. Invariant: a ternc error (SpecError, KVPassError, ...) or a pipeline that runs."""

from __future__ import annotations

import pytest
from hypothesis import strategies as st

from ternc.passes.registry import REGISTRY, option_fields

from .harness import corpus_files, examples, fuzz

VALUES = ["0", "1", "-1", "2", "4", "8", "32", "0.5", "1e-320", "1e308", "inf", "nan", "-0", "0x10", "true", "false",
          "tl2", "i2", "t2", "streaming", "h2o", "lazyllm", "linear", "step", "99999999999999999999", "", "[1,2]",
          "[]", "[0.5,nan]", "é", "{", "}", ",", "="]


@st.composite
def _grammar_spec(draw):
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.one_of(st.sampled_from(sorted(REGISTRY)), st.sampled_from(["", "nope", "dce dce", "DCE"])))
        fields = option_fields(REGISTRY[name]) if name in REGISTRY else {}
        opts = []
        for _ in range(draw(st.integers(0, 3))):
            key = draw(st.one_of(st.sampled_from(sorted(fields) or ["x"]), st.sampled_from(["", "keep", "bits"])))
            opts.append(f"{key}={draw(st.sampled_from(VALUES))}")
        parts.append(name + ("{" + ",".join(opts) + "}" if opts or draw(st.booleans()) else ""))
    return ",".join(parts)


@st.composite
def spec_payloads(draw, module_path=None):
    kind = draw(st.sampled_from(["grammar", "grammar", "mutated", "text"]))
    if kind == "text":
        spec = draw(st.text(max_size=60))
    else:
        spec = draw(_grammar_spec())
        if kind == "mutated" and spec:
            i = draw(st.integers(0, len(spec) - 1))
            spec = spec[:i] + draw(st.text(max_size=3)) + spec[i + draw(st.integers(0, 3)):]
    run = module_path is not None and draw(st.integers(0, 4)) == 0
    return {"spec": spec, "module": str(module_path) if run else None}


@pytest.fixture(scope="module")
def tiny_module(tmp_path_factory, onnx_export):
    import ternc

    p = tmp_path_factory.mktemp("spec") / "llama.ternc"
    ternc.save(ternc.load(onnx_export("llama", False)), p)
    return p


def _save(payload, path):
    path.with_suffix(".txt").write_text(payload["spec"])


def test_known_bad_specs_are_spec_errors(zygote, tiny_module):
    for spec in ("prune-prefill{keep=1e-320}", "prune-prefill{keep=nan}", "quantize-kv{group=12}"):
        out = zygote.run("pass_spec", {"spec": spec, "module": str(tiny_module)})
        assert out.kind == "ternc", (spec, out)


def test_fuzz_spec_short(zygote, tiny_module):
    fuzz("spec", spec_payloads(tiny_module), "pass_spec", examples(60), seed=16, zygote=zygote, save=_save)


@pytest.mark.fuzz
def test_fuzz_spec_long(zygote, tiny_module):
    fuzz("spec", spec_payloads(tiny_module), "pass_spec", examples(10_000), seed=1616, zygote=zygote, save=_save)


@pytest.mark.parametrize("path", corpus_files("spec"), ids=lambda p: p.name)
def test_corpus_spec(zygote, path, tiny_module):
    out = zygote.run("pass_spec", {"spec": path.read_text(), "module": str(tiny_module)})
    assert not out.bad, out
