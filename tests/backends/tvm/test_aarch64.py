"""Cross-compiling for aarch64 (LLVM mtriple aarch64-linux-gnu + the Debian cross gcc as linker)."""

from __future__ import annotations

import json
import shutil
import struct

import pytest

tvm = pytest.importorskip("tvm")

import ternc  # noqa: E402
from ternc.backends import artifact as A  # noqa: E402
from ternc.backends.tvm import build as B  # noqa: E402
from ternc.backends.tvm.build import AARCH64_CC  # noqa: E402

from .helpers import ternarize  # noqa: E402

EM_AARCH64 = 183

needs_cross = pytest.mark.skipif(shutil.which(AARCH64_CC) is None,
                                 reason=f"{AARCH64_CC} not installed (apt-get install gcc-aarch64-linux-gnu)")


def _elf_machine(path) -> int:
    head = open(path, "rb").read(20)
    assert head[:4] == b"\x7fELF", "not an ELF file"
    assert head[4] == 2 and head[5] == 1, "expected ELF64 little-endian"
    return struct.unpack_from("<H", head, 18)[0]


@needs_cross
def test_aarch64_artifact_is_aarch64_elf(tiny_bitnet, tmp_path):
    m = ternarize(tiny_bitnet, ["tl2", "i2"])
    out = B.build_artifact(m, "aarch64", tmp_path / "art-a64", pipeline=["ternarize(test)"]).path
    assert _elf_machine(out / "lib" / "model.so") == EM_AARCH64
    man = json.loads((out / "manifest.json").read_text())
    assert man["target"]["name"] == "aarch64" and "aarch64" in man["target"]["tvm"]
    # cross targets are not measured here: every weight uses the int8 dot kernel
    assert {c["kind"] for c in man["kernels"]["choices"]} == {"dot"}
    assert A.read_report(out)["kernel_timings"] == []
    A.read_manifest(out)  # checksums verify
    import platform

    if platform.machine().lower() not in ("aarch64", "arm64"):
        with pytest.raises(A.ArtifactError, match="built for target aarch64"):
            ternc.load_artifact(out)


def test_aarch64_without_cross_compiler_is_a_clear_error(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setattr(B.shutil, "which", lambda name: None)
    with pytest.raises(B.BuildError, match="gcc-aarch64-linux-gnu"):
        B.build_artifact(tiny_llama, "aarch64", tmp_path / "x")
    assert not (tmp_path / "x").exists()
