"""What the KV260 datapath's number formats cost: the kv260 pipeline (fx numerics: FX Q15.16
activations, hardware quantizer, integer RMSNorm, 24-bit KV words, exp2-table softmax, Q1.14 RoPE,
table sigmoid) vs the same ternary model in float numerics, teacher-forced like bench/kv_quality.py.

    python bench/fpga_quality.py [--model smollm2|tiny-qat|all] [--tokens 128]

SmolLM2-135M is made ternary with quantize-ternary first (its PPL as a ternary model is poor; the
row measures the hardware formats against that float ternary model, not the ternarization).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from kv_quality import RESULTS, license_text, smollm2_module, smollm2_tokenizer

FLOAT = ["fold", "raise-ternary", "cse", "dce"]


def compare(name, module, ids, pre=()):
    from ternc.passes.eval import evaluate
    from ternc.passes.pipeline import KV260_PIPELINE, compile

    ref_m = compile(module, passes=[*pre, *FLOAT], report=False)[0]
    hw_m = compile(module, passes=[*pre, *KV260_PIPELINE], report=False)[0]
    t0 = time.time()
    ref = evaluate(ref_m, ids, keep_logits=True)
    t1 = time.time()
    hw = evaluate(hw_m, ids, reference=ref["top1"], keep_logits=True)
    t2 = time.time()
    a, b = np.asarray(hw["logits"], np.float64), np.asarray(ref["logits"], np.float64)
    row = {"model": name, "tokens": int(len(ids)), "ppl_float": ref["ppl"], "ppl_fx": hw["ppl"],
           "top1_agreement": hw["top1_agreement"],
           "logit_rel_l2": float(np.linalg.norm(a - b) / np.linalg.norm(b)),
           "logit_max_abs": float(np.abs(a - b).max()), "seconds_float": t1 - t0, "seconds_fx": t2 - t1}
    print(json.dumps(row), flush=True)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["smollm2", "tiny-qat", "all"], default="all")
    ap.add_argument("--tokens", type=int, default=128, help="SmolLM2 text length (the tiny QAT model: 128 bytes)")
    args = ap.parse_args(argv)
    rows = []
    if args.model in ("tiny-qat", "all"):
        from ternc.models.tiny_qat import eval_ids, load_module

        rows.append(compare("tiny QAT ternary (bytes)", load_module(), eval_ids()[:128]))
    if args.model in ("smollm2", "all"):
        ids = np.asarray(smollm2_tokenizer().encode(license_text())[: args.tokens], np.int64)
        rows.append(compare("SmolLM2-135M + quantize-ternary", smollm2_module(), ids, pre=["fold", "quantize-ternary"]))
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "fpga_quality.json"
    kept = [r for r in (json.loads(path.read_text()) if path.exists() else [])
            if r["model"] not in {x["model"] for x in rows}]
    path.write_text(json.dumps(kept + rows, indent=1))
    print("| model | tokens | PPL float | PPL fx (kv260) | top-1 agreement | logit rel. L2 | max abs |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['tokens']} | {r['ppl_float']:.3f} | {r['ppl_fx']:.3f} | {r['top1_agreement']:.3f} "
              f"| {r['logit_rel_l2']:.2e} | {r['logit_max_abs']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
