"""The backend-neutral artifact module: manifest schema, strict validation, crash-safe writes.

These tests use a stand-in backend that writes plain files (no TVM): what is checked here is what
every backend's artifact gets from backends/artifact.py.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ternc.backends import artifact as A


def _populate(version: str, size: int = 1000):
    def populate(folder: Path) -> dict:
        (folder / "lib").mkdir()
        (folder / "lib" / "code.bin").write_bytes(version.encode() * size)
        (folder / "data.bin").write_bytes(bytes(range(256)) * 4)
        return {"roles": {"library": "lib/code.bin", "data": "data.bin"}, "version": version}

    return populate


def _write(out, version="v1", **kw):
    return A.write_artifact(out, {"name": "cpu"}, _populate(version), report={"seconds": 1.5}, **kw)


def test_write_read_roundtrip(tmp_path):
    art = _write(tmp_path / "art")
    assert art.path == tmp_path / "art" and art.report == {"seconds": 1.5}
    man = A.read_manifest(art.path)
    assert man == art.manifest
    assert man["format"] == A.FORMAT and man["format_version"] == A.FORMAT_VERSION and man["version"] == "v1"
    assert set(man["files"]) == {"lib/code.bin", "data.bin"}  # manifest and report.json are not listed
    assert man["files"]["data.bin"] == {"sha256": A.sha256_file(art.path / "data.bin"), "bytes": 1024}
    assert A.read_report(art.path) == {"seconds": 1.5}
    assert A.role_path(art.path, man, "library") == art.path / "lib" / "code.bin"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]  # no temp folders left


def test_rebuild_is_byte_identical_except_the_report(tmp_path):
    """Nothing time-dependent goes into hashed files or the manifest: only report.json differs."""
    a = _write(tmp_path / "a").path
    b = A.write_artifact(tmp_path / "b", {"name": "cpu"}, _populate("v1"), report={"seconds": 9.0}).path
    assert (a / "manifest.json").read_bytes() == (b / "manifest.json").read_bytes()
    assert (a / "report.json").read_bytes() != (b / "report.json").read_bytes()


def test_replace_existing_and_fallback_without_exchange(tmp_path, monkeypatch):
    out = tmp_path / "art"
    _write(out, "v1")
    _write(out, "v2")
    assert A.read_manifest(out)["version"] == "v2"
    monkeypatch.setattr(A, "_exchange", lambda a, b: False)  # filesystem without RENAME_EXCHANGE
    _write(out, "v3")
    assert A.read_manifest(out)["version"] == "v3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_refuses_to_replace_a_file_or_overwrite_when_told(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(A.ArtifactError, match="exists and is not a folder"):
        _write(tmp_path / "f")
    _write(tmp_path / "art")
    with pytest.raises(A.ArtifactError, match="exists"):
        _write(tmp_path / "art", overwrite=False)


# --------------------------------------------------------------------------------------- validation
@pytest.fixture
def art(tmp_path):
    return _write(tmp_path / "art").path


def _set_manifest(art, value):
    (art / "manifest.json").write_text(json.dumps(value))


def _edit(art, fn):
    man = json.loads((art / "manifest.json").read_text())
    fn(man)
    _set_manifest(art, man)


@pytest.mark.parametrize("value, msg", [
    ([], "must be a JSON object, got list"),
    (None, "must be a JSON object, got NoneType"),
    ("x", "must be a JSON object, got str"),
])
def test_manifest_not_an_object(art, value, msg):
    _set_manifest(art, value)
    with pytest.raises(A.ArtifactError, match=msg):
        A.read_manifest(art)


def test_manifest_not_json(art):
    (art / "manifest.json").write_bytes(b"\xff{")
    with pytest.raises(A.ArtifactError, match="manifest.json: not valid JSON"):
        A.read_manifest(art)


@pytest.mark.parametrize("key", ["ternc_version", "target", "files", "roles"])
def test_missing_key(art, key):
    _edit(art, lambda m: m.pop(key))
    with pytest.raises(A.ArtifactError, match=f"manifest.json: missing key '{key}'"):
        A.read_manifest(art)


@pytest.mark.parametrize("edit, msg", [
    (lambda m: m.update(target="cpu"), "key 'target' must be dict, got str"),
    (lambda m: m.update(target={"name": 3}), "target: key 'name' must be str, got int"),
    (lambda m: m.update(files=[]), "key 'files' must be dict, got list"),
    (lambda m: m["files"].update({"data.bin": "abc"}), r"files\['data.bin'\]: expected an object, got str"),
    (lambda m: m["files"]["data.bin"].update(bytes="1024"), r"files\['data.bin'\]: key 'bytes' must be int"),
    (lambda m: m["files"]["data.bin"].update(bytes=True), r"files\['data.bin'\]: key 'bytes' must be int"),
    (lambda m: m["files"]["data.bin"].update(sha256="00"), "sha256 '00' is not 64 hex digits"),
    (lambda m: m["roles"].update(library="lib/other.bin"), "library file lib/other.bin is not listed"),
    (lambda m: m["roles"].update(library=["x"]), "file path must be a non-empty string"),
    (lambda m: m.update(format="onnx"), "format 'onnx' is not 'ternc-artifact'"),
    (lambda m: m.update(format_version="2"), "format version 2 "),
])
def test_wrong_types(art, edit, msg):
    _edit(art, edit)
    with pytest.raises(A.ArtifactError, match=msg):
        A.read_manifest(art)


@pytest.mark.parametrize("rel", ["../outside.so", "/etc/passwd", "lib/../../x", "~/x"])
def test_path_escapes_are_refused(art, rel):
    """`library: ../outside.so` with a matching hash must not load code from outside the folder."""
    outside = art.parent / "outside.so"
    outside.write_bytes(b"evil")
    info = {"sha256": A.sha256_file(outside), "bytes": 4}

    def edit(m):
        m["files"][rel] = info
        m["roles"]["library"] = rel

    _edit(art, edit)
    with pytest.raises(A.ArtifactError, match="leaves the artifact folder"):
        A.read_manifest(art)


def test_symlink_out_of_the_folder_is_refused(art):
    outside = art.parent / "outside.bin"
    outside.write_bytes((art / "data.bin").read_bytes())
    (art / "data.bin").unlink()
    (art / "data.bin").symlink_to(outside)
    with pytest.raises(A.ArtifactError, match="data.bin resolves outside the artifact folder"):
        A.read_manifest(art)


def test_unknown_target_name(art):
    _edit(art, lambda m: m["target"].update(name="tpu"))
    A.read_manifest(art)  # the module itself knows no targets
    with pytest.raises(A.ArtifactError, match="unknown target 'tpu'; this ternc loads cpu, cuda"):
        A.read_manifest(art, known_targets={"cpu": 1, "cuda": 1})


def test_truncated_and_modified_files(art):
    p = art / "data.bin"
    p.write_bytes(p.read_bytes()[:-1])
    with pytest.raises(A.ArtifactError, match="size mismatch for data.bin: 1023 bytes, manifest says 1024"):
        A.read_manifest(art)
    p.write_bytes(b"\0" * 1024)
    with pytest.raises(A.ArtifactError, match="checksum mismatch for data.bin"):
        A.read_manifest(art)
    p.unlink()
    with pytest.raises(A.ArtifactError, match="missing file data.bin"):
        A.read_manifest(art)


# ------------------------------------------------------------------------------------ crash safety
_CHILD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from ternc.backends import artifact as A

    out, mode = Path(sys.argv[1]), sys.argv[2]

    def populate(version, kill_midway=False):
        def f(folder):
            (folder / "a.bin").write_bytes(version.encode() * 200_000)
            if kill_midway:
                os.kill(os.getpid(), signal.SIGKILL)
            (folder / "b.bin").write_bytes(version.encode() * 100_000)
            return {"roles": {"main": "a.bin"}, "version": version}
        return f

    if mode == "midway":
        A.write_artifact(out, {"name": "cpu"}, populate("new", kill_midway=True))
    elif mode == "after-exchange":  # killed after the swap, before the old artifact is deleted
        real = A._exchange
        def exchange(a, b):
            assert real(a, b)
            os.kill(os.getpid(), signal.SIGKILL)
        A._exchange = exchange
        A.write_artifact(out, {"name": "cpu"}, populate("new"))
    else:  # loop: the parent kills this process at a random moment
        print("ready", flush=True)
        i = 0
        while True:
            A.write_artifact(out, {"name": "cpu"}, populate(f"v{i % 2}"))
            i += 1
""")


def _child(tmp_path, out, mode):
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    return subprocess.Popen([sys.executable, str(script), str(out), mode], stdout=subprocess.PIPE, text=True)


def _old_artifact(out):
    A.write_artifact(out, {"name": "cpu"}, lambda f: ((f / "a.bin").write_bytes(b"old"), {"roles": {"main": "a.bin"},
                                                                                          "version": "old"})[1])


@pytest.mark.parametrize("mode, survivor", [("midway", "old"), ("after-exchange", "new")])
def test_sigkill_leaves_old_or_new_and_stale_temps_are_cleaned(tmp_path, mode, survivor):
    out = tmp_path / "art"
    _old_artifact(out)
    p = _child(tmp_path, out, mode)
    assert p.wait(timeout=60) == -signal.SIGKILL
    assert A.read_manifest(out)["version"] == survivor
    stale = [q for q in tmp_path.iterdir() if q.name.startswith(".art.")]
    assert len(stale) == 1 and ".art.tmp-" in stale[0].name  # the killed build's folder
    _old_artifact(out)  # the next build to the same place removes it (its process is gone)
    assert sorted(q.name for q in tmp_path.iterdir()) == ["art", "child.py"]


def test_sigkill_at_random_moments(tmp_path):
    """A process rewriting the artifact in a loop, killed at random times: every time, the folder is
    a complete artifact (old or new) whose files all match their checksums."""
    out = tmp_path / "art"
    _old_artifact(out)
    rng = random.Random(0)
    versions = set()
    for _ in range(8):
        p = _child(tmp_path, out, "loop")
        assert p.stdout.readline().strip() == "ready"  # imports done: now it writes continuously
        time.sleep(rng.uniform(0.0, 0.3))
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
        p.stdout.close()
        versions.add(A.read_manifest(out)["version"])
    assert versions <= {"old", "v0", "v1"} and versions - {"old"}
    A.clean_stale(out)
    assert sorted(q.name for q in tmp_path.iterdir()) == ["art", "child.py"]


def test_live_builders_temp_folders_are_kept(tmp_path):
    """clean_stale removes only folders whose process is gone (a concurrent build keeps its own)."""
    out = tmp_path / "art"
    mine = tmp_path / f".art.tmp-{os.getppid()}-abc"  # a live process (our parent)
    dead = tmp_path / ".art.tmp-999999999-abc"
    other = tmp_path / ".other.tmp-999999999-abc"
    for d in (mine, dead, other):
        d.mkdir()
    assert A.clean_stale(out) == [dead]
    assert mine.exists() and other.exists()
