"""The board table and the boards' refusals."""

from __future__ import annotations

import pytest

from ternc.backends.deploy.boards import BOARDS, BoardError, get_board
from ternc.backends.deploy.bundle import DeployError, check_artifact_for_board


def test_board_rows():
    assert {"aarch64-linux", "jetson-orin", "kv260"} <= set(BOARDS)
    a64, orin, kv = BOARDS["aarch64-linux"], BOARDS["jetson-orin"], BOARDS["kv260"]
    assert (a64.arch, a64.artifact_target, a64.accelerator, a64.cuda_arch) == ("aarch64", "aarch64", "none", None)
    assert (orin.arch, orin.artifact_target, orin.cuda_arch) == ("aarch64", "cuda", "sm_87")
    assert "libtvm_runtime_cuda.so" in orin.runtime_libs and "libtvm_runtime_cuda.so" not in a64.runtime_libs
    assert kv.accelerator == "fpga"
    for b in BOARDS.values():
        assert b.python.count(".") == 1 and b.wheel_platform.endswith(b.arch)


def test_unknown_board_lists_boards():
    with pytest.raises(BoardError, match="aarch64-linux, jetson-orin, x86_64-cuda, kv260"):
        get_board("rpi9")


def test_python_override():
    assert get_board("aarch64-linux", "3.13").python == "3.13"
    assert BOARDS["aarch64-linux"].python == "3.11"
    for bad in ("3", "3.9", "three.11"):
        with pytest.raises(BoardError, match="MAJOR.MINOR"):
            get_board("aarch64-linux", bad)


def _manifest(name, arch=None, cuda_arch=None):
    t = {"name": name}
    if arch:
        t["arch"] = arch
    if cuda_arch:
        t["cuda_arch"] = cuda_arch
    return {"target": t}


def test_artifact_must_match_the_board():
    check_artifact_for_board(_manifest("aarch64"), BOARDS["aarch64-linux"])
    check_artifact_for_board(_manifest("cuda", "aarch64", "sm_87"), BOARDS["jetson-orin"])
    with pytest.raises(DeployError, match="compiled for target 'cpu'.*runs 'aarch64'"):
        check_artifact_for_board(_manifest("cpu"), BOARDS["aarch64-linux"])
    with pytest.raises(DeployError, match="x86_64 host code"):
        check_artifact_for_board(_manifest("cuda", None, "sm_87"), BOARDS["jetson-orin"])
    with pytest.raises(DeployError, match="sm_90.*needs sm_87"):
        check_artifact_for_board(_manifest("cuda", "aarch64", "sm_90"), BOARDS["jetson-orin"])


def test_kv260_needs_the_fpga_artifact():
    """kv260 takes the FPGA backend's artifact; a TVM artifact is refused, naming both targets."""
    check_artifact_for_board(_manifest("kv260", None, None), BOARDS["kv260"])
    with pytest.raises(DeployError, match="compiled for target 'aarch64'.*kv260"):
        check_artifact_for_board(_manifest("aarch64", "aarch64", None), BOARDS["kv260"])
