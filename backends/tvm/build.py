"""Compile a lowered ternc module with TVM for cpu (host x86/LLVM), aarch64 (cross) or cuda.

`compile_module(module, target)` -> Built (the TVM Executable, entry signatures, kernel choices).
`export(built, lib_path)` writes the shared library (cross-compiling for aarch64, and for CUDA also
the device code's fatbins, built ahead of time with nvcc, that the runtime hands back to TVM).
This module imports the TVM compiler; the runtime side lives in `runtime.py`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import tvm

from ...ir.core import Module
from .lower import Lowered, lower_module

TARGETS = ("cpu", "aarch64", "cuda")
AARCH64_TRIPLE = "aarch64-linux-gnu"
AARCH64_CC = "aarch64-linux-gnu-gcc"
CUDA_ARCH = "sm_90"


class BuildError(RuntimeError):
    pass


def host_cpu() -> str:
    from tvm.target import codegen

    return str(codegen.llvm_get_system_cpu())


def make_target(target: str, mcpu: str | None = None, cuda_arch: str | None = None,
                host_arch: str | None = None) -> tvm.target.Target:
    """`cpu`: LLVM for this machine's CPU (or `mcpu`); `aarch64`: LLVM cross target; `cuda`: sm_90
    (or `cuda_arch`) with host code for this machine, or for `host_arch="aarch64"` (Jetson)."""
    if target == "cpu":
        return tvm.target.Target({"kind": "llvm", "mcpu": mcpu or host_cpu()})
    if target == "aarch64":
        cfg = {"kind": "llvm", "mtriple": AARCH64_TRIPLE}
        if mcpu:
            cfg["mcpu"] = mcpu
        return tvm.target.Target(cfg)
    if target == "cuda":
        host = {"kind": "llvm"}
        if host_arch == "aarch64":
            host["mtriple"] = AARCH64_TRIPLE
        elif host_arch not in (None, "x86_64"):
            raise BuildError(f"cuda host code for {host_arch!r}: only x86_64 (this machine) and aarch64")
        return tvm.target.Target({"kind": "cuda", "arch": cuda_arch or CUDA_ARCH}, host=host)
    raise BuildError(f"unknown target {target!r}; supported: {', '.join(TARGETS)}")


@dataclass
class Built:
    target_name: str
    target: tvm.target.Target
    executable: object
    lowered: Lowered
    cuda_sources: list[str] = field(default_factory=list)
    host_arch: str = "x86_64"          # the architecture of the library's host code
    cuda_arch: str | None = None       # the SM the fatbins are built for


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
                relax.transform.AttachGlobalSymbol(),
            ])
            return seq(mod)

    return _pipeline


def compile_module(module: Module, target: str = "cpu", kernel_policy: str = "auto", entries=None,
                   mcpu: str | None = None, fuse: bool = True, cuda_graph: bool = True,
                   cuda_arch: str | None = None, host_arch: str | None = None) -> Built:
    """cuda only: `fuse` runs Relax FuseOps/FuseTIR (elementwise chains become one kernel);
    `cuda_graph` captures the static-shape regions of each call (everything but the KV-length
    dependent attention) as CUDA graphs on first run and replays them (Relax RewriteCUDAGraph);
    `cuda_arch` (default sm_90) and `host_arch` ("aarch64" for a Jetson) pick the device and host."""
    if target != "cuda" and (cuda_arch or host_arch):
        raise BuildError(f"cuda_arch / host_arch apply to target cuda, not {target!r}")
    tgt = make_target(target, mcpu, cuda_arch, host_arch)
    kind = "cuda" if target == "cuda" else "cpu"
    # The measured kernel choice runs kernels here, so it is only meaningful for the host CPU;
    # a cross target (aarch64) gets the int8 dot kernels unless the caller names a kind.
    policy = kernel_policy if (target != "aarch64" or kernel_policy != "auto") else "dot"
    # CUDA decode takes one new token per call (what generate does): static shapes, capturable
    lowered = lower_module(module, entries, kind, policy, target=tgt if target == "cpu" else None,
                           decode_tokens=1 if target == "cuda" and cuda_graph else None)
    if target == "cuda":
        with tvm.transform.PassContext(config={"relax.backend.use_cuda_graph": bool(cuda_graph)}):
            ex = tvm.compile(lowered.mod, tgt, relax_pipeline=_cuda_pipeline_pass(tgt, fuse, cuda_graph))
        return Built(target, tgt, ex, lowered, cuda_sources(ex.mod), host_arch=host_arch or "x86_64",
                     cuda_arch=cuda_arch or CUDA_ARCH)
    ex = tvm.compile(lowered.mod, tgt)
    return Built(target, tgt, ex, lowered, host_arch="aarch64" if target == "aarch64" else "x86_64")


def cuda_sources(mod) -> list[str]:
    """CUDA C sources of every `cuda` module imported (transitively) by a runtime module."""
    out, stack, seen = [], [mod], set()
    while stack:
        m = stack.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        if m.kind == "cuda":
            out.append(m.inspect_source())
        stack.extend(m.imports)
    return out


def _cross_compiler():
    from tvm.support import cc

    path = shutil.which(AARCH64_CC)
    if path is None:
        raise BuildError(f"target aarch64 needs the cross compiler {AARCH64_CC} on PATH "
                         f"(Debian/Ubuntu: apt-get install gcc-aarch64-linux-gnu)")
    return cc.cross_compiler(path)


def _nvcc() -> str:
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
    if nvcc is None:
        raise BuildError("target cuda needs nvcc to build fatbins ahead of time")
    return nvcc


def nvcc_version() -> str:
    """e.g. "13.0.88": recorded in CUDA manifests (the board's driver must support this CUDA)."""
    out = subprocess.run([_nvcc(), "--version"], capture_output=True, text=True).stdout
    for tok in out.split():
        if tok.startswith("V") and tok[1:2].isdigit():
            return tok[1:]
    return out.strip().splitlines()[-1] if out.strip() else "unknown"


def nvcc_fatbin(code: str, arch: str | None = None, out_dir: str | None = None) -> bytes:
    arch = arch or CUDA_ARCH
    nvcc = _nvcc()
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
    if built.host_arch == "aarch64":
        built.executable.export_library(lib_path, fcompile=_cross_compiler())
    else:
        built.executable.export_library(lib_path)
    if built.target_name == "cuda":
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

        if built.target_name != "cpu":
            raise BuildError(f"JitRunner runs host CPU builds only, not {built.target_name}")
        self.meta = module.meta
        self.built = built
        self.vm = relax.VirtualMachine(built.executable, tvm.cpu())
        self.weights = {w: tvm.runtime.tensor(built.lowered.weight_array(module, w)) for w in built.lowered.weights}

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


def build_artifact(module: Module, target: str = "cpu", out_dir="artifact", pipeline=None, source: str = "",
                   kernel_policy: str = "auto", **kw):
    """The signature driver.compile_to calls (`ternc compile`): forwards to
    `ternc.backends.artifact.build_artifact`, recording the pass pipeline and the model source."""
    from ..artifact import build_artifact as _build

    return _build(module, target, out_dir, pipeline_desc={"passes": pipeline, "source": source},
                  kernel_policy=kernel_policy, **kw)
