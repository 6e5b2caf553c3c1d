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
    strings_text = json.dumps(strings)
    meta = {"format": FORMAT, "version": VERSION, "ir": text,
            "ir_sha256": hashlib.sha256(text.encode()).hexdigest(), "strings": strings_text,
            "strings_sha256": hashlib.sha256(strings_text.encode()).hexdigest()}
    blob = save(tensors, metadata=meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write atomically: a crash never leaves a half-written module behind.
    if path.is_dir():
        raise ModuleFileError(f"{path}: is a folder; give a .ternc file path")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)  # never leave a half-written temp file behind
        raise
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
    strings_text = meta.get("strings", "{}")
    # files written before strings_sha256 existed carry no digest for them; their structure is still checked
    if "strings_sha256" in meta and hashlib.sha256(strings_text.encode()).hexdigest() != meta["strings_sha256"]:
        raise ModuleFileError(f"{path}: string constants checksum mismatch (file corrupted)")
    try:
        strings = json.loads(strings_text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise ModuleFileError(f"{path}: string constants are not valid JSON ({e})") from None
    if not isinstance(strings, dict) or not all(isinstance(v, list) and all(isinstance(x, str) for x in v)
                                                for v in strings.values()):
        raise ModuleFileError(f"{path}: string constants must map names to lists of strings")
    for name, vals in strings.items():
        tensors[name] = np.array(vals, dtype=object)
    try:
        skeleton = parse(text)
        weights = {}
        for name, c in skeleton.constants.items():
            if name in tensors:
                a = tensors[name]
                weights[name] = a.view(DType.BF16.np) if c.type.dtype == DType.BF16 else a
        module = parse(text, weights)
    except ParseError as e:
        raise ModuleFileError(f"{path}: {e}") from None
    except (ValueError, TypeError, OverflowError, KeyError, IndexError, RecursionError) as e:
        # the text passed its checksum, so it was written (or crafted) this way: report, never crash
        raise ModuleFileError(f"{path}: malformed IR text: {type(e).__name__}: {str(e)[:300]}") from None
    for name, c in module.constants.items():
        if c.data is None:
            raise ModuleFileError(f"{path}: constant @{name} has no tensor in the file (it holds "
                                  f"{sorted(tensors)[:8]}{'...' if len(tensors) > 8 else ''})")
        declared = skeleton.constants[name].type
        if declared.shape is not None and tuple(c.data.shape) != tuple(declared.shape):
            raise ModuleFileError(f"{path}: constant @{name} is declared {declared} but its tensor has shape "
                                  f"{list(c.data.shape)}")
    extra = sorted(set(tensors) - set(module.constants))
    if extra:
        raise ModuleFileError(f"{path}: tensors {extra[:8]} are not constants of module @{module.name}")
    from .verify import VerifyError, verify

    try:
        verify(module)
    except VerifyError as e:
        raise ModuleFileError(f"{path}: invalid module: {e}") from None
    return module
