"""CPU decode/prefill speed of ternc (TVM backend) vs llama.cpp on a BitNet-b1.58-large-shaped model.

    python bench/cpu_vs_llamacpp.py --reps 5 --variants backend,legacy --types TQ2_0   # the README table
    python bench/cpu_vs_llamacpp.py --tiny --variants backend,legacy    # 2 layers, hidden 256: smoke run
    python bench/cpu_vs_llamacpp.py --profile ...                       # + per-kernel-class breakdown
    python bench/cpu_vs_llamacpp.py --table-from bench/results/cpu_vs_llamacpp.json   # the table again
    (bench/cpu_decode_profile.py: where one decode token goes, and the host's bandwidth bound)

Model (both engines, random weights): llama.cpp's "bitnet" architecture (LLM_ARCH_BITNET) -- the
1bitLLM bitnet_b1_58-large layout: 24 layers, hidden 1536, FFN 4096 (SiLU-gated), 16 heads of dim 96
(no GQA), vocab 32002, RMSNorm pre-norms plus BitNet's attn_sub_norm (before o_proj) and
ffn_sub_norm (before down_proj), tied F16 embeddings (the LM head reads token_embd). The seven
projections per layer are ternary: llama.cpp TQ2_0 or TQ1_0 (per-256-block fp16 scale, Q8_K
activations); ternc TernaryLinear (per-tensor scale, per-token int8 activations) in the packing
format --format (default i2, the 2-bit layout TQ2_0 also uses). The same ternary matrices go into
both. ternc's module is built directly as IR (no ONNX) with `prefill(input_ids[1, seq])` and
`decode(input_ids[1, 1], past...)` over an explicit KV cache; like llama.cpp, prefill computes
the logits (and the last layer's FFN) for the last prompt token only.

Peer: llama.cpp's `llama-bench` built from the `llama-cpp-python` sdist (vendor/llama.cpp) under
.cache/llamacpp/ on first use (Release, GGML_NATIVE=ON, CPU only, no curl/openssl), or --llama-bench.
`llama-bench -m X.gguf -p 128 -n 32 -t 2 -r R -o json`: pp128 = one 128-token prompt from an
empty cache, tg32 = 32 single-token steps from an empty cache. Ours is timed the same way:
prefill(128 tokens) and 32 greedy decode steps from an empty cache, wall clock around the Relax VM
calls (KV cache stays on the device), TVM_NUM_THREADS = --threads.

ternc variants (--variants): `backend` = backends/tvm as it is (compile_module(module, "cpu"));
`proto` = the same lowering with the prototype kernels of bench/proto_i2_vnni.py patched in at
compile time (AVX-512 VNNI i2 matmul, vectorized F16 LM head, fused attention): a measured
proposal for the backend, not the backend.

Runs are interleaved: --reps rounds, each measuring every engine once (llama.cpp TQ2_0, TQ1_0,
the ternc variants), the 1-minute load recorded at every sample; the table reports medians with
min-max spread, the ternc / llama.cpp ratio of each round (median and spread: a shared host's load
moves both engines of a round alike, so per-round ratios swing less than tokens/s), and decode's
share of the host's bandwidth bound (bytes a decode step reads over the read bandwidth measured in
the same run with bench/cpu_decode_profile.py, 4 KB and 2 MB pages). On a shared machine llama.cpp's
spinning thread pool in particular swings by 10x. `legacy` times the same build the way it ran
before issue 16 (concatenated KV cache, weights in 4 KB pages) for an A/B in the same run. For a quiet host without the TVM compiler:
`--export DIR --mcpu CPU` compiles the variants here, `--load DIR` times them with the TVM runtime
only (run under `taskset -c 0,1` to pin 2 cores). Prints a markdown table; writes JSON (--out).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ternc.models.synthetic_bitnet import (FULL, PROJ, TINY, W_SCALE, Config, build_module, embedding, proj_shape,
                                           ternary)

REPO = Path(__file__).resolve().parent.parent
LLAMA_DIR = REPO / ".cache" / "llamacpp"
LLAMA_CPP_PYTHON = "0.3.36"
DEFAULT_OUT = REPO / "bench" / "results" / "cpu_vs_llamacpp.json"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# llama.cpp: build llama-bench from the llama-cpp-python sdist, write the GGUF, run it
# ------------------------------------------------------------------------------------------------
def llama_bench_path() -> Path:
    return LLAMA_DIR / "build" / "bin" / "llama-bench"


def ensure_llama_bench(jobs: int = 2) -> tuple[Path, float | None]:
    """Path of llama-bench, building it (sdist download + cmake) if missing; (path, build seconds)."""
    exe = llama_bench_path()
    if exe.exists():
        return exe, None
    LLAMA_DIR.mkdir(parents=True, exist_ok=True)
    sdist_dir = LLAMA_DIR / "sdist"
    tarball = sdist_dir / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
    if not tarball.exists():
        log(f"downloading the llama-cpp-python {LLAMA_CPP_PYTHON} sdist")
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", str(sdist_dir)], check=True)
    src_root = LLAMA_DIR / f"llama_cpp_python-{LLAMA_CPP_PYTHON}"
    if not src_root.exists():
        with tarfile.open(tarball) as tf:
            tf.extractall(LLAMA_DIR, filter="data")
    src = src_root / "vendor" / "llama.cpp"
    build = LLAMA_DIR / "build"
    t0 = time.perf_counter()
    log("building llama-bench (cmake, Release, GGML_NATIVE=ON, CPU only); ~5+ min on 2 cores")
    subprocess.run(["cmake", "-S", str(src), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON",
                    "-DGGML_CUDA=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                    "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_UI=OFF",
                    "-DLLAMA_BUILD_APP=OFF"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(build), "--target", "llama-bench", f"-j{jobs}"], check=True,
                   stdout=subprocess.DEVNULL)
    return exe, time.perf_counter() - t0


def write_gguf(cfg: Config, qtype: str, path: Path, seed: int) -> Path:
    """The model as GGUF (arch "bitnet"), ternary projections in `qtype` (TQ2_0 / TQ1_0)."""
    import gguf

    from ternc.ir import packing

    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    qt = getattr(gguf.GGMLQuantizationType, qtype)
    to_bytes = {"TQ2_0": packing.to_gguf_tq2_0, "TQ1_0": packing.to_gguf_tq1_0}[qtype]
    w = gguf.GGUFWriter(str(tmp), "bitnet")
    w.add_name(f"{cfg.name}-random-{qtype}")
    w.add_context_length(cfg.max_pos)
    w.add_embedding_length(cfg.hidden)
    w.add_block_count(cfg.layers)
    w.add_feed_forward_length(cfg.ffn)
    w.add_head_count(cfg.heads)
    w.add_head_count_kv(cfg.n_kv)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.eps)
    w.add_file_type(getattr(gguf.LlamaFileType, f"MOSTLY_{qtype}"))
    # Minimal SentencePiece-style vocab: llama-bench only needs n_vocab tokens and bos/eos ids.
    toks = ["<unk>", "<s>", "</s>"] + [f"<t{i}>" for i in range(3, cfg.vocab)]
    w.add_tokenizer_model("llama")
    w.add_token_list(toks)
    w.add_token_scores([0.0] * cfg.vocab)
    w.add_token_types([2, 3, 3] + [1] * (cfg.vocab - 3))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_tensor("token_embd.weight", embedding(cfg, seed))
    w.add_tensor("output_norm.weight", np.ones(cfg.hidden, np.float32))
    for i in range(cfg.layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(cfg.hidden, np.float32))
        w.add_tensor(f"blk.{i}.attn_sub_norm.weight", np.ones(cfg.hidden, np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(cfg.hidden, np.float32))
        w.add_tensor(f"blk.{i}.ffn_sub_norm.weight", np.ones(cfg.ffn, np.float32))
        for p in PROJ:
            n, k = proj_shape(cfg, p)
            data = to_bytes(ternary(f"blk.{i}.{p}", n, k, seed), W_SCALE)
            w.add_tensor(f"blk.{i}.{p}.weight", data, raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, path)
    return path


def run_llama_bench(exe: Path, model: Path, threads: int, pp: int, tg: int, reps: int) -> dict:
    cmd = [str(exe), "-m", str(model), "-p", str(pp), "-n", str(tg), "-t", str(threads), "-r", str(reps),
           "-o", "json"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"llama-bench failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-3000:]}")
    res = {"cmd": " ".join(cmd)}
    for t in json.loads(r.stdout):
        key = "pp" if t["n_prompt"] and not t["n_gen"] else "tg"
        res[key] = {"avg_ts": t["avg_ts"], "stddev_ts": t["stddev_ts"], "samples_ts": t.get("samples_ts")}
        res.setdefault("info", {k: t.get(k) for k in ("build_commit", "cpu_info", "model_type", "model_size",
                                                        "model_n_params", "n_threads", "type_k")})
    return res



class TerncModel:
    """A compiled module plus its weights on the device, called through the Relax VM.

    `compile` builds it here (the TVM compiler); `load` opens a library written by `export` with the
    TVM runtime only (for timing on another host: see --export / --load). `inplace`: decode through
    the build's decode__kv_inplace entry (caches preallocated, written in place; what the artifact
    runner does) when it has one; `huge_pages`: weights in one 2 MB-page arena (what the runner does)."""

    def __init__(self, vm, module, weight_order: dict[str, list[str]], compile_s=None, kernel_choices=None,
                 dev=None, storage: dict | None = None, kv_inplace: dict | None = None, huge_pages: bool = True,
                 inplace: bool = True):
        """dev: the VM's device (default CPU); storage: the backend's weight storage views
        (Lowered.weight_storage, e.g. i2 codes as int32 words on CUDA)."""
        import tvm

        from ternc.backends.tvm.hugepages import place_weights
        from ternc.backends.tvm.runtime import storage_view
        from ternc.ir.decoder import DecoderSpec

        self.dev = dev if dev is not None else tvm.cpu()
        self.vm = vm
        self.kv_inplace = kv_inplace if inplace else None
        order = dict(weight_order)
        if self.kv_inplace:
            order[self.kv_inplace["entry"]] = list(self.kv_inplace["signature"]["weights"])
        names = {w for ws in order.values() for w in ws}
        storage = storage or {}

        def array(n):
            a = np.ascontiguousarray(module.constants[n].data)
            return storage_view(a, *storage[n]) if n in storage else a

        self.weights = place_weights({n: array(n) for n in sorted(names)}, self.dev, huge_pages=huge_pages)
        self.weight_order = order
        self.compile_s = compile_s
        self.kernel_choices = kernel_choices or []
        spec = DecoderSpec.of(module)
        self.n_layers = spec.n_layers
        self.kv_shape = (1, spec.kv_heads, spec.head_dim)
        self.fns = {name: self.vm[name] for name in order}

    @staticmethod
    def compile_built(module, variant: str = "backend", kernel_policy: str = "auto", mcpu: str | None = None):
        if variant == "proto":  # prototype kernels patched into the lowering (bench/proto_i2_vnni.py)
            import proto_i2_vnni  # a sibling script: bench/ is on sys.path when run as a script

            return proto_i2_vnni.compile_proto(module, kernel_policy, mcpu=mcpu)
        from ternc.backends.tvm.build import compile_module

        return compile_module(module, "cpu", kernel_policy=kernel_policy, mcpu=mcpu)

    @classmethod
    def from_built(cls, built, module, compile_s=None, **kw) -> "TerncModel":
        import tvm
        from tvm import relax

        vm = relax.VirtualMachine(built.executable, tvm.cpu())
        order = {name: list(sig.weights) for name, sig in built.lowered.entries.items()}
        return cls(vm, module, order, compile_s, built.lowered.kernel_choices,
                   kv_inplace=built.lowered.kv_inplace, **kw)

    @classmethod
    def compile(cls, module, variant: str = "backend", kernel_policy: str = "auto") -> "TerncModel":
        t0 = time.perf_counter()
        built = cls.compile_built(module, variant, kernel_policy)
        return cls.from_built(built, module, time.perf_counter() - t0)

    @staticmethod
    def export(module, variant: str, out_dir: Path, kernel_policy: str = "dot", mcpu: str | None = None) -> Path:
        """Compile (for `mcpu`) and write <out_dir>/<variant>.so + .json (entry weight order)."""
        built = TerncModel.compile_built(module, variant, kernel_policy, mcpu)
        out_dir.mkdir(parents=True, exist_ok=True)
        lib = out_dir / f"{variant}.so"
        built.executable.export_library(str(lib))
        (out_dir / f"{variant}.json").write_text(json.dumps({
            "entries": {name: list(sig.weights) for name, sig in built.lowered.entries.items()},
            "kv_inplace": built.lowered.kv_inplace,
            "kernel_choices": built.lowered.kernel_choices, "mcpu": mcpu}))
        return lib

    @classmethod
    def load(cls, module, variant: str, lib_dir: Path, **kw) -> "TerncModel":
        import tvm
        from tvm.runtime.vm import VirtualMachine

        info = json.loads((lib_dir / f"{variant}.json").read_text())
        vm = VirtualMachine(tvm.runtime.load_module(str(lib_dir / f"{variant}.so")), tvm.cpu())
        return cls(vm, module, info["entries"], None, info.get("kernel_choices"), kv_inplace=info.get("kv_inplace"),
                   **kw)

    def call(self, entry: str, inputs: list):
        import tvm

        args = [x if isinstance(x, (tvm.runtime.Tensor, tvm.runtime.ShapeTuple)) else tvm.runtime.tensor(x, self.dev)
                for x in inputs]
        return self.fns[entry](*args, *[self.weights[w] for w in self.weight_order[entry]])

    def decode_weights(self) -> list[str]:
        """The weights a decode step reads."""
        return self.weight_order[self.kv_inplace["entry"] if self.kv_inplace else "decode"]

    def prefill(self, ids: np.ndarray):
        out = self.call("prefill", [ids.reshape(1, -1).astype(np.int64)])
        return out[0], [out[1 + j] for j in range(2 * self.n_layers)]

    def decode(self, tok: int, kv):
        out = self.call("decode", [np.array([[tok]], np.int64), *kv])
        return out[0], [out[1 + j] for j in range(2 * self.n_layers)]

    # in place: caches [1, h, capacity, d] (KV order as decode's past inputs), written at row `length`
    def new_caches(self, capacity: int) -> list:
        import tvm

        b, h, d = self.kv_shape
        return [tvm.runtime.tensor(np.zeros((b, h, capacity, d), np.float32), self.dev) for _ in range(2 * self.n_layers)]

    def caches_from(self, kv, capacity: int) -> list:
        import tvm

        out = []
        for t in kv:
            a = t.numpy()
            buf = np.zeros((*a.shape[:2], capacity, *a.shape[3:]), np.float32)
            buf[:, :, :a.shape[2]] = a
            out.append(tvm.runtime.tensor(buf, self.dev))
        return out

    def decode_inplace(self, tok: int, caches: list, length: int):
        """Logits of token `tok` at position `length`; its keys/values land in row `length` of `caches`."""
        import tvm

        out = self.call(self.kv_inplace["entry"], [np.array([[tok]], np.int64), *caches,
                                                   tvm.runtime.ShapeTuple([length])])
        return out[0]


def time_ternc(model: TerncModel, cfg: Config, pp: int, tg: int, reps: int, seed: int) -> dict:
    """tokens/s of prefill(pp tokens) and of tg single-token decode steps from an empty cache."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, cfg.vocab, size=pp)
    empty = [np.zeros((1, cfg.n_kv, 0, cfg.head_dim), np.float32)] * (2 * cfg.layers)
    # the in-place cache is allocated once, like llama.cpp's context (outside the timed loop)
    caches = model.new_caches(tg) if model.kv_inplace else None
    # warm-up (as llama-bench does): one prefill, two decode steps
    model.prefill(ids)
    if caches is not None:
        model.decode_inplace(5, caches, 0)
        model.decode_inplace(6, caches, 1)
    else:
        _, kv = model.decode(5, empty)
        model.decode(6, kv)
    pp_s, tg_s = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        logits, _ = model.prefill(ids)
        logits.numpy()  # synchronize / materialize
        pp_s.append(pp / (time.perf_counter() - t0))
        kv = empty
        t0 = time.perf_counter()
        tok = int(ids[-1])
        for i in range(tg):
            if caches is not None:  # from an empty cache: row i is written, rows < i read
                logits = model.decode_inplace(tok, caches, i)
            else:
                logits, kv = model.decode(tok, kv)
            tok = int(np.argmax(logits.numpy()[0, -1])) % cfg.vocab  # greedy, as an app would (argmax ~0.1 ms)
        tg_s.append(tg / (time.perf_counter() - t0))
    return {"pp": {"avg_ts": float(np.mean(pp_s)), "samples_ts": pp_s},
            "tg": {"avg_ts": float(np.mean(tg_s)), "samples_ts": tg_s}}


KERNEL_CLASSES = ("proto_i2_vnni", "proto_i2_perm", "proto_linear", "ternc_tmm", "ternc_quantize", "attn_mask",
                  "matmul", "softmax", "rms_norm", "concat", "take", "linear", "transpose", "vm.builtin", "fused")


def profile_ternc(model: TerncModel, cfg: Config, pp: int, seed: int = 0, reps: int = 3) -> dict:
    """Per-kernel-class time (ms, median over reps) of one prefill(pp) and one decode step at past = pp,
    from the Relax VM's instrument hook (each call timed between its before/after callbacks)."""
    agg: dict[str, float] = {}
    start: dict[str, float] = {}

    def instr(func, name, before, ret, *args):
        t = time.perf_counter()
        if before:
            start[name] = t
        else:
            agg[name] = agg.get(name, 0.0) + t - start.pop(name, t)
        return 0

    ids = np.random.default_rng(seed).integers(3, cfg.vocab, size=pp)
    _, kv = model.prefill(ids)
    caches = model.caches_from(kv, pp + 1) if model.kv_inplace else None
    model.vm.set_instrument(instr)
    res = {}
    try:
        for entry in ("prefill", "decode"):
            runs = []
            for _ in range(reps):
                agg.clear()
                t0 = time.perf_counter()
                if entry == "prefill":
                    model.prefill(ids)
                elif model.kv_inplace:
                    model.decode_inplace(7, caches, pp)
                else:
                    model.decode(7, kv)
                wall = time.perf_counter() - t0
                cls: dict[str, float] = {}
                for name, d in agg.items():
                    key = next((c for c in KERNEL_CLASSES if c in name), "other")
                    cls[key] = cls.get(key, 0.0) + d * 1e3
                cls["(wall)"] = wall * 1e3
                runs.append(cls)
            keys = sorted({k for r in runs for k in r}, key=lambda k: -statistics.median([r.get(k, 0) for r in runs]))
            res[entry] = {k: round(statistics.median([r.get(k, 0.0) for r in runs]), 3) for k in keys}
    finally:
        model.vm.set_instrument(lambda *a: 0)
    return res


def check_ternc_tiny(module, model: TerncModel, cfg: Config) -> float:
    """Max |logit| difference of the compiled module vs the IR interpreter (prefill 4 + decode 2)."""
    from ternc.ir.interp import interpret

    ids = np.array([[5, 17, 3, 99]], np.int64) % cfg.vocab
    ref = interpret(module, {"input_ids": ids}, "prefill")
    logits, kv = model.prefill(ids[0])
    err = float(np.abs(ref["logits"] - logits.numpy()).max())
    past = {f"past.{i}.{kvn}": ref[f"present.{i}.{kvn}"] for i in range(cfg.layers) for kvn in ("key", "value")}
    ref2 = interpret(module, {"input_ids": np.array([[7]], np.int64), **past}, "decode")
    logits2, _ = model.decode(7, kv)
    err = max(err, float(np.abs(ref2["logits"] - logits2.numpy()).max()))
    if model.kv_inplace:  # the in-place entry on the same past
        logits3 = model.decode_inplace(7, model.caches_from(kv, 8), ids.shape[1])
        err = max(err, float(np.abs(ref2["logits"] - logits3.numpy()).max()))
    return err


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------
def _median(xs):
    xs = [x for x in xs if x is not None]
    return float(statistics.median(xs)) if xs else None


def _file_digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12] if path.exists() else None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


VARIANTS = {
    "backend": "ternc (backends/tvm as is: in-place KV cache, weights in huge pages)",
    "legacy": "ternc, same build, decode as before issue 16: KV cache concatenated per step, weights in 4 KB pages",
    "proto": "ternc + prototype LM-head and attention kernels (bench/proto_i2_vnni.py, not in the backend)",
}


def _spread(xs):
    xs = [x for x in xs if x is not None]
    return [min(xs), max(xs)] if xs else None


def render_table(report: dict) -> str:
    """The markdown table of a results JSON (what the README's CPU table is regenerated from)."""
    f = lambda v, d=1: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
    la = report["host"]
    cfg = report["config"]
    n = len(next((e["tg_samples"] for e in report["engines"].values() if "tg_samples" in e), []))
    lines = [f"{cfg['name']}, {report['threads']} threads, pp{report['pp']} / tg{report['tg']}: medians (min-max) over "
             f"{n} samples in {report['rounds']} interleaved rounds; 1-minute load "
             f"{f(la['loadavg_start'][0])} -> {f(la['loadavg_end'][0])} on {la['cpus']} CPUs "
             f"({report.get('cpu_model') or '?'})", "",
             f"| engine / type | pp{report['pp']} tok/s | tg{report['tg']} tok/s | vs llama.cpp TQ2_0, per round: "
             f"pp / tg median (min-max) | decode share of the bandwidth bound |",
             "|---|---|---|---|---|"]
    for name, e in report["engines"].items():
        if "pp_tok_s" not in e:
            continue
        r = e.get("ratio_vs_tq2_0") or {}
        rr = e.get("round_ratios") or {}
        def ratio(k):
            if r.get(k) is None:
                return "-"
            sp = _spread(rr.get(k) or [])
            return f"{r[k]:.2f}" + (f" ({sp[0]:.2f}-{sp[1]:.2f})" if sp else "")
        pps, tgs = _spread(e["pp_samples"]), _spread(e["tg_samples"])
        share = e.get("bound_share")
        share_s = "-" if not share else ", ".join(f"{k} {v * 100:.0f}%" for k, v in share.items())
        lines.append(f"| {name} | {f(e['pp_tok_s'])} ({f(pps[0])}-{f(pps[1])}) | {f(e['tg_tok_s'])} "
                     f"({f(tgs[0])}-{f(tgs[1])}) | {ratio('pp')} / {ratio('tg')} | {share_s} |")
    b = report.get("bound")
    if b:
        lines += ["", f"Bandwidth bound of a ternc decode step: {b['bytes_per_token'] / 1e6:.1f} MB/token (weights "
                  f"{b['weight_bytes'] / 1e6:.1f} MB + KV at tg/2) over the host's measured read bandwidth: " +
                  "; ".join(f"{t} thread(s): {bw.get('read_gbs_4k', 0):.1f} GB/s 4 KB pages, "
                            f"{bw.get('read_gbs_2m', 0):.1f} GB/s 2 MB pages" for t, bw in b["read_bandwidth"].items()) +
                  ". Share = tg tok/s x bytes/token / bandwidth (threads = the run's)."]
    lines += ["", "Load (1-minute) at each sample: " + "; ".join(
        f"{name}: " + " ".join(f"{x:.1f}" for x in e.get("tg_load", [])) for name, e in report["engines"].items()
        if e.get("tg_load"))]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="2 layers, hidden 256, FFN 768, vocab 1024: smoke run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pp", type=int, default=128)
    ap.add_argument("--tg", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default --reps)")
    ap.add_argument("--reps", type=int, default=5,
                    help="interleaved repetitions: each engine measured once per round, --reps rounds "
                         "(llama-bench -r 1 per round; the load is recorded at every sample)")
    ap.add_argument("--ternc-reps", default=None,
                    help="per-variant ternc repetitions per round, e.g. backend=1,proto=3 (default 1)")
    ap.add_argument("--format", default="i2", help="ternc packing format (i2, tl2, tl1, tq1, t2)")
    ap.add_argument("--kernel-policy", default="auto", help="ternc CPU kernel choice: auto (measured), dot, lut")
    ap.add_argument("--kernels", type=Path, default=None,
                    help="fixed ternc kernel choices: a manifest.json / kernels JSON (as `ternc compile --kernels`)")
    ap.add_argument("--variants", default="backend",
                    help="ternc variants, comma-separated: backend (backends/tvm as is), legacy (the same build, "
                         "decode as before issue 16: concatenated KV, 4 KB pages), proto (prototype kernels of "
                         "bench/proto_i2_vnni.py patched into the lowering; i2 only)")
    ap.add_argument("--types", default="TQ2_0,TQ1_0", help="llama.cpp weight types")
    ap.add_argument("--skip-llamacpp", action="store_true")
    ap.add_argument("--skip-ternc", action="store_true")
    ap.add_argument("--no-bandwidth", action="store_true", help="skip the host read-bandwidth measurement")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--llama-bench", type=Path, default=None, help="use this llama-bench binary (no build)")
    ap.add_argument("--export", type=Path, default=None,
                    help="only compile the ternc variants (for --mcpu) and write DIR/<variant>.so/.json")
    ap.add_argument("--mcpu", default=None, help="LLVM CPU for --export (default: this host)")
    ap.add_argument("--load", type=Path, default=None,
                    help="time libraries written by --export (TVM runtime only) instead of compiling")
    ap.add_argument("--profile", action="store_true",
                    help="also break ternc's prefill/decode time down by kernel class (VM instrument hook)")
    ap.add_argument("--table-from", type=Path, default=None,
                    help="only print the markdown table of an existing results JSON (README regeneration)")
    ap.add_argument("--out", type=Path, default=None, help=f"JSON results (default {DEFAULT_OUT.relative_to(REPO)}"
                    " or *_tiny.json); the table goes beside it as .md")
    args = ap.parse_args(argv)
    if args.table_from:
        print(render_table(json.loads(args.table_from.read_text())))
        return 0
    rounds = args.rounds or args.reps
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # before tvm is imported
    if args.load:
        os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")  # runtime only: no compiler library needed
    cfg = TINY if args.tiny else FULL
    out = args.out or (DEFAULT_OUT.with_name("cpu_vs_llamacpp_tiny.json") if args.tiny else DEFAULT_OUT)
    log(f"model {cfg.name}: {cfg.ternary_params / 1e6:.0f}M ternary weights; threads={args.threads}")
    variants = [] if args.skip_ternc else [v for v in args.variants.split(",") if v]
    for v in variants:
        if v not in VARIANTS:
            ap.error(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
    treps = {v: 1 for v in variants}
    for item in (args.ternc_reps or "").split(","):
        if item:
            name, n = item.split("=")
            treps[name] = int(n)
    policy = args.kernel_policy
    if args.kernels:
        from ternc.backends.tvm.build import kernel_choices_policy

        data = json.loads(args.kernels.read_text())
        policy = kernel_choices_policy(data.get("kernels", data) if isinstance(data, dict) else data,
                                       str(args.kernels))

    report: dict = {"config": asdict(cfg), "threads": args.threads, "pp": args.pp, "tg": args.tg,
                    "rounds": rounds, "ternc_reps": treps, "format": args.format,
                    "argv": sys.argv[1:] if argv is None else list(argv),
                    "host": {"machine": platform.machine(), "cpus": os.cpu_count(),
                             "loadavg_start": os.getloadavg()},
                    "backend_files": {p.name: _file_digest(p) for p in sorted((REPO / "backends" / "tvm").glob("*.py"))},
                    "cpu_model": _cpu_model(),
                    "engines": {}}
    types = [t for t in args.types.split(",") if t] if not args.skip_llamacpp else []
    exe = None
    models = {}
    if types:
        exe, build_s = (args.llama_bench, None) if args.llama_bench else ensure_llama_bench(max(2, args.threads))
        report["llamacpp_build_s"] = build_s
        report["llamacpp_source"] = f"llama-cpp-python=={LLAMA_CPP_PYTHON} sdist, vendor/llama.cpp, GGML_NATIVE=ON"
        for t in types:
            p = LLAMA_DIR / "models" / f"{cfg.name}-s{args.seed}-{t}.gguf"
            t0 = time.perf_counter()
            models[t] = write_gguf(cfg, t, p, args.seed)
            log(f"GGUF {t}: {p} ({p.stat().st_size / 1e6:.0f} MB, {time.perf_counter() - t0:.0f} s)")

    ours: dict[str, TerncModel] = {}
    weight_bytes = None
    if variants:
        t0 = time.perf_counter()
        module = build_module(cfg, args.format, args.seed)
        log(f"ternc module built ({time.perf_counter() - t0:.0f} s, {module.weight_bytes / 1e6:.0f} MB constants)")
        if args.export:
            for v in {("backend" if v == "legacy" else v) for v in variants}:
                lib = TerncModel.export(module, v, args.export, "dot" if policy == "auto" else policy, args.mcpu)
                log(f"ternc [{v}] exported: {lib} (mcpu {args.mcpu})")
            return 0
        builds = {}
        for v in variants:
            src = "backend" if v == "legacy" else v  # legacy: the backend's build, called the old way
            legacy = {"huge_pages": False, "inplace": False} if v == "legacy" else {}
            if args.load:
                ours[v] = TerncModel.load(module, src, args.load, **legacy)
                log(f"ternc [{v}] loaded from {args.load}")
            else:
                if src not in builds:
                    t0 = time.perf_counter()
                    builds[src] = (TerncModel.compile_built(module, src, policy), time.perf_counter() - t0)
                    log(f"ternc [{src}] compiled for cpu in {builds[src][1]:.0f} s")
                ours[v] = TerncModel.from_built(builds[src][0], module, builds[src][1], **legacy)
            e = report["engines"].setdefault(f"ternc {args.format} [{v}]", {})
            e.update({"what": VARIANTS[v], "compile_s": ours[v].compile_s, "kernel_choices": ours[v].kernel_choices,
                      "kv_inplace": bool(ours[v].kv_inplace)})
            if args.tiny:
                e["max_abs_err_vs_interp"] = check_ternc_tiny(module, ours[v], cfg)
                log(f"ternc [{v}] vs interpreter: max |logit diff| = {e['max_abs_err_vs_interp']:.3g}")
        weight_bytes = sum(int(np.asarray(module.constants[n].data).nbytes)
                           for n in next(iter(ours.values())).decode_weights())
        del module, builds
        if args.profile:
            for v, model in ours.items():
                prof = profile_ternc(model, cfg, args.pp, args.seed)
                report["engines"][f"ternc {args.format} [{v}]"]["profile_ms"] = prof
                for entry, d in prof.items():
                    log(f"profile [{v}] {entry}: " + ", ".join(f"{k} {x:.1f}" for k, x in d.items() if x >= 0.05))

    if weight_bytes is not None and not args.no_bandwidth:
        from cpu_decode_profile import bandwidth_table  # a sibling script

        bw = bandwidth_table(sorted({1, args.threads}))
        kv = 2 * cfg.layers * cfg.n_kv * (args.tg // 2) * cfg.head_dim * 4  # f32 KV, tg/2 rows on average
        report["bound"] = {"weight_bytes": weight_bytes, "kv_bytes": kv, "bytes_per_token": weight_bytes + kv,
                           "read_bandwidth": bw}
        log(f"read bandwidth: {bw}")

    samples: dict[str, dict[str, list]] = {}

    def add(name, res, load):
        e = samples.setdefault(name, {"pp": [], "tg": [], "pp_rounds": [], "tg_rounds": [], "load": []})
        for key in ("pp", "tg"):
            e[key] += list(res[key].get("samples_ts") or [res[key]["avg_ts"]])
            e[f"{key}_rounds"].append(res[key]["avg_ts"])
        e["load"].append(load)

    for r in range(rounds):
        for t in types:
            load = os.getloadavg()[0]
            res = run_llama_bench(exe, models[t], args.threads, args.pp, args.tg, 1)
            add(f"llama.cpp {t}", res, load)
            report["engines"].setdefault(f"llama.cpp {t}", {}).update({"info": res.get("info"), "cmd": res["cmd"]})
            log(f"round {r}: llama.cpp {t}: pp {res['pp']['avg_ts']:.1f} tg {res['tg']['avg_ts']:.1f} tok/s "
                f"(load {load:.2f})")
        for v, model in ours.items():
            load = os.getloadavg()[0]
            res = time_ternc(model, cfg, args.pp, args.tg, treps[v], args.seed + r)
            add(f"ternc {args.format} [{v}]", res, load)
            log(f"round {r}: ternc [{v}]: pp {res['pp']['avg_ts']:.2f} tg {res['tg']['avg_ts']:.2f} tok/s "
                f"(load {load:.2f})")

    for name, e in samples.items():
        report["engines"].setdefault(name, {}).update(
            {"pp_tok_s": _median(e["pp"]), "tg_tok_s": _median(e["tg"]),
             "pp_best": max(e["pp"]), "tg_best": max(e["tg"]),
             "pp_samples": e["pp"], "tg_samples": e["tg"], "pp_rounds": e["pp_rounds"], "tg_rounds": e["tg_rounds"],
             "tg_load": e["load"]})
    base = report["engines"].get("llama.cpp TQ2_0", {})
    bound = report.get("bound")
    for name, e in report["engines"].items():
        if "pp_tok_s" not in e:
            continue
        rp = e["pp_tok_s"] / base["pp_tok_s"] if base.get("pp_tok_s") else None
        rt = e["tg_tok_s"] / base["tg_tok_s"] if base.get("tg_tok_s") else None
        e["ratio_vs_tq2_0"] = {"pp": rp, "tg": rt}
        if base.get("pp_rounds"):  # the same round's samples: the ratio a shared host's load swings least
            e["round_ratios"] = {k: [a / b for a, b in zip(e[f"{k}_rounds"], base[f"{k}_rounds"])]
                                 for k in ("pp", "tg")}
            e["ratio_vs_tq2_0"] = {k: _median(v) for k, v in e["round_ratios"].items()}
        if bound and name.startswith("ternc"):
            bw = bound["read_bandwidth"][str(args.threads)]
            e["bound_share"] = {f"{k.split('_')[-1]} pages": e["tg_tok_s"] * bound["bytes_per_token"] / (g * 1e9)
                                for k, g in bw.items()}
    report["host"]["loadavg_end"] = os.getloadavg()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    table = render_table(report)
    out.with_suffix(".md").write_text(f"`python bench/cpu_vs_llamacpp.py {' '.join(report['argv'])}`\n\n{table}\n")
    print("\n" + table)
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
