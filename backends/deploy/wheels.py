"""The TVM runtime a board needs, taken from the official PyPI wheels (no source build).

`fetch_wheels(board)` runs `pip download --only-binary=:all: --platform P --python-version V
--no-deps` for apache-tvm (the version this ternc compiles with), apache-tvm-ffi and
typing_extensions (pure Python, needed by tvm_ffi) into a cache folder, and reuses what is
there. `extract_runtime(wheels, dest, board)` unpacks the runtime-only part: the `tvm` package
without `libtvm_compiler.so` (240 MB), `3rdparty/`, `src/`, `include/`, plus `tvm_ffi` and
`typing_extensions`.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .boards import Board

# the runtime-only subset: everything of these packages except these prefixes
_SKIP = ("tvm/lib/libtvm_compiler.so", "tvm/3rdparty/", "tvm/src/", "tvm/include/",
         "tvm_ffi/3rdparty/", "tvm_ffi/src/", "tvm_ffi/include/")
_KEEP_TOP = ("tvm/", "tvm_ffi/", "typing_extensions.py")
PACKAGES = ("apache-tvm", "apache-tvm-ffi", "typing_extensions")
PIP_TIMEOUT_S = 600


class WheelError(RuntimeError):
    pass


@dataclass(frozen=True)
class Wheel:
    package: str
    path: Path
    sha256: str
    downloaded: bool   # False: found in the cache


def cache_dir() -> Path:
    """TERNC_WHEEL_CACHE, else $XDG_CACHE_HOME/ternc/wheels, else ~/.cache/ternc/wheels."""
    env = os.environ.get("TERNC_WHEEL_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ternc" / "wheels"


def pinned_versions() -> dict[str, str]:
    """The versions the compiler side uses: the board must run the same TVM (the artifact's
    manifest records it and the loader checks it) and the same tvm_ffi ABI."""
    out = {}
    for pkg in PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError as e:
            raise WheelError(f"{pkg} is not installed here; cannot pin the board's runtime to it") from e
    return out


def _norm(name: str) -> str:
    return name.lower().replace("-", "_")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _find_cached(folder: Path, pkg: str, ver: str, board: Board) -> Path | None:
    tag = "cp" + board.python.replace(".", "")
    for whl in sorted(folder.glob(f"{_norm(pkg)}-{ver}-*.whl")):
        parts = whl.stem.split("-")
        py_tag, plat = parts[-3], parts[-1]
        if plat != "any" and board.wheel_platform.split("_", 3)[-1] not in plat:
            continue
        if py_tag.startswith("cp") and py_tag != tag:
            continue
        return whl
    return None


def fetch_wheels(board: Board, cache: Path | None = None, log=print) -> list[Wheel]:
    """The board's runtime wheels, downloaded from PyPI once and cached (reported either way)."""
    folder = (cache or cache_dir()) / f"{board.wheel_platform}-py{board.python}"
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for pkg, ver in pinned_versions().items():
        whl = _find_cached(folder, pkg, ver, board)
        downloaded = False
        if whl is None:
            log(f"[deploy] downloading {pkg}=={ver} for {board.wheel_platform} / Python {board.python} from PyPI "
                f"into {folder}")
            cmd = [sys.executable, "-m", "pip", "download", f"{pkg}=={ver}", "--no-deps", "--only-binary=:all:",
                   "--platform", board.wheel_platform, "--python-version", board.python, "-d", str(folder),
                   "--disable-pip-version-check", "-q", "--timeout", "20", "--retries", "2"]
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                raise WheelError(f"pip download {pkg}=={ver} took more than {PIP_TIMEOUT_S}s (PyPI unreachable?); "
                                 f"put the wheel into {folder} by hand and rerun") from None
            if r.returncode != 0:
                raise WheelError(f"could not download {pkg}=={ver} for {board.wheel_platform} / Python "
                                 f"{board.python} from PyPI (is it reachable?); put the wheel into {folder} by hand "
                                 f"and rerun. pip said:\n{r.stderr.strip()[-1500:]}")
            whl = _find_cached(folder, pkg, ver, board)
            if whl is None:
                raise WheelError(f"pip reported success but no {pkg}-{ver} wheel for {board.wheel_platform} is in "
                                 f"{folder}")
            downloaded = True
        else:
            log(f"[deploy] using cached {whl.name}")
        out.append(Wheel(pkg, whl, _sha256(whl), downloaded))
    return out


def extract_runtime(wheels: list[Wheel], dest: Path, board: Board) -> list[str]:
    """Unpack the runtime-only subset into `dest` (a PYTHONPATH folder). Returns the paths written."""
    skip = list(_SKIP)
    if not board.cuda_arch:
        skip.append("tvm/lib/libtvm_runtime_cuda.so")
    written = []
    for w in wheels:
        with zipfile.ZipFile(w.path) as z:
            for info in z.infolist():
                name = info.filename
                if info.is_dir() or not name.startswith(_KEEP_TOP) or name.startswith(tuple(skip)):
                    continue
                if "/__pycache__/" in name:
                    continue
                z.extract(info, dest)
                if name.endswith(".so"):
                    (dest / name).chmod(0o755)
                written.append(name)
    missing = [lib for lib in board.runtime_libs if f"tvm/lib/{lib}" not in written]
    if missing:
        raise WheelError(f"the apache-tvm wheel for {board.wheel_platform} lacks {missing}")
    return written
