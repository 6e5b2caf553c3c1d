"""`pip wheel .` installs into a fresh venv outside the repo; `ternc --help` and `ternc.load` work there."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    d = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(d),
                    str(REPO)], check=True, timeout=300)
    (w,) = d.glob("ternc-*.whl")
    return w


def test_wheel_holds_one_ternc_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"ternc"}, tops  # nothing generic like ir/ or sim/ at top level
    for sub in ("ternc/ir/interp.py", "ternc/frontend/onnx_import.py", "ternc/cli.py", "ternc/models/tiny_bitnet.py"):
        assert sub in names


def test_wheel_installs_and_runs_outside_repo(wheel, tmp_path, onnx_export):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    # Dependencies come from this environment's site-packages (no network); ternc itself only from the wheel.
    site = Path(subprocess.check_output([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    deps = Path(sysconfig.get_paths()["purelib"])
    (site / "deps.pth").write_text(str(deps) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
                   check=True, timeout=300)
    # the editable install's finder must not leak in: run from a neutral folder and check the file origin
    code = ("import ternc, sys; m = ternc.load(sys.argv[1]); print(ternc.__file__); "
            "print(sorted(f.name for f in m.functions))")
    out = subprocess.run([str(py), "-S", "-c", "import site; site.addsitedir(%r); " % str(site) + code,
                          str(onnx_export("llama", False))], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    assert str(site) in out.stdout and "decode" in out.stdout
    helped = subprocess.run([str(env_dir / "bin" / "ternc"), "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert helped.returncode == 0 and "compile" in helped.stdout
