"""End-to-end greedy decode of a BitNet-b1.58-2B4T-shaped model on an NVIDIA GPU: ternc (TVM CUDA
backend) against torch fp16 (cuBLAS) on the same model, in the same run.

    python bench/gpu_decode.py build OUT [--layers 30]       # here: IR -> TVM CUDA library + nvcc fatbins
    python bench/gpu_decode.py run OUT [--json F]            # on the GPU host (TVM runtime only + torch)

Model (random weights, deterministic per tensor name and seed; ternc.models.synthetic_bitnet.build_module):
BitNet b1.58 2B4T shapes -- 30 layers, hidden 2560, FFN 6912 with ReLU^2 gating, 20 query / 5 KV
heads of 128, vocab 128256, RoPE theta 500000, RMSNorm pre-norms plus BitNet's attention and FFN
sub-norms, tied fp16 embeddings as the LM head (as 2B4T keeps its embeddings in 16 bits). The seven
projections per layer are ternary `i2` with a per-tensor scale and per-token int8 activations
(ternc's integer contract, ir/semantics.py).

The weights are 0.5 GB packed (ternary) plus 0.66 GB of fp16 embeddings: too big to carry to the GPU
host, so `run` regenerates them there with the same numpy code and checks every tensor's sha256
against the digests `build` recorded here before using them.

Engines, timed the same way (prefill of a --prompt-token prompt, then --steps greedy decode steps,
wall clock, argmax on the host for ternc / on the device for torch):
  * ternc: the library compiled by `ternc.backends.tvm.build.compile_module(module, "cuda")` -- the
    backend as it is -- run through the Relax VM with the TVM runtime only; KV cache stays on the GPU.
  * torch fp16: the same graph written in torch (fp16 activations, BitNet's per-token absmax int8
    activation quantization done in fp16, F.linear on fp16 {-1,0,1} weight matrices = cuBLAS,
    SDPA attention with GQA, static KV cache), eager and captured as one CUDA graph per decode step.
Agreement: prefill logits of both engines (relative L2) and teacher-forced top-1 agreement of
torch on ternc's generated tokens. Bandwidth: bytes of weights read per decode step / step time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from cpu_vs_llamacpp import TerncModel  # a sibling script: bench/ is on sys.path when run as a script

from ternc.models.synthetic_bitnet import B2B4T, Config, TorchFP16, build_module
from ternc.report import token_divergence


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def config(layers: int) -> Config:
    from dataclasses import replace

    return replace(B2B4T, layers=layers) if layers != B2B4T.layers else B2B4T


def weight_digest(module, names: list[str]) -> dict[str, str]:
    out = {}
    for n in names:
        c = module.constants[n]
        a = np.ascontiguousarray(c.data)
        h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
        out[n] = h.hexdigest()
    return out


# ------------------------------------------------------------------------------------------------
# build (here: needs the TVM compiler and nvcc)
# ------------------------------------------------------------------------------------------------
# backend build options per variant: (fuse, cuda_graph)
VARIANTS = {"unfused": (False, False), "fused": (True, False), "fused+cudagraph": (True, True)}


def build(out: Path, layers: int, seed: int, variants: list[str]) -> None:
    from ternc.backends.tvm.build import compile_module, export

    cfg = config(layers)
    t0 = time.time()
    module = build_module(cfg, "i2", seed, static_decode=1)
    log(f"built IR for {cfg.name} ({cfg.layers} layers, {cfg.ternary_params / 1e9:.2f}B ternary weights) "
        f"in {time.time() - t0:.0f}s")
    out.mkdir(parents=True, exist_ok=True)
    info = {"config": cfg.__dict__, "seed": seed, "format": "i2", "variants": {}}
    for v in variants:
        fuse, graph = VARIANTS[v]
        t0 = time.time()
        built = compile_module(module, "cuda", fuse=fuse, cuda_graph=graph)
        log(f"[{v}] compiled for CUDA in {time.time() - t0:.0f}s")
        d = out / v
        d.mkdir(exist_ok=True)
        extra = export(built, d / "model.so")
        for name, data in extra.items():
            (d / name).parent.mkdir(parents=True, exist_ok=True)
            (d / name).write_bytes(data)
        entries = {name: list(sig.weights) for name, sig in built.lowered.entries.items()}
        info["variants"][v] = {"entries": entries,
                               "weight_storage": {k: [dt, list(sh)] for k, (dt, sh) in built.lowered.weight_storage.items()},
                               "n_kernels": sum(src.count("__global__") for src in built.cuda_sources)}
        names = sorted({w for ws in entries.values() for w in ws})
        info["weight_sha256"] = weight_digest(module, names)
    (out / "model.json").write_text(json.dumps(info, indent=1))
    log(f"wrote {out} ({sum(f.stat().st_size for f in out.rglob('*') if f.is_file()) / 1e6:.1f} MB)")


# ------------------------------------------------------------------------------------------------
# run (GPU host: TVM runtime only, torch with CUDA)
# ------------------------------------------------------------------------------------------------
class Ternc(TerncModel):
    """bench/cpu_vs_llamacpp.TerncModel on the GPU: the library and fatbins written by `build`, loaded
    with the TVM runtime only; weights in the backend's storage views; KV cache stays on the device."""

    def __init__(self, out: Path, module, info: dict):
        import tvm
        from tvm.runtime.vm import VirtualMachine

        from ternc.backends.tvm import runtime as rt

        rt._load_cuda_runtime()
        rt._register_fatbins(out / "cuda")
        dev = tvm.cuda(0)
        vm = VirtualMachine(tvm.runtime.load_module(str(out / "model.so")), dev)
        super().__init__(vm, module, info["entries"], dev=dev, storage=info.get("weight_storage"))

    def generate(self, ids, steps):
        """Greedy: returns (tokens, prefill logits [V], seconds prefill, seconds per decode step list)."""
        t0 = time.perf_counter()
        logits, kv = self.prefill(ids)
        first = logits.numpy().reshape(-1)
        t_pre = time.perf_counter() - t0
        tok = int(np.argmax(first))
        toks, dts = [tok], []
        for _ in range(steps):
            t0 = time.perf_counter()
            logits, kv = self.decode(tok, kv)
            tok = int(np.argmax(logits.numpy().reshape(-1)))
            dts.append(time.perf_counter() - t0)
            toks.append(tok)
        return toks, first, t_pre, dts

    def generate_logits(self, ids, steps):
        """Greedy tokens and every step's logits (prefill's first): (tokens, [logits])."""
        logits, kv = self.prefill(ids)
        out = [logits.numpy().reshape(-1).copy()]
        toks = [int(np.argmax(out[-1]))]
        for _ in range(steps):
            logits, kv = self.decode(toks[-1], kv)
            out.append(logits.numpy().reshape(-1).copy())
            toks.append(int(np.argmax(out[-1])))
        return toks, out




KERNEL_CLASSES = (("ternary GEMV", "tmm_dp4a_i2"), ("activation quantize/pack", ("quantize", "dp4a_pack")),
                  ("attention", ("gqa_", "softmax", "concatenate", "kv_append")), ("LM head", "linear"),
                  ("norms", "rms_norm"))


def profile_decode(tern: "Ternc", ids, steps: int = 16, kernel_classes=KERNEL_CLASSES) -> dict:
    """CUDA kernel time of `steps` decode steps by class (torch.profiler/CUPTI sees TVM's launches
    too) against the wall time: how busy the GPU is and with what."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    logits, kv = tern.prefill(ids)
    tok = int(np.argmax(logits.numpy().reshape(-1)))
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            logits, kv = tern.decode(tok, kv)
            tok = int(np.argmax(logits.numpy().reshape(-1)))
        wall = time.perf_counter() - t0
    by_class: dict = {}
    by_name: dict = {}
    n_kernels = 0
    for e in prof.events():
        if e.device_type != torch.autograd.DeviceType.CUDA:
            continue
        n_kernels += 1
        name = e.name
        cls = next((c for c, keys in kernel_classes if any(k in name for k in ((keys,) if isinstance(keys, str)
                                                                                 else keys))), "other")
        by_class[cls] = by_class.get(cls, 0.0) + e.device_time_total / 1e3  # ms
        by_name[name] = by_name.get(name, 0.0) + e.device_time_total / 1e3
    busy = sum(by_class.values())
    res = {"steps": steps, "wall_ms_per_step": 1e3 * wall / steps, "gpu_busy_ms_per_step": busy / steps,
           "kernels_per_step": n_kernels / steps,
           "ms_per_step_by_class": {k: v / steps for k, v in sorted(by_class.items(), key=lambda kv: -kv[1])},
           "ms_per_step_top_kernels": {k[:120]: v / steps for k, v in sorted(by_name.items(), key=lambda kv: -kv[1])[:15]}}
    print(f"\nternc decode profile ({steps} steps): wall {res['wall_ms_per_step']:.2f} ms/step, GPU busy "
          f"{res['gpu_busy_ms_per_step']:.2f} ms/step ({100 * busy / 1e3 / wall:.0f}%), "
          f"{res['kernels_per_step']:.0f} kernels/step")
    for k, v in res["ms_per_step_by_class"].items():
        print(f"  {k:28s} {v:.3f} ms/step")
    return res


def run(out: Path, json_out: str | None, prompt: int, steps: int, reps: int, profile: bool = False,
        extra: list[str] = (), compile_mode: str | None = None, peers: bool = True) -> dict:
    """ternc's variants (from `out` and any extra LABEL=DIR builds) interleaved with the torch fp16
    peers in every repetition: eager, CUDA graph of the eager ops, and torch.compile + CUDA graph."""
    import torch

    info = json.loads((out / "model.json").read_text())
    cfg = Config(**info["config"])
    seed = info["seed"]
    t0 = time.time()
    module = build_module(cfg, info["format"], seed, static_decode=1)
    names = sorted(info["weight_sha256"])
    got = weight_digest(module, names)
    bad = [n for n in names if got[n] != info["weight_sha256"][n]]
    if bad:
        raise SystemExit(f"regenerated weights differ from the build's digests: {bad[:5]}")
    log(f"regenerated {len(names)} weight tensors, sha256 equal to the build's ({time.time() - t0:.0f}s)")
    props = torch.cuda.get_device_properties(0)
    ids = np.random.default_rng(seed).integers(3, cfg.vocab, size=prompt)

    def summary(runs):
        dts = [d for r in runs for d in r[3]]
        med = float(np.median(dts))
        return {"decode_tok_s": 1.0 / med, "decode_ms_median": 1e3 * med,
                "decode_ms_p90": 1e3 * float(np.percentile(dts, 90)),
                "prefill_tok_s": float(np.median([prompt / r[2] for r in runs])),
                "decode_tok_s_per_rep": [1.0 / float(np.median(r[3])) for r in runs]}

    builds = [("", out)]
    for e in extra:
        label, d = e.split("=", 1)
        builds.append((label, Path(d)))
    runners, meta = {}, {}
    for label, bdir in builds:
        binfo = json.loads((bdir / "model.json").read_text())
        if binfo["weight_sha256"] != {n: info["weight_sha256"][n] for n in binfo["weight_sha256"]}:
            raise SystemExit(f"{bdir} was built from other weights than {out}")
        for v, vinfo in binfo["variants"].items():
            name = f"ternc [{v}{', ' + label if label else ''}]"
            tern = Ternc(bdir / v, module, vinfo)
            tern.generate(ids, 2)  # warm-up (and CUDA-graph capture where compiled in)
            runners[name] = lambda ids_, steps_, t=tern: t.generate(ids_, steps_)
            meta[name] = (tern, vinfo)
    tor = torc = None
    if peers:
        tor = TorchFP16(cfg, seed, max_len=prompt + steps + 8)
        torch_bytes = tor.weight_bytes()
        with torch.no_grad():
            tor.generate(ids, 2, "eager")
            tor.capture()
            t0 = time.time()
            try:
                torc = tor.compiled_twin(compile_mode)
                torc.generate(ids, 2, "eager")  # compiles the prompt-length graph
                torc.capture()                  # compiles the one-token step, then records it
                log(f"torch.compile (mode {compile_mode or 'default'}) + capture: {time.time() - t0:.0f}s")
            except Exception as e:  # report it, keep the rest of the measured run
                log(f"torch.compile peer FAILED: {type(e).__name__}: {str(e)[:2000]}")
                torc = None
        runners["torch fp16 eager (cuBLAS)"] = lambda i, s: tor.generate(i, s, "eager")
        runners["torch fp16 + CUDA graph"] = lambda i, s: tor.generate(i, s, "graph")
        if torc is not None:
            runners["torch fp16 torch.compile + CUDA graph"] = lambda i, s: torc.generate(i, s, "graph")
    runs: dict = {k: [] for k in runners}
    with torch.no_grad():
        for r in range(reps):  # interleaved: every engine once per repetition
            for k, fn in runners.items():
                runs[k].append(fn(ids, steps))
            log(f"rep {r + 1}/{reps}: " + ", ".join(f"{k} {1 / np.median(v[-1][3]):.0f}" for k, v in runs.items()))
    engines, tokens, firsts, step_logits = {}, {}, {}, {}
    for k, rs in runs.items():
        if k.startswith("ternc") and any(r[0] != rs[0][0] for r in rs):
            raise SystemExit(f"{k} is not deterministic across runs")
        engines[k] = summary(rs)
        if k in meta:
            tern, vinfo = meta[k]
            engines[k]["weight_bytes"] = sum(tern.weights[n].numpy().nbytes for n in vinfo["entries"]["decode"])
            engines[k]["kernels"] = vinfo.get("n_kernels")
            tokens[k], firsts[k] = rs[0][0], rs[0][1]
        else:
            engines[k]["weight_bytes"] = torch_bytes
    ternc_names = list(meta)
    ref_v = ternc_names[0]
    toks = tokens[ref_v]
    # token agreement between ternc variants, with the reason where they part (per-step logits of one
    # more greedy run each)
    for k in ternc_names:
        step_logits[k] = meta[k][0].generate_logits(ids, steps)
    same_tokens_pairs = {f"{a} == {b}": step_logits[a][0] == step_logits[b][0]
                         for i, a in enumerate(ternc_names) for b in ternc_names[i + 1:]}
    keys = {}
    for k in ternc_names:
        _, kv = meta[k][0].prefill(ids)
        keys[k] = [kv[2 * i].numpy()[0] for i in range(cfg.layers)]
    if profile:
        for k in ternc_names:
            try:
                engines[k]["profile"] = profile_decode(meta[k][0], ids)
            except Exception as e:  # the profiler is a diagnostic: never lose the measured run to it
                log(f"profile failed: {type(e).__name__}: {e}")
    forced = {}
    if peers:
        with torch.no_grad():
            forced["torch fp16 + CUDA graph"] = tor.generate(ids, steps, "graph", forced=toks[:-1])
            if torc is not None:
                forced["torch fp16 torch.compile + CUDA graph"] = torc.generate(ids, steps, "graph",
                                                                                forced=toks[:-1])
        del tor, torc
        torch.cuda.empty_cache()
    # The same graph in torch float32: what ternc computes, up to float summation order (a correctness
    # check of ternc's CUDA code on this model; fp16 is the speed peer and drifts further).
    torch.backends.cuda.matmul.allow_tf32 = False  # true fp32 GEMMs
    t32 = TorchFP16(cfg, seed, max_len=prompt + steps + 8, dtype="float32")
    with torch.no_grad():
        t32.prefill(ids)
        keys32 = [t32.k[i][0, :, :prompt].cpu().numpy() for i in range(cfg.layers)]
        forced["torch fp32 (same math)"] = t32.generate(ids, steps, "eager", forced=toks[:-1])
        # the floor any two implementations meet: torch fp32 against itself with the embeddings
        # perturbed by 1e-7 relative noise (about one float32 ulp)
        t32.embed = t32.embed * (1 + 1e-7 * torch.randn(t32.embed.shape, generator=torch.Generator(
            device=t32.dev).manual_seed(0), device=t32.dev))
        t32.prefill(ids)
        keys["torch fp32, embeddings x (1 + 1e-7 noise)"] = [t32.k[i][0, :, :prompt].cpu().numpy()
                                                            for i in range(cfg.layers)]
    del t32, module
    key_rel = {v: [float(np.linalg.norm(keys[v][i] - keys32[i]) / np.linalg.norm(keys32[i]))
                   for i in range(cfg.layers)] for v in keys}
    # the rounding sensitivity of this model: torch fp32 against itself with ~1 ulp of input noise
    noise_floor = key_rel["torch fp32, embeddings x (1 + 1e-7 noise)"][-1]
    variant_agreement = {k: token_divergence(step_logits[ref_v], step_logits[k], noise_floor) for k in ternc_names}

    def agreement(fr):
        rel = float(np.linalg.norm(firsts[ref_v] - fr[1]) / np.linalg.norm(fr[1]))
        return {"prefill_logits_rel_l2": rel, "teacher_forced_top1": float(np.mean(np.array(fr[4]) == np.array(toks)))}

    agree = {k: agreement(v) for k, v in forced.items()}
    for r in engines.values():
        r["weight_GBps"] = r["weight_bytes"] / (r["decode_ms_median"] * 1e-3) / 1e9
    res = {"device": props.name, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "model": cfg.__dict__,
           "prompt": prompt, "steps": steps, "reps": reps, "interleaved": True,
           "torch": torch.__version__, "torch_compile_mode": compile_mode or "default",
           "engines": engines, "ternc_variant_agreement_vs": ref_v, "ternc_variant_agreement": variant_agreement,
           "ternc_same_tokens_pairs": same_tokens_pairs,
           "peer_agreement_with_ternc_tokens": agree, "reference_engine": ref_v,
           "ternc_tokens": toks[:16], "prefill_key_rel_l2_vs_torch_fp32_per_layer": key_rel}
    best = max((k for k in engines if k.startswith("ternc")), key=lambda k: engines[k]["decode_tok_s"])
    peer = "torch fp16 torch.compile + CUDA graph"
    print(f"\n{cfg.name} on {props.name}: prompt {prompt}, {steps} greedy decode steps, median over {reps} "
          f"interleaved runs\n")
    print(f"| engine | decode tok/s | ms/token (p90) | prefill tok/s | weights read / token | weight GB/s | "
          f"{best} decode speed-up | prefill speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for k, r in engines.items():
        print(f"| {k} | {r['decode_tok_s']:.1f} | {r['decode_ms_median']:.2f} ({r['decode_ms_p90']:.2f}) | "
              f"{r['prefill_tok_s']:.0f} | {r['weight_bytes'] / 1e9:.2f} GB | {r['weight_GBps']:.0f} | "
              f"{engines[best]['decode_tok_s'] / r['decode_tok_s']:.2f}x | "
              f"{engines[best]['prefill_tok_s'] / r['prefill_tok_s']:.2f}x |")
    if peer in engines:
        res["best_ternc_vs_compiled_peer"] = {"engine": best,
                                              "decode": engines[best]["decode_tok_s"] / engines[peer]["decode_tok_s"],
                                              "prefill": engines[best]["prefill_tok_s"] / engines[peer]["prefill_tok_s"]}
    for name, ag in agree.items():
        print(f"{name} teacher-forced on {ref_v}'s tokens: prefill logits rel. L2 {ag['prefill_logits_rel_l2']:.2e}, "
              f"top-1 agreement {100 * ag['teacher_forced_top1']:.1f}% over {steps + 1} tokens")
    print(f"\nternc variants' greedy tokens vs {ref_v}:")
    for k, d in variant_agreement.items():
        if d["same_tokens"]:
            print(f"  {k}: same {d['steps']} tokens")
        else:
            print(f"  {k}: first differs at step {d['first_differing_step']} ({d['tokens']}): top-2 margin "
                  f"{d['ref_top2_margin']:.3g}, max |logit diff| {d['max_abs_logit_diff_at_step']:.3g} -> {d['reason']}")
    for pair, same in same_tokens_pairs.items():
        print(f"  {pair}: {'same' if same else 'different'} tokens")
    show = sorted({0, 1, 2, 4, 8, 16, cfg.layers - 1} & set(range(cfg.layers)))
    print("\nprefill keys vs torch fp32, relative L2 by layer (last row: torch fp32 against itself with ~1 ulp of"
          " noise on its embeddings -- the rounding sensitivity of this random int8-activation model):")
    print("| engine | " + " | ".join(f"layer {i}" for i in show) + " |")
    print("|---|" + "---|" * len(show))
    for v, r in key_rel.items():
        print(f"| {v} | " + " | ".join(f"{r[i]:.1e}" for i in show) + " |")
    if json_out:
        Path(json_out).write_text(json.dumps(res, indent=1))
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=["build", "run"])
    ap.add_argument("dir")
    ap.add_argument("--layers", type=int, default=B2B4T.layers)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"build: comma list of {list(VARIANTS)}")
    ap.add_argument("--json")
    ap.add_argument("--profile", action="store_true", help="run: CUDA kernel time of decode steps by class")
    ap.add_argument("--with", dest="extra", action="append", default=[], metavar="LABEL=DIR",
                    help="run: also time the variants of another build of the same model (e.g. before=DIR)")
    ap.add_argument("--compile-mode", default=None, help="run: torch.compile mode of the compiled peer")
    a = ap.parse_args(argv)
    if a.phase == "build":
        build(Path(a.dir), a.layers, a.seed, a.variants.split(","))
    else:
        run(Path(a.dir), a.json, a.prompt, a.steps, a.reps, a.profile, a.extra, a.compile_mode)
    return 0


if __name__ == "__main__":
    sys.exit(main())
