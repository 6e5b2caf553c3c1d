"""The `ternc` command line.

    ternc import MODEL.onnx [-o OUT.ternc]            ONNX -> ternc module file (prints a summary)
    ternc show MODEL                                  print the IR text
    ternc run MODEL --input NAME=FILE.npy ... --out DIR [--entry main]
    ternc generate MODEL --prompt-ids 1,2,3 -n 16
    ternc compile [MODEL] --target TARGET [--passes SPEC] [--kernels FILE] -o OUT   (targets: ternc.targets)
    ternc eval MODEL --ids 1,2,3,... [--passes SPEC]  perplexity / top-1 agreement vs the unmodified model

MODEL is an .onnx file, a .ternc module file, or (for run/generate) a compiled artifact folder.
Without MODEL, `compile` uses the built-in default model (a tiny ternary BitNet).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


class CLIError(Exception):
    pass


def _load_any(path: str):
    """A Module (onnx / .ternc) or a Runner (artifact folder)."""
    import ternc

    p = Path(path)
    if p.is_dir():
        if not (p / "manifest.json").exists():
            raise CLIError(f"{path}: a folder without manifest.json, so not a compiled artifact (or a half-written "
                           f"one); give an .onnx or .ternc file or an artifact folder")
        return ternc.load_artifact(p)
    _check_model_file(path)
    return ternc.load(p)


def _check_model_file(path) -> None:
    """A model path must be a regular file: a FIFO or a link to /dev/zero would block or never end."""
    p = Path(path)
    if not p.exists():
        raise CLIError(f"{path}: no such file or directory")
    if not p.is_file() and not p.is_dir():
        raise CLIError(f"{path}: not a regular file (a FIFO, device or socket); give a model file")


def _check_output(path, want_dir: bool) -> None:
    """Refuse outputs that cannot be written before doing the work: under a regular file, or a folder
    where a file is due (and the reverse)."""
    p = Path(path)
    for parent in p.parents:
        if parent.exists() and not parent.is_dir():
            raise CLIError(f"-o {path}: {parent} is a file, not a folder")
    if p.exists() and p.is_dir() != want_dir:
        raise CLIError(f"-o {path}: is {'a file' if want_dir else 'a folder'}; give "
                       f"{'a folder' if want_dir else 'a file'} path")


def _parse_ids(text: str, flag: str) -> list[int]:
    try:
        ids = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise CLIError(f"{flag} expects comma-separated integers, got {text[:80]!r}") from None
    bad = [t for t in ids if not 0 <= t < 2**63]
    if bad:
        raise CLIError(f"{flag}: token id {bad[0]} is not a non-negative 64-bit integer")
    return ids


def _default_model_path(with_past: bool = False) -> Path:
    from .models import tiny_bitnet

    print(f"[ternc] no MODEL given: using the built-in default model '{tiny_bitnet.DEFAULT_NAME}' "
          f"({tiny_bitnet.CONFIG['num_hidden_layers']} layers, hidden {tiny_bitnet.CONFIG['hidden_size']}, "
          f"ternary BitLinear weights)", file=sys.stderr)
    return tiny_bitnet.default_onnx(with_past=with_past)


def cmd_import(args) -> int:
    import ternc

    _check_model_file(args.model)
    out = Path(args.output) if args.output else Path(args.model).with_suffix(".ternc")
    _check_output(out, want_dir=False)
    t0 = time.time()
    m = ternc.load(args.model)
    ternc.save(m, out)
    counts = {}
    for f in m.functions:
        for n in f.nodes:
            counts[n.op.value] = counts.get(n.op.value, 0) + 1
    print(f"imported {args.model} -> {out} in {time.time() - t0:.1f}s")
    print(f"  entry points: {', '.join('@' + f.name for f in m.functions)}")
    print(f"  constants: {len(m.constants)} ({m.weight_bytes / 1e6:.2f} MB)")
    print(f"  raised: {json.dumps(m.meta.get('raised', {}))}")
    if "raising" in m.meta:
        print(f"  WARNING: {m.meta['raising']}")
    return 0


def cmd_show(args) -> int:
    m = _load_any(args.model)
    if hasattr(m, "functions"):
        sys.stdout.write(str(m))
    else:
        print(json.dumps(m.manifest if hasattr(m, "manifest") else dict(m.meta), indent=2))
    return 0


def _parse_inputs(specs) -> dict:
    import numpy as np

    feeds = {}
    for spec in specs or []:
        name, sep, file = spec.partition("=")
        if not sep or not name or not file:
            raise CLIError(f"--input expects NAME=FILE.npy, got {spec!r}")
        try:
            feeds[name] = np.load(file, allow_pickle=False)
        except Exception as e:
            raise CLIError(f"--input {name}: cannot read {file}: {e}") from None
    return feeds


def cmd_run(args) -> int:
    import numpy as np

    import ternc

    _check_output(args.out, want_dir=True)
    model = _load_any(args.model)
    feeds = _parse_inputs(args.input)
    entries = [f.name for f in model.functions] if hasattr(model, "functions") else sorted(model.entries)
    entry = args.entry or ("main" if "main" in entries else None)
    if entry not in entries:
        raise CLIError(f"{args.model} has no entry {entry!r}; give --entry, one of: {', '.join(entries)}"
                       if entry else f"{args.model} has no 'main'; give --entry, one of: {', '.join(entries)}")
    if hasattr(model, "functions"):
        outs = ternc.interpret(model, feeds, entry=entry)
    else:
        outs = model.run(entry, feeds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, val in outs.items():
        np.save(out / f"{name}.npy", np.asarray(val), allow_pickle=False)
        print(f"{name}: {list(np.shape(val))} {np.asarray(val).dtype} -> {out / (name + '.npy')}")
    return 0


def cmd_generate(args) -> int:
    import ternc

    ids = _parse_ids(args.prompt_ids, "--prompt-ids")
    if not ids:
        raise CLIError("--prompt-ids: the prompt is empty")
    if args.n < 1:
        raise CLIError(f"-n {args.n}: the number of new tokens must be at least 1")
    model = _load_any(args.model) if args.model else ternc.load(_default_model_path())
    t0 = time.time()
    out = ternc.generate(model, [ids], args.n, eos_token_id=args.eos)
    dt = time.time() - t0
    new = out[0, len(ids):].tolist()
    print(",".join(str(t) for t in out[0].tolist()))
    print(f"[ternc] {len(new)} new tokens in {dt:.2f}s", file=sys.stderr)
    return 0


def _read_kernels(path: str):
    """--kernels FILE: an artifact's manifest.json (its `kernels` record) or a JSON list of choices."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise CLIError(f"--kernels {path}: cannot read JSON ({e})") from None
    if isinstance(data, dict) and "kernels" in data:
        data = data["kernels"]
    if isinstance(data, dict):
        data = data.get("choices")
    if not isinstance(data, list):
        raise CLIError(f"--kernels {path}: expected a manifest.json or a list of {{format, k, n, m, kind}}")
    return data


def format_result(res, seconds: float) -> str:
    """The `ternc compile` summary of a CompileResult."""
    lines = [f"compiled @{res.module.name} for target '{res.target}' in {seconds:.1f}s"]
    p = res.artifact
    if p.is_file():
        lines.append(f"  wrote {p} ({p.stat().st_size / 1e6:.2f} MB): the transformed module (IR text + "
                     f"weights); run it with `ternc generate {p} --prompt-ids 1,2,3`")
        return "\n".join(lines)
    lines.append(f"  wrote artifact {p}/ :")
    for rel, info in sorted((res.manifest or {}).get("files", {}).items()):
        lines.append(f"    {rel:<40} {info['bytes'] / 1e6:8.2f} MB")
    lines.append(f"  run it: ternc generate {p} --prompt-ids 1,2,3 -n 16")
    return "\n".join(lines)


def cmd_compile(args) -> int:
    import ternc
    from .targets import get

    tgt = get(args.target)  # an unknown target fails before the model loads
    if args.context < 1:
        raise CLIError(f"--context {args.context}: the context length must be at least 1")
    if args.model:
        _check_model_file(args.model)
    if args.output:
        _check_output(args.output, want_dir=tgt.artifact == "folder")
    if args.mcpu is not None:
        _check_mcpu(args.mcpu, args.target)
    src = args.model or _default_model_path()
    t0 = time.time()
    module = ternc.load(src)
    print(f"[ternc] loaded {src} ({time.time() - t0:.1f}s)", file=sys.stderr)
    options = {}
    if args.mcpu:
        options["mcpu"] = args.mcpu
    if args.kernels:
        options["kernels"] = _read_kernels(args.kernels)
    if options and tgt.artifact != "folder":
        raise CLIError(f"--mcpu/--kernels do not apply to target {tgt.name!r}")
    t0 = time.time()
    # the pipeline prints its per-pass table (nodes, weight bytes, KV bytes/token) as it runs
    res = ternc.compile(module, target=tgt.name, passes=args.passes, out=args.output or tgt.default_out(module),
                        context=args.context, report=lambda text: print(text, file=sys.stderr), **options)
    print(format_result(res, time.time() - t0))
    return 0


def _check_mcpu(mcpu: str, target: str) -> None:
    """LLVM only warns about an unknown -mcpu (and builds for a generic CPU): refuse it up front."""
    import tvm
    from tvm.target import codegen

    triple = "aarch64-linux-gnu" if target == "aarch64" else str(codegen.llvm_get_system_triple())
    known = {str(c) for c in codegen.llvm_get_cpu_archlist(tvm.target.Target({"kind": "llvm", "mtriple": triple}))}
    if known and mcpu not in known:
        close = sorted(c for c in known if c[:3] == mcpu[:3])[:8]
        raise CLIError(f"--mcpu {mcpu!r}: not a CPU this LLVM knows" + (f" (similar: {', '.join(close)})" if close
                                                                          else " (e.g. x86-64-v3, skylake, znver4)"))


def cmd_eval(args) -> int:
    """Perplexity / top-1 agreement of a (possibly lossy) pass pipeline against the unmodified model."""
    import numpy as np

    import ternc
    from .passes.eval import evaluate

    if args.ids.endswith(".npy"):
        ids = np.load(args.ids, allow_pickle=False).reshape(-1)
    else:
        ids = np.array(_parse_ids(args.ids, "--ids"), np.int64)
    if args.prefix < 1:
        raise CLIError(f"--prefix {args.prefix}: at least 1 token must be fed before scoring")
    if ids.size < args.prefix + 1:
        raise CLIError(f"--ids: {ids.size} token(s) leave nothing to score after the {args.prefix}-token prefix; "
                       f"give at least {args.prefix + 1}")
    _check_model_file(args.model)
    base = ternc.load(args.model)
    ref = evaluate(base, ids, prefix=args.prefix)
    rows = [("unmodified", ref, None)]
    if args.passes:
        mod = ternc.compile(base, passes=args.passes, report=True).module
        rows.append((args.passes, evaluate(mod, ids, prefix=args.prefix, reference=ref["top1"]), args.passes))
    print("| setting | tokens | perplexity | top-1 agreement | max KV tokens |")
    print("|---|---|---|---|---|")
    for name, r, _ in rows:
        agree = "1.000" if r.get("top1_agreement") is None else f"{r['top1_agreement']:.3f}"
        print(f"| {name} | {r['n_tokens']} | {r['ppl']:.3f} | {agree} | {r['kv_tokens_max']} |")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import targets

    ap = argparse.ArgumentParser(prog="ternc", description="Compiler for ternary (1.58-bit) language models.")
    ap.add_argument("--version", action="version", version=f"ternc {__import__('ternc').__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("import", help="import an ONNX model into a .ternc module file")
    p.add_argument("model")
    p.add_argument("-o", "--output")
    p.set_defaults(fn=cmd_import)

    p = sub.add_parser("show", help="print a model's IR text (or an artifact's manifest)")
    p.add_argument("model")
    p.set_defaults(fn=cmd_show)

    p = sub.add_parser("run", help="run an entry point on .npy inputs, writing one NAME.npy per output")
    p.add_argument("model")
    p.add_argument("--input", action="append", metavar="NAME=FILE.npy")
    p.add_argument("--out", required=True)
    p.add_argument("--entry", default=None, help="entry point (default: main, when the model has one)")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("generate", help="greedy generation with the KV cache")
    p.add_argument("model", nargs="?")
    p.add_argument("--prompt-ids", required=True)
    p.add_argument("-n", type=int, default=16)
    p.add_argument("--eos", type=int, default=None)
    p.set_defaults(fn=cmd_generate)

    p = sub.add_parser("eval", help="perplexity and top-1 agreement of a pass pipeline vs the unmodified model")
    p.add_argument("model")
    p.add_argument("--ids", required=True, help="token ids: comma-separated or a .npy file")
    p.add_argument("--passes", default=None, help='e.g. "quantize-kv{bits=2}" or "evict-kv{budget=64}"')
    p.add_argument("--prefix", type=int, default=1, help="tokens fed before scoring starts")
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("compile", help="run a pass pipeline and build for a target")
    p.add_argument("model", nargs="?", help="ONNX or .ternc file (default: built-in tiny BitNet)")
    p.add_argument("--target", default="reference", help=" | ".join(targets.names()))
    p.add_argument("--passes", default=None, help='pipeline spec, e.g. "pack-ternary{format=tl2},quantize-kv{bits=2}"')
    p.add_argument("-o", "--output", default=None, help="output (.ternc file for reference, folder otherwise)")
    p.add_argument("--context", type=int, default=512, help="maximum context length the artifact serves")
    p.add_argument("--mcpu", default=None,
                   help="CPU to compile for (default: this host's; e.g. x86-64-v3 for portable artifacts)")
    p.add_argument("--kernels", default=None, metavar="FILE",
                   help="reuse the kernel choices of a previous build (its manifest.json), for identical rebuilds")
    p.set_defaults(fn=cmd_compile)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except CLIError as e:
        print(f"ternc: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, KeyError, OSError, RuntimeError, TypeError) as e:
        # Library errors carry the file/node/resource in their message; show it without a traceback.
        print(f"ternc: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
