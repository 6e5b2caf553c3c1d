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


def measure_kinds(fmt: str, k: int, n: int, m: int, kinds=None, repeat: int = 7, seed: int = 0,
                  target=None, cold_bytes: int = 48 << 20) -> list[KernelTiming]:
    """Compile each available CPU kernel for (fmt, K, N) and time it on M tokens. Runs the kernels
    here: `target` must be runnable on this host (target_runs_here).

    Robust to a busy host: the kinds are timed interleaved (`repeat` rounds, each kind once per round)
    and each keeps its best round, so a burst of load hits every candidate alike instead of one
    kind's whole series. Decode-like shapes (M = 1) stream their weights from memory in a real model,
    so they are timed on rotating copies of the packed weights (about `cold_bytes` in all, more than
    a last-level cache) rather than on one copy that stays in cache."""
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
    x = tvm.runtime.tensor(xp, dev)
    nbytes = sum(p.nbytes for p in parts)
    copies = max(1, min(64, -(-cold_bytes // max(nbytes, 1)))) if m == 1 else 1
    weights = [[tvm.runtime.tensor(np.ascontiguousarray(p), dev) for p in parts] for _ in range(copies)]
    out = tvm.runtime.empty((m, n), "int32", dev)
    ref = semantics.ternary_matmul_i32(xp[:, :k], w)
    funcs = {}
    for kind in kinds:
        f = build_standalone(fmt, k, n, kind, target=target or "llvm")["main"]
        f(x, *weights[0], out)  # warm up, and never pick a kernel that is not exact
        if not np.array_equal(out.numpy(), ref):
            raise RuntimeError(f"ternary kernel {kind}/{fmt} K={k} N={n} is not bit-exact")
        funcs[kind] = f
    best = {kind: float("inf") for kind in kinds}
    turn = 0
    for _ in range(repeat):
        for kind in kinds:
            ws = weights[turn % copies]
            turn += 1
            t0 = time.perf_counter()
            funcs[kind](x, *ws, out)
            best[kind] = min(best[kind], time.perf_counter() - t0)
    return [KernelTiming(kind, best[kind]) for kind in kinds]


def static_kind(kinds: list[str]) -> str:
    """The unmeasured default among available CPU kinds: `vnni` where the target has it (i2), else `dot`."""
    return "vnni" if "vnni" in kinds else kinds[0]


def host_key() -> str:
    """This host as kernel timings see it: CPU model, LLVM's CPU name, core count, TVM version."""
    import hashlib
    import os

    from tvm.target import codegen

    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    key = f"{model}|{codegen.llvm_get_system_cpu()}|{os.cpu_count()}|{tvm.__version__}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def default_cache_file():
    """Where DEFAULT_TUNER keeps measured choices across processes: $TERNC_KERNEL_CACHE (a file; "off"
    disables), else ~/.cache/ternc/kernels-<host_key>.json ($XDG_CACHE_HOME honoured)."""
    import os
    from pathlib import Path

    env = os.environ.get("TERNC_KERNEL_CACHE")
    if env is not None:
        return None if env.strip().lower() in ("", "0", "off", "none") else Path(env)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "ternc" / f"kernels-{host_key()}.json"


@dataclass
class KernelTuner:
    """Measured CPU kernel choices, one entry per (format, K, N, tokens, target): a shape is timed
    once per tuner. Lowering takes one explicitly (`lower_module(..., tuner=)`); `DEFAULT_TUNER` is
    what callers share when they pass none (a process reuses its measurements across builds).

    cache_file: a JSON file of choices measured on this host (keyed by host_key: another host's file
    is another name) read before measuring and extended after: rebuilds on the host pick the same
    kernels (a busy moment at build time cannot flip a choice once made), and so build the same
    library. "default": default_cache_file(), resolved at first use; None: memory only."""

    measured: dict = field(default_factory=dict)
    cache_file: object = None

    def _file(self):
        if self.cache_file == "default":
            self.cache_file = default_cache_file()
        return self.cache_file

    def _load(self, key: str):
        import json

        path = self._file()
        if path is None:
            return None
        try:
            return json.loads(path.read_text()).get("choices", {}).get(key)
        except (OSError, ValueError, AttributeError):
            return None

    def _store(self, key: str, entry: dict) -> None:
        import json
        import os

        path = self._file()
        if path is None:
            return
        try:
            data = json.loads(path.read_text()) if path.exists() else {}
            if not isinstance(data, dict) or not isinstance(data.get("choices"), dict):
                data = {}
        except (OSError, ValueError):
            data = {}
        data = {"host_key": host_key(), "choices": {**data.get("choices", {}), key: entry}}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only home: the choice stays in memory

    def choose(self, fmt: str, k: int, n: int, m: int, kinds: list[str], target=None, log: list | None = None) -> str:
        key = (fmt, k, n, m, str(target))
        if key not in self.measured:
            skey = "/".join(str(x) for x in key) + "/" + ",".join(sorted(kinds))
            cached = self._load(skey)
            if isinstance(cached, dict) and cached.get("chosen") in kinds:
                self.measured[key] = {**cached, "cached": True}
            else:
                timings = measure_kinds(fmt, k, n, m, kinds, target=target)
                best = min(timings, key=lambda t: t.seconds)
                self.measured[key] = {"format": fmt, "k": k, "n": n, "m": m,
                                      "timings_us": {t.kind: round(t.seconds * 1e6, 2) for t in timings},
                                      "chosen": best.kind}
                self._store(skey, self.measured[key])
        if log is not None and self.measured[key] not in log:
            log.append(self.measured[key])
        return self.measured[key]["chosen"]


DEFAULT_TUNER = KernelTuner(cache_file="default")


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
