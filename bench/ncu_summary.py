"""Summarise an `ncu --csv --metrics gpu__time_duration.sum,dram__bytes_read.sum` log of
`bench/gpu_gemv.py ncu`: per shape, median kernel time of the ternary GEMV and of cuBLAS fp16."""

from __future__ import annotations

import csv
import statistics
import sys


def summarise(path: str) -> list[dict]:
    rows = list(csv.reader(open(path)))
    hdr = next(i for i, r in enumerate(rows) if r and r[0] == "ID")
    names = rows[hdr]
    kernels: dict[str, dict] = {}
    order = []
    for r in rows[hdr + 1:]:
        if len(r) != len(names):
            continue
        d = dict(zip(names, r))
        kid = d["ID"]
        if kid not in kernels:
            kernels[kid] = {"name": d["Kernel Name"]}
            order.append(kid)
        kernels[kid][d["Metric Name"]] = float(d["Metric Value"].replace(",", ""))
    # Sequence per shape: (torch init kernels), 3x ternary_gemv, 3x cuBLAS (+ split-K reduce).
    out, tern, fp16 = [], [], []
    for kid in order:
        k = kernels[kid]
        if "ternary_gemv" in k["name"]:
            if fp16:
                out.append((tern, fp16))
                tern, fp16 = [], []
            tern.append(k)
        elif tern and "distribution" not in k["name"]:
            if "splitKreduce" in k["name"] and fp16:
                fp16[-1] = {**fp16[-1], "gpu__time_duration.sum": fp16[-1]["gpu__time_duration.sum"]
                            + k["gpu__time_duration.sum"]}
            else:
                fp16.append(k)
    if tern:
        out.append((tern, fp16))
    res = []
    for t, f in out:
        tt = statistics.median(k["gpu__time_duration.sum"] for k in t) / 1e3
        ft = statistics.median(k["gpu__time_duration.sum"] for k in f) / 1e3 if f else float("nan")
        tb = statistics.median(k["dram__bytes_read.sum"] for k in t)
        res.append({"ternary_us": tt, "fp16_us": ft, "speedup": ft / tt, "dram_MB": tb / 1e6,
                    "TBps": tb / (tt * 1e-6) / 1e12})
    return res


if __name__ == "__main__":
    for r in summarise(sys.argv[1]):
        print(r)
