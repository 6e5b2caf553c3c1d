"""Compiled artifacts: a directory of plain files plus `manifest.json` (sha256 of every file).

Layout (target cpu | aarch64 | cuda):

    ART/manifest.json           format, versions, target, model meta, entry signatures, pipeline,
                                kernel choices, files with sha256 and size
    ART/lib/model.so            TVM `export_library` output (VM bytecode + kernels)
    ART/weights.safetensors     the module constants the entries take as parameters
    ART/cuda/<sha256>.fatbin    (cuda) device code built ahead of time with nvcc, keyed by the
                                sha256 of the CUDA source TVM asks to compile at load time

`build_artifact` writes everything into a temporary sibling directory and renames it into place,
so a reader never sees a half-written artifact. `load_artifact` checks the manifest format
version, the TVM version, that every listed file exists with its sha256, and returns a Runner
that uses only the TVM runtime. Nothing is pickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "ternc-artifact"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LIB = "lib/model.so"
WEIGHTS = "weights.safetensors"


class ArtifactError(RuntimeError):
    pass


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _ternc_version() -> str:
    from .. import __version__

    return __version__


def _tvm_version() -> str:
    import tvm

    return str(tvm.__version__)


def _json_safe(x: Any) -> Any:
    return json.loads(json.dumps(x, default=str))


def build_artifact(module, target: str = "cpu", out_dir: str | os.PathLike = "artifact",
                   pipeline_desc: Any = None, kernel_policy: str = "auto", overwrite: bool = True,
                   mcpu: str | None = None, cuda_arch: str | None = None, host_arch: str | None = None) -> Path:
    """Compile `module` (a post-pass ternc Module) for `target` and write an artifact directory.

    target: "cpu" (LLVM for this host's CPU, or `mcpu`), "aarch64" (cross-compiled; needs
    aarch64-linux-gnu-gcc) or "cuda" (sm_90; needs nvcc). pipeline_desc: the pass pipeline the
    caller ran (recorded verbatim). kernel_policy: "auto" (measured dot vs LUT per shape), "dot",
    "lut". cuda only: `cuda_arch` (default sm_90) and `host_arch` ("aarch64": Jetson host code,
    cross-compiled). Returns the artifact path.
    """
    from safetensors.numpy import save_file

    from .tvm.build import compile_module, export, nvcc_version

    out = Path(out_dir).resolve()
    if out.exists() and not overwrite:
        raise ArtifactError(f"{out} exists")
    t0 = time.time()
    built = compile_module(module, target, kernel_policy=kernel_policy, mcpu=mcpu,
                           **({"cuda_arch": cuda_arch, "host_arch": host_arch} if target == "cuda" else {}))
    compile_s = time.time() - t0
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        (tmp / "lib").mkdir()
        extra = export(built, tmp / LIB)
        for name, data in extra.items():
            p = tmp / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
        lowered = built.lowered
        tensors, key_of = {}, {}
        for w in lowered.weights:
            c = module.constants[w]
            if c.data is None:
                raise ArtifactError(f"constant @{w} has no data; cannot write weights")
            key_of[w] = w
            tensors[w] = lowered.weight_array(module, w)
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": FORMAT, "module": module.name})
        files = {}
        for p in sorted(tmp.rglob("*")):
            if p.is_file():
                rel = p.relative_to(tmp).as_posix()
                files[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "ternc_version": _ternc_version(),
            "tvm_version": _tvm_version(),
            "created_unix": int(time.time()),
            "target": {"name": target, "tvm": _json_safe(str(built.target)),
                       "host": _json_safe(str(built.target.host)) if built.target.host else None,
                       "arch": built.host_arch,
                       **({"cuda_arch": built.cuda_arch, "nvcc": nvcc_version()} if target == "cuda" else {})},
            "model": {"name": module.name, "meta": _json_safe(dict(module.meta))},
            "entries": {name: sig.to_json() for name, sig in lowered.entries.items()},
            "weights": key_of,
            "pipeline": _json_safe(pipeline_desc),
            "kernels": {"policy": kernel_policy, "choices": lowered.kernel_choices},
            "compile_seconds": round(compile_s, 3),
            "files_role": {"library": LIB, "weights": WEIGHTS},
            "files": files,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        for p in tmp.rglob("*"):
            p.chmod(0o755 if p.is_dir() or p.suffix == ".so" else 0o644)
        tmp.chmod(0o755)
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_manifest(path: str | os.PathLike, check_files: bool = True) -> dict:
    """Parse and verify an artifact's manifest (format, versions, files, sha256)."""
    path = Path(path)
    mf = path / MANIFEST
    if not path.is_dir():
        raise ArtifactError(f"{path} is not an artifact directory")
    if not mf.exists():
        raise ArtifactError(f"{path}: missing {MANIFEST} (not a ternc artifact, or a half-written one)")
    try:
        manifest = json.loads(mf.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{mf}: not valid JSON ({e})") from e
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"{mf}: format {manifest.get('format')!r} is not {FORMAT!r}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{mf}: artifact format version {manifest.get('format_version')} (written by ternc "
                            f"{manifest.get('ternc_version')}); this ternc reads version {FORMAT_VERSION}. "
                            f"Recompile the model.")
    for key in ("entries", "files", "files_role", "target", "model", "tvm_version", "weights"):
        if key not in manifest:
            raise ArtifactError(f"{mf}: manifest lacks {key!r}")
    files = manifest["files"]
    for role, rel in manifest["files_role"].items():
        if rel not in files:
            raise ArtifactError(f"{mf}: required {role} file {rel} is not listed in the manifest")
    if check_files:
        for rel, info in files.items():
            p = path / rel
            if not p.is_file():
                raise ArtifactError(f"{path}: missing file {rel} (listed in the manifest)")
            got = sha256_file(p)
            if got != info["sha256"]:
                raise ArtifactError(f"{path}: checksum mismatch for {rel}: sha256 {got}, manifest says "
                                    f"{info['sha256']} (file modified or corrupted)")
    return manifest


def host_arch(manifest: dict) -> str:
    """The architecture of an artifact's host code (manifests before 'arch' was recorded: from the
    target name)."""
    t = manifest["target"]
    return t.get("arch") or ("aarch64" if t["name"] == "aarch64" else "x86_64")


def load_artifact(path: str | os.PathLike, device: str | None = None):
    """Verify an artifact and return a Runner (`.meta`, `.run(entry, inputs)`) on the TVM runtime only."""
    manifest = read_manifest(path)
    import platform

    machine = platform.machine().lower()
    arch = host_arch(manifest)
    want = {"aarch64": ("aarch64", "arm64"), "x86_64": ("x86_64", "amd64")}.get(arch, (arch,))
    if manifest["target"]["name"] in ("cpu", "aarch64", "cuda") and machine not in want:
        raise ArtifactError(f"{path}: built for target {manifest['target']['name']} ({want[0]} host code), but "
                            f"this machine is {machine}")
    from .tvm.runtime import TVMRunner  # sets TVM_USE_RUNTIME_LIB=1 if tvm is not imported yet

    import tvm

    if str(tvm.__version__) != manifest["tvm_version"]:
        raise ArtifactError(f"{path}: compiled with TVM {manifest['tvm_version']}, but this runtime is TVM "
                            f"{tvm.__version__}")
    return TVMRunner(Path(path), manifest, device)


def bundle_runtime(dest: str | os.PathLike, with_ffi: bool = True) -> Path:
    """Copy a runtime-only `tvm` package (no lib/libtvm_compiler.so, 3rdparty/, src/, include/;
    about 30 MB) and, with `with_ffi`, this interpreter's `tvm_ffi` package into `dest`, for
    PYTHONPATH on a deployment machine. (`tvm_ffi` has compiled extensions: for another Python
    version ship that version's wheel contents instead, e.g. `pip download apache-tvm-ffi==VER
    --python-version 3.12 --only-binary=:all:` and unzip it into `dest`.)"""
    import tvm  # noqa: F401  (only to locate the package)

    dest = Path(dest)
    src = Path(tvm.__file__).parent
    skip = {src / "lib" / "libtvm_compiler.so", src / "3rdparty", src / "src", src / "include"}

    def ignore(d, names):
        return [n for n in names if Path(d) / n in skip or n == "__pycache__"]

    shutil.copytree(src, dest / "tvm", ignore=ignore, dirs_exist_ok=True)
    if with_ffi:
        import tvm_ffi

        shutil.copytree(Path(tvm_ffi.__file__).parent, dest / "tvm_ffi",
                        ignore=lambda d, names: [n for n in names if n in ("__pycache__", "3rdparty")],
                        dirs_exist_ok=True)
    return dest
