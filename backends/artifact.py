"""Compiled artifacts, backend-neutral: a folder of plain files plus `manifest.json`.

    ART/manifest.json   format, format_version, ternc_version, target {name, ...}, roles
                        (role -> file), files (path -> sha256, bytes), and the backend's own keys
                        (TVM: entries, weights, kernels, ...). Deterministic: no times, no timings.
    ART/report.json     how the build went (timestamp, seconds, measured kernel timings). NOT
                        hashed and not needed to load: two builds of one model differ only here.
    ART/...             the backend's files (TVM: lib/model.so, weights.safetensors, cuda/*.fatbin)

Writing (`write_artifact`) is crash-safe: everything goes into a sibling `.ART.tmp-PID-*` folder,
every file and the folder are fsynced, then ONE atomic step puts it in place: a rename when ART does
not exist, else an atomic exchange of the two folders (Linux renameat2 RENAME_EXCHANGE) after which
the old artifact is deleted from the temp name. A SIGKILL at any point leaves ART either the old or
the new artifact; temp folders of killed builds are removed by the next write to the same place.

Reading (`read_manifest`) validates strictly: the manifest must be an object with every required
key of the right type, file paths must stay inside the folder, and every listed file must have its
sha256 and size; anything else is an `ArtifactError` naming the file and key.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Mapping

FORMAT = "ternc-artifact"
FORMAT_VERSION = 2  # 2: roles, report.json, kernel choices without timings, no timestamps
MANIFEST = "manifest.json"
REPORT = "report.json"  # unhashed build report


class ArtifactError(RuntimeError):
    pass


@dataclass
class Artifact:
    """What a target's `build` returns: where the artifact is and what its manifest says."""

    path: Path
    manifest: dict
    report: dict = field(default_factory=dict)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def json_safe(x: Any) -> Any:
    return json.loads(json.dumps(x, default=str))


def _ternc_version() -> str:
    from ..version import __version__

    return __version__


# ------------------------------------------------------------------------------------------ writing
def _fsync_path(p: Path) -> None:
    fd = os.open(p, os.O_RDONLY | (os.O_DIRECTORY if p.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_SYS_RENAMEAT2 = {"x86_64": 316, "aarch64": 276}


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE). False where unsupported."""
    import platform

    libc = ctypes.CDLL(None, use_errno=True)
    fa, fb = os.fsencode(str(a)), os.fsencode(str(b))
    if hasattr(libc, "renameat2"):
        rc = libc.renameat2(_AT_FDCWD, fa, _AT_FDCWD, fb, _RENAME_EXCHANGE)
    elif platform.machine() in _SYS_RENAMEAT2:
        rc = libc.syscall(_SYS_RENAMEAT2[platform.machine()], _AT_FDCWD, fa, _AT_FDCWD, fb, _RENAME_EXCHANGE)
    else:
        return False
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):  # kernel or filesystem without exchange
        return False
    raise OSError(err, f"renameat2({a}, {b}, RENAME_EXCHANGE): {os.strerror(err)}")


_TEMP_RE = re.compile(r"\.(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)-")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(out: Path) -> list[Path]:
    """Remove `.OUT.tmp-PID-*` / `.OUT.old-PID-*` folders left by builds whose process is gone."""
    removed = []
    if not out.parent.is_dir():
        return removed
    for p in out.parent.iterdir():
        m = _TEMP_RE.match(p.name)
        if m and m["name"] == out.name and int(m["pid"]) != os.getpid() and not _pid_alive(int(m["pid"])):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def write_artifact(out: str | os.PathLike, target: Mapping[str, Any], populate: Callable[[Path], dict],
                   report: Mapping[str, Any] | None = None, overwrite: bool = True) -> Artifact:
    """Write an artifact folder at `out`, crash-safely (see the module docstring).

    `target`: the manifest's `target` object (at least {"name": ...}). `populate(folder)` writes the
    backend's files into `folder` and returns its manifest keys, including `roles` (role -> file).
    `report` goes to the unhashed report.json. Returns the Artifact (path, manifest, report).
    """
    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"{out} exists and is not a folder")
    if out.exists() and not overwrite:
        raise ArtifactError(f"{out} exists")
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    try:
        fields = populate(tmp)
        if not isinstance(fields.get("roles"), dict):
            raise ArtifactError("backend populate() must return the manifest's 'roles' (role -> file)")
        files = {}
        for p in sorted(tmp.rglob("*")):
            if p.is_file():
                rel = p.relative_to(tmp).as_posix()
                files[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        # `target` and `report` are read after populate(): a backend may fill them in as it writes
        manifest = {**json_safe(fields), "format": FORMAT, "format_version": FORMAT_VERSION,
                    "ternc_version": _ternc_version(), "target": json_safe(dict(target)), "files": files}
        _validate(manifest, tmp / MANIFEST)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        rep = json_safe(dict(report or {}))
        (tmp / REPORT).write_text(json.dumps(rep, indent=1, sort_keys=True) + "\n")
        for p in sorted(tmp.rglob("*"), reverse=True):  # files before their folders
            p.chmod(0o755 if p.is_dir() or p.suffix == ".so" else 0o644)
            _fsync_path(p)
        tmp.chmod(0o755)
        _fsync_path(tmp)
        if out.exists() and _exchange(tmp, out):
            pass  # `tmp` now holds the old artifact: deleted below (or by the next build's clean_stale)
        elif out.exists():
            # no atomic exchange here: two renames; a kill between them leaves the old artifact at
            # `.OUT.old-PID-*`, and readers see no artifact until the next build
            old = out.parent / f".{out.name}.old-{os.getpid()}-{tmp.name.rsplit('-', 1)[-1]}"
            out.rename(old)
            tmp.rename(out)
            tmp = old
        else:
            tmp.rename(out)
            tmp = None
        _fsync_path(out.parent)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    return Artifact(out, manifest, rep)


# ------------------------------------------------------------------------------------------ reading
_HEX64 = re.compile(r"[0-9a-f]{64}")


def require(obj: Any, key: str, kind: type | tuple, where: str) -> Any:
    """obj[key] if obj is a dict that has it with type `kind`, else an ArtifactError naming `where`."""
    if not isinstance(obj, dict):
        raise ArtifactError(f"{where}: expected an object, got {type(obj).__name__}")
    if key not in obj:
        raise ArtifactError(f"{where}: missing key {key!r}")
    v = obj[key]
    if not isinstance(v, kind) or (isinstance(v, bool) and kind in (int, (int,))):
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ArtifactError(f"{where}: key {key!r} must be {want}, got {type(v).__name__}")
    return v


def safe_relpath(rel: Any, where: str) -> str:
    """`rel` if it is a plain relative path inside the artifact (no '..', not absolute)."""
    if not isinstance(rel, str) or not rel:
        raise ArtifactError(f"{where}: file path must be a non-empty string, got {rel!r}")
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or "\\" in rel or "\0" in rel or rel.startswith("~"):
        raise ArtifactError(f"{where}: file path {rel!r} leaves the artifact folder")
    return rel


def _validate(manifest: Any, mf: Path) -> dict:
    where = str(mf)
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{where}: the manifest must be a JSON object, got {type(manifest).__name__}")
    fmt = manifest.get("format")
    if fmt != FORMAT:
        raise ArtifactError(f"{where}: format {fmt!r} is not {FORMAT!r}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(f"{where}: artifact format version {version} (written by ternc "
                            f"{manifest.get('ternc_version')}); this ternc reads version {FORMAT_VERSION}. "
                            f"Recompile the model.")
    require(manifest, "ternc_version", str, where)
    target = require(manifest, "target", dict, where)
    require(target, "name", str, f"{where}: target")
    files = require(manifest, "files", dict, where)
    for rel, info in files.items():
        safe_relpath(rel, f"{where}: files")
        sha = require(info, "sha256", str, f"{where}: files[{rel!r}]")
        if not _HEX64.fullmatch(sha):
            raise ArtifactError(f"{where}: files[{rel!r}]: sha256 {sha!r} is not 64 hex digits")
        if require(info, "bytes", int, f"{where}: files[{rel!r}]") < 0:
            raise ArtifactError(f"{where}: files[{rel!r}]: negative size")
    roles = require(manifest, "roles", dict, where)
    for role, rel in roles.items():
        safe_relpath(rel, f"{where}: roles[{role!r}]")
        if rel not in files:
            raise ArtifactError(f"{where}: the {role} file {rel} is not listed in the manifest's files")
    return manifest


def read_manifest(path: str | os.PathLike, check_files: bool = True,
                  known_targets: Mapping[str, Any] | None = None) -> dict:
    """Parse and validate an artifact's manifest; with `check_files`, every listed file's size and
    sha256 too. `known_targets`: the target names this ternc can load (else any name passes)."""
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(f"{path} is not an artifact directory")
    mf = path / MANIFEST
    if not mf.is_file():
        raise ArtifactError(f"{path}: missing {MANIFEST} (not a ternc artifact, or a half-written one)")
    try:
        manifest = json.loads(mf.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ArtifactError(f"{mf}: not valid JSON ({e})") from None
    _validate(manifest, mf)
    name = manifest["target"]["name"]
    if known_targets is not None and name not in known_targets:
        raise ArtifactError(f"{mf}: unknown target {name!r}; this ternc loads {', '.join(known_targets)}")
    if check_files:
        root = path.resolve()
        for rel, info in manifest["files"].items():
            p = path / rel
            if not p.resolve().is_relative_to(root):
                raise ArtifactError(f"{path}: file {rel} resolves outside the artifact folder")
            if not p.is_file():
                raise ArtifactError(f"{path}: missing file {rel} (listed in the manifest)")
            size = p.stat().st_size
            if size != info["bytes"]:
                raise ArtifactError(f"{path}: size mismatch for {rel}: {size} bytes, manifest says {info['bytes']}")
            got = sha256_file(p)
            if got != info["sha256"]:
                raise ArtifactError(f"{path}: checksum mismatch for {rel}: sha256 {got}, manifest says "
                                    f"{info['sha256']} (file modified or corrupted)")
    return manifest


def role_path(path: str | os.PathLike, manifest: dict, role: str) -> Path:
    """The file that plays `role` (validated by read_manifest), or an ArtifactError naming the role."""
    rel = manifest["roles"].get(role)
    if rel is None:
        raise ArtifactError(f"{Path(path) / MANIFEST}: no {role!r} file in roles {sorted(manifest['roles'])}")
    return Path(path) / safe_relpath(rel, f"{Path(path) / MANIFEST}: roles[{role!r}]")


def read_report(path: str | os.PathLike) -> dict:
    """The unhashed build report (empty if absent or unreadable: it is informational only)."""
    try:
        rep = json.loads((Path(path) / REPORT).read_text())
    except (OSError, ValueError):
        return {}
    return rep if isinstance(rep, dict) else {}


def add_files(path: str | os.PathLike, files: dict[str, bytes], role: tuple[str, str] | None = None) -> None:
    """Add files to a built artifact (e.g. its tokenizer) and list them with sha256 in the manifest.

    `files`: {path relative to the artifact: bytes}; `role`: (role name, one of those paths) for
    `roles`. The manifest is rewritten atomically.
    """
    path = Path(path)
    manifest = read_manifest(path, check_files=False)
    root = path.resolve()
    for rel, data in files.items():
        p = path / safe_relpath(rel, f"{path}: added file")
        if not p.resolve().is_relative_to(root):
            raise ArtifactError(f"{rel}: artifact files must stay inside {path}")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        p.chmod(0o644)
        manifest["files"][rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    if role is not None:
        manifest["roles"][role[0]] = role[1]
    tmp = path / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(tmp, path / MANIFEST)
