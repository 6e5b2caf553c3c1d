"""The `.ternc` file: one safetensors file holding every constant plus the module's text form.

No pickle: safetensors stores raw tensors; the IR text lives in the header metadata with its
sha256, and each constant is checked against the digest printed in the text on load.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from .core import Module
from .text import ParseError, parse, print_module
from .types import DType

FORMAT = "ternc-module"
VERSION = "1"


class ModuleFileError(ValueError):
    pass


def _storable(data: np.ndarray, dtype: DType) -> np.ndarray:
    if dtype == DType.BF16:
        return np.ascontiguousarray(data).view(np.uint16)
    return np.ascontiguousarray(data)


def save_module(module: Module, path: str | os.PathLike) -> Path:
    from safetensors.numpy import save

    path = Path(path)
    text = print_module(module)
    tensors, strings = {}, {}
    for name, c in module.constants.items():
        if c.data is None:
            raise ModuleFileError(f"constant @{name} has no data; cannot save module @{module.name}")
        if c.type.dtype == DType.STR:
            strings[name] = [str(x) for x in c.data.reshape(-1)]
            continue
        tensors[name] = _storable(c.data, c.type.dtype)
    meta = {"format": FORMAT, "version": VERSION, "ir": text,
            "ir_sha256": hashlib.sha256(text.encode()).hexdigest(), "strings": json.dumps(strings)}
    blob = save(tensors, metadata=meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write atomically: a crash never leaves a half-written module behind.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(blob)
    os.replace(tmp, path)
    return path


def load_module(path: str | os.PathLike) -> Module:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ModuleFileError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise ModuleFileError(f"{path}: not a readable .ternc file (corrupt or truncated?): {e}") from None
    if meta.get("format") != FORMAT:
        raise ModuleFileError(f"{path}: not a ternc module file (format {meta.get('format')!r})")
    if meta.get("version") != VERSION:
        raise ModuleFileError(f"{path}: module file version {meta.get('version')!r}, this ternc reads {VERSION!r}")
    text = meta.get("ir", "")
    if hashlib.sha256(text.encode()).hexdigest() != meta.get("ir_sha256"):
        raise ModuleFileError(f"{path}: IR text checksum mismatch (file corrupted)")
    for name, vals in json.loads(meta.get("strings", "{}")).items():
        tensors[name] = np.array(vals, dtype=object)
    try:
        skeleton = parse(text)
        weights = {}
        for name, c in skeleton.constants.items():
            if name in tensors:
                a = tensors[name]
                weights[name] = a.view(DType.BF16.np) if c.type.dtype == DType.BF16 else a
        return parse(text, weights)
    except ParseError as e:
        raise ModuleFileError(f"{path}: {e}") from None
