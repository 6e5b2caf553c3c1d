"""The `ternc` command line.

    ternc import MODEL.onnx [-o OUT.ternc]            ONNX -> ternc module file (prints a summary)
    ternc show MODEL                                  print the IR text
    ternc run MODEL --input NAME=FILE.npy ... --out DIR [--entry main]
    ternc generate MODEL --prompt-ids 1,2,3 -n 16
    ternc compile [MODEL] --target TARGET [--passes SPEC] [--kernels FILE] -o OUT   (targets: ternc.targets)
    ternc eval MODEL --ids 1,2,3,... [--passes SPEC]  perplexity / top-1 agreement vs the unmodified model
    ternc simulate ART --prompt-ids 1,2,3 -n 8         run a kv260 artifact's program (functional executor)
                                                      and check tokens/logits against the interpreter

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
        from .backends.fpga.build import TARGET as FPGA_TARGET

        if json.loads((p / "manifest.json").read_text()).get("target", {}).get("name") == FPGA_TARGET:
            from .backends.fpga.build import load_runner  # the program on the functional executor

            return load_runner(p)
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


def cmd_run(args) -> int:
    import numpy as np

    import ternc

    model = _load_any(args.model)
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

    try:
        ids = [int(t) for t in args.prompt_ids.split(",") if t.strip()]
    except ValueError:
        raise CLIError(f"--prompt-ids expects comma-separated integers, got {args.prompt_ids!r}") from None
    model = _load_any(args.model) if args.model else ternc.load(_default_model_path())
    t0 = time.time()
    out = ternc.generate(model, [ids], args.n, eos_token_id=args.eos)
    dt = time.time() - t0
    new = out[0, len(ids):].tolist()
    print(",".join(str(t) for t in out[0].tolist()))
    print(f"[ternc] {len(new)} new tokens in {dt:.2f}s", file=sys.stderr)
    return 0


def _sweep_config(spec: str) -> dict:
    """A config file written by `ternc simulate --sweep` (``best``: ternc-sweep/best_config.json):
    the part the backend builds (engine geometry, clock, LM head placement)."""
    from .backends.fpga.schedule import EngineConfig

    path = Path("ternc-sweep/best_config.json") if spec == "best" else Path(spec)
    if not path.exists():
        raise CLIError(f"--config {spec}: {path} not found (run `ternc simulate MODEL --target kv260 --sweep` first)")
    try:
        b = json.loads(path.read_text())["build"]
        return {"engine": EngineConfig(**b["engine"]), "clock_mhz": float(b["clock_mhz"]), "lm_head": b["lm_head"]}
    except (KeyError, TypeError, ValueError) as e:
        raise CLIError(f"--config {path}: not a sweep config ({e})") from None


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
    if tgt.pipeline and tgt.pipeline[-1] == "hw-numerics":
        # an FPGA (TLMM accelerator) target: the FPGA backend's build options (backends/fpga/build.py)
        options.update(clock_mhz=args.clock_mhz, lm_head=args.lm_head, synth=not args.no_synth, source=str(src))
        if args.config:
            options.update(_sweep_config(args.config))
    t0 = time.time()
    # the pipeline prints its per-pass table (nodes, weight bytes, KV bytes/token) as it runs
    res = ternc.compile(module, target=tgt.name, passes=args.passes, out=args.output or tgt.default_out(module),
                        context=args.context, report=lambda text: print(text, file=sys.stderr), **options)
    print(format_result(res, time.time() - t0))
    return 0


def cmd_simulate(args) -> int:
    if args.rtl:
        raise CLIError("--rtl: the accelerator top (sequencer + DMA + norm/attention units) is not built yet, so "
                       "there is no whole-model RTL to simulate; without --rtl the program runs on the dataflow "
                       "model (timing) or, with --prompt-ids, on the functional executor (tokens)")
    if args.prompt_ids is not None:
        from .backends.fpga.verify import simulate

        ids = [int(v) for v in args.prompt_ids.split(",") if v.strip()]
        rep = simulate(args.artifact, ids, args.n)
        print(rep.text())
        return 0 if rep.exact else 1
    return _simulate_dataflow(args)


def _sim_overrides(specs) -> dict:
    from .sim.dataflow import SimConfig

    fields = {f: type(v) for f, v in SimConfig().__dict__.items() if f != "cal"}
    over = {}
    for spec in specs or []:
        k, sep, v = spec.partition("=")
        if not sep or k not in fields:
            raise CLIError(f"--set expects KEY=VALUE with KEY one of {sorted(fields)}, got {spec!r}")
        over[k] = fields[k](v)
    return over


def _simulate_dataflow(args) -> int:
    from .sim import dataflow as df

    src = Path(args.artifact)
    is_art = (src / "manifest.json").exists()
    over = _sim_overrides(args.set)
    if args.board:
        over["board"] = args.board
    if args.sweep:
        from .sim import sweep as sw

        from .targets import get as get_target

        tgt = get_target(args.target)
        if not tgt.pipeline or tgt.pipeline[-1] != "hw-numerics":
            raise CLIError(f"--sweep: target {tgt.name!r} is not an FPGA accelerator target; the dataflow "
                           "simulator models the TLMM accelerator (kv260)")
        t0 = time.time()
        if is_art:
            model, manifest = df.load(src, **over)
            instrs, base, ctx = model.instrs, model.cfg, int(manifest["accelerator"]["context"])
        else:
            import ternc
            from .backends.fpga.schedule import schedule
            from .passes.pipeline import compile as run_pipeline

            from .targets import get

            module, _ = run_pipeline(ternc.load(src), list(get("kv260").pipeline), report=False)
            ctx = args.context
            instrs, base = schedule(module, ctx).program.instrs, df.SimConfig(**over)
        rep = sw.sweep(instrs, base, ctx)
        out = sw.write(rep, args.out or "ternc-sweep")
        print(sw.front_text(rep))
        print(f"[ternc] sweep in {time.time() - t0:.1f}s -> {out}/sweep.json, {out}/best_config.json "
              f"(ternc compile --target kv260 --config {out}/best_config.json)", file=sys.stderr)
        return 0
    if not is_art:
        raise CLIError(f"{src}: not a kv260 artifact folder (simulate MODEL needs --sweep)")
    t0 = time.time()
    out = args.out or (Path("ternc-sim") / src.name)
    rep = df.simulate_artifact(src, out, plots=not args.no_plots, **over)
    print(df.text(rep))
    print(f"[ternc] dataflow model in {time.time() - t0:.1f}s -> {out}/dataflow.json"
          + ("" if args.no_plots else ", roofline.png, timeline.png, timeline_decode.png"), file=sys.stderr)
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
    p.add_argument("--entry", default="main")
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
    p.add_argument("--clock-mhz", type=float, default=250.0, help="kv260: clock constraint (default 250)")
    p.add_argument("--lm-head", default="host", help="kv260: where the LM head runs (host = the ARM cores)")
    p.add_argument("--no-synth", action="store_true", help="kv260: skip yosys resource synthesis")
    p.add_argument("--config", default=None,
                   help="kv260: a design point from `ternc simulate --sweep` (a best_config.json, or 'best')")
    p.add_argument("--kernels", default=None, metavar="FILE",
                   help="reuse the kernel choices of a previous build (its manifest.json), for identical rebuilds")
    p.set_defaults(fn=cmd_compile)

    p = sub.add_parser("simulate", help="time a kv260 artifact on the dataflow model (default), check it on the "
                                        "functional executor (--prompt-ids), or sweep designs (--sweep)")
    p.add_argument("artifact", help="kv260 artifact folder (or a MODEL with --sweep)")
    p.add_argument("--prompt-ids", default=None, help="run the functional executor and compare with the interpreter")
    p.add_argument("-n", type=int, default=8)
    p.add_argument("--rtl", action="store_true", help="run the generated top in Verilator (not built yet)")
    p.add_argument("--out", default=None, help="dataflow: folder for dataflow.json and the PNG plots")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--board", default=None, help="dataflow: board data (sim/boards.py): kv260 | u280")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="dataflow: override the design (e.g. engines=2, kv_bits=4, lm_head=host-int8, clock_mhz=300)")
    p.add_argument("--sweep", action="store_true", help="design-space sweep under the board's budget")
    p.add_argument("--target", default="kv260")
    p.add_argument("--context", type=int, default=1024, help="--sweep on a MODEL: the context to schedule")
    p.set_defaults(fn=cmd_simulate)
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
