"""The `ternc` command line.

    ternc import MODEL.onnx [-o OUT.ternc]            ONNX -> ternc module file (prints a summary)
    ternc show MODEL                                  print the IR text
    ternc run MODEL --input NAME=FILE.npy ... --out DIR [--entry main]   (or --prompt-ids 1,2,3 -n 16)
    ternc generate MODEL --prompt-ids 1,2,3 -n 16
    ternc compile [MODEL] --target TARGET [--passes SPEC] [--kernels FILE] -o OUT   (targets: ternc.targets)
    ternc eval MODEL --ids 1,2,3,... [--passes SPEC]  perplexity / top-1 agreement vs the unmodified model
    ternc deploy [ART|MODEL] --board aarch64-linux|jetson-orin|kv260 -o BUNDLE [--tar]
    ternc run ART --remote HOST:PORT [--key KEY] --prompt-ids 1,2,3   generation on a TVM RPC server
    ternc bench ART [--remote HOST:PORT --key KEY]    prefill / decode timing (TVM time_evaluator)

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
    if p.is_dir() and (p / "manifest.json").exists():
        return ternc.load_artifact(p)
    if not p.exists():
        raise CLIError(f"{path}: no such file or directory")
    return ternc.load(p)


def _default_model_path(with_past: bool = False) -> Path:
    from .models import tiny_bitnet

    print(f"[ternc] no MODEL given: using the built-in default model '{tiny_bitnet.DEFAULT_NAME}' "
          f"({tiny_bitnet.CONFIG['num_hidden_layers']} layers, hidden {tiny_bitnet.CONFIG['hidden_size']}, "
          f"ternary BitLinear weights)", file=sys.stderr)
    return tiny_bitnet.default_onnx(with_past=with_past)


def cmd_import(args) -> int:
    import ternc

    t0 = time.time()
    m = ternc.load(args.model)
    out = Path(args.output) if args.output else Path(args.model).with_suffix(".ternc")
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


def _ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise CLIError(f"--prompt-ids expects comma-separated integers, got {text!r}") from None


def _remote_runner(args):
    """A Runner on a TVM RPC server (`--remote HOST:PORT [--key KEY]`)."""
    from .backends.deploy.remote import connect, remote_runner

    p = Path(args.model)
    if not (p.is_dir() and (p / "manifest.json").exists()):
        raise CLIError(f"--remote runs a compiled artifact folder; {args.model} is not one")
    t0 = time.time()
    via = f"tracker {args.remote}, key {args.key!r}" if args.key else f"server {args.remote}"
    session = connect(args.remote, args.key, timeout=args.timeout, session_timeout=args.session_timeout)
    runner = remote_runner(p, session)
    print(f"[ternc] RPC session via {via}: library and weights uploaded, loaded on {runner.device} in "
          f"{time.time() - t0:.1f}s", file=sys.stderr)
    return runner


def cmd_run(args) -> int:
    import numpy as np

    import ternc

    if args.remote:
        model = _remote_runner(args)
    else:
        model = _load_any(args.model)
    if args.prompt_ids is not None:
        ids = _ids(args.prompt_ids)
        t0 = time.time()
        out = ternc.generate(model, [ids], args.n)
        print(",".join(str(t) for t in out[0].tolist()))
        print(f"[ternc] {out.shape[1] - len(ids)} new tokens in {time.time() - t0:.2f}s"
              + (f" on {model.device}" if hasattr(model, "device") else ""), file=sys.stderr)
        return 0
    if not args.out:
        raise CLIError("run needs --out DIR (with --input), or --prompt-ids for generation")
    feeds = _parse_inputs(args.input)
    if hasattr(model, "functions"):
        outs = ternc.interpret(model, feeds, entry=args.entry)
    else:
        outs = model.run(args.entry, feeds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, val in outs.items():
        np.save(out / f"{name}.npy", np.asarray(val), allow_pickle=False)
        print(f"{name}: {list(np.shape(val))} {np.asarray(val).dtype} -> {out / (name + '.npy')}")
    return 0


def cmd_generate(args) -> int:
    import ternc

    ids = _ids(args.prompt_ids)
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
    src = args.model or _default_model_path()
    if args.context < 1:
        raise CLIError(f"--context must be at least 1, got {args.context}")
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


def cmd_eval(args) -> int:
    """Perplexity / top-1 agreement of a (possibly lossy) pass pipeline against the unmodified model."""
    import numpy as np

    import ternc
    from .passes.eval import evaluate

    if args.ids.endswith(".npy"):
        ids = np.load(args.ids, allow_pickle=False).reshape(-1)
    else:
        try:
            ids = np.array([int(t) for t in args.ids.split(",") if t.strip()], np.int64)
        except ValueError:
            raise CLIError("--ids expects comma-separated integers or a .npy file") from None
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


def cmd_bench(args) -> int:
    """Prefill and one decode step timed by TVM's time_evaluator, locally or on a remote board."""
    from .backends.deploy.remote import bench_artifact

    runner = _remote_runner(args) if args.remote else _load_any(args.model)
    if not hasattr(runner, "vm"):
        raise CLIError(f"bench times a compiled artifact folder; {args.model} is not one")
    r = bench_artifact(runner, args.prompt_len, number=args.number, repeat=args.repeat)
    print(f"{r['device']}: prefill {r['prompt_tokens']} tokens {r['prefill_s'] * 1e3:.2f} ms "
          f"({r['prefill_tok_s']:.1f} tok/s); decode step after {r['decode_past_tokens']} tokens "
          f"{r['decode_step_s'] * 1e3:.2f} ms ({r['decode_tok_s']:.1f} tok/s)  [{r['timer']}, best of {r['repeat']}]")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))
    return 0


def _remote_args(p) -> None:
    p.add_argument("--remote", default=None, metavar="HOST:PORT",
                   help="run on a TVM RPC server (with --key: HOST:PORT is its tracker)")
    p.add_argument("--key", default=None, help="device key the board's RPC server registered with the tracker")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for the tracker / a registered server / the session")
    p.add_argument("--session-timeout", type=float, default=600.0,
                   help="seconds after which the server ends the session")


def cmd_deploy(args) -> int:
    from .driver import deploy_to

    print(deploy_to(args.model, args.board, args.output, tar=args.tar, model=args.source_model,
                    passes=args.passes, context=args.context, n_golden=args.golden_tokens, python=args.python,
                    log=lambda m: print(m, file=sys.stderr)))
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

    p = sub.add_parser("run", help="run an entry point on .npy inputs (one NAME.npy per output), or generate")
    p.add_argument("model")
    p.add_argument("--input", action="append", metavar="NAME=FILE.npy")
    p.add_argument("--out", default=None)
    p.add_argument("--entry", default="main")
    p.add_argument("--prompt-ids", default=None, help="greedy generation from these ids instead of one entry")
    p.add_argument("-n", type=int, default=16, help="new tokens (with --prompt-ids)")
    _remote_args(p)
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("bench", help="time prefill and a decode step of an artifact (TVM time_evaluator)")
    p.add_argument("model", help="compiled artifact folder")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--number", type=int, default=3)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", default=None)
    _remote_args(p)
    p.set_defaults(fn=cmd_bench)

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

    p = sub.add_parser("deploy", help="a self-contained bundle (artifact + board runtime + runner) for an edge board")
    p.add_argument("model", nargs="?", help="artifact folder, or ONNX / .ternc model compiled for the board "
                                           "(default: built-in tiny BitNet)")
    p.add_argument("--board", required=True, help="aarch64-linux | jetson-orin | x86_64-cuda | kv260")
    p.add_argument("-o", "--output", required=True, help="bundle folder")
    p.add_argument("--tar", action="store_true", help="also write BUNDLE.tar.gz")
    p.add_argument("--model", dest="source_model", default=None,
                   help="(artifact input) the model it was built from (the golden outputs run it in the interpreter)")
    p.add_argument("--passes", default=None, help="(model input) pipeline spec instead of the board's default")
    p.add_argument("--context", type=int, default=512, help="(model input) maximum context length")
    p.add_argument("--golden-tokens", type=int, default=16, help="tokens per golden prompt")
    p.add_argument("--python", default=None, help="the board's CPython MAJOR.MINOR, if not the board's default")
    p.set_defaults(fn=cmd_deploy)

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
    except (ValueError, KeyError, FileNotFoundError, RuntimeError, TypeError) as e:
        # Library errors carry the file/node/resource in their message; show it without a traceback.
        print(f"ternc: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
