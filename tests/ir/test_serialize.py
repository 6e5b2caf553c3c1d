"""The .ternc loader refuses crafted and corrupt files with ModuleFileError (issue 14, item 6)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save

import ternc
from ternc.ir.core import Const
from ternc.ir.serialize import ModuleFileError, load_module, save_module


@pytest.fixture(scope="module")
def saved(onnx_export, tmp_path_factory):
    m = ternc.load(onnx_export("llama", False))
    m = m.replace(constants={**m.constants, "labels": Const.of(np.array(["a", "é"], dtype=object))})
    p = tmp_path_factory.mktemp("tm") / "m.ternc"
    save_module(m, p)
    with safe_open(str(p), framework="numpy") as f:
        return p, f.metadata(), {k: f.get_tensor(k) for k in f.keys()}


def _write(tmp_path, meta, tensors, name="x.ternc"):
    p = tmp_path / name
    p.write_bytes(save(tensors, metadata=meta))
    return p


def _rehashed_ir(meta, text):
    return {**meta, "ir": text, "ir_sha256": hashlib.sha256(text.encode()).hexdigest()}


def test_string_constants_round_trip(saved):
    m = load_module(saved[0])
    assert list(m.constants["labels"].data) == ["a", "é"]


def test_strings_metadata_is_checked(saved, tmp_path):
    _, meta, tensors = saved
    with pytest.raises(ModuleFileError, match="string constants checksum mismatch"):
        load_module(_write(tmp_path, {**meta, "strings": "{bad"}, tensors))
    s = '{"labels": [1]}'
    bad = {**meta, "strings": s, "strings_sha256": hashlib.sha256(s.encode()).hexdigest()}
    with pytest.raises(ModuleFileError, match="lists of strings"):
        load_module(_write(tmp_path, bad, tensors))


def test_renamed_tensor_key(saved, tmp_path):
    _, meta, tensors = saved
    t = dict(tensors)
    k = sorted(t)[0]
    t[k + "x"] = t.pop(k)
    with pytest.raises(ModuleFileError, match=f"constant @{k} has no tensor in the file"):
        load_module(_write(tmp_path, meta, t))


def test_crafted_ir_runs_the_verifier(saved, tmp_path):
    _, meta, tensors = saved
    lines = meta["ir"].splitlines()
    nodes = [i for i, ln in enumerate(lines) if ln.strip().startswith("%")]
    lines[nodes[0]], lines[nodes[5]] = lines[nodes[5]], lines[nodes[0]]
    with pytest.raises(ModuleFileError, match="invalid module: @main.*not defined before use"):
        load_module(_write(tmp_path, _rehashed_ir(meta, "\n".join(lines)), tensors))


@pytest.mark.parametrize("edit", [
    lambda t: t.replace("meta = {", "meta = {{", 1),
    lambda t: t.replace("= RMSNorm(", "= NoSuchOp(", 1),
    lambda t: t.replace("const @val_3: i64[] = [0]", "const @val_3: i64[] = [99999999999999999999999]", 1),
    lambda t: t.replace("const @val_3: i64[] = [0]", "const @val_3: i64[2] = [0]", 1),
])
def test_crafted_ir_is_a_module_file_error(saved, tmp_path, edit):
    _, meta, tensors = saved
    text = edit(meta["ir"])
    assert text != meta["ir"]
    with pytest.raises(ModuleFileError):
        load_module(_write(tmp_path, _rehashed_ir(meta, text), tensors))


def test_save_to_a_folder_leaves_nothing(tmp_path, saved):
    m = load_module(saved[0])
    (tmp_path / "d").mkdir()
    with pytest.raises(ModuleFileError, match="is a folder"):
        save_module(m, tmp_path / "d")
    assert list(tmp_path.iterdir()) == [tmp_path / "d"]
