"""Deployment bundles: an artifact plus everything a board needs to run it, and nothing else.

    BUNDLE/run.py                 the runner (this package's run.py, verbatim): generate, --verify,
                                  --bench, --rpc-server; numpy + the bundled runtime only
    BUNDLE/bundle.json            board, Python, wheels (name, version, sha256), golden summary,
                                  sha256 and size of every other file
    BUNDLE/artifact/              the ternc artifact (manifest.json, lib/model.so, weights, cuda/)
    BUNDLE/tvm/, tvm_ffi/, typing_extensions.py
                                  runtime-only TVM from the board's PyPI wheels, beside run.py so that
                                  `python3 run.py` imports them (the script's folder is on sys.path)
    BUNDLE/ternc/                 the artifact loader (backends/tvm/runtime.py) and the decoder
                                  contract (ir/decoder.py) with the ternc modules they import
    BUNDLE/golden/golden.json     prompts and the IR interpreter's greedy tokens for them
    BUNDLE/golden/prefill_logits.npy   the interpreter's prefill logits for the first prompt

The bundle is written to a temporary sibling and renamed into place; `tar=True` also writes
BUNDLE.tar.gz (sorted members, fixed mtimes and owners: the same inputs give the same bytes).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..artifact import ArtifactError, read_manifest, sha256_file
from .boards import Board
from .wheels import extract_runtime, fetch_wheels

PACKAGE_DIR = Path(__file__).resolve().parent
TERNC_ROOT = PACKAGE_DIR.parents[1]
RUNNER = PACKAGE_DIR / "run.py"
RUNTIME_MODULE = "ternc.backends.tvm.runtime"
DECODER_MODULE = "ternc.ir.decoder"
FORMAT = "ternc-bundle"
FORMAT_VERSION = 1


class DeployError(RuntimeError):
    pass


@dataclass
class Golden:
    """Reference outputs the board reruns with `run.py --verify` (from the IR interpreter)."""

    prompts: list[list[int]]
    n_new: int
    tokens: list[list[int]]
    prefill_logits: np.ndarray
    source: str = "ternc IR interpreter (ir/interp.py) on the compiled module"
    logits_rtol: float = 1e-4


@dataclass
class BundleInfo:
    path: Path
    tar: Path | None
    files: int
    bytes: int
    runtime_bytes: int
    wheels: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def host_arch(manifest: dict) -> str:
    """The architecture of an artifact's host code: recorded for GPU targets, else the target's."""
    t = manifest["target"]
    if t.get("arch"):
        return t["arch"]
    from ..tvm.target import TVM_TARGETS

    return TVM_TARGETS[t["name"]].host_machines[0] if t["name"] in TVM_TARGETS else "x86_64"


def check_artifact_for_board(manifest: dict, board: Board, where: str = "artifact") -> None:
    """The artifact must be what the board runs: its target, host architecture and CUDA arch."""
    t = manifest["target"]
    if board.accelerator == "fpga":
        if t["name"] != board.artifact_target:
            raise DeployError(f"{where} was compiled for target {t['name']!r}, but board {board.name} runs the FPGA "
                              f"backend's {board.artifact_target!r} artifacts (ternc compile MODEL --target "
                              f"{board.artifact_target}, or pass the model to `ternc deploy`)")
        return
    if t["name"] != board.artifact_target:
        raise DeployError(f"{where} was compiled for target {t['name']!r}, but board {board.name} runs "
                          f"{board.artifact_target!r} artifacts (compile it for the board, or pass the model to "
                          f"`ternc deploy` and let it compile)")
    arch = host_arch(manifest)
    if arch != board.arch:
        raise DeployError(f"{where} has {arch} host code, but board {board.name} is {board.arch}")
    if board.cuda_arch and t.get("cuda_arch") != board.cuda_arch:
        raise DeployError(f"{where} has CUDA code for {t.get('cuda_arch') or 'an unrecorded arch'}, but board "
                          f"{board.name} needs {board.cuda_arch}")


ELF_MACHINES = {62: "x86_64", 183: "aarch64"}


def elf_arch(path: Path) -> str:
    """The architecture of an ELF file's code, from its header's e_machine."""
    head = Path(path).read_bytes()[:20]
    if head[:4] != b"\x7fELF":
        raise DeployError(f"{path} is not an ELF file")
    order = "little" if head[5] == 1 else "big"
    machine = int.from_bytes(head[18:20], order)
    return ELF_MACHINES.get(machine, f"e_machine {machine}")


def fatbin_archs(data: bytes) -> list[tuple[str, str]]:
    """(kind, sm_XX) of every entry of an nvcc fatbin: kind "cubin" (SASS) or "ptx". Layout: a
    16-byte header (magic 0xBA55ED50, version, header size, payload size), then entries, each a
    header (kind u16 at 0, header size u32 at 4, payload size u64 at 8, SM number u32 at 28)."""
    import struct

    if len(data) < 16 or struct.unpack_from("<I", data, 0)[0] != 0xBA55ED50:
        raise DeployError("not an nvcc fatbin (bad magic)")
    _, _, hsize, fsize = struct.unpack_from("<IHHQ", data, 0)
    out, off = [], hsize
    while off < hsize + fsize:
        kind, _, ehs, size = struct.unpack_from("<HHIQ", data, off)
        sm = struct.unpack_from("<I", data, off + 28)[0]
        out.append(({1: "ptx", 2: "cubin"}.get(kind, f"kind{kind}"), f"sm_{sm}"))
        off += ehs + size
    return out


def check_binaries(art: Path, manifest: dict, board: Board) -> None:
    """What the manifest says, checked on the files: host library architecture, fatbin SMs."""
    lib = art / manifest["roles"]["library"]
    got = elf_arch(lib)
    if got != board.arch:
        raise DeployError(f"{lib} holds {got} code, but board {board.name} is {board.arch}")
    if board.cuda_arch:
        fatbins = sorted((art / "cuda").glob("*.fatbin"))
        if not fatbins:
            raise DeployError(f"{art}: no cuda/*.fatbin; board {board.name} runs prebuilt {board.cuda_arch} device code")
        for f in fatbins:
            entries = fatbin_archs(f.read_bytes())
            if ("cubin", board.cuda_arch) not in entries:
                raise DeployError(f"{f} has {entries}, no {board.cuda_arch} cubin for board {board.name}")


def is_runtime_file(rel: str) -> bool:
    """A bundle path that belongs to the runtime (TVM from the wheels, ternc's loader)."""
    return rel.split("/")[0] in ("tvm", "tvm_ffi", "ternc", "typing_extensions.py")


TVM_RUNTIME_ROOTS = ("backends/tvm/runtime.py", "ir/decoder.py")


def ternc_runtime_files(roots=TVM_RUNTIME_ROOTS, exclude: tuple[str, ...] = ()) -> list[str]:
    """The ternc modules the board's runtime imports: `roots` (default backends/tvm/runtime.py,
    ir/decoder.py) and everything they import from ternc (relative imports, followed transitively),
    as paths inside the package, except those under `exclude` (compiler-side modules imported only
    inside functions the board never calls). Checked against the bundle test: each must import with
    numpy + TVM only."""
    import ast

    todo, seen = list(roots), set()
    while todo:
        rel = todo.pop()
        if rel in seen or rel.startswith(exclude):
            continue
        seen.add(rel)
        pkg = Path(rel).parent
        for node in ast.walk(ast.parse((TERNC_ROOT / rel).read_text())):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                base = pkg
                for _ in range(node.level - 1):
                    base = base.parent
                names = [node.module] if node.module else [a.name for a in node.names]
                for name in names:
                    cand = base / Path(*name.split("."))
                    for f in (cand.with_suffix(".py"), cand / "__init__.py"):
                        if (TERNC_ROOT / f).is_file():
                            todo.append(f.as_posix())
    return sorted(seen)


def _write_ternc_subset(dest: Path, roots=TVM_RUNTIME_ROOTS, exclude: tuple[str, ...] = ()) -> None:
    """Copy those modules under dest/ternc/, each package marked by an empty __init__.py (the
    package's own __init__ files import the compiler side)."""
    for rel in ternc_runtime_files(roots, exclude):
        if rel.endswith("__init__.py"):
            continue
        target = dest / "ternc" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(TERNC_ROOT / rel, target)
        for d in [target.parent, *target.parent.parents]:
            if d == dest:
                break
            (d / "__init__.py").touch()


def _write_golden(dest: Path, golden: Golden) -> None:
    dest.mkdir(parents=True)
    np.save(dest / "prefill_logits.npy", np.ascontiguousarray(golden.prefill_logits, np.float32), allow_pickle=False)
    (dest / "golden.json").write_text(json.dumps({
        "prompts": golden.prompts, "n_new": golden.n_new, "tokens": golden.tokens,
        "prefill_logits": "golden/prefill_logits.npy", "logits_rtol": golden.logits_rtol, "source": golden.source,
    }, indent=1))


def _tar_gz(src: Path, out: Path) -> None:
    """Deterministic .tar.gz of `src` (top folder named like `src`)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for p in [src, *sorted(src.rglob("*"))]:
            if "__pycache__" in p.parts:
                continue
            info = tf.gettarinfo(str(p), arcname=str(Path(src.name) / p.relative_to(src)))
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if p.is_file():
                with open(p, "rb") as f:
                    tf.addfile(info, f)
            else:
                tf.addfile(info)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as f, gzip.GzipFile(filename="", fileobj=f, mode="wb", mtime=0) as gz:
        gz.write(buf.getvalue())
    os.replace(tmp, out)


def build_bundle(artifact: str | os.PathLike, board: Board, out: str | os.PathLike, golden: Golden,
                 tar: bool = False, wheel_cache: Path | None = None, log=print) -> BundleInfo:
    """Write a bundle for `board` from a compiled artifact and its golden outputs."""
    t0 = time.time()
    art = Path(artifact)
    try:
        manifest = read_manifest(art)
    except ArtifactError as e:
        raise DeployError(str(e)) from e
    check_artifact_for_board(manifest, board, where=str(art))
    check_binaries(art, manifest, board)
    out = Path(out).resolve()
    if out.exists() and not (out / "bundle.json").exists():
        raise DeployError(f"{out} exists and is not a ternc bundle; not overwriting it")
    wheels = fetch_wheels(board, wheel_cache, log=log)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        shutil.copytree(art, tmp / "artifact", ignore=shutil.ignore_patterns("__pycache__"))
        extract_runtime(wheels, tmp, board)
        _write_ternc_subset(tmp)
        shutil.copyfile(RUNNER, tmp / "run.py")
        (tmp / "run.py").chmod(0o755)
        _write_golden(tmp / "golden", golden)
        files = {}
        for p in sorted(tmp.rglob("*")):
            if p.is_file():
                files[p.relative_to(tmp).as_posix()] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        from importlib.metadata import version

        bundle = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "ternc_version": manifest.get("ternc_version"), "tvm_version": manifest["tvm_version"],
            "board": {"name": board.name, "description": board.description, "arch": board.arch, "os": board.os,
                      "python": board.python, "accelerator": board.accelerator, "cuda_arch": board.cuda_arch},
            "artifact": "artifact", "artifact_target": manifest["target"],
            "runtime_module": RUNTIME_MODULE, "decoder_module": DECODER_MODULE,
            "wheels": [{"package": w.package, "version": version(w.package), "file": w.path.name,
                        "sha256": w.sha256} for w in wheels],
            "golden": "golden/golden.json",
            "usage": ["python3 run.py --verify", "python3 run.py --prompt-ids 1,2,3 -n 16",
                      *(['python3 run.py --prompt "Hello" -n 16   (needs pip install tokenizers)']
                        if (art / "tokenizer" / "tokenizer.json").is_file() else []),
                      "python3 run.py --bench", "python3 run.py --rpc-server --tracker HOST:PORT --key KEY"],
            "files": files,
        }
        publish_bundle(tmp, out, bundle)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return finish_bundle(out, files, wheels, tar, t0)


def publish_bundle(tmp: Path, out: Path, bundle: dict) -> None:
    """Write bundle.json into the finished temporary folder and move it to `out` (replacing an old
    bundle only once the new one is complete)."""
    (tmp / "bundle.json").write_text(json.dumps(bundle, indent=1, sort_keys=True))
    for p in tmp.rglob("*"):
        if p.is_dir():
            p.chmod(0o755)
    tmp.chmod(0o755)
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def finish_bundle(out: Path, files: dict, wheels: list, tar: bool, t0: float) -> "BundleInfo":
    """The optional .tar.gz beside the bundle, and the figures `ternc deploy` prints."""
    tar_path = None
    if tar:
        tar_path = out.with_name(out.name + ".tar.gz")
        _tar_gz(out, tar_path)
    total = sum(f["bytes"] for f in files.values())
    rt_bytes = sum(f["bytes"] for k, f in files.items() if is_runtime_file(k))
    return BundleInfo(out, tar_path, len(files) + 1, total, rt_bytes,
                      [{"file": w.path.name, "downloaded": w.downloaded} for w in wheels], time.time() - t0)
