"""An emulated arm64 board: Debian's qemu-user-static running an arm64 Python from a minimal
Debian rootfs (`.ci/setup-arm64-emu` builds both). qemu is invoked explicitly with `-L ROOT`
(no binfmt_misc), so a child process of the emulated Python cannot exec another arm64 binary:
run.py's RPC server therefore serves in-process.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
QEMU = "qemu-aarch64-static"


class EmulationUnavailable(RuntimeError):
    pass


def arm64_root() -> Path:
    """TERNC_ARM64_ROOT, else the repository's .cache/arm64-root."""
    return Path(os.environ.get("TERNC_ARM64_ROOT") or REPO / ".cache" / "arm64-root")


def python_command(root: Path | None = None) -> list[str]:
    """argv prefix that runs the emulated board's python3; raises EmulationUnavailable with the fix."""
    root = root or arm64_root()
    qemu = shutil.which(QEMU)
    if qemu is None:
        raise EmulationUnavailable(f"{QEMU} not found: run `bash .ci/setup-arm64-emu` (apt-get install qemu-user-static)")
    py = root / "usr" / "bin" / "python3"
    if not (root / ".ternc-arm64-root-v1").exists() or not py.exists():
        raise EmulationUnavailable(f"no arm64 userland at {root}: run `bash .ci/setup-arm64-emu`")
    return [qemu, "-L", str(root), str(py)]
