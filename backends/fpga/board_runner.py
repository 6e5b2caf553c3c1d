"""What a kv260 deploy bundle's run.py drives: the host driver (driver.py) over a chosen transport, with
the LM head on the ARM cores (the bundle's TVM kernel, or numpy). numpy + the driver's imports only.

    runner = BoardRunner(ART, transport="model" | "pynq" | "rtl", bitfile=..., lm_head_lib=... | None)
    runner.generate_ids(prompt, n)   greedy: prompt + n new ids (KV cache in the accelerator's DDR)
    runner.prefill_logits(prompt)    logits [1, len(prompt), vocab] of the prefill call
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .driver import DriverError, KV260Driver, open_transport
from .runtime import load_artifact


class BoardRunner:
    def __init__(self, artifact, transport: str = "model", bitfile: str | None = None,
                 lm_head_lib: str | Path | None = None, timeout_s: float = 60.0):
        self.art = load_artifact(artifact)
        if self.art.manifest["accelerator"].get("lm_head", "host") != "host":
            raise DriverError(f"{artifact}: LM head on the fabric is not supported by this driver")
        lm = None
        if lm_head_lib is not None:
            from .lm_head import TvmLmHead

            lm = TvmLmHead(lm_head_lib, self.art.lm_head)
        self.lm_head_kind = "tvm kernel" if lm is not None else "numpy"
        self.transport = transport
        self.driver = KV260Driver(self.art, open_transport(transport, self.art, bitfile), timeout_s, lm_head=lm)
        self.meta = dict(self.art.meta)
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
        ids, _ = self.driver.generate(self._check(prompt, n_new), n_new)
        return ids

    def prefill_logits(self, prompt) -> np.ndarray:
        return self.driver.run(self._check(prompt), 0)
