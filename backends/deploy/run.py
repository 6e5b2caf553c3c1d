#!/usr/bin/env python3
"""Run a ternc deployment bundle on the board: no compiler, no ternc, only numpy + the bundled
TVM runtime (beside this file: runtime-only `tvm`, `tvm_ffi`, and ternc's artifact loader).

    python3 run.py --prompt-ids 1,2,3 [-n 16]     greedy generation, prints the ids
    python3 run.py --prompt "text" [-n 16]        the same from text, streamed, through the tokenizer
                                                   the artifact carries (needs the `tokenizers` package)
    python3 run.py --verify                        rerun the golden prompts: PASS / FAIL (exit 1)
    python3 run.py --bench [--prompt-len 32 --decode 32]   prefill / decode tokens per second
    python3 run.py --rpc-server --tracker HOST:PORT --key KEY [--port 9090]
                                                   serve this board to `ternc run/bench --remote`

kv260 bundles (FPGA): the host driver runs the accelerator's program through a transport,
    --transport pynq   the board (PYNQ: Overlay, MMIO, allocate; --bitfile, default hw/ternc_kv260.bit
                       with ternc_kv260.hwh beside it; CMA checked first)
    --transport model  the functional executor behind the same register protocol (any machine)
    --transport rtl    the generated top in Verilator through cocotb (where the bundle's ternc has it)
    --lm-head tvm|numpy  the LM head on the CPU: the bundled TVM kernel (aarch64) or numpy

Every start checks the sha256 of every file listed in bundle.json, that this machine's
architecture and Python version are the ones the bundle was built for, then loads the artifact.
This file is shipped verbatim by `ternc deploy` (ternc/backends/deploy/run.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUNDLE_FORMAT = "ternc-bundle"
BUNDLE_VERSION = 1


class BundleError(RuntimeError):
    pass


#: the loaded runtime's own user-facing error classes (kv260: the driver's DriverError), reported like BundleError
RUNTIME_ERRORS: list[type] = []


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_bundle(root: Path = HERE, platform_check: bool = True) -> dict:
    """bundle.json, then every listed file's sha256, this machine's arch and Python version (the
    platform check only where native code will load: `check_platform`)."""
    mf = root / "bundle.json"
    if not mf.is_file():
        raise BundleError(f"{root}: no bundle.json (not a ternc bundle, or an incomplete copy)")
    try:
        bundle = json.loads(mf.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{mf}: not valid JSON ({e})") from None
    if bundle.get("format") != BUNDLE_FORMAT or bundle.get("format_version") != BUNDLE_VERSION:
        raise BundleError(f"{mf}: format {bundle.get('format')!r} v{bundle.get('format_version')}, this run.py reads "
                          f"{BUNDLE_FORMAT!r} v{BUNDLE_VERSION}")
    bad = []
    for rel, info in bundle["files"].items():
        p = root / rel
        if not p.is_file():
            bad.append(f"missing {rel}")
        elif _sha256(p) != info["sha256"]:
            bad.append(f"checksum mismatch for {rel} (file modified or corrupted)")
    if bad:
        raise BundleError(f"{root}: {len(bad)} of {len(bundle['files'])} files fail verification: "
                          + "; ".join(bad[:5]) + ("; ..." if len(bad) > 5 else ""))
    if platform_check:
        check_platform(bundle)
    return bundle


def check_platform(bundle: dict) -> None:
    """The bundled native code (TVM runtime, kernels, tvm_ffi) is for one architecture and CPython."""
    machine = platform.machine().lower()
    want = bundle["board"]["arch"]
    if machine not in {want, {"aarch64": "arm64"}.get(want, want)}:
        raise BundleError(f"bundle for board {bundle['board']['name']} ({want}), but this machine is {machine}")
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    if py != bundle["board"]["python"]:
        raise BundleError(f"bundle's tvm_ffi is built for Python {bundle['board']['python']}, but this is Python "
                          f"{py}; rebuild with `ternc deploy ... --python {py}`")


def platform_ok(bundle: dict) -> bool:
    try:
        check_platform(bundle)
        return True
    except BundleError:
        return False


def _runtime(bundle: dict, root: Path = HERE):
    """Import the bundled runtime: runtime-only TVM (never libtvm_compiler.so) and ternc's artifact
    loader and decoder contract. They sit beside this script, whose folder Python puts on the
    import path (the bundle's ternc/ holds only those modules)."""
    os.environ["TVM_USE_RUNTIME_LIB"] = "1"
    import importlib

    return importlib.import_module(bundle["runtime_module"])


def _decoder(bundle: dict):
    import importlib

    return importlib.import_module(bundle["decoder_module"])


def load_kv260(bundle: dict, transport: str = "auto", bitfile: str | None = None, lm_head: str = "auto",
               root: Path = HERE, rtl_program: str = "full"):
    """The kv260 board runner (ternc.backends.fpga.board_runner) over a transport, LM head on the CPU."""
    import importlib

    kernel = bundle.get("lm_head_kernel")
    if lm_head == "auto":
        lm_head = "tvm" if kernel and platform_ok(bundle) else "numpy"
        if kernel and lm_head == "numpy":
            print(f"[run.py] this machine is not the bundle's {bundle['board']['arch']} / Python "
                  f"{bundle['board']['python']}: LM head in numpy (--lm-head tvm needs the board)", file=sys.stderr)
    if transport == "rtl":
        lm_head = "numpy"          # the simulation host is not the board
    if lm_head == "tvm":
        if not kernel:
            raise BundleError("--lm-head tvm: this bundle has no LM-head kernel")
        check_platform(bundle)
        os.environ["TVM_USE_RUNTIME_LIB"] = "1"
    elif lm_head != "numpy":
        raise BundleError(f"--lm-head expects auto, tvm or numpy, got {lm_head!r}")
    if transport == "auto":
        import importlib.util

        if importlib.util.find_spec("pynq") is not None:   # the board's PYNQ (imported by the driver)
            transport = "pynq"
        else:
            transport = "model"
            print("[run.py] no pynq here: --transport model (the functional executor behind the register "
                  "protocol; on the board use --transport pynq)", file=sys.stderr)
    if transport == "pynq":
        check_platform(bundle)
        bitfile = bitfile or str(root / bundle["bitstream"]["bit"])
    mod = importlib.import_module(bundle["runner_module"])
    RUNTIME_ERRORS.append(mod.DriverError)
    lib = root / kernel["file"] if lm_head == "tvm" else None
    try:
        return mod.BoardRunner(root / bundle["artifact"], transport, bitfile, lib, rtl_program=rtl_program)
    except mod.DriverError as e:
        raise BundleError(str(e)) from None


def load(bundle: dict, root: Path = HERE):
    rt = _runtime(bundle, root)
    art = root / bundle["artifact"]
    manifest = json.loads((art / "manifest.json").read_text())
    return rt.TVMRunner(art, manifest)


class BundleTokenizer:
    """The tokenizer the artifact carries (`artifact/tokenizer/tokenizer.json`, written by `ternc compile`
    for models imported with one), read with the `tokenizers` package (not part of the bundle's numpy +
    TVM-runtime set: `pip install tokenizers` on the board)."""

    def __init__(self, art: Path):
        d = art / "tokenizer"
        if not (d / "tokenizer.json").is_file():
            raise BundleError(f"{art}: the artifact carries no tokenizer (its model was imported from ONNX); "
                              f"use --prompt-ids")
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise BundleError("--prompt needs the `tokenizers` package on this board (pip install tokenizers); "
                              "or give --prompt-ids") from None
        self.tok = Tokenizer.from_file(str(d / "tokenizer.json"))
        self.eos = set()
        cfg = d / "tokenizer_config.json"
        if cfg.is_file():
            eos = json.loads(cfg.read_text()).get("eos_token")
            eos = eos.get("content") if isinstance(eos, dict) else eos
            if isinstance(eos, str) and self.tok.token_to_id(eos) is not None:
                self.eos.add(self.tok.token_to_id(eos))

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text).ids)

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)


def generate(runner, prompt: list[int], n_new: int, decoder=None, stop: set | None = None,
             on_token=None) -> list[int]:
    """Greedy decoding with the KV cache, as ternc.generate: prefill, then one token per decode
    call, the carried tensors fed back by the decoder contract's `decode_feeds` (ternc.ir.decoder).
    Stops early at a token in `stop` (end of sequence); `on_token(id)` sees each new token (streaming)."""
    import numpy as np

    if hasattr(runner, "generate_ids"):      # kv260: the driver keeps the KV cache in the accelerator's DDR
        return runner.generate_ids(prompt, n_new)
    decoder = decoder or _decoder({"decoder_module": "ternc.ir.decoder"})
    dec = decoder.DecoderSpec.from_meta(runner.meta["decoder"])
    limit = runner.meta.get("max_context")
    if limit and len(prompt) > limit:
        raise BundleError(f"prompt has {len(prompt)} tokens; the artifact serves a context of {limit}")
    out = list(prompt)
    res = runner.run(dec.prefill, {dec.input_ids: np.array([prompt], dtype=np.int64)})
    for step in range(n_new):
        nxt = int(np.argmax(np.asarray(res[dec.logits])[0, -1]))
        out.append(nxt)
        if on_token is not None:
            on_token(nxt)
        if step == n_new - 1 or (limit and len(out) > limit) or (stop and nxt in stop):
            break
        res = runner.run(dec.decode, decoder.decode_feeds(dec, res, np.array([[nxt]], dtype=np.int64)))
    return out


#: bundle.json's `runner` of an FPGA (kv260) bundle: the PYNQ driver, not a TVM artifact
KV260_RUNNER = "kv260"


def bundle_kind(root: Path = HERE) -> str:
    """"kv260" for FPGA bundles (bundle.json's runner), else "tvm"; read before the checksums."""
    try:
        return json.loads((root / "bundle.json").read_text()).get("runner", "tvm")
    except (OSError, ValueError, AttributeError):
        return "tvm"


def compiler_loaded() -> bool:
    maps = Path("/proc/self/maps")
    return maps.exists() and "libtvm_compiler" in maps.read_text()


def verify(bundle: dict, runner, root: Path = HERE) -> dict:
    import numpy as np

    g = json.loads((root / bundle["golden"]).read_text())
    rows, ok = [], True
    for prompt, want in zip(g["prompts"], g["tokens"]):
        got = generate(runner, prompt, g["n_new"])
        rows.append({"prompt": prompt, "match": got == want, "tokens": got, "golden": want})
        ok &= got == want
    ref = np.load(root / g["prefill_logits"], allow_pickle=False)
    logits = np.asarray(_prefill_logits(runner, g["prompts"][0]))
    err = float(np.max(np.abs(logits - ref)) / max(float(np.max(np.abs(ref))), 1e-30))
    ok &= err <= g["logits_rtol"]
    loaded = compiler_loaded()  # reported: the bundle ships no compiler library, so this says it was not found elsewhere
    return {"pass": bool(ok), "prompts": rows, "prefill_logits_max_rel_err": err, "logits_rtol": g["logits_rtol"],
            "golden_source": g["source"], "libtvm_compiler_loaded": loaded}


def _prefill_logits(runner, prompt: list[int]):
    import numpy as np

    if hasattr(runner, "prefill_logits"):
        return runner.prefill_logits(prompt)
    dec = runner.meta["decoder"]
    return np.asarray(runner.run(dec["prefill"], {dec["input_ids"]: np.array([prompt], np.int64)})[dec["logits"]])


def bench(runner, prompt_len: int, n_decode: int, repeat: int) -> dict:
    """Wall-clock prefill and decode throughput on this machine (best of `repeat`)."""
    vocab = _prefill_logits(runner, [0]).shape[-1]
    prompt = [(7 * i + 3) % vocab for i in range(prompt_len)]
    best_p, best_d = float("inf"), float("inf")
    generate(runner, prompt[:4], 2)  # warm-up: first calls allocate
    for _ in range(repeat):
        t0 = time.perf_counter()
        _prefill_logits(runner, prompt)
        best_p = min(best_p, time.perf_counter() - t0)
        t0 = time.perf_counter()
        generate(runner, prompt, n_decode + 1)
        whole = time.perf_counter() - t0
        best_d = min(best_d, max(whole - best_p, 1e-9))
    return {"prompt_tokens": prompt_len, "decode_tokens": n_decode, "prefill_s": best_p,
            "prefill_tok_s": prompt_len / best_p, "decode_s": best_d, "decode_tok_s": n_decode / best_d,
            "repeat": repeat}


def rpc_server(bundle: dict, tracker: str | None, key: str, host: str, port: int) -> int:
    """A TVM RPC server in this process. (tvm.rpc.Server would start it in a `python -m
    tvm.exec.popen_worker` child; this runs the same listen loop here, so it also works where a
    child python cannot be exec'd, e.g. under qemu-user without binfmt.)"""
    _runtime(bundle)
    from tvm.rpc import server as rpc_srv

    addr = None
    if tracker:
        thost, _, tport = tracker.rpartition(":")
        if not thost or not tport.isdigit():
            raise BundleError(f"--tracker expects HOST:PORT, got {tracker!r}")
        addr = (thost, int(tport))
    state = rpc_srv.PopenRPCServerState(host, port, port + 100, tracker_addr=addr, key=key, silent=True)
    print(f"[run.py] TVM RPC server (runtime only) on {host}:{state.port}, key {key!r}"
          + (f", registered with tracker {tracker}" if tracker else ""), flush=True)
    state.thread.join()
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt-ids", help="comma-separated token ids")
    ap.add_argument("--prompt", help="text, through the tokenizer the artifact carries (needs `tokenizers`)")
    ap.add_argument("-n", type=int, default=16, help="new tokens to generate")
    ap.add_argument("--verify", action="store_true", help="rerun the golden inputs; PASS or FAIL")
    ap.add_argument("--bench", action="store_true", help="prefill / decode tokens per second")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", help="also write the result as JSON to this file")
    ap.add_argument("--rpc-server", action="store_true", help="serve this board over TVM RPC")
    ap.add_argument("--tracker", help="HOST:PORT of the RPC tracker to register with")
    ap.add_argument("--key", default=None, help="RPC device key (default: the board name)")
    ap.add_argument("--host", default="0.0.0.0")
    ap.add_argument("--port", type=int, default=9090)
    ap.add_argument("--transport", default="auto", help="kv260: pynq | model | rtl (auto: pynq where installed)")
    ap.add_argument("--bitfile", help="kv260 --transport pynq: the .bit (its .hwh beside it, same stem)")
    ap.add_argument("--lm-head", default="auto", help="kv260: tvm (the bundled kernel) | numpy (auto: tvm on the board)")
    ap.add_argument("--rtl-program", default="full", choices=("full", "embed"),
                    help="kv260 --transport rtl: the artifact's program, or its EMBED + host LM head plumbing program")
    a = ap.parse_args(argv)
    try:
        t0 = time.perf_counter()
        fpga = bundle_kind() == KV260_RUNNER
        bundle = check_bundle(platform_check=not fpga)
        print(f"[run.py] bundle for {bundle['board']['name']}: {len(bundle['files'])} files verified (sha256) in "
              f"{time.perf_counter() - t0:.1f}s", file=sys.stderr)
        if a.rpc_server and fpga:
            raise BundleError("--rpc-server serves TVM artifacts; a kv260 bundle runs here (--transport pynq)")
        if a.rpc_server:
            return rpc_server(bundle, a.tracker, a.key or bundle["board"]["name"], a.host, a.port)
        t0 = time.perf_counter()
        runner = load_kv260(bundle, a.transport, a.bitfile, a.lm_head, rtl_program=a.rtl_program) if fpga \
            else load(bundle)
        print(f"[run.py] artifact loaded on {runner.device} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        result = None
        if a.verify:
            result = verify(bundle, runner)
            for r in result["prompts"]:
                print(f"  prompt {r['prompt']}: {'ok' if r['match'] else 'MISMATCH'}  {r['tokens'][len(r['prompt']):]}"
                      + ("" if r["match"] else f"  golden {r['golden'][len(r['prompt']):]}"))
            print(f"  prefill logits max rel err {result['prefill_logits_max_rel_err']:.2e} "
                  f"(tolerance {result['logits_rtol']:.0e}); libtvm_compiler loaded: {result['libtvm_compiler_loaded']}")
            print("VERIFY PASS" if result["pass"] else "VERIFY FAIL")
        elif a.bench:
            result = bench(runner, a.prompt_len, a.decode, a.repeat)
            print(f"prefill {result['prompt_tokens']} tokens: {result['prefill_tok_s']:.1f} tok/s   "
                  f"decode {result['decode_tokens']} tokens: {result['decode_tok_s']:.1f} tok/s")
        elif a.prompt is not None:
            tok = BundleTokenizer(HERE / bundle["artifact"])
            ids = tok.encode(a.prompt)
            if not ids:
                raise BundleError("--prompt encodes to no tokens")
            t0 = time.perf_counter()
            shown = []

            def stream(t):  # print the text as it grows (decode of the whole tail: multi-byte safe)
                shown.append(t)
                print(tok.decode(shown)[len(tok.decode(shown[:-1])):], end="", flush=True)

            print(a.prompt, end="", flush=True)
            toks = generate(runner, ids, a.n, stop=tok.eos, on_token=stream)
            print()
            print(f"[run.py] {len(toks) - len(ids)} new tokens in {time.perf_counter() - t0:.2f}s", file=sys.stderr)
            result = {"prompt": a.prompt, "tokens": toks, "text": tok.decode(toks[len(ids):])}
        elif a.prompt_ids:
            try:
                ids = [int(t) for t in a.prompt_ids.split(",") if t.strip()]
            except ValueError:
                raise BundleError(f"--prompt-ids expects comma-separated integers, got {a.prompt_ids!r}") from None
            t0 = time.perf_counter()
            toks = generate(runner, ids, a.n)
            print(",".join(map(str, toks)))
            if getattr(runner, "rtl", None) is not None and runner.rtl.driver_file:
                print(f"[run.py] the RTL was driven by {runner.rtl.driver_file}", file=sys.stderr)
            print(f"[run.py] {len(toks) - len(ids)} new tokens in {time.perf_counter() - t0:.2f}s", file=sys.stderr)
            result = {"tokens": toks}
        else:
            ap.error("give --prompt, --prompt-ids, --verify, --bench or --rpc-server")
        if a.json and result is not None:
            Path(a.json).write_text(json.dumps(result, indent=1))
        return 0 if result is None or result.get("pass", True) else 1
    except (BundleError, *RUNTIME_ERRORS) as e:
        print(f"run.py: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
