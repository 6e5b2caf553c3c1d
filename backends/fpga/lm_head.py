"""The LM head on the ARM cores: a TVM GEMV/GEMM kernel logits[N, vocab] = x[N, hidden] @ w[vocab, hidden]^T.

A kv260 artifact with ``lm_head: host`` stops at LM_HEAD (HOST flag) and the host computes the logits
from the final-norm rows the accelerator left in DDR. `ternc deploy --board kv260` builds this kernel
for the board's CPU (the TVM backend's CPU dense schedule, ``backends/tvm/kernels/cpu.dense_func``:
rows of w in parallel, K in vector lanes; cross-compiled with LLVM for aarch64 and linked with
Debian's cross gcc, as the aarch64 target does) into ``BUNDLE/lm_head/lm_head.so``; the bundle loads it
with the runtime-only TVM (``TvmLmHead``), the weight stays the artifact's ``images/lm_head.npy``.

The kernel is built by ``backends/deploy/kv260.build_lm_head_kernel`` (TVM compiler, the deploying
machine); this module needs only the TVM runtime (it ships in the bundle).
"""

from __future__ import annotations

import os
import sys

import numpy as np

FUNC = "lm_head"


class TvmLmHead:
    """The compiled kernel with the weight resident on the CPU device: ``(x [N, hidden]) -> [N, vocab]``
    (f32). Imports TVM runtime-only when TVM is not imported yet."""

    def __init__(self, lib_path: str | os.PathLike, weight: np.ndarray):
        if "tvm" not in sys.modules:
            os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")
        import tvm

        self.tvm = tvm
        self.dev = tvm.cpu()
        self.fn = tvm.runtime.load_module(str(lib_path))[FUNC]
        self.vocab, self.hidden = weight.shape
        self.w = tvm.runtime.tensor(np.ascontiguousarray(weight, np.float32), self.dev)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(np.asarray(x, np.float32).reshape(-1, self.hidden))
        y = self.tvm.runtime.empty((x.shape[0], self.vocab), "float32", self.dev)
        self.fn(self.tvm.runtime.tensor(x, self.dev), self.w, y)
        return y.numpy()
