"""The bundle's static runner (backends/deploy/run.py) on this host: its generation loop, --verify
and --bench against a host CPU artifact (the emulated aarch64 board runs it in test_emulate.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import ternc
from ternc.backends.deploy import bundle as B


@pytest.fixture(scope="module")
def run_py():
    from ternc.backends.deploy import run

    return run


def test_runner_generation_equals_ternc_generate(run_py, cpu_artifact, default_module):
    runner = ternc.load_artifact(cpu_artifact)
    for prompt in ([3, 17, 42, 99, 5, 64, 1], [77]):
        want = ternc.generate(default_module, [prompt], 10)[0].tolist()
        assert run_py.generate(runner, prompt, 10) == want


def _golden(module, tmp_path, tokens_fix=None):
    dec = module.meta["decoder"]
    prompts = [[3, 17, 42], [9]]
    tokens = [ternc.generate(module, [p], 6)[0].tolist() for p in prompts]
    if tokens_fix:
        tokens = tokens_fix(tokens)
    logits = ternc.interpret(module, {dec["input_ids"]: np.array([prompts[0]])}, dec["prefill"])[dec["logits"]]
    B._write_golden(tmp_path / "golden", B.Golden(prompts, 6, tokens, logits))
    return {"golden": "golden/golden.json"}


def test_verify_passes_and_fails(run_py, cpu_artifact, default_module, tmp_path):
    runner = ternc.load_artifact(cpu_artifact)
    res = run_py.verify(_golden(default_module, tmp_path), runner, tmp_path)
    assert res["pass"] and all(r["match"] for r in res["prompts"])
    assert res["prefill_logits_max_rel_err"] < 1e-4

    def corrupt(tokens):
        tokens[1][-1] = (tokens[1][-1] + 1) % 256
        return tokens

    bad = tmp_path / "bad"
    bad.mkdir()
    res = run_py.verify(_golden(default_module, bad, corrupt), runner, bad)
    assert not res["pass"] and [r["match"] for r in res["prompts"]] == [True, False]


def test_bench_reports_rates(run_py, cpu_artifact):
    r = run_py.bench(ternc.load_artifact(cpu_artifact), prompt_len=8, n_decode=4, repeat=1)
    assert r["prefill_tok_s"] > 0 and r["decode_tok_s"] > 0 and r["prompt_tokens"] == 8


def test_runner_is_standalone():
    """run.py imports only the standard library, numpy and TVM's runtime (the board has no ternc
    and no compiler); the bundled ternc modules are loaded by the names bundle.json gives. `tokenizers`
    only for --prompt text, optional (a clear error where it is not installed)."""
    import ast
    import sys

    tree = ast.parse(Path(B.RUNNER).read_text())
    mods = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    mods |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
    assert mods - set(sys.stdlib_module_names) == {"numpy", "tvm", "tokenizers"}


def _with_tokenizer(cpu_artifact, tmp_path):
    """A copy of the cpu artifact carrying a small word-level tokenizer (ids < the vocab of 256) as
    `ternc compile` writes one (artifact/tokenizer/), with an end-of-sequence token."""
    import json
    import shutil

    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers

    art = tmp_path / "art"
    shutil.copytree(cpu_artifact, art)
    vocab = {w: i for i, w in enumerate(["<unk>", "</s>", *[f"w{i}" for i in range(2, 256)]])}
    tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    (art / "tokenizer").mkdir()
    tok.save(str(art / "tokenizer" / "tokenizer.json"))
    (art / "tokenizer" / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    return art


def test_prompt_text_through_the_carried_tokenizer(run_py, cpu_artifact, default_module, tmp_path, monkeypatch,
                                                   capsys):
    """Issue 15: `run.py --prompt "text"` encodes with the tokenizer the artifact carries, streams the
    continuation, stops at end of sequence, and gives the tokens ternc.generate gives."""
    art = _with_tokenizer(cpu_artifact, tmp_path)
    tok = run_py.BundleTokenizer(art)
    ids = tok.encode("w3 w17 w42 w99")
    assert ids == [3, 17, 42, 99] and tok.eos == {1}
    want = ternc.generate(default_module, [ids], 12)[0].tolist()
    runner = ternc.load_artifact(art)
    seen = []
    assert run_py.generate(runner, ids, 12, on_token=seen.append) == want and seen == want[len(ids):]
    # stop at end of sequence: make the first generated token the eos
    first = want[len(ids)]
    assert run_py.generate(runner, ids, 12, stop={first}) == want[:len(ids) + 1]

    monkeypatch.setattr(run_py, "HERE", tmp_path)
    monkeypatch.setattr(run_py, "check_bundle", lambda **_: {"board": {"name": "host"}, "files": {}, "artifact": "art"})
    monkeypatch.setattr(run_py, "load", lambda bundle: runner)
    out_json = tmp_path / "r.json"
    assert run_py.main(["--prompt", "w3 w17 w42 w99", "-n", "12", "--json", str(out_json)]) == 0
    import json

    res = json.loads(out_json.read_text())
    assert res["tokens"] == want and res["text"] == tok.decode(want[len(ids):])
    assert capsys.readouterr().out.startswith("w3 w17 w42 w99" + tok.decode(want[len(ids):len(ids) + 1]))


def test_prompt_text_without_a_tokenizer_is_a_clear_error(run_py, cpu_artifact):
    with pytest.raises(run_py.BundleError, match="carries no tokenizer.*--prompt-ids"):
        run_py.BundleTokenizer(Path(cpu_artifact))
