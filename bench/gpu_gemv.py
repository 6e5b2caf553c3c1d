"""Ternary W2A8 GEMV on an NVIDIA GPU vs torch fp16 (cuBLAS), for BitNet-2B4T shapes.

Two phases, because CUDA is compiled here (nvcc) and run on a lent GPU machine that has only the
TVM *runtime*:

    python bench/gpu_gemv.py build OUT_DIR            # here: TVM TIR -> CUDA source -> nvcc fatbin
    python bench/gpu_gemv.py run OUT_DIR [--json F]   # on the GPU: runtime-only TVM + torch baseline

`run` checks every kernel bit-exactly against ternc's integer contract (ir/semantics.py) on fresh
random data, then times it against `torch.nn.functional.linear` in fp16 on the same shapes, with
weights rotated over enough copies to defeat the L2 cache, and reports the fraction of HBM
bandwidth achieved on the packed weights (against a device-to-device copy measured in the same run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

# (name, N out, K in) for BitNet b1.58 2B4T: hidden 2560, FFN 6912, 20 q heads / 5 kv heads of 128.
SHAPES = [
    ("attn q/o 2560x2560", 2560, 2560),
    ("ffn up/gate 2560->6912", 6912, 2560),
    ("ffn down 6912->2560", 2560, 6912),
    ("fused qkv 2560->3840", 3840, 2560),
    ("fused gate+up 2560->13824", 13824, 2560),
]
PREFILL_M = 128
# decode schedule sweep: (M, warps per block (one output row each), where activations are read from)
DECODE_VARIANTS = [(1, r, xs) for xs in ("shared", "global") for r in (4, 8, 16)]


BACKEND_DECODE = (1, 4, "shared")  # the schedule `--target cuda` builds (kernels.dp4a_gemv_func)


def build_quantize(out: Path, arch: str) -> None:
    """The backend's fused decode activation kernel (quantize + dp4a pack) per K, as quant_k{K}.*"""
    import tvm

    from ternc.backends.tvm.kernels import quantize_dp4a_func
    from ternc.backends.tvm.kernels.cuda_ternary import cuda_target
    from ternc.ir import semantics

    for k in sorted({k for _, _, k in SHAPES}):
        f = quantize_dp4a_func(k, semantics.ACT_EPS).with_attr("global_symbol", "quantize_dp4a")
        ex = tvm.compile(tvm.IRModule({"quantize_dp4a": f}), target=cuda_target(arch))
        (out / f"quant_k{k}.cu").write_text(ex.mod.imports[0].inspect_source())
        subprocess.run(["nvcc", "--fatbin", f"-arch={arch}", "-O3", "-o", str(out / f"quant_k{k}.fatbin"),
                        str(out / f"quant_k{k}.cu")], check=True)
        ex.export_library(str(out / f"quant_k{k}.so"))


def build(out: Path, arch: str = "sm_90", sweep: bool = True) -> None:
    from ternc.backends.tvm.kernels.cuda_ternary import compile_gemm, compile_gemv

    out.mkdir(parents=True, exist_ok=True)
    build_quantize(out, arch)
    manifest = []
    decode = DECODE_VARIANTS if sweep else [BACKEND_DECODE]
    for name, n, k in SHAPES:
        for m, rpb, xs in decode + [(PREFILL_M, 0, "gemm")] + ([(PREFILL_M, 4, "shared"), (37, 0, "gemm")] if sweep else []):
            tag = f"n{n}_k{k}_m{m}_r{rpb}_{xs}"
            t0 = time.time()
            if xs == "gemm":  # prefill: the tiled GEMM (M = 37: a ragged token tile, checked for exactness)
                ex = compile_gemm(n, k, None, arch=arch)  # symbolic M, as the backend builds it
            else:
                ex = compile_gemv(n, k, m, arch=arch, rows_per_block=rpb, x_stage=xs)
            src = ex.mod.imports[0].inspect_source()
            (out / f"{tag}.cu").write_text(src)
            subprocess.run(["nvcc", "--fatbin", f"-arch={arch}", "-O3", "-o", str(out / f"{tag}.fatbin"),
                            str(out / f"{tag}.cu")], check=True)
            ex.export_library(str(out / f"{tag}.so"))
            manifest.append({"name": name, "n": n, "k": k, "m": m, "tag": tag, "rows_per_block": rpb, "x_stage": xs})
            print(f"built {tag} in {time.time() - t0:.1f}s", flush=True)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))


def _runtime_tvm(fatbins: dict):
    """Import TVM in runtime-only mode and hand prebuilt fatbins to its CUDA loader."""
    import ctypes

    os.environ["TVM_USE_RUNTIME_LIB"] = "1"
    import tvm
    import tvm_ffi

    lib = Path(tvm.__file__).parent / "lib" / "libtvm_runtime_cuda.so"
    ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
    current = {}

    @tvm_ffi.register_global_func("tvm_callback_cuda_compile", override=True)
    def _compile(code, target=None):  # noqa: ARG001 - TVM's callback signature
        return bytearray(current["fatbin"])

    return tvm, current


def run(out: Path, json_out: str | None) -> None:
    import torch

    from ternc.backends.tvm.kernels.cuda_ternary import pack_activations, weight_words
    from ternc.ir import packing, semantics

    manifest = json.loads((out / "manifest.json").read_text())
    tvm, current = _runtime_tvm({})
    dev = torch.device("cuda")
    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 60 << 20)
    # Copy bandwidth ceiling, measured now: bytes read + written per second.
    buf = torch.empty(2 << 30, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(buf)
    for _ in range(3):
        dst.copy_(buf)
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(True), torch.cuda.Event(True)
    e0.record()
    for _ in range(10):
        dst.copy_(buf)
    e1.record()
    torch.cuda.synchronize()
    copy_bw = 2 * buf.numel() * 10 / (e0.elapsed_time(e1) / 1e3)
    del buf, dst
    print(f"device: {props.name}, L2 {l2 >> 20} MB, measured copy bandwidth {copy_bw / 1e12:.2f} TB/s", flush=True)

    rng = np.random.default_rng(0)
    quant = {}  # K -> the fused quantize + pack kernel, checked bit-exact once
    for k in sorted({e["k"] for e in manifest}):
        current["fatbin"] = (out / f"quant_k{k}.fatbin").read_bytes()
        qf = tvm.runtime.load_module(str(out / f"quant_k{k}.so"))["quantize_dp4a"]
        x = (rng.standard_normal((1, k)) * 3).astype(np.float32)
        x_q, a_scale = semantics.quantize_act(x)
        tx = torch.from_numpy(x).to(dev)
        outs = [torch.full(s, -7, dtype=d, device=dev) for s, d in
                (((1,) + pack_activations(x_q).shape[1:], torch.int32), ((1,), torch.int32), ((1, 1), torch.float32))]
        qf(tvm.runtime.from_dlpack(tx), *[tvm.runtime.from_dlpack(o) for o in outs])
        torch.cuda.synchronize()
        q_exact = (np.array_equal(outs[0].cpu().numpy(), pack_activations(x_q))
                   and np.array_equal(outs[1].cpu().numpy(), x_q.astype(np.int64).sum(1).astype(np.int32))
                   and np.array_equal(outs[2].cpu().numpy().reshape(-1), np.asarray(a_scale, np.float32).reshape(-1)))
        quant[k] = (qf, q_exact)
        print(f"fused quantize+pack K={k}: bit-exact {q_exact}", flush=True)
    rows = []
    for ent in manifest:
        n, k, m, tag = ent["n"], ent["k"], ent["m"], ent["tag"]
        current["fatbin"] = (out / f"{tag}.fatbin").read_bytes()
        fmod = tvm.runtime.load_module(str(out / f"{tag}.so"))
        f = fmod["ternary_gemv"]
        # correctness on fresh random data, exact int32
        w_t = rng.integers(-1, 2, size=(n, k), dtype=np.int8)
        x = rng.standard_normal((m, k)).astype(np.float32)
        x_q, _ = semantics.quantize_act(x)
        words = weight_words(packing.pack(w_t, "i2")["codes"])
        gemm = ent.get("x_stage") == "gemm"
        mb = -(-m // 32)
        mp = mb * 32 if gemm else m  # the GEMM takes whole 32-token tiles (zero padding rows)
        xw = np.zeros((mp,) + pack_activations(x_q).shape[1:], np.int32)
        xw[:m] = pack_activations(x_q)
        s = np.zeros(mp, np.int32)
        s[:m] = x_q.astype(np.int64).sum(axis=1).astype(np.int32)
        tW = torch.from_numpy(words).to(dev)
        tX = torch.from_numpy(xw).to(dev)
        tS = torch.from_numpy(s).to(dev)
        tY = torch.full((mp, n), -7, dtype=torch.int32, device=dev)  # poisoned

        dl = tvm.runtime.from_dlpack
        vX, vS, vY = dl(tX), dl(tS), dl(tY)

        def call(Wt, _Y=None):
            if gemm:
                f(Wt, vX, vS, mb, vY)
            else:
                f(Wt, vX, vS, vY)

        call(dl(tW))
        torch.cuda.synchronize()
        want = semantics.ternary_matmul_i32(x_q, w_t)
        exact = bool(np.array_equal(tY.cpu().numpy()[:m], want))
        # timing: rotate weight copies so the working set is >= 4x L2
        wbytes = words.nbytes
        copies = max(2, int(np.ceil(4 * l2 / wbytes)))
        Ws_torch = [tW.clone() for _ in range(copies)]
        Ws = [dl(w) for w in Ws_torch]  # converted once: the timed loop is launch + kernel only
        Wf = [torch.randn(n, k, dtype=torch.float16, device=dev) for _ in range(max(2, int(np.ceil(4 * l2 / (2 * n * k)))))]
        xf = torch.randn(m, k, dtype=torch.float16, device=dev)
        reps = 200

        def timed(fn):
            for i in range(10):
                fn(i)
            torch.cuda.synchronize()
            times = []
            for _ in range(5):
                a, b = torch.cuda.Event(True), torch.cuda.Event(True)
                a.record()
                for i in range(reps):
                    fn(i)
                b.record()
                torch.cuda.synchronize()
                times.append(a.elapsed_time(b) / reps * 1e3)  # us per call
            return float(np.median(times))

        t_tern = timed(lambda i: call(Ws[i % copies]))
        t_fp16 = timed(lambda i: torch.nn.functional.linear(xf, Wf[i % len(Wf)]))

        def graphed(fn, n_calls=100):
            """us per call of `n_calls` back-to-back calls replayed as one CUDA graph: kernel time
            without host launch overhead (TVM launches join torch's capture stream via tvm_ffi)."""
            import tvm_ffi

            for i in range(3):
                fn(i)
            torch.cuda.synchronize()
            g = torch.cuda.CUDAGraph()
            with tvm_ffi.use_torch_stream(torch.cuda.graph(g)):
                for i in range(n_calls):
                    fn(i)
            g.replay()
            torch.cuda.synchronize()
            times = []
            for _ in range(5):
                a, b = torch.cuda.Event(True), torch.cuda.Event(True)
                a.record()
                g.replay()
                b.record()
                torch.cuda.synchronize()
                times.append(a.elapsed_time(b) / n_calls * 1e3)
            return float(np.median(times))

        g_tern = graphed(lambda i: call(Ws[i % copies]))
        g_fp16 = graphed(lambda i: torch.nn.functional.linear(xf, Wf[i % len(Wf)]))
        g_quant = g_quant_gemv = None
        if m == 1 and not gemm:
            # what the backend runs per decode linear: the fused quantize + pack of the f32 activation
            # (fresh each call), then the GEMV; cuBLAS gets fp16 in and out
            qf, q_exact = quant[k]
            exact = exact and q_exact
            xs32 = [dl(torch.randn(1, k, device=dev)) for _ in range(8)]
            a_sc = dl(torch.empty(1, 1, device=dev))
            g_quant = graphed(lambda i: qf(xs32[i % 8], vX, vS, a_sc))
            g_quant_gemv = graphed(lambda i: (qf(xs32[i % 8], vX, vS, a_sc), call(Ws[i % copies])))
        bw = wbytes / (t_tern * 1e-6)
        gbw = wbytes / (g_tern * 1e-6)
        rows.append({"shape": ent["name"], "m": m, "n": n, "k": k, "rows_per_block": ent.get("rows_per_block", 4),
                     "x_stage": ent.get("x_stage", "shared"),
                     "exact": exact, "ternary_us": t_tern,
                     "fp16_us": t_fp16, "speedup": t_fp16 / t_tern, "packed_MB": wbytes / 1e6,
                     "weight_bw_TBps": bw / 1e12, "frac_copy_bw": bw / copy_bw,
                     "graph_ternary_us": g_tern, "graph_fp16_us": g_fp16, "graph_speedup": g_fp16 / g_tern,
                     "graph_weight_bw_TBps": gbw / 1e12, "graph_frac_copy_bw": gbw / copy_bw,
                     "graph_quantize_us": g_quant, "graph_quantize_gemv_us": g_quant_gemv,
                     "graph_speedup_incl_quantize": (g_fp16 / g_quant_gemv) if g_quant_gemv else None,
                     "fp16_weight_bw_TBps": 2 * n * k / (g_fp16 * 1e-6) / 1e12})
        print(json.dumps(rows[-1]), flush=True)

    print("\nPer call (host launch included), and in a CUDA graph of 100 back-to-back calls (kernel time):")
    print("| shape | M | kernel (GEMV: warps/block, X from) | bit-exact | ternary us | fp16 cuBLAS us | speedup | graph: ternary us | "
          "graph: fp16 us | graph speedup | packed TB/s (graph) | % of copy BW |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['shape']} | {r['m']} | {r['rows_per_block']}, {r['x_stage']} | {'yes' if r['exact'] else 'NO'} | "
              f"{r['ternary_us']:.2f} | {r['fp16_us']:.2f} | {r['speedup']:.2f}x | {r['graph_ternary_us']:.2f} | "
              f"{r['graph_fp16_us']:.2f} | {r['graph_speedup']:.2f}x | {r['graph_weight_bw_TBps']:.2f} | "
              f"{100 * r['graph_frac_copy_bw']:.0f}% |")
    print("\nDecode, the backend's schedule, activation quantization included (ternc: fused quantize+pack of the "
          "f32 activation, then the GEMV; cuBLAS: fp16 in, fp16 out), CUDA graph of 100 calls:")
    print("| shape | quantize+pack us | GEMV us | ternc total us | cuBLAS fp16 us | speedup incl. quantize |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if r["graph_quantize_gemv_us"] and (r["rows_per_block"], r["x_stage"]) == BACKEND_DECODE[1:]:
            print(f"| {r['shape']} | {r['graph_quantize_us']:.2f} | {r['graph_ternary_us']:.2f} | "
                  f"{r['graph_quantize_gemv_us']:.2f} | {r['graph_fp16_us']:.2f} | "
                  f"{r['graph_speedup_incl_quantize']:.2f}x |")
    if json_out:
        Path(json_out).write_text(json.dumps({"device": props.name, "copy_bw_TBps": copy_bw / 1e12, "rows": rows},
                                             indent=1))


def ncu_profile(out: Path) -> None:
    """Launch each ternary kernel and its fp16 twin 3 times for `ncu` (kernel durations, cold L2)."""
    import torch

    from ternc.backends.tvm.kernels.cuda_ternary import pack_activations, weight_words
    from ternc.ir import packing, semantics

    manifest = [e for e in json.loads((out / "manifest.json").read_text()) if e["m"] == 1]
    tvm, current = _runtime_tvm({})
    dev = torch.device("cuda")
    rng = np.random.default_rng(1)
    for ent in manifest:
        n, k, tag = ent["n"], ent["k"], ent["tag"]
        current["fatbin"] = (out / f"{tag}.fatbin").read_bytes()
        f = tvm.runtime.load_module(str(out / f"{tag}.so"))["ternary_gemv"]
        w_t = rng.integers(-1, 2, size=(n, k), dtype=np.int8)
        x_q, _ = semantics.quantize_act(rng.standard_normal((1, k)).astype(np.float32))
        dl = tvm.runtime.from_dlpack
        args = [torch.from_numpy(a).to(dev) for a in (weight_words(packing.pack(w_t, "i2")["codes"]),
                                                     pack_activations(x_q),
                                                     x_q.astype(np.int64).sum(1).astype(np.int32))]
        y = torch.empty((1, n), dtype=torch.int32, device=dev)
        wf, xf = torch.randn(n, k, dtype=torch.float16, device=dev), torch.randn(1, k, dtype=torch.float16, device=dev)
        torch.cuda.synchronize()
        for _ in range(3):
            f(*[dl(a) for a in args], dl(y))
        torch.cuda.synchronize()
        torch.cuda.nvtx.range_push(f"fp16 {tag}")
        for _ in range(3):
            torch.nn.functional.linear(xf, wf)
        torch.cuda.synchronize()
        torch.cuda.nvtx.range_pop()
        print(f"profiled {tag}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=["build", "run", "ncu"])
    ap.add_argument("dir")
    ap.add_argument("--json")
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--no-sweep", action="store_true",
                    help="build: only the backend's decode schedule and the prefill GEMM at 128 tokens")
    a = ap.parse_args(argv)
    if a.phase == "build":
        build(Path(a.dir), a.arch, sweep=not a.no_sweep)
    elif a.phase == "ncu":
        ncu_profile(Path(a.dir))
    else:
        run(Path(a.dir), a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
