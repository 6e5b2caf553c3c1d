"""Where a CPU decode token goes: ternc's decode step of the BitNet-b1.58-large shape, per kernel class.

    python bench/cpu_decode_profile.py                       # FULL shape, 2 threads, past = 128
    python bench/cpu_decode_profile.py --tiny --past 32      # smoke size
    python bench/cpu_decode_profile.py --bandwidth-only      # the host's read bandwidth (JSON)

One decode step at `--past` cached tokens, timed through the Relax VM's instrument hook (each VM call
between its before/after callbacks; median over --reps steps), for both decode paths of the same
build: `inplace` (the decode__kv_inplace entry the runners use: preallocated caches written in place,
weights in huge pages) and `concat` (decode as the IR states it: the cache concatenated every step,
weights in 4 KB pages). Kernel classes: ternary GEMV (ternc_tmm), activation quantization, LM head
(the f16 dense kernel), attention (scores, softmax, PV), KV write/append, norms, other fused
elementwise kernels, VM builtins (allocation, shape checks), and what is left of the wall time: the
VM's own dispatch between calls. A separate timing gives the Python side of a generate loop
(logits to host, argmax, the next id to the device).

The bound: bytes a decode step must read (every weight of the decode entry once, plus the KV cache
at `past`) over the host's read bandwidth, measured here with 1 and `--threads` threads on 4 KB and
on 2 MB pages (a vectorized, parallel int32 sum over 256 MB; best of 5). Decode's share of the
bound = (bytes/token / step time) / bandwidth. Writes bench/results/cpu_decode_profile.json (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "bench" / "results" / "cpu_decode_profile.json"

# (class, substrings of the VM call's name), first match wins
CLASSES = (
    ("ternary GEMV", ("ternc_tmm",)),
    ("activation quantize", ("ternc_quantize",)),
    ("LM head (f16 dense)", ("ternc_dense",)),
    ("attention scores", ("attn_scores", "attn_mask")),
    ("attention softmax", ("softmax",)),
    ("attention PV", ("attn_pv",)),
    ("KV write / append", ("kv_write", "kv_append", "concat")),
    ("RMSNorm", ("rms_norm",)),
    ("VM builtins (alloc, shape checks)", ("vm.builtin", "vm.", "runtime.")),
    ("other kernels (fused elementwise, rope, embed)", ("",)),
)


def classify(name: str) -> str:
    return next(c for c, keys in CLASSES if any(k in name for k in keys))


# ------------------------------------------------------------------------------------------------
# host read bandwidth
# ------------------------------------------------------------------------------------------------
def _read_kernel(n_words: int, chunks: int):
    from tvm.script import tirx as T

    per = n_words // chunks // 16

    @T.prim_func(s_tir=True)
    def read_sum(x: T.Buffer((n_words,), "int32"), out: T.Buffer((chunks, 16), "int32")):
        T.func_attr({"tir.noalias": True})
        with T.sblock("root"):
            for c in T.parallel(chunks):
                acc = T.decl_buffer((16,), "int32", scope="local")
                acc[T.ramp(0, 1, 16)] = T.broadcast(T.int32(0), 16)
                for i in range(per):
                    acc[T.ramp(0, 1, 16)] = acc[T.ramp(0, 1, 16)] + x[T.ramp((c * per + i) * 16, 1, 16)]
                for lane in range(16):
                    out[c, lane] = acc[lane]

    return read_sum


def measure_read_bandwidth(nbytes: int = 256 << 20, repeat: int = 5) -> dict:
    """GB/s of a parallel streaming read (TVM's thread pool: TVM_NUM_THREADS threads) over `nbytes`
    in 4 KB pages and in 2 MB pages (best of `repeat`)."""
    import tvm

    from ternc.backends.tvm.build import make_target
    from ternc.backends.tvm.hugepages import HugePageArena, huge_pages_supported

    n = nbytes // 4
    chunks = 64
    f = tvm.compile(tvm.IRModule({"main": _read_kernel(n, chunks)}), make_target("cpu"))["main"]
    out = tvm.runtime.empty((chunks, 16), "int32")
    res = {}
    kinds = []
    for name, huge in (("4k", False), ("2m", True)):
        if huge and not huge_pages_supported():
            continue
        a = HugePageArena(nbytes, huge=huge).array((n,), np.int32)
        a[:] = 1
        kinds.append((name, a))
    for name, a in kinds:
        t = tvm.runtime.from_dlpack(a)
        f(t, out)
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            f(t, out)
            best = min(best, time.perf_counter() - t0)
        res[f"read_gbs_{name}"] = round(nbytes / best / 1e9, 2)
    return res


def bandwidth_table(threads: list[int]) -> dict:
    """{threads: {read_gbs_4k, read_gbs_2m}}, each measured in a fresh process (TVM_NUM_THREADS)."""
    out = {}
    for t in threads:
        env = {**os.environ, "TVM_NUM_THREADS": str(t), "PYTHONPATH": os.environ.get("PYTHONPATH", str(REPO.parent))}
        r = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--bandwidth-only"], env=env,
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"bandwidth measurement failed:\n{r.stderr[-2000:]}")
        out[str(t)] = json.loads(r.stdout.strip().splitlines()[-1])
    return out


# ------------------------------------------------------------------------------------------------
# bytes per token
# ------------------------------------------------------------------------------------------------
def decode_bytes_per_token(module, weights: list[str], cfg, past: int) -> dict:
    """Bytes one decode step reads at least once: every weight of the decode entry, the KV cache
    (f32, past rows; the new row is written)."""
    w = sum(int(np.asarray(module.constants[n].data).nbytes) for n in weights)
    kv = 2 * cfg.layers * cfg.n_kv * past * cfg.head_dim * 4
    return {"weights": w, "kv": kv, "total": w + kv}


# ------------------------------------------------------------------------------------------------
# the profile
# ------------------------------------------------------------------------------------------------
def profile_step(model, run_step, reps: int) -> dict:
    """{class: {ms, calls}} of one decode step (median over reps), plus wall and VM dispatch."""
    agg: dict[str, list] = {}
    start: dict[str, float] = {}

    def instr(func, name, before, ret, *args):
        t = time.perf_counter()
        if before:
            start[name] = t
        else:
            e = agg.setdefault(name, [0.0, 0])
            e[0] += t - start.pop(name, t)
            e[1] += 1
        return 0

    run_step()  # warm
    model.vm.set_instrument(instr)
    runs = []
    try:
        for _ in range(reps):
            agg.clear()
            t0 = time.perf_counter()
            run_step()
            wall = (time.perf_counter() - t0) * 1e3
            cls: dict[str, list] = {}
            for name, (s, c) in agg.items():
                e = cls.setdefault(classify(name), [0.0, 0])
                e[0] += s * 1e3
                e[1] += c
            inside = sum(v[0] for v in cls.values())
            cls["VM dispatch (wall - calls)"] = [wall - inside, 0]
            cls["(wall, instrumented)"] = [wall, sum(v[1] for v in cls.values())]
            runs.append(cls)
    finally:
        model.vm.set_instrument(lambda *a: 0)
    keys = {k for r in runs for k in r}
    return {k: {"ms": round(statistics.median([r.get(k, [0, 0])[0] for r in runs]), 3),
                "calls": int(statistics.median([r.get(k, [0, 0])[1] for r in runs]))} for k in keys}


def time_steps(run_step, reps: int) -> float:
    """Median ms of an uninstrumented decode step."""
    run_step()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        run_step()
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def python_loop_ms(model, vocab: int, reps: int = 50) -> float:
    """The generate loop's own work per token: logits to the host, argmax, the next id to the device."""
    import tvm

    logits = tvm.runtime.tensor(np.random.default_rng(0).standard_normal((1, 1, vocab)).astype(np.float32))
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        tok = int(np.argmax(logits.numpy()[0, -1]))
        tvm.runtime.tensor(np.array([[tok]], np.int64), model.dev)
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--past", type=int, default=128, help="cached tokens at the profiled step")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--format", default="i2")
    ap.add_argument("--kernel-policy", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bandwidth-only", action="store_true", help="print this process's read bandwidth as JSON")
    ap.add_argument("--no-bandwidth", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.bandwidth_only:
        print(json.dumps(measure_read_bandwidth()))
        return 0
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    from cpu_vs_llamacpp import TerncModel

    from ternc.backends.tvm.hugepages import anon_huge_kb
    from ternc.models.synthetic_bitnet import FULL, TINY, build_module

    cfg = TINY if args.tiny else FULL
    module = build_module(cfg, args.format, args.seed)
    t0 = time.perf_counter()
    built = TerncModel.compile_built(module, "backend", args.kernel_policy)
    compile_s = time.perf_counter() - t0
    report = {"config": cfg.name, "threads": args.threads, "past": args.past, "format": args.format,
              "compile_s": round(compile_s, 1), "loadavg_start": os.getloadavg(),
              "kernel_choices": built.lowered.kernel_choices, "paths": {}}
    ids = np.random.default_rng(args.seed).integers(3, cfg.vocab, size=args.past)
    for path in ("inplace", "concat"):
        huge_before = anon_huge_kb()
        model = TerncModel.from_built(built, module, huge_pages=path == "inplace", inplace=path == "inplace")
        huge_kb = (anon_huge_kb() or 0) - (huge_before or 0)
        _, kv = model.prefill(ids)
        if path == "inplace":
            caches = model.caches_from(kv, args.past + 1)
            step = lambda: model.decode_inplace(7, caches, args.past)  # noqa: E731 - rewrites row `past`
        else:
            step = lambda: model.decode(7, kv)  # noqa: E731
        if path == "inplace":
            report["python_loop_ms"] = round(python_loop_ms(model, cfg.vocab), 3)
        prof = profile_step(model, step, args.reps)
        wall = time_steps(step, args.reps)
        weights = model.decode_weights()
        report["paths"][path] = {"step_ms": round(wall, 3), "profile": prof, "weights_in_huge_pages_mb":
                                 round(huge_kb / 1024, 1), "bytes": decode_bytes_per_token(module, weights, cfg,
                                                                                            args.past)}
        del model
    if not args.no_bandwidth:
        report["bandwidth"] = bandwidth_table(sorted({1, args.threads}))
    report["loadavg_end"] = os.getloadavg()
    out = args.out or (DEFAULT_OUT.with_name("cpu_decode_profile_tiny.json") if args.tiny else DEFAULT_OUT)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(render(report))
    print(f"\nJSON: {out}")
    return 0


def render(rep: dict) -> str:
    lines = [f"{rep['config']}, {rep['threads']} threads, one decode step at past = {rep['past']} "
             f"(load {rep['loadavg_start'][0]:.1f} -> {rep['loadavg_end'][0]:.1f}); ms, median of steps\n"]
    paths = list(rep["paths"])
    lines.append("| where | " + " | ".join(f"{p} ms (calls)" for p in paths) + " |")
    lines.append("|---|" + "---|" * len(paths))
    order = [c for c, _ in CLASSES] + ["VM dispatch (wall - calls)", "(wall, instrumented)"]
    for c in order:
        cells = []
        for p in paths:
            e = rep["paths"][p]["profile"].get(c)
            cells.append("-" if e is None else f"{e['ms']:.2f} ({e['calls']})")
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    lines.append("| decode step, uninstrumented | " + " | ".join(f"{rep['paths'][p]['step_ms']:.2f}" for p in paths) + " |")
    lines.append(f"| Python loop per token (logits to host, argmax, next id) | {rep.get('python_loop_ms', 0):.3f} | "
                 + " | ".join("" for _ in paths[1:]) + " |")
    lines.append("| weights in 2 MB pages (MB) | " + " | ".join(
        f"{rep['paths'][p]['weights_in_huge_pages_mb']:.0f}" for p in paths) + " |")
    by = rep["paths"][paths[0]]["bytes"]
    lines.append(f"\nbytes/token: {by['weights'] / 1e6:.1f} MB weights + {by['kv'] / 1e6:.1f} MB KV = "
                 f"{by['total'] / 1e6:.1f} MB")
    for t, bw in (rep.get("bandwidth") or {}).items():
        bits = []
        for kind, v in bw.items():
            bound_ms = by["total"] / (v * 1e9) * 1e3
            shares = ", ".join(f"{p} {bound_ms / rep['paths'][p]['step_ms'] * 100:.0f}%" for p in paths)
            bits.append(f"{kind.split('_')[-1]} pages {v:.1f} GB/s -> bound {bound_ms:.2f} ms/token ({shares})")
        lines.append(f"read bandwidth, {t} thread(s): " + "; ".join(bits))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
