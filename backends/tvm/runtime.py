"""Run a compiled ternc artifact with the TVM *runtime* only (no compiler library).

Importing this module imports `tvm` with TVM_USE_RUNTIME_LIB=1 when it has not been imported yet (and
restores the environment after), so only libtvm_runtime.so (plus libtvm_runtime_cuda.so for CUDA) is
loaded. It uses `tvm.runtime` and
`tvm_ffi` only: never `tvm.relax`, `tvm.compile` or anything of the compiler.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ...ir.decoder import DecoderSpec
from ..artifact import ArtifactError, require, role_path
from .hugepages import place_weights
from .target import TVM_TARGETS

def _import_tvm_runtime_only() -> None:
    """Import tvm with TVM_USE_RUNTIME_LIB=1, then restore the caller's environment: the variable must
    not leak into the caller's later subprocesses (a child `ternc compile` would lose the compiler)."""
    if "tvm" in sys.modules:
        return
    before = os.environ.get("TVM_USE_RUNTIME_LIB")
    os.environ["TVM_USE_RUNTIME_LIB"] = "1"
    try:
        import tvm  # noqa: F401
    finally:
        if before is None:
            os.environ.pop("TVM_USE_RUNTIME_LIB", None)
        else:
            os.environ["TVM_USE_RUNTIME_LIB"] = before


class CompilerUnavailableError(RuntimeError):
    pass


def require_compiler(target: str) -> None:
    """Refuse to compile when this process's `tvm` was loaded without its compiler library (e.g. by
    load_artifact before any compile): tvm.relax / tvm.compile would fail with raw AttributeErrors."""
    if "tvm" in sys.modules and getattr(sys.modules.get("tvm.base"), "_RUNTIME_ONLY", False):
        raise CompilerUnavailableError(
            f"target {target!r}: this process loaded TVM without its compiler library (an artifact was loaded "
            f"first, or TVM_USE_RUNTIME_LIB=1 is set); compile in a fresh process")


_import_tvm_runtime_only()


class RunnerError(RuntimeError):
    pass


class UnknownEntryError(RunnerError, KeyError):
    pass


class RunnerInputError(RunnerError, ValueError):
    """Inputs the compiled entry cannot take (names, dtype, shape, empty, token id range, context):
    checked on the host before the VM runs, so bad input never reaches the kernels."""


_CUDA_FATBINS: dict[str, bytes] = {}


def _load_cuda_runtime():
    """Register the `cuda` module loader: libtvm_runtime_cuda.so must be loaded RTLD_GLOBAL first."""
    import ctypes

    import tvm

    lib = Path(tvm.__file__).parent / "lib" / "libtvm_runtime_cuda.so"
    if not lib.exists():
        raise RunnerError(f"CUDA artifact needs {lib} (the tvm package's CUDA runtime)")
    try:
        ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
    except OSError as e:  # e.g. no libcuda.so.1: a host without the NVIDIA driver
        raise RunnerError(f"cannot load the CUDA runtime ({e}); a CUDA artifact needs an NVIDIA driver") from None


def _register_fatbins(cuda_dir: Path):
    """Hand TVM our ahead-of-time nvcc fatbins instead of compiling CUDA source at load time."""
    import hashlib

    import tvm_ffi

    for f in sorted(cuda_dir.glob("*.fatbin")):
        _CUDA_FATBINS[f.stem] = f.read_bytes()

    def tvm_callback_cuda_compile(code, *_args):
        key = hashlib.sha256(code.encode() if isinstance(code, str) else bytes(code)).hexdigest()
        if key in _CUDA_FATBINS:
            return bytearray(_CUDA_FATBINS[key])
        if len(_CUDA_FATBINS) == 1:
            return bytearray(next(iter(_CUDA_FATBINS.values())))
        raise RunnerError(f"no prebuilt fatbin for CUDA source sha256 {key} (artifact has "
                            f"{sorted(_CUDA_FATBINS)})")

    tvm_ffi.register_global_func("tvm_callback_cuda_compile", tvm_callback_cuda_compile, override=True)


_ST_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
              "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?"}


def load_safetensors(path) -> dict[str, np.ndarray]:
    """Read a .safetensors file: the `safetensors` package if present, else this small reader of
    the documented format (u64 header length, JSON header, raw little-endian data), so a deployment
    machine needs only numpy. A malformed file is an ArtifactError naming it."""
    try:
        from safetensors.numpy import load_file
    except ImportError:
        pass
    else:
        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own SafetensorError (and OSError/ValueError)
            raise ArtifactError(f"{path}: not a valid safetensors file ({type(e).__name__}: {e})") from None
    return _read_safetensors(Path(path))


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    import json
    import struct

    data = path.read_bytes()
    try:
        (hlen,) = struct.unpack_from("<Q", data, 0)
        if 8 + hlen > len(data):
            raise ValueError(f"header length {hlen} exceeds the file ({len(data)} bytes)")
        header = json.loads(data[8:8 + hlen])
        if not isinstance(header, dict):
            raise ValueError("header is not an object")
        base = 8 + hlen
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if info["dtype"] not in _ST_DTYPES:
                raise ValueError(f"tensor {name} has dtype {info['dtype']} this reader does not know")
            b, e = (int(x) for x in info["data_offsets"])
            dt = np.dtype(_ST_DTYPES[info["dtype"]])
            shape = tuple(int(d) for d in info["shape"])
            if not 0 <= b <= e <= len(data) - base or e - b != dt.itemsize * int(np.prod(shape)):
                raise ValueError(f"tensor {name}: data offsets {b}..{e} do not fit the file or its shape")
            out[name] = np.frombuffer(data[base + b:base + e], dtype=dt).reshape(shape).copy()
        return out
    except (ValueError, KeyError, TypeError, struct.error) as e:
        raise ArtifactError(f"{path}: not a valid safetensors file ({e})") from None


def storage_view(a: np.ndarray, dtype: str, shape) -> np.ndarray:
    """A weight as the compiled kernels take it (Lowered.weight_storage): the same bytes viewed as
    another dtype/shape, no copy (e.g. i2 codes uint8 [N, 32 B] as int32 words [N, 8 B] for dp4a)."""
    return np.ascontiguousarray(a).view(np.dtype(dtype)).reshape(tuple(shape))


class DeviceTensor:
    """An output left on the artifact's device (the KV cache a decode step hands to the next one):
    fed back to `run` without a host round trip; `np.asarray(t)` / `t.numpy()` copy it out."""

    def __init__(self, tensor):
        self.tensor = tensor
        self.shape = tuple(int(d) for d in tensor.shape)
        self.dtype = np.dtype(str(tensor.dtype))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def numpy(self) -> np.ndarray:
        return self.tensor.numpy()

    def __array__(self, dtype=None, copy=None):
        a = self.tensor.numpy()
        return a if dtype is None else a.astype(dtype)


class TVMRunner:
    """A loaded artifact: `.meta` (the module meta) and `.run(entry, inputs) -> {name: array}`."""

    def __init__(self, path: Path, manifest: dict, device: str | None = None, session=None):
        """With `session` (a `tvm.rpc` session) the library is uploaded to the remote machine and
        runs there; weights go to its device once, and only non-carried outputs come back."""
        import tvm
        from tvm.runtime.vm import VirtualMachine

        self.path = Path(path)
        self.manifest = manifest
        self.meta = manifest["model"]["meta"]
        self.entries = manifest["entries"]
        target = TVM_TARGETS[manifest["target"]["name"]]
        self.session = session
        lib_file = role_path(self.path, manifest, "library")
        if session is not None:
            if target.fatbins:
                raise ArtifactError(f"{self.path}: running a cuda artifact over RPC is not supported (the remote "
                                    f"would need the artifact's fatbins); use the board's bundle (run.py)")
            remote_name = f"ternc-{manifest['files'][manifest['roles']['library']]['sha256'][:16]}.so"
            session.upload(str(lib_file), target=remote_name)
            try:
                lib = session.load_module(remote_name)
            except Exception as e:  # the remote's dlopen error (wrong architecture etc.)
                raise ArtifactError(f"{self.path}: the remote could not load {lib_file.name} (built for "
                                    f"{manifest['target'].get('arch') or target.host_machines[0]} host code): {e}") from e
            self.device = session.cpu(0)
        else:
            if target.fatbins:
                _load_cuda_runtime()
                _register_fatbins(self.path / "cuda")
            self.device = tvm.device(device) if device is not None else tvm.device(target.device, 0)
            lib = tvm.runtime.load_module(str(lib_file))
        self.vm = VirtualMachine(lib, self.device)
        weights_file = role_path(self.path, manifest, "weights")
        arrays = load_safetensors(weights_file)
        names = manifest["weights"]
        missing = sorted({w for e in self.entries.values() for w in e["weights"] if names.get(w) not in arrays})
        if missing:
            raise ArtifactError(f"{weights_file}: lacks tensors {missing[:5]} that the entries take")
        # local CPU: one huge-page arena (decode streams every weight per token; hugepages.py)
        self.weights = place_weights({w: arrays[key] for w, key in names.items()}, self.device)
        self._fns = {}
        # decoder outputs that only feed the next step stay on the device (no copy per token)
        try:
            dec = DecoderSpec.from_meta(self.meta["decoder"]) if self.meta.get("decoder") else None
        except (ValueError, TypeError, KeyError, AttributeError) as e:  # DecoderSpecError is a ValueError
            raise ArtifactError(f"{self.path}: manifest model.meta.decoder is malformed: {e}") from None
        if dec is not None:
            _check_decoder_entries(self.path, dec, self.entries)
        self._device_outputs = {t.present for t in dec.carried} if dec else set()
        # decode over preallocated caches written in place (kvcache.py), where the library has it
        self._kv_inplace = manifest.get("kv_inplace") if session is None else None
        self._lock = threading.Lock()
        self._plan()

    def _plan(self) -> None:
        """Per-entry input checks, precomputed once so that `run` costs a few dict lookups per input."""
        dec = self.meta.get("decoder") or {}
        self._ids_name = dec.get("input_ids")
        vocab = dec.get("vocab_size")
        self._vocab = int(vocab) if isinstance(vocab, int) and vocab > 0 else None
        ctx = self.meta.get("max_context") or dec.get("max_context")
        self._max_context = int(ctx) if isinstance(ctx, int) and ctx > 0 else None
        self._plans = {}
        for entry, sig in self.entries.items():
            specs = [(i["name"], np.dtype(i["dtype"]), tuple(i["shape"])) for i in sig["inputs"]]
            self._plans[entry] = (specs, frozenset(n for n, _, _ in specs))

    def _check(self, entry: str, inputs: Mapping[str, Any]) -> list:
        """Validated host arrays / device tensors in signature order; RunnerInputError otherwise."""
        if entry not in self._plans:
            raise UnknownEntryError(f"artifact {self.path} has no entry {entry!r}; it has {sorted(self.entries)}")
        specs, names = self._plans[entry]
        if len(inputs) != len(names) or not names.issuperset(inputs):
            missing = [n for n, _, _ in specs if n not in inputs]
            extra = sorted(set(inputs) - names)
            raise RunnerInputError(f"@{entry}: missing inputs {missing}, unknown inputs {extra}; it takes "
                                   f"{[n for n, _, _ in specs]}")
        out, bound = [], {}
        for name, want, shape in specs:
            a = inputs[name]
            if not isinstance(a, DeviceTensor):
                a = np.asarray(a)
            if a.dtype != want:
                a = self._convert(entry, name, a, want)
            got = a.shape
            if len(got) != len(shape):
                raise RunnerInputError(f"@{entry}: input {name} has shape {list(got)}, expected {list(shape)}")
            for d, s in zip(shape, got):
                if isinstance(d, int):
                    if d != s:
                        raise RunnerInputError(f"@{entry}: input {name} has shape {list(a.shape)}, expected "
                                               f"{list(shape)}")
                elif d != "?" and bound.setdefault(d, s) != s:
                    raise RunnerInputError(f"@{entry}: dim {d} is {bound[d]} elsewhere but {s} in {name}")
            if name == self._ids_name:
                self._check_ids(entry, name, a)
            elif want.kind == "f" and not isinstance(a, DeviceTensor) and a.size and not np.isfinite(a).all():
                # the kernels' masked softmax would turn a NaN cache into finite logits; the IR says NaN
                raise RunnerInputError(f"@{entry}: input {name} holds non-finite values (NaN/inf)")
            out.append(a)
        if bound.get("seq", 1) == 0:
            raise RunnerInputError(f"@{entry}: input sequence is empty (seq=0); give at least one token")
        if self._max_context is not None and bound.get("seq", 0) + bound.get("past", 0) > self._max_context:
            raise RunnerInputError(f"@{entry}: {bound.get('past', 0)} cached + {bound.get('seq', 0)} new tokens "
                                   f"exceed the context of {self._max_context} this artifact was compiled for")
        return out

    @staticmethod
    def _convert(entry: str, name: str, a, want: np.dtype):
        if isinstance(a, DeviceTensor) or a.dtype.kind not in "iuf" or want.kind not in "iuf" \
                or (want.kind in "iu") != (a.dtype.kind in "iu"):
            raise RunnerInputError(f"@{entry}: input {name} has dtype {a.dtype}, expected {want}")
        if want.kind in "iu" and not np.can_cast(a.dtype, want, casting="safe") and a.size:
            lo, hi = np.iinfo(want).min, np.iinfo(want).max
            if int(a.min()) < lo or int(a.max()) > hi:
                raise RunnerInputError(f"@{entry}: input {name} ({a.dtype}) has values outside {want}")
        return a.astype(want)

    def _check_ids(self, entry: str, name: str, a) -> None:
        if isinstance(a, DeviceTensor):
            raise RunnerInputError(f"@{entry}: token ids {name} must be a host array (they are range-checked)")
        if a.size == 0:
            raise RunnerInputError(f"@{entry}: input {name} is empty; give at least one token")
        if a.size <= 64:  # decode steps: Python's min/max on a short list beat two numpy reductions
            flat = a.ravel().tolist()
            lo, hi = min(flat), max(flat)
        else:
            lo, hi = int(a.min()), int(a.max())
        if lo < 0 or (self._vocab is not None and hi >= self._vocab):
            bad = lo if lo < 0 else hi
            raise RunnerInputError(f"@{entry}: token id {bad} in {name} is out of range for a vocabulary of "
                                   f"{self._vocab if self._vocab is not None else 'unknown size'}")

    def run(self, entry: str, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        import tvm

        args = self._check(entry, inputs)
        sig = self.entries[entry]
        # One VM per runner, shared by threads: calls are serialized (the TVM VM keeps per-call
        # register state and is not reentrant; the kernels themselves use TVM's thread pool).
        with self._lock:
            if self._kv_inplace is not None and entry == self._kv_inplace["decode"]:
                return self._run_inplace(sig, args)
            args = [a.tensor if isinstance(a, DeviceTensor) else tvm.runtime.tensor(np.ascontiguousarray(a),
                                                                                      self.device)
                    for a in args]
            args += [self.weights[w] for w in sig["weights"]]
            try:
                if self.session is not None:  # RPC returns no tuples: the VM's stateful calls fetch each output
                    self.vm.set_input(entry, *args)
                    self.vm.invoke_stateful(entry)
                    out = self.vm.get_outputs(entry)
                else:
                    out = self.vm[entry](*args)
            except (RuntimeError, ValueError, TypeError) as e:
                # tvm.error.* (RuntimeError), or the packed-function argument checks (ValueError "Mismatched
                # w.strides", TypeError "Mismatched type"): a manifest whose entry signature, e.g. its weight
                # order, the library disagrees with; inputs were validated above
                raise RunnerError(f"{self.path}: @{entry} failed in the compiled library (does the manifest match "
                                  f"it?): {str(e).strip().splitlines()[-1][:300]}") from None
            return {o["name"]: DeviceTensor(out[i]) if o["name"] in self._device_outputs else out[i].numpy()
                    for i, o in enumerate(sig["outputs"])}


    def _run_inplace(self, sig: dict, args: list) -> dict:
        """@decode through its in-place twin (kvcache.py): the caches are KVBuffers written in place,
        the presents come back as KVViews of them."""
        import tvm

        from .kvcache import KVView, kv_buffers

        plan = self._kv_inplace
        names = [i["name"] for i in sig["inputs"]]
        given = dict(zip(names, args))
        pasts = [given[c] for c in plan["caches"]]
        length = int(pasts[0].shape[2])
        seq = int(given[self._ids_name].shape[1]) if self._ids_name in given else 1
        bufs = kv_buffers(pasts, length + seq, self.device, self._max_context)
        by_name = dict(zip(plan["caches"], bufs))
        isig = plan["signature"]
        call = [by_name[i["name"]].tensor if i["name"] in by_name else
                (given[i["name"]].tensor if isinstance(given[i["name"]], DeviceTensor)
                 else tvm.runtime.tensor(np.ascontiguousarray(given[i["name"]]), self.device))
                for i in isig["inputs"]]
        call.append(tvm.runtime.ShapeTuple([length]))
        call += [self.weights[w] for w in isig["weights"]]
        try:
            out = self.vm[plan["entry"]](*call)
        except RuntimeError as e:
            raise RunnerError(f"{self.path}: @{plan['entry']} failed in the compiled library: "
                              f"{str(e).strip().splitlines()[-1][:300]}") from None
        for b in bufs:
            b.tip = length + seq
        present = dict(zip(plan["presents"], bufs))
        res = {}
        for i, o in enumerate(isig["outputs"]):
            name = o["name"]
            if name in present:
                res[name] = KVView(present[name], length + seq)
            else:
                res[name] = DeviceTensor(out[i]) if name in self._device_outputs else out[i].numpy()
        return res


def _check_decoder_entries(path: Path, dec: DecoderSpec, entries: dict) -> None:
    """The decoder contract's names must be the entries' inputs and outputs (a manifest whose outputs
    were renamed would load and then fail in generate with a KeyError)."""
    where = f"{path / 'manifest.json'}: model.meta.decoder"
    for entry in (dec.prefill, dec.decode):
        if entry not in entries:
            raise ArtifactError(f"{where}: entry {entry!r} is not among the entries {sorted(entries)}")
        outs = {o["name"] for o in entries[entry]["outputs"]}
        ins = {i["name"] for i in entries[entry]["inputs"]}
        want_out = [dec.logits] + [t.present for t in dec.carried]
        bad = [n for n in want_out + [dec.input_ids] if not isinstance(n, str)]
        if bad:
            raise ArtifactError(f"{where}: names must be strings, got {type(bad[0]).__name__}")
        missing = [n for n in want_out if n not in outs] + [n for n in [dec.input_ids] if n not in ins]
        if missing:
            raise ArtifactError(f"{where}: {entry!r} lacks {missing[:4]} that the decoder contract names")


def _check_manifest(path: Path, manifest: dict) -> None:
    """The TVM keys of a manifest (backends/artifact.py checked the common ones): types and names."""
    where = f"{path / 'manifest.json'}"
    require(manifest, "tvm_version", str, where)
    model = require(manifest, "model", dict, where)
    require(model, "meta", dict, f"{where}: model")
    entries = require(manifest, "entries", dict, where)
    weights = require(manifest, "weights", dict, where)
    for name, sig in entries.items():
        w = f"{where}: entries[{name!r}]"
        for key in ("inputs", "outputs"):
            for i, spec in enumerate(require(sig, key, list, w)):
                require(spec, "name", str, f"{w}.{key}[{i}]")
                try:
                    np.dtype(require(spec, "dtype", str, f"{w}.{key}[{i}]"))
                except (TypeError, ValueError):
                    raise ArtifactError(f"{w}.{key}[{i}]: unknown dtype {spec['dtype']!r}") from None
                if key == "inputs":
                    shape = require(spec, "shape", list, f"{w}.{key}[{i}]")
                    if not all(isinstance(d, (int, str)) and not isinstance(d, bool) for d in shape):
                        raise ArtifactError(f"{w}.{key}[{i}]: shape entries must be ints or symbol names")
        for wn in require(sig, "weights", list, w):
            if not isinstance(wn, str) or wn not in weights:
                raise ArtifactError(f"{w}: weight {wn!r} is not in the manifest's weights")
    for wn, key in weights.items():
        if not isinstance(key, str):
            raise ArtifactError(f"{where}: weights[{wn!r}] must name a safetensors tensor (a string), got "
                                f"{type(key).__name__}")
    for role in ("library", "weights"):
        if role not in manifest["roles"]:
            raise ArtifactError(f"{where}: roles lacks the {role!r} file")


def load_artifact(path, manifest: dict, device: str | None = None) -> TVMRunner:
    """A TVMRunner for a verified artifact (`artifact.read_manifest`): checks the TVM keys, that
    this machine runs the target's host code and that this runtime is the TVM that compiled it."""
    import platform

    path = Path(path)
    _check_manifest(path, manifest)
    target = TVM_TARGETS[manifest["target"]["name"]]
    machine = platform.machine().lower()
    arch = manifest["target"].get("arch")  # GPU artifacts record their host code's architecture
    machines = {"aarch64": ("aarch64", "arm64"), "x86_64": ("x86_64", "amd64")}.get(arch, target.host_machines)
    if machine not in machines:
        raise ArtifactError(f"{path}: built for target {target.name} ({machines[0]} host code), "
                            f"but this machine is {machine}")
    import tvm

    if str(tvm.__version__) != manifest["tvm_version"]:
        raise ArtifactError(f"{path}: compiled with TVM {manifest['tvm_version']}, but this runtime is TVM "
                            f"{tvm.__version__}")
    return TVMRunner(path, manifest, device)


def bundle_runtime(dest, with_ffi: bool = True) -> Path:
    """Copy a runtime-only `tvm` package (no lib/libtvm_compiler.so, 3rdparty/, src/, include/;
    about 30 MB) and, with `with_ffi`, this interpreter's `tvm_ffi` package into `dest`, for
    PYTHONPATH on a deployment machine. (`tvm_ffi` has compiled extensions: for another Python
    version ship that version's wheel contents instead, e.g. `pip download apache-tvm-ffi==VER
    --python-version 3.12 --only-binary=:all:` and unzip it into `dest`.)"""
    import shutil

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
