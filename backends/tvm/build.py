"""Compile a lowered ternc module with TVM for cpu (host x86/LLVM), aarch64 (cross) or cuda, and
write it as an artifact.

`compile_module(module, target)` -> Built (the TVM Executable, entry signatures, kernel choices).
`export(built, lib_path)` writes the shared library (cross-compiling for aarch64, and for CUDA also
the device code's fatbins, built ahead of time with nvcc, that the runtime hands back to TVM).
`build_artifact(module, target, out)` does both and writes the artifact (backends/artifact.py).
What differs between targets is data on `target.TvmTarget`. This module imports the TVM compiler;
the runtime side lives in `runtime.py`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import tvm

from ...ir.core import Module
from ..artifact import Artifact, json_safe, write_artifact
from .lowering import Lowered, lower_module
from .target import AARCH64_CC, AARCH64_TRIPLE, CUDA_ARCH, TVM_TARGETS, TvmTarget, tvm_target  # noqa: F401

LIB = "lib/model.so"
_CUDA_MODULE = "cuda"  # the runtime module kind holding CUDA C source
WEIGHTS = "weights.safetensors"


class BuildError(RuntimeError):
    pass


def host_cpu() -> str:
    from tvm.target import codegen

    return str(codegen.llvm_get_system_cpu())


def _cross_target(host_arch: str | None) -> TvmTarget | None:
    """The cross-compiled CPU target whose host code runs on `host_arch` (None: this machine's)."""
    if host_arch is None or host_arch in TVM_TARGETS["cpu"].host_machines:
        return None
    for t in TVM_TARGETS.values():
        if t.triple and host_arch in t.host_machines:
            return t
    raise BuildError(f"no cross target for host code on {host_arch!r}; known: "
                     f"{sorted(m for t in TVM_TARGETS.values() for m in t.host_machines)}")


def make_target(target: "str | TvmTarget", mcpu: str | None = None, cuda_arch: str | None = None,
                host_arch: str | None = None) -> tvm.target.Target:
    """The tvm Target: LLVM for this machine's CPU (or `mcpu`), an LLVM cross triple, or CUDA (sm_90)."""
    try:
        t = tvm_target(target)
    except ValueError as e:
        raise BuildError(str(e)) from None
    if t.gpu:
        host = {"kind": "llvm"}
        cross = _cross_target(host_arch)  # Jetson: device code for cuda_arch, host code cross-compiled
        if cross is not None:
            host["mtriple"] = cross.triple
        return tvm.target.Target({"kind": t.tvm_kind, "arch": cuda_arch or CUDA_ARCH}, host=host)
    cfg: dict[str, Any] = {"kind": "llvm"}
    if t.triple:
        cfg["mtriple"] = t.triple
    if mcpu or t.host_cpu_default:
        cfg["mcpu"] = mcpu or host_cpu()
    return tvm.target.Target(cfg)


@dataclass
class Built:
    tvm_target: TvmTarget
    target: tvm.target.Target
    executable: object
    lowered: Lowered
    cuda_sources: list[str] = field(default_factory=list)
    host_arch: str | None = None     # GPU targets: "aarch64" when the host code is cross-compiled
    cuda_arch: str | None = None     # GPU targets: the SM the fatbins are built for

    @property
    def target_name(self) -> str:
        return self.tvm_target.name


def _no_fuse_scalar_param_funcs():
    """Mark TIR functions that take scalar (non-buffer) parameters opaque to FuseOps: TVM 0.27's
    FuseTIR fails with a RenewDefs check when such a function (e.g. arange(past)) joins a group
    whose shapes use the same symbolic variable."""

    @tvm.transform.module_pass(opt_level=0, name="NoFuseScalarParamFuncs")
    def _pass(mod, _ctx):
        for gv, f in list(mod.functions.items()):
            if isinstance(f, tvm.tirx.PrimFunc) and any("BufferType" not in type(p.ty).__name__ for p in f.params):
                mod[gv] = f.with_attr("op_pattern", 8)  # kOpaque
        return mod

    return _pass


def _sorted_shape_func(f):
    """`f` (a VMShapeLower shape function: independent stores `H[i] = expr(H[var slots])`) with its
    stores ordered by slot index, or `f` unchanged when it is not of that form."""
    from tvm import tirx

    body = f.body
    stores = list(body.seq) if isinstance(body, tirx.SeqStmt) else None
    if not stores or not all(isinstance(st, tirx.BufferStore) and len(st.indices) == 1
                             and isinstance(st.indices[0], tirx.IntImm) for st in stores):
        return f
    import re

    written = {int(st.indices[0].value) for st in stores}
    read: set = set()
    for st in stores:  # the slots each value loads, from its printed form (no TIR visitor in Python here)
        text = str(st.value)
        loads = re.findall(r"\[T\.int64\((\d+)\)\]", text)
        if text.count("[") != len(loads):
            return f  # a load we cannot read: keep the order
        read |= {int(i) for i in loads}
    if read & written:  # a store reads another's result: its order matters, keep it
        return f
    ordered = sorted(stores, key=lambda st: int(st.indices[0].value))
    return f.with_body(tirx.SeqStmt(ordered))


def _canonical_shape_funcs():
    """TVM's VMShapeLower emits each shape function's stores in the iteration order of an unordered_map
    keyed by a structural hash that, for free symbolic vars, hashes their addresses: the same module
    gives the stores in another order from build to build, and so another `model.so` (LLVM schedules
    them differently). The stores are independent (each reads only symbolic-var slots), so ordering them
    by slot index makes the library byte-identical across builds (issue 14)."""
    from tvm import tirx

    @tvm.transform.module_pass(opt_level=0, name="TerncCanonicalShapeFuncs")
    def _pass(mod, _ctx):
        for gv, f in list(mod.functions.items()):
            if isinstance(f, tirx.PrimFunc) and gv.name_hint.startswith("shape_func"):
                mod[gv] = _sorted_shape_func(f)
        return mod

    return _pass


def _cpu_pipeline():
    from tvm import relax

    return tvm.transform.Sequential([relax.get_pipeline("default"), _canonical_shape_funcs()])


def _cuda_pipeline_pass(target, fuse: bool = True, cuda_graph: bool = False):
    """Relax pipeline for CUDA: legalize, then dlight default GPU schedules for every unscheduled
    TIR function (our ternary kernels come scheduled already)."""
    from tvm import relax
    from tvm.s_tir import dlight as dl

    @tvm.transform.module_pass(opt_level=0)
    def _pipeline(mod, _ctx):
        with target:
            seq = tvm.transform.Sequential([
                relax.backend.DispatchSampling(),
                relax.backend.DispatchSortScan(),
                relax.transform.LegalizeOps(),
                relax.transform.AnnotateTIROpPattern(),
                relax.transform.FoldConstant(),
                *([_no_fuse_scalar_param_funcs(), relax.transform.FuseOps(), relax.transform.FuseTIR()]
                  if fuse else []),
                dl.ApplyDefaultSchedule(dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
                                        dl.gpu.GeneralReduction(), dl.gpu.Fallback()),
                relax.transform.RewriteDataflowReshape(),
                relax.transform.ToNonDataflow(),
                relax.transform.RemovePurityChecking(),
                relax.transform.CallTIRRewrite(),
                relax.transform.StaticPlanBlockMemory(),
                *([relax.transform.RewriteCUDAGraph()] if cuda_graph else []),
                relax.transform.LowerAllocTensor(),
                relax.transform.KillAfterLastUse(),
                relax.transform.LowerRuntimeBuiltin(),
                relax.transform.ComputePrimValue(),
                relax.transform.VMShapeLower(),
                _canonical_shape_funcs(),
                relax.transform.AttachGlobalSymbol(),
            ])
            return seq(mod)

    return _pipeline


def _cpu_pipeline_pass(target):
    """Relax pipeline for CPU targets: TVM's CPU pipeline (legalize, then FuseOps/FuseTIR: the
    elementwise chains between our kernels -- dequantize, residual adds, RoPE, gating -- become one
    kernel each instead of one kernel and one allocation per op, which tvm.compile's generic default
    leaves them as), with scalar-parameter functions kept out of fusion groups as on CUDA."""
    from tvm import relax

    @tvm.transform.module_pass(opt_level=0)
    def _pipeline(mod, _ctx):
        with target:
            seq = tvm.transform.Sequential([
                relax.backend.DispatchSampling(),
                relax.backend.DispatchSortScan(),
                relax.transform.LegalizeOps(),
                relax.transform.AnnotateTIROpPattern(),
                relax.transform.FoldConstant(),
                _no_fuse_scalar_param_funcs(),
                relax.transform.FuseOps(),
                relax.transform.FuseTIR(),
                relax.transform.RewriteDataflowReshape(),
                relax.transform.ToNonDataflow(),
                relax.transform.RemovePurityChecking(),
                relax.transform.CallTIRRewrite(),
                relax.transform.StaticPlanBlockMemory(),
                relax.transform.LowerAllocTensor(),
                relax.transform.KillAfterLastUse(),
                relax.transform.LowerRuntimeBuiltin(),
                relax.transform.ComputePrimValue(),
                relax.transform.VMShapeLower(),
                _canonical_shape_funcs(),
                relax.transform.AttachGlobalSymbol(),
            ])
            return seq(mod)

    return _pipeline


def compile_module(module: Module, target: "str | TvmTarget" = "cpu", kernel_policy: Any = "auto", entries=None,
                   mcpu: str | None = None, fuse: bool = True, cuda_graph: bool = True,
                   cuda_arch: str | None = None, host_arch: str | None = None) -> Built:
    """kernel_policy: "auto", a kernel kind, or fixed choices {(format, k, n, m): kind}
    (kernels.choose_kind). `fuse` runs Relax FuseOps/FuseTIR (elementwise chains become
    one kernel); `cuda_graph` captures the static-shape regions of each call (everything but the
    KV-length dependent attention) as CUDA graphs on first run and replays them (Relax RewriteCUDAGraph).
    `fuse` applies to CPU targets too (TVM's CPU pipeline; False: tvm.compile's generic default)."""
    t = tvm_target(target) if isinstance(target, TvmTarget) or target in TVM_TARGETS else None
    if t is None:
        raise BuildError(f"unknown target {target!r}; supported: {', '.join(TVM_TARGETS)}")
    if not t.gpu and (cuda_arch or host_arch):
        raise BuildError(f"cuda_arch / host_arch apply to GPU targets, not {t.name!r}")
    tgt = make_target(t, mcpu, cuda_arch, host_arch)
    graphs = t.cuda_graphs and cuda_graph
    # decode takes one new token per call (what generate does) where CUDA graphs capture it
    lowered = lower_module(module, entries, t, kernel_policy, target=None if t.gpu else tgt,
                           decode_tokens=1 if graphs else None)
    if t.gpu:
        with tvm.transform.PassContext(config={"relax.backend.use_cuda_graph": bool(graphs)}):
            ex = tvm.compile(lowered.mod, tgt, relax_pipeline=_cuda_pipeline_pass(tgt, fuse, graphs))
        return Built(t, tgt, ex, lowered, cuda_sources(ex.mod), host_arch or "x86_64", cuda_arch or CUDA_ARCH)
    ex = tvm.compile(lowered.mod, tgt, relax_pipeline=_cpu_pipeline_pass(tgt) if fuse else _cpu_pipeline())
    return Built(t, tgt, ex, lowered)


def cuda_sources(mod) -> list[str]:
    """CUDA C sources of every `cuda` module imported (transitively) by a runtime module."""
    out, stack, seen = [], [mod], set()
    while stack:
        m = stack.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        if m.kind == _CUDA_MODULE:
            out.append(m.inspect_source())
        stack.extend(m.imports)
    return out


def _cross_compiler(t: TvmTarget):
    from tvm.support import cc

    path = shutil.which(t.cross_cc)
    if path is None:
        raise BuildError(f"target {t.name} needs the cross compiler {t.cross_cc} on PATH "
                         f"(Debian/Ubuntu: apt-get install gcc-{t.triple})")
    return cc.cross_compiler(path)


def nvcc_version() -> str:
    """e.g. "13.0.88": recorded in CUDA manifests (the board's driver must support this CUDA)."""
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    return next((tok[1:] for tok in out.split() if tok.startswith("V") and tok[1:2].isdigit()), "unknown")


def nvcc_fatbin(code: str, arch: str | None = None, out_dir: str | None = None) -> bytes:
    arch = arch or CUDA_ARCH
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
    if nvcc is None:
        raise BuildError("target cuda needs nvcc to build fatbins ahead of time")
    with tempfile.TemporaryDirectory(dir=out_dir) as d:
        src, out = Path(d) / "kernels.cu", Path(d) / "kernels.fatbin"
        src.write_text(code)
        r = subprocess.run([nvcc, "--fatbin", "-O3", f"-arch={arch}", "-o", str(out), str(src)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise BuildError(f"nvcc failed ({r.returncode}):\n{r.stderr[-4000:]}")
        return out.read_bytes()


def export(built: Built, lib_path: str | os.PathLike) -> dict[str, bytes]:
    """Write the compiled library. Returns extra files to ship (name -> bytes): CUDA fatbins."""
    lib_path = str(lib_path)
    extra: dict[str, bytes] = {}
    if built.tvm_target.cross_cc:
        built.executable.export_library(lib_path, fcompile=_cross_compiler(built.tvm_target))
    elif _cross_target(built.host_arch) is not None:
        built.executable.export_library(lib_path, fcompile=_cross_compiler(_cross_target(built.host_arch)))
    else:
        built.executable.export_library(lib_path)
    if built.tvm_target.fatbins:
        for code in built.cuda_sources:
            key = hashlib.sha256(code.encode()).hexdigest()
            extra[f"cuda/{key}.fatbin"] = nvcc_fatbin(code, built.cuda_arch)
            extra[f"cuda/{key}.cu"] = code.encode()
    return extra


class JitRunner:
    """In-process Runner over a compiled (not exported) module: `.meta`, `.run(entry, inputs)`.
    Uses the compiler's VM wrapper; artifacts use `runtime.TVMRunner` instead."""

    def __init__(self, module: Module, built: Built):
        import numpy as np
        from tvm import relax

        if not built.tvm_target.jit_runnable:
            raise BuildError(f"JitRunner runs host CPU builds only, not {built.target_name}")
        self.meta = module.meta
        self.built = built
        self.vm = relax.VirtualMachine(built.executable, tvm.cpu())
        from .hugepages import place_weights

        self.weights = place_weights({w: built.lowered.weight_array(module, w) for w in built.lowered.weights},
                                     tvm.cpu())

    def run(self, entry, inputs):
        import numpy as np

        sig = self.built.lowered.entries[entry]
        args = [tvm.runtime.tensor(np.ascontiguousarray(np.asarray(inputs[i["name"]]).astype(i["dtype"])))
                for i in sig.inputs]
        out = self.vm[entry](*args, *[self.weights[w] for w in sig.weights])
        return {o["name"]: out[j].numpy() for j, o in enumerate(sig.outputs)}


def compile_runner(module: Module, target: str = "cpu", kernel_policy: str = "auto") -> JitRunner:
    """Compile for the host CPU and return an in-process Runner (no artifact written)."""
    return JitRunner(module, compile_module(module, target, kernel_policy=kernel_policy))


def _kernel_choices(log: list) -> list[dict]:
    """The manifest's kernel record: one {format, k, n, m, kind} per ternary weight shape, sorted."""
    rows = {(e["format"], e["k"], e["n"], e["m"]): e["chosen"] for e in log}
    return [{"format": f, "k": k, "n": n, "m": m, "kind": rows[(f, k, n, m)]} for f, k, n, m in sorted(rows)]


def kernel_choices_policy(choices: Any, where: str = "kernel choices") -> dict:
    """Fixed choices {(format, k, n, m): kind} from a manifest's `kernels` record (or its `choices`
    list): what `ternc compile --kernels FILE` reuses so that a rebuild picks the same kernels."""
    if isinstance(choices, dict) and "choices" in choices:
        choices = choices["choices"]
    if not isinstance(choices, list):
        raise BuildError(f"{where}: expected a list of {{format, k, n, m, kind}} objects")
    out = {}
    for c in choices:
        try:
            key = (str(c["format"]), int(c["k"]), int(c["n"]), int(c["m"]))
            out[key] = str(c.get("kind", c.get("chosen")))
        except (KeyError, TypeError, ValueError):
            raise BuildError(f"{where}: bad entry {c!r}; expected {{format, k, n, m, kind}}") from None
    return out


def build_artifact(module: Module, target: "str | TvmTarget" = "cpu", out_dir="artifact", *, pipeline: Any = None,
                   kernel_policy: Any = "auto", kernels: Any = None, mcpu: str | None = None,
                   overwrite: bool = True, **compile_options) -> Artifact:
    """Compile `module` (a post-pass ternc Module) for `target` and write an artifact folder.

    target: "cpu" (LLVM for this host's CPU, or `mcpu`), "aarch64" (cross-compiled; needs
    aarch64-linux-gnu-gcc) or "cuda" (sm_90; needs nvcc). pipeline: the pass pipeline the caller ran
    (recorded verbatim). kernel_policy: "auto" (measured per shape), a kernel kind, or `kernels`:
    fixed choices (a previous manifest's `kernels`, see kernel_choices_policy). The manifest records
    every choice; measured timings and build times go to the unhashed report.json.
    """
    from safetensors.numpy import save_file

    t = tvm_target(target) if isinstance(target, TvmTarget) or target in TVM_TARGETS else None
    if t is None:
        raise BuildError(f"unknown target {target!r}; supported: {', '.join(TVM_TARGETS)}")
    policy = kernel_choices_policy(kernels) if kernels is not None else kernel_policy
    t0 = time.time()
    built = compile_module(module, t, kernel_policy=policy, mcpu=mcpu, **compile_options)
    compile_s = time.time() - t0

    def populate(folder: Path) -> dict:
        (folder / "lib").mkdir()
        for name, data in export(built, folder / LIB).items():
            p = folder / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
        lowered = built.lowered
        tensors = {}
        for w in lowered.weights:
            if module.constants[w].data is None:
                raise BuildError(f"constant @{w} has no data; cannot write weights")
            tensors[w] = lowered.weight_array(module, w)
        # one metadata key: safetensors writes the metadata map in a per-process random order
        save_file(tensors, str(folder / WEIGHTS), metadata={"format": "ternc-artifact"})
        return {
            "tvm_version": str(tvm.__version__),
            "model": {"name": module.name, "meta": json_safe(dict(module.meta))},
            "entries": {name: sig.to_json() for name, sig in lowered.entries.items()},
            "weights": {w: w for w in lowered.weights},
            "pipeline": json_safe(pipeline),
            # the choices only (how they were made is in report.json): a rebuild with
            # `kernels=` these choices writes a byte-identical manifest
            "kernels": {"choices": _kernel_choices(lowered.kernel_choices)},
            "roles": {"library": LIB, "weights": WEIGHTS},
            # decode over a preallocated KV cache written in place (runtime.py / kvcache.py)
            **({"kv_inplace": lowered.kv_inplace} if lowered.kv_inplace else {}),
        }

    report = {"created_unix": int(time.time()), "compile_seconds": round(compile_s, 3),
              "kernel_policy": "fixed" if kernels is not None else str(kernel_policy)}
    target_desc = {"name": t.name}

    def populate_all(folder: Path) -> dict:
        fields = populate(folder)
        report["kernel_timings"] = [e for e in built.lowered.kernel_choices if "timings_us" in e]
        target_desc.update(tvm=str(built.target), host=str(built.target.host) if built.target.host else None)
        if t.gpu:  # what a deployment checks: the SM of the fatbins, the host code's architecture
            target_desc.update(cuda_arch=built.cuda_arch, arch=built.host_arch, nvcc=nvcc_version())
        return fields

    return write_artifact(out_dir, target_desc, populate_all, report, overwrite=overwrite)
