"""Edge boards as data: what a deployment bundle must carry for each one.

A board names the artifact target it runs, the machine's architecture, the OS and Python it is
assumed to have (the bundle's compiled Python extension, `tvm_ffi`, is built for one CPython
version), the wheel platform the TVM runtime comes from, and its accelerator. Adding a board is
one row here; `bundle.build_bundle` reads nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


class BoardError(ValueError):
    pass


@dataclass(frozen=True)
class Board:
    name: str
    description: str
    arch: str                 # platform.machine() on the board
    os: str                   # what the bundle assumes (glibc >= wheel_platform's)
    python: str               # CPython major.minor the runtime wheels are taken for
    wheel_platform: str       # pip --platform for apache-tvm / apache-tvm-ffi
    accelerator: str          # "none" | "cuda" | "fpga"
    artifact_target: str      # artifact manifest target name the board runs
    cuda_arch: str | None = None   # fatbins built ahead of time with nvcc for this SM
    runtime_libs: tuple[str, ...] = ("libtvm_runtime.so",)   # tvm/lib files the board loads

    @property
    def host_triple(self) -> str:
        return {"aarch64": "aarch64-linux-gnu", "x86_64": "x86_64-linux-gnu"}[self.arch]


BOARDS: dict[str, Board] = {b.name: b for b in [
    Board("aarch64-linux", "any arm64 Linux (Raspberry Pi 5 with Raspberry Pi OS / Debian 12, Graviton, ...)",
          arch="aarch64", os="Linux, glibc >= 2.28 (Debian 12 bookworm)", python="3.11",
          wheel_platform="manylinux_2_28_aarch64", accelerator="none", artifact_target="aarch64"),
    Board("jetson-orin", "NVIDIA Jetson Orin (AGX / NX / Nano), JetPack 6",
          arch="aarch64", os="Linux for Tegra, Ubuntu 22.04 (JetPack 6), CUDA driver on the board",
          python="3.10", wheel_platform="manylinux_2_28_aarch64", accelerator="cuda", artifact_target="cuda",
          cuda_arch="sm_87", runtime_libs=("libtvm_runtime.so", "libtvm_runtime_cuda.so")),
    # not an edge board: an x86-64 Linux machine with an NVIDIA datacenter GPU (the same bundle mechanism
    # as jetson-orin, runnable on the GPU machines this project can use)
    Board("x86_64-cuda", "x86-64 Linux with an NVIDIA Hopper GPU (H100 / H200), Ubuntu 24.04",
          arch="x86_64", os="Linux, glibc >= 2.28, CUDA driver", python="3.12",
          wheel_platform="manylinux_2_28_x86_64", accelerator="cuda", artifact_target="cuda",
          cuda_arch="sm_90", runtime_libs=("libtvm_runtime.so", "libtvm_runtime_cuda.so")),
    Board("kv260", "AMD/Xilinx Kria KV260 (Zynq UltraScale+ xck26), PYNQ image",
          arch="aarch64", os="PYNQ 3 / Ubuntu 22.04 for Kria", python="3.10",
          wheel_platform="manylinux_2_28_aarch64", accelerator="fpga", artifact_target="kv260"),
]}


def get_board(name: str, python: str | None = None) -> Board:
    """A board by name; `python` ("3.12") overrides the CPython version it is assumed to run."""
    if name not in BOARDS:
        raise BoardError(f"unknown board {name!r}; boards: {', '.join(BOARDS)}")
    board = BOARDS[name]
    if python is not None:
        parts = python.split(".")
        if len(parts) != 2 or not all(p.isdigit() for p in parts) or (int(parts[0]), int(parts[1])) < (3, 10):
            raise BoardError(f"--python expects MAJOR.MINOR >= 3.10 (apache-tvm's floor), got {python!r}")
        board = replace(board, python=python)
    return board
