"""A load-robust direction for CPU decode changes: CPU time per decode step on one thread.

    python bench/cpu_decode_cputime.py [--tiny] [--past 16] [--rounds 6]

On a shared host wall-clock tokens/s swing by 10x (another job holds the core a worker waits for);
the CPU time a single-threaded decode step consumes (time.process_time, TVM_NUM_THREADS=1) moves far
less. Times the two decode paths of one build interleaved -- `inplace` (decode__kv_inplace, caches
written in place, weights in 2 MB pages: what the runners do) and `concat` (decode as the IR states
it, the cache concatenated per step, weights in 4 KB pages) -- and counts the VM calls of a step.
Not a speed claim (memory bandwidth is shared too): a direction. JSON on stdout and in --out.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--past", type=int, default=16, help="cached tokens (tg32 from empty averages 16)")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--kernel-policy", default="vnni")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = "1"
    from cpu_vs_llamacpp import TerncModel

    from ternc.models.synthetic_bitnet import FULL, TINY, build_module

    cfg = TINY if args.tiny else FULL
    module = build_module(cfg, "i2", 0)
    built = TerncModel.compile_built(module, "backend", args.kernel_policy)
    new = TerncModel.from_built(built, module)
    old = TerncModel.from_built(built, module, huge_pages=False, inplace=False)
    ids = np.arange(3, 3 + args.past) % cfg.vocab
    _, kv = new.prefill(ids)
    caches = new.caches_from(kv, args.past + 1)
    paths = {"inplace": (new, lambda: new.decode_inplace(7, caches, args.past).numpy()),
             "concat": (old, lambda: old.decode(7, kv)[0].numpy())}
    samples = {k: [] for k in paths}
    for _, f in paths.values():
        f()
    for _ in range(args.rounds):
        for name, (_, f) in paths.items():
            c0, w0 = time.process_time(), time.perf_counter()
            for _ in range(3):
                f()
            samples[name].append(((time.process_time() - c0) / 3 * 1e3, (time.perf_counter() - w0) / 3 * 1e3))
    rep = {"config": cfg.name, "past": args.past, "threads": 1, "paths": {}}
    for name, (model, f) in paths.items():
        cnt = collections.Counter()

        def instr(func, nm, before, ret, *a):
            if before:
                cnt[nm] += 1
            return 0

        model.vm.set_instrument(instr)
        f()
        model.vm.set_instrument(lambda *a: 0)
        cpu = [c for c, _ in samples[name]]
        rep["paths"][name] = {"cpu_ms_median": round(statistics.median(cpu), 3), "cpu_ms_min": round(min(cpu), 3),
                              "wall_ms_median": round(statistics.median(w for _, w in samples[name]), 3),
                              "vm_calls": sum(cnt.values()),
                              "vm_builtin_calls": sum(v for k, v in cnt.items() if k.startswith("vm."))}
    rep["loadavg"] = os.getloadavg()
    text = json.dumps(rep, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
