"""Train the tiny ternary QAT model used as a test fixture (tests/fixtures/tiny_qat.safetensors).

    python bench/train_tiny_qat.py [--steps 400] [--out tests/fixtures/tiny_qat.safetensors]

The model, corpus and checkpoint format live in ternc.models.tiny_qat (tests load it from there).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from ternc.models.tiny_qat import FIXTURE, eval_ids, save_checkpoint, train


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--out", default=str(FIXTURE))
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # 2 shared cores: one thread is faster than two contended ones
    t0 = time.time()
    lm, n_bytes = train(args.steps)
    with torch.no_grad():
        ids = torch.tensor(eval_ids())[None]
        logits = lm(input_ids=ids).logits[0, :-1]
        nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:]).item()
    meta = {"steps": args.steps, "corpus_bytes": n_bytes, "train_seconds": round(time.time() - t0, 1),
            "heldout_ppl_torch": round(float(np.exp(nll)), 4)}
    save_checkpoint(lm, Path(args.out), meta)
    print(f"saved {args.out} ({Path(args.out).stat().st_size / 1e6:.2f} MB); held-out byte PPL {np.exp(nll):.3f}; "
          f"{meta}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
