"""Kernel constructors and selection: which kernel kind serves a (format, K, N, tokens) on a
target, measured on this host when asked (`KernelTuner`, an explicit cache of measurements), and
standalone build/run for tests."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Mapping

import numpy as np

import tvm
from tvm import te, tirx

from ....ir import packing, semantics
from .common import padded_k, scheduled
from .compute import DOT16_MAX_K, LUT_FORMATS, dot16_te, dot_te, lut_te, quantize_te
from .cpu import schedule_dot, schedule_dot16, schedule_lut
from .cuda import DP4A_FORMAT, schedule_gemm, schedule_gemv, schedule_quantize
from ..target import tvm_target
from .decode import decoder
from .vnni import VNNI_FORMAT, target_has_vnni, vnni_func


def quantize_func(k: int, eps: float = semantics.ACT_EPS, target_kind="cpu") -> tirx.PrimFunc:
    m = tirx.Var("m", "int64")
    x = te.placeholder((m, k), "float32", name="x")
    x_q, a_scale = quantize_te(x, k, padded_k(k), eps)
    func = te.create_prim_func([x, x_q, a_scale]).with_attr("global_symbol", f"ternc_quantize_k{k}")
    if tvm_target(target_kind).gpu:
        func = schedule_quantize(func)
    return scheduled(func)


def target_runs_here(target) -> bool:
    """Whether code built for `target` can run on this machine (measuring kernels executes them):
    no mtriple or this host's, no mcpu or this host's CPU (LLVM's name), and every +feature of mattr
    present on the host."""
    if target is None:
        return True
    if isinstance(target, str):
        target = tvm.target.Target(target)
    if target.kind.name != "llvm":
        return False
    from tvm.target import codegen

    triple = str(target.attrs.get("mtriple", "") or "")
    if triple and triple.split("-")[0] != str(codegen.llvm_get_system_triple()).split("-")[0]:
        return False
    host = str(codegen.llvm_get_system_cpu())
    mcpu = str(target.attrs.get("mcpu", "") or "")
    if mcpu and mcpu != host:
        return False
    feats = [str(a)[1:] for a in (target.attrs.get("mattr", None) or []) if str(a).startswith("+")]
    if feats:
        try:
            return bool(codegen.llvm_cpu_has_features(feats, tvm.target.Target({"kind": "llvm", "mcpu": host})))
        except Exception:  # noqa: BLE001
            return False
    return True


@lru_cache(maxsize=None)
def matmul_func(fmt: str, k: int, n: int, kind: str) -> tirx.PrimFunc:
    """Scheduled PrimFunc (x_q int8 [M, Kp], *packed parts, acc int32 [M, N]) for one weight shape."""
    decoder(fmt)  # a format without a TIR decoder has no kernel
    kp = padded_k(k)
    if kind == "dot":
        func = schedule_dot(te.create_prim_func(dot_te(fmt, k, n)), n, kp, fmt)
    elif kind == "dot16":
        func = schedule_dot16(te.create_prim_func(dot16_te(fmt, k, n)), n, kp, fmt)
    elif kind == "lut":
        func = schedule_lut(te.create_prim_func(lut_te(fmt, k, n)), n)
    elif kind == "vnni":
        if fmt != VNNI_FORMAT.name:
            raise ValueError(f"the vnni kernel supports {VNNI_FORMAT.name}, not {fmt!r}")
        func = vnni_func(k, n)
    elif kind == "gemv":
        func = schedule_gemv(te.create_prim_func(dot_te(fmt, k, n)), n, kp)
    elif kind == "gemm":
        func = schedule_gemm(te.create_prim_func(dot_te(fmt, k, n)), n, kp)
    else:
        raise ValueError(f"unknown ternary kernel kind {kind!r}")
    # op_pattern 8 = kOpaque: FuseOps must not fuse neighbours into a hand-scheduled kernel
    # (and tirx.is_scheduled: dlight's default GPU schedules must leave it alone)
    return scheduled(func, f"ternc_tmm_{kind}_{fmt}_k{k}_n{n}")


def available_kinds(fmt: str, target_kind, k: int | None = None, target=None) -> list[str]:
    """Kernel kinds for a format: CPU `dot` (int32 lanes), `dot16` (int16 lanes, K <= DOT16_MAX_K),
    `lut` (tl2/tl1), `vnni` (i2, only when the LLVM `target` has AVX-512 VNNI: target_has_vnni);
    CUDA `gemv`/`gemm`."""
    if tvm_target(target_kind).gpu:
        return ["gemv", "gemm"]
    kinds = ["dot"]
    if k is None or padded_k(k) <= DOT16_MAX_K:
        kinds.append("dot16")
    if fmt in LUT_FORMATS:
        kinds.append("lut")
    if fmt == VNNI_FORMAT.name and target_has_vnni(target):
        kinds.append("vnni")
    return kinds


@dataclass
class KernelTiming:
    kind: str
    seconds: float


def build_standalone(fmt: str, k: int, n: int, kind: str, target="llvm"):
    return tvm.compile(tvm.IRModule({"main": matmul_func(fmt, k, n, kind)}), target=target)


def run_standalone(lib, x_q: np.ndarray, parts: list[np.ndarray], n: int, dev=None) -> np.ndarray:
    """Run a compiled matmul kernel on int8 x_q [M, K] (padded here) and numpy packed parts."""
    dev = dev or tvm.cpu()
    m, k = x_q.shape
    xp = np.zeros((m, padded_k(k)), np.int8)
    xp[:, :k] = x_q
    out = tvm.runtime.empty((m, n), "int32", dev)
    args = [tvm.runtime.tensor(xp, dev)] + [tvm.runtime.tensor(np.ascontiguousarray(p), dev) for p in parts]
    lib["main"](*args, out)
    return out.numpy()


def measure_kinds(fmt: str, k: int, n: int, m: int, kinds=None, repeat: int = 5, seed: int = 0,
                  target=None) -> list[KernelTiming]:
    """Compile each available CPU kernel for (fmt, K, N) and time it on M tokens (best of `repeat`).
    Runs the kernels here: `target` must be runnable on this host (target_runs_here)."""
    if not target_runs_here(target):
        raise RuntimeError(f"cannot measure kernels built for {target} on this host "
                           f"(CPU {tvm.target.codegen.llvm_get_system_cpu()})")
    rng = np.random.default_rng(seed)
    w = rng.integers(-1, 2, size=(n, k)).astype(np.int8)
    parts = list(packing.pack(w, fmt).values())
    kinds = kinds or available_kinds(fmt, "cpu", k, target)
    dev = tvm.cpu()
    xp = np.zeros((m, padded_k(k)), np.int8)
    xp[:, :k] = rng.integers(-128, 128, size=(m, k))
    args = [tvm.runtime.tensor(xp, dev)] + [tvm.runtime.tensor(np.ascontiguousarray(p), dev) for p in parts]
    out = tvm.runtime.empty((m, n), "int32", dev)
    ref = semantics.ternary_matmul_i32(xp[:, :k], w)
    res = []
    for kind in kinds:
        f = build_standalone(fmt, k, n, kind, target=target or "llvm")["main"]
        f(*args, out)  # warm up, and never pick a kernel that is not exact
        if not np.array_equal(out.numpy(), ref):
            raise RuntimeError(f"ternary kernel {kind}/{fmt} K={k} N={n} is not bit-exact")
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            f(*args, out)
            best = min(best, time.perf_counter() - t0)
        res.append(KernelTiming(kind, best))
    return res


def static_kind(kinds: list[str]) -> str:
    """The unmeasured default among available CPU kinds: `vnni` where the target has it (i2), else `dot`."""
    return "vnni" if "vnni" in kinds else kinds[0]


@dataclass
class KernelTuner:
    """Measured CPU kernel choices, one entry per (format, K, N, tokens, target): a shape is timed
    once per tuner. Lowering takes one explicitly (`lower_module(..., tuner=)`); `DEFAULT_TUNER` is
    what callers share when they pass none (a process reuses its measurements across builds)."""

    measured: dict = field(default_factory=dict)

    def choose(self, fmt: str, k: int, n: int, m: int, kinds: list[str], target=None, log: list | None = None) -> str:
        key = (fmt, k, n, m, str(target))
        if key not in self.measured:
            timings = measure_kinds(fmt, k, n, m, kinds, target=target)
            best = min(timings, key=lambda t: t.seconds)
            self.measured[key] = {"format": fmt, "k": k, "n": n, "m": m,
                                  "timings_us": {t.kind: round(t.seconds * 1e6, 2) for t in timings},
                                  "chosen": best.kind}
        if log is not None and self.measured[key] not in log:
            log.append(self.measured[key])
        return self.measured[key]["chosen"]


DEFAULT_TUNER = KernelTuner()


def choose_kind(fmt: str, k: int, n: int, m: int, target_kind="cpu", policy="auto",
                log: list | None = None, target=None, tuner: KernelTuner | None = None) -> str:
    """The kernel for one weight shape and token count: `policy` names it ("dot", "dot16", "lut",
    "vnni"; a kind the format/target lacks falls back to "dot"), or "auto" measures the CPU
    candidates on this machine (through `tuner`, default DEFAULT_TUNER; a kernel that is not
    bit-exact is refused), or is a mapping {(format, k, n, m): kind} of fixed choices (a previous
    build's, `ternc compile --kernels`; shapes it lacks are chosen as by "auto"). CUDA: i2 takes the
    dp4a kernels (GEMV for one token, tiled GEMM otherwise); other formats a plain GEMV for one token
    (decode), GEMM otherwise. A target that cannot run here (another mcpu or mtriple, e.g. aarch64,
    or host-missing mattr features) is not measured: `static_kind`. `log` receives one entry per
    shape: {format, k, n, m, chosen} plus `timings_us` when measured."""
    tt = tvm_target(target_kind)
    kinds = available_kinds(fmt, tt, k, target)
    if isinstance(policy, Mapping):
        fixed = policy.get((fmt, int(k), int(n), int(m)))
        gpu_extra = ["dp4a"] if tt.gpu and fmt == DP4A_FORMAT.name else []
        if fixed is not None and fixed not in kinds + gpu_extra:
            raise ValueError(f"fixed kernel choice {fixed!r} for {fmt} K={k} N={n} M={m} is not available on "
                             f"target {tt.name} (available: {', '.join(kinds + gpu_extra)})")
        policy = fixed or "auto"
    kind = _choose_kind(fmt, k, n, m, tt, policy, kinds, target, log, tuner)
    if log is not None and not any((e["format"], e["k"], e["n"], e["m"]) == (fmt, k, n, m) for e in log):
        log.append({"format": fmt, "k": k, "n": n, "m": m, "chosen": kind})
    return kind


def _choose_kind(fmt, k, n, m, tt, policy, kinds, target, log, tuner) -> str:
    if tt.gpu:
        if fmt == DP4A_FORMAT.name and policy in ("auto", "dp4a"):
            return "dp4a"  # GEMV for one token, tiled GEMM otherwise (lowering/ternary.py)
        return "gemv" if m == 1 else "gemm"
    if policy != "auto":
        return policy if policy in kinds else kinds[0]
    if tt.static_kind is not None:
        return tt.static_kind if tt.static_kind in kinds else kinds[0]
    if len(kinds) == 1 or not tt.measures_kernels:
        return kinds[0]
    if not target_runs_here(target):  # its kernels may not run on this CPU (SIGILL): do not measure
        return static_kind(kinds)
    return (tuner or DEFAULT_TUNER).choose(fmt, k, n, m, kinds, target, log)
