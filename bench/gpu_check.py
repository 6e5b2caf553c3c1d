"""End-to-end CUDA check of a ternc artifact: tokens on a GPU vs the IR interpreter's tokens.

Two phases: the compiler runs here (no GPU), the artifact runs on a GPU machine that has only the
TVM *runtime* (runtime-only `tvm` package, no libtvm_compiler.so, no package registry).

    python bench/gpu_check.py prepare OUT [--onnx MODEL.onnx] [--arch sm_90]
        here: default model = the repo's tiny BitNet (ternc.models.tiny_bitnet, exported with
        ternc.frontend.torch_export); the "cuda" pass pipeline (raise-ternary, pack i2); a CUDA
        artifact OUT/art-cuda (fatbins built with nvcc); the interpreter's greedy tokens for a few
        prompts and its prefill logits (OUT/expected.json, OUT/expected_logits.npy); a runtime
        bundle OUT/rt = runtime-only tvm + the cp312 wheels of apache-tvm-ffi, ml_dtypes, safetensors

    PYTHONPATH=OUT/rt python bench/gpu_check.py check OUT [--json F]
        on the GPU: loads OUT/art-cuda with ternc.load_artifact (runtime only), generates the same
        tokens, compares; prints a JSON summary; exit status 1 on any token mismatch or when the
        prefill logits differ from the interpreter's by more than --logit-tol (max relative error)

With the device tool: prepare into out/gpu-check (ignored by git, ~45 MB with the runtime bundle;
`rm -r out/gpu-check/wheels out/gpu-check/*.onnx` first to save space) and carry ["out/gpu-check"]:
    PYTHONPATH=out/gpu-check/rt python3 bench/gpu_check.py check out/gpu-check --json $OUT/gpu_check.json

The repo root is the `ternc` package; when `import ternc` fails, `check` links the repo root as
`ternc` in a temp dir and imports from there.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
PROMPTS = [[3, 17, 42, 99, 5, 64, 1], [1, 2, 3], [77]]
N_NEW = 16
WHEELS = ["apache-tvm-ffi", "ml_dtypes", "safetensors"]


def _import_ternc():
    """ternc, loaded from this checkout when it is not installed (the GPU host runs a bare copy of the
    repo, whose root is the package but not named `ternc`)."""
    try:
        import ternc
    except ImportError:
        import importlib.util

        spec = importlib.util.spec_from_file_location("ternc", REPO / "__init__.py",
                                                      submodule_search_locations=[str(REPO)])
        ternc = importlib.util.module_from_spec(spec)
        sys.modules["ternc"] = ternc
        spec.loader.exec_module(ternc)
    return ternc


def _pip_versions() -> dict:
    from importlib.metadata import version

    out = {}
    for w in WHEELS:
        try:
            out[w] = version(w)
        except Exception:
            out[w] = None
    return out


def prepare(out: Path, onnx_path: str | None, arch: str, py: str = "3.12", passes: str | None = None) -> None:
    ternc = _import_ternc()
    from ternc.backends.tvm import build as B
    from ternc.backends.tvm.runtime import bundle_runtime
    from ternc.targets import get

    out.mkdir(parents=True, exist_ok=True)
    if onnx_path is None:
        from ternc.frontend.torch_export import export_decoder
        from ternc.models import tiny_bitnet

        onnx_path = str(out / "tiny-bitnet.onnx")
        export_decoder(tiny_bitnet.build(), onnx_path)
    spec = None if passes is None else ",".join(get("cuda").pipeline) + "," + passes  # e.g. quantize-kv{...}
    B.CUDA_ARCH = arch
    t0 = time.time()
    res = ternc.compile(ternc.load(onnx_path), target="cuda", passes=spec, out=out / "art-cuda", report=True)
    module, art = res.module, res.artifact
    print(f"built {art} in {time.time() - t0:.1f}s", flush=True)
    from ternc.ir.decoder import DecoderSpec

    dec = DecoderSpec.of(module)
    expected = {"prompts": PROMPTS, "n_new": N_NEW, "tokens": [], "onnx": onnx_path}
    for p in PROMPTS:
        expected["tokens"].append(ternc.generate(module, np.array([p]), N_NEW).tolist())
    logits = ternc.interpret(module, {dec.input_ids: np.array([PROMPTS[0]])}, dec.prefill)[dec.logits]
    np.save(out / "expected_logits.npy", logits)
    (out / "expected.json").write_text(json.dumps(expected, indent=1))
    rt = bundle_runtime(out / "rt", with_ffi=False)
    wheels = out / "wheels"
    wheels.mkdir(exist_ok=True)
    versions = _pip_versions()
    for name, ver in versions.items():
        spec = f"{name}=={ver}" if ver else name
        r = subprocess.run([sys.executable, "-m", "pip", "download", spec, "--no-deps", "--only-binary=:all:",
                            "--python-version", py, "--platform", "manylinux2014_x86_64",
                            "--platform", "manylinux_2_28_x86_64", "-d", str(wheels)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            print(f"WARNING: could not download the Python {py} wheel of {spec}:\n{r.stderr[-800:]}")
    for whl in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(whl) as z:
            z.extractall(rt)
    print(f"runtime bundle: {rt} ({sum(f.stat().st_size for f in rt.rglob('*') if f.is_file()) / 1e6:.1f} MB)")
    print(f"on the GPU machine: PYTHONPATH={rt} python bench/gpu_check.py check {out}")


LOGIT_TOL = 1e-5  # max |GPU - interpreter| prefill logit / max |logit|; measured 2.9e-7 .. 3.5e-7 on the H200


def check(out: Path, json_out: str | None, logit_tol: float = LOGIT_TOL) -> int:
    os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")
    ternc = _import_ternc()
    expected = json.loads((out / "expected.json").read_text())
    t0 = time.time()
    runner = ternc.load_artifact(out / "art-cuda")
    load_s = time.time() - t0
    import tvm

    from ternc.ir.decoder import DecoderSpec

    dec = DecoderSpec.from_meta(runner.meta["decoder"])
    res = {"tvm": tvm.__file__, "device": str(runner.device), "load_s": round(load_s, 3), "prompts": []}
    ok = True
    for p, ref in zip(expected["prompts"], expected["tokens"]):
        t0 = time.time()
        toks = ternc.generate(runner, np.array([p]), expected["n_new"]).tolist()
        same = toks == ref
        ok &= same
        res["prompts"].append({"prompt": p, "match": same, "tokens": toks, "expected": ref,
                               "seconds": round(time.time() - t0, 3)})
    ref_logits = np.load(out / "expected_logits.npy")
    got = runner.run(dec.prefill, {dec.input_ids: np.array([expected["prompts"][0]])})[dec.logits]
    res["prefill_logits_max_rel_err"] = float(np.max(np.abs(got - ref_logits)) / np.max(np.abs(ref_logits)))
    res["logit_tol"] = logit_tol
    res["logits_within_tol"] = bool(res["prefill_logits_max_rel_err"] <= logit_tol)  # NaN fails too
    ok &= res["logits_within_tol"]
    maps = Path("/proc/self/maps").read_text()
    res["libtvm_loaded"] = sorted({ln.split()[-1].rsplit("/", 1)[-1] for ln in maps.splitlines() if "libtvm" in ln})
    res["compiler_loaded"] = any("libtvm_compiler" in x for x in res["libtvm_loaded"])
    ok &= not res["compiler_loaded"]
    res["ok"] = bool(ok)
    text = json.dumps(res, indent=1)
    print(text)
    if json_out:
        Path(json_out).write_text(text)
    return 0 if ok else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("out", type=Path)
    p.add_argument("--onnx", default=None)
    p.add_argument("--arch", default="sm_90")
    p.add_argument("--python", default="3.12")
    p.add_argument("--passes", default=None, help="extra passes after the cuda pipeline, e.g. 'quantize-kv{bits=2}'")
    c = sub.add_parser("check")
    c.add_argument("out", type=Path)
    c.add_argument("--json", default=None)
    c.add_argument("--logit-tol", type=float, default=LOGIT_TOL,
                   help="fail when the prefill logits' max relative error vs the interpreter exceeds this")
    a = ap.parse_args(argv)
    if a.cmd == "prepare":
        prepare(a.out, a.onnx, a.arch, a.python, a.passes)
        return 0
    return check(a.out, a.json, a.logit_tol)


if __name__ == "__main__":
    sys.exit(main())
