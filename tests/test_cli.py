"""The `ternc` console script, used as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ternc

TERNC = [sys.executable, "-m", "ternc.cli"]


def run(*args, cwd=None, check=True):
    r = subprocess.run([*TERNC, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600)
    if check and r.returncode != 0:
        raise AssertionError(f"ternc {' '.join(map(str, args))} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def test_help_lists_verbs():
    out = run("--help").stdout
    for verb in ("import", "run", "generate", "compile", "show"):
        assert verb in out


def test_import_run_generate(onnx_export, tmp_path):
    onnx_path = onnx_export("llama", False)
    r = run("import", onnx_path, "-o", tmp_path / "m.ternc")
    assert "Attention" in r.stdout and (tmp_path / "m.ternc").exists()
    ids = np.array([[5, 6, 7]], np.int64)
    np.save(tmp_path / "ids.npy", ids)
    run("run", tmp_path / "m.ternc", "--input", f"input_ids={tmp_path / 'ids.npy'}", "--out", tmp_path / "out")
    got = np.load(tmp_path / "out" / "logits.npy")
    want = ternc.interpret(ternc.load(onnx_path), {"input_ids": ids})["logits"]
    np.testing.assert_array_equal(got, want)
    r = run("generate", tmp_path / "m.ternc", "--prompt-ids", "5,6,7", "-n", "4")
    toks = [int(t) for t in r.stdout.strip().split(",")]
    np.testing.assert_array_equal(toks, ternc.generate(ternc.load(onnx_path), [[5, 6, 7]], 4)[0])


def test_errors_are_one_line_not_tracebacks(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage")
    r = run("import", bad, check=False)
    assert r.returncode != 0
    assert "bad.onnx" in r.stderr and "Traceback" not in r.stderr
    r = run("run", bad, "--input", "x", "--out", tmp_path, check=False)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    r = run("generate", tmp_path / "missing.ternc", "--prompt-ids", "1", check=False)
    assert r.returncode == 2 and "no such file" in r.stderr


def test_corrupt_ternc_file_is_rejected(onnx_export, tmp_path):
    p = tmp_path / "m.ternc"
    ternc.save(ternc.load(onnx_export("llama", False)), p)
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF  # flip a weight byte
    p.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="do not match digest|corrupt"):
        ternc.load(p)


def test_eval_reports_lossy_pipeline(onnx_export):
    ids = ",".join(str(i % 128) for i in range(5, 100, 3))
    r = run("eval", onnx_export("llama", False), "--ids", ids, "--passes", "evict-kv{policy=h2o,budget=12,sinks=2}")
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("| ")]
    assert lines[1].startswith("| unmodified |") and "| 1.000 |" in lines[1]
    cells = [c.strip() for c in lines[2].split("|")]
    assert cells[1].startswith("evict-kv") and int(cells[5]) == 12 and float(cells[4]) < 1.0


def test_generate_carries_kv_pass_state(onnx_export):
    """H2O adds explicit state (scores, tokens seen) that generate must carry between decode steps."""
    m = ternc.load(onnx_export("llama", False))
    evicted = ternc.compile(m, passes="evict-kv{policy=h2o,budget=64,sinks=4}").module
    assert evicted.meta["decoder"].get("state")
    # budget larger than the sequence: eviction never triggers, so tokens equal the exact ones
    np.testing.assert_array_equal(ternc.generate(evicted, [[3, 4, 5]], 12), ternc.generate(m, [[3, 4, 5]], 12))


def test_compile_cpu_artifact_generates_interpreter_tokens(onnx_export, tmp_path):
    """The main job's flow on a tiny model: ternc compile --target cpu, then ternc generate ART."""
    model = onnx_export("tiny-bitnet", False)
    art = tmp_path / "art"
    r = run("compile", model, "--target", "cpu", "-o", art)
    assert "weights.safetensors" in r.stdout and (art / "manifest.json").exists()
    toks = [int(t) for t in run("generate", art, "--prompt-ids", "5,77,200", "-n", "6").stdout.strip().split(",")]
    np.testing.assert_array_equal(toks, ternc.generate(ternc.load(model), [[5, 77, 200]], 6)[0])
    # deterministic rebuild: the same model with the first build's kernel choices (--kernels) gives
    # byte-identical files: weights, manifest and the library (TVM's shape functions used to come out
    # in another order from build to build; build._canonical_shape_funcs); timings are only in report.json
    art2 = tmp_path / "art2"
    run("compile", model, "--target", "cpu", "-o", art2, "--kernels", art / "manifest.json")
    for rel in ("weights.safetensors", "manifest.json", "lib/model.so"):
        assert (art / rel).read_bytes() == (art2 / rel).read_bytes(), rel
    assert json.loads((art2 / "report.json").read_text())["kernel_policy"] == "fixed"


def test_compile_every_pipeline_target_is_accepted_and_unknown_rejected(onnx_export, tmp_path):
    import shutil

    r = run("compile", onnx_export("llama", False), "--target", "nope", check=False)
    assert r.returncode != 0 and "unknown target 'nope'" in r.stderr and "aarch64" in r.stderr
    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("aarch64-linux-gnu-gcc not installed")
    run("compile", onnx_export("llama", False), "--target", "aarch64", "-o", tmp_path / "a64")
    header = (tmp_path / "a64" / "lib" / "model.so").read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64


def test_version_does_not_import_onnx():
    code = "import sys; from ternc import cli\ntry: cli.main(['--version'])\nexcept SystemExit: pass\n" \
           "print('onnx' in sys.modules, 'torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.split() == ["ternc", ternc.__version__, "False", "False"]


def test_hub_id_and_non_decoder_errors(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    r = run("generate", "HuggingFaceTB/SmolLM2-135M", "--prompt", "hi", check=False)
    assert r.returncode == 2 and "pass the local folder" in r.stderr and "Traceback" not in r.stderr
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    p = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)]), p)
    r = run("eval", p, "--ids", "1,2,3", check=False)
    assert r.returncode == 2 and "no decoder entry points" in r.stderr
    r = run("compile", p, "-o", tmp_path / "relu.ternc")
    assert "ternc run" in r.stdout and "ternc generate" not in r.stdout


def test_generate_text_from_gguf_streams_the_tokens_generate_gives(tiny_gguf):
    r = run("generate", tiny_gguf, "--prompt", "Hello", "-n", "6", "--eos", "0")
    m = ternc.load(tiny_gguf)
    tok = ternc.load_tokenizer(m)
    ids = tok("Hello")["input_ids"]
    want = ternc.generate(m, [ids], 6, eos_token_id=0)[0, len(ids):].tolist()
    assert r.stdout == tok.decode(want) + "\n"
    chat = run("generate", tiny_gguf, "--prompt", "Hello", "--chat", "-n", "3", "--temperature", "0.7", "--seed", "1")
    assert chat.stdout == run("generate", tiny_gguf, "--prompt", "Hello", "--chat", "-n", "3", "--temperature", "0.7",
                              "--seed", "1").stdout


def test_compile_hf_folder_for_cpu_carries_its_tokenizer(hf_bitnet_folder, tmp_path):
    import json

    art = tmp_path / "art"
    r = run("compile", hf_bitnet_folder, "--target", "cpu", "-o", art)
    assert '--prompt "Hello"' in r.stdout
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["roles"]["tokenizer"] == "tokenizer/tokenizer_config.json"
    assert "tokenizer/tokenizer.json" in manifest["files"]
    ternc.load_artifact(art)  # checksums of the added files verify
    got = run("generate", art, "--prompt", "Hi there", "-n", "6").stdout
    assert got == run("generate", hf_bitnet_folder, "--prompt", "Hi there", "-n", "6").stdout
    r = run("report", art)
    page = (art / "report.html").read_text()
    assert r.stdout.strip().endswith("report.html")
    for needle in ("<h2>Passes</h2>", "raise-ternary", "Kernel choices", "tokenizer/tokenizer.json", "hf: "):
        assert needle in page, needle
    np.save(tmp_path / "ids.npy", np.array([[1, 2]], np.int64))
    r = run("run", art, "--input", f"input_ids={tmp_path / 'ids.npy'}", "--out", tmp_path / "o", check=False)
    assert r.returncode == 2 and "--entry" in r.stderr and "prefill" in r.stderr


# ---------------------------------------------------------------- argument checks (issue 14, item 9)
@pytest.fixture
def llama_onnx(onnx_export):
    return onnx_export("llama", False)


@pytest.mark.parametrize("argv, message", [
    (["import", "{m}", "-o", "{tmp}/afile/x.ternc"], "afile is a file, not a folder"),
    (["import", "{m}", "-o", "{tmp}/adir"], "is a folder; give a file path"),
    (["generate", "{m}", "--prompt-ids", "99999999999999999999999"], "not a non-negative 64-bit integer"),
    (["generate", "{m}", "--prompt-ids", "1,2", "-n", "-5"], "must be at least 1"),
    (["compile", "{m}", "--context", "-1"], "context length must be at least 1"),
    (["compile", "{m}", "--target", "cpu", "--mcpu", "bogus-cpu", "-o", "{tmp}/o"], "not a CPU this LLVM knows"),
    (["eval", "{m}", "--ids", "1"], "leave nothing to score"),
    (["generate", "{tmp}/fifo", "--prompt-ids", "1"], "not a regular file"),
    (["generate", "{tmp}/zero.onnx", "--prompt-ids", "1"], "not a regular file"),
    (["generate", "{tmp}/adir", "--prompt-ids", "1"], "neither manifest.json"),
    (["compile", "{m}", "--target", "kv260", "--engine", "3,4", "-o", "{tmp}/k"], "expected GROUP,TABLES,COLUMNS"),
    (["compile", "{m}", "--target", "cpu", "--engine", "3,4,8", "-o", "{tmp}/o"], "applies to the kv260 target"),
    (["simulate", "{tmp}/adir", "--rtl"], "--rtl needs --prompt-ids"),
])
def test_bad_arguments_are_clear_errors(argv, message, llama_onnx, tmp_path, capsys):
    from ternc.cli import main

    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    os.mkfifo(tmp_path / "fifo")
    os.symlink("/dev/zero", tmp_path / "zero.onnx")
    if "--mcpu" in argv:
        pytest.importorskip("tvm")
    rc = main([a.format(m=llama_onnx, tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert rc != 0 and message in err, err
    assert "Traceback" not in err
    assert not list(tmp_path.glob("adir/*")) and not list(tmp_path.glob("*.tmp"))


def test_run_without_entry_names_the_entries(llama_onnx, tmp_path, capsys):
    from ternc.cli import main

    m = tmp_path / "m.ternc"
    assert main(["import", str(llama_onnx), "-o", str(m)]) == 0
    import ternc as t

    mod = t.load(m)
    assert "prefill" in [f.name for f in mod.functions]
    np.save(tmp_path / "ids.npy", np.array([[1, 2]], np.int64))
    rc = main(["run", str(m), "--input", f"input_ids={tmp_path / 'ids.npy'}", "--out", str(tmp_path / "o")])
    assert rc == 0  # the module has main: the default entry
    assert (tmp_path / "o" / "logits.npy").exists()
