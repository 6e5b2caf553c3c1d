"""The TVM targets as data: what differs between cpu, aarch64 and cuda inside the TVM backend.

Code in this backend asks a `TvmTarget` (`tvm.gpu`, `tvm.cross_cc`, ...) instead of comparing
target names. No TVM import here: the target table (`ternc.targets`) reads it without loading TVM.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...ir.capabilities import Capabilities

AARCH64_TRIPLE = "aarch64-linux-gnu"
AARCH64_CC = "aarch64-linux-gnu-gcc"
CUDA_ARCH = "sm_90"


@dataclass(frozen=True)
class TvmTarget:
    name: str
    gpu: bool  # kernels are GPU-scheduled (thread bindings, dp4a); else LLVM CPU schedules
    tvm_kind: str  # the tvm.target kind: "llvm" or "cuda"
    triple: str | None = None  # LLVM mtriple of a cross-compiled CPU target
    cross_cc: str | None = None  # the linker `export_library` must use (cross targets)
    host_machines: tuple[str, ...] = ("x86_64", "amd64")  # platform.machine() values that run its host code
    host_cpu_default: bool = False  # LLVM mcpu defaults to this machine's CPU
    measures_kernels: bool = False  # "auto" kernel policy may time candidate kernels on this host
    static_kind: str | None = None  # the kernel kind "auto" picks when nothing is measured
    cuda_graphs: bool = False  # decode with static shapes, captured as CUDA graphs
    fatbins: bool = False  # device code is prebuilt with nvcc and shipped in the artifact
    jit_runnable: bool = False  # a compiled (not exported) module runs in this process (JitRunner)

    @property
    def device(self) -> str:
        return "cuda" if self.gpu else "cpu"


TVM_TARGETS: dict[str, TvmTarget] = {t.name: t for t in (
    TvmTarget("cpu", gpu=False, tvm_kind="llvm", host_cpu_default=True, measures_kernels=True, jit_runnable=True),
    # cross-compiled: its kernels cannot be timed here, so "auto" means the int8 dot kernels
    TvmTarget("aarch64", gpu=False, tvm_kind="llvm", triple=AARCH64_TRIPLE, cross_cc=AARCH64_CC,
              host_machines=("aarch64", "arm64"), static_kind="dot"),
    TvmTarget("cuda", gpu=True, tvm_kind="cuda", cuda_graphs=True, fatbins=True),
)}


def tvm_target(target: "str | TvmTarget") -> TvmTarget:
    """A TvmTarget from itself or its name."""
    if isinstance(target, TvmTarget):
        return target
    try:
        return TVM_TARGETS[target]
    except KeyError:
        raise ValueError(f"unknown TVM target {target!r}; supported: {', '.join(TVM_TARGETS)}") from None


# What lowering implements: every semantic attribute at its default only. In particular
# `numerics="fx"` (hw-numerics) is refused: the TVM kernels compute in float.
CAPABILITIES = Capabilities()
