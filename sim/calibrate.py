"""Calibration of the dataflow simulator's unit models against the units' RTL.

There is no whole-accelerator top yet (no sequencer), so calibration is per unit: each generated
unit runs in Amaranth's simulator at full rate (every input valid, every output ready) on a tiny
configuration, and the cycles from its first accepted input to its last output are compared with
the simulator's formula for the same work (the same functions ``sim/dataflow.py`` charges per
instruction). Units and what is compared:

* linear pipeline (hw/pipeline.TLMMPipeline: quantizer -> TLMM core -> DqFactor -> epilogue),
  weights preloaded in its weight buffer: cycles for N tokens of one LINEAR (quantizer phases,
  one beat per cycle per tile, fill latency) vs ``linear_compute + linear_latency``;
* RMSNorm unit (hw/norm.RMSNorm): cycles for N tokens vs ``norm_compute``;
* decode attention unit (hw/attention.DecodeAttention): cycles for H heads of T keys vs
  ``attn_compute``.

DDR and the host are not calibrated here (no board); the AXI masters' measured 1.00 beat/cycle
(README, hw section) is what the DDR model assumes per port.

``python -m ternc.sim.calibrate`` rewrites ``sim/calibration.json``; tests/sim/test_dataflow.py
re-measures and checks |error| <= 5%.
"""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import numpy as np

from . import dataflow as df

LINEAR_CASES = [  # (tables, columns, K, N, tokens)
    (2, 4, 24, 8, 3),
    (3, 4, 45, 12, 2),
    (2, 8, 60, 16, 2),
]
NORM_CASES = [(4, 20, 3), (4, 44, 2), (4, 70, 2)]        # (lanes, K, tokens)
ATTN_CASES = [(32, 4, 12, 2), (32, 4, 24, 2), (16, 4, 40, 2)]   # (head_dim, lanes, T, heads)


def _run(dut, benches, sink):
    from amaranth.sim import Simulator

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for b in benches:
        sim.add_testbench(b, background=True)
    sim.add_testbench(sink)
    sim.run()


def measure_linear(tables: int, columns: int, k: int, n_rows: int, tokens: int) -> int:
    from ternc.hw.pipeline import TLMMPipeline
    from ternc.hw.tlmm import weight_beats
    from ternc.ir import hw_numerics as h
    from ternc.sim.amaranth_tb import collect, drive

    g = 3
    rng = np.random.default_rng(k * 7 + n_rows)
    x = h.to_fx(rng.normal(size=(tokens, k)))
    w = rng.integers(-1, 2, size=(n_rows, k)).astype(np.int8)
    tiles = [weight_beats(w[i * columns:(i + 1) * columns], g, tables, columns) for i in range(-(-n_rows // columns))]
    nb = len(tiles[0])
    depth = 1 << max(1, (len(tiles) * nb - 1).bit_length())
    dut = TLMMPipeline(g, tables, columns, "none", wbuf_depth=depth, ram_style=None, max_chunks=nb, quant_lanes=3)
    load = [{"data": b, "first": int(i == 0 and j == 0)} for i, tb in enumerate(tiles) for j, b in enumerate(tb)]
    cmds = [{"base": ti * nb, "count": nb} for _ in range(tokens) for ti in range(len(tiles))]
    xb = []
    for tok in range(tokens):
        padded = np.zeros(nb * g * tables, np.int64)
        padded[:k] = x[tok]
        words = padded.reshape(-1, 3)
        xb += [{"data": [int(v) for v in wv], "last": int(j == len(words) - 1), "passes": len(tiles)}
               for j, wv in enumerate(words)]
    ws = h.encode_wscale(0.05)
    wait = len(load) + 8
    xlog, ylog, out = [], [], []
    r = random.Random(0)

    async def weights(ctx):
        ctx.set(dut.ws_m, ws[0])
        ctx.set(dut.ws_s, ws[1])
        await drive(ctx, dut.load, load, r, 1.0)
        await drive(ctx, dut.cmd, cmds, r, 1.0)

    async def acts(ctx):
        await ctx.tick().repeat(wait)
        await drive(ctx, dut.x, xb, r, 1.0, log=xlog)

    async def sink(ctx):
        await collect(ctx, dut.y, tokens * len(tiles), out, r, 1.0, log=ylog)

    _run(dut, [weights, acts], sink)
    return int(ylog[-1] - (xlog[0] + wait) + 1)


def model_linear(tables: int, columns: int, k: int, n_rows: int, tokens: int) -> float:
    cfg = df.SimConfig(group=3, tables=tables, columns=columns, wbuf_depth=1 << 16)
    compute, latency = df.linear_compute(cfg, k, n_rows, tokens, passes=1)
    return compute + latency


def measure_norm(lanes: int, k: int, tokens: int) -> int:
    from ternc.hw.norm import RMSNorm
    from ternc.ir import hw_numerics as h
    from ternc.sim.amaranth_tb import collect, drive

    rng = np.random.default_rng(k)
    x = h.to_fx(rng.normal(size=(tokens, k))).astype(np.int64)
    gamma = h.to_fx(rng.normal(size=k) * 0.5 + 1).astype(np.int64)
    nb = -(-k // lanes)
    pad = lambda v: np.concatenate([v, np.zeros(nb * lanes - k, np.int64)])  # noqa: E731
    inp = [{"data": [int(v) for v in pad(x[t])[j * lanes:(j + 1) * lanes]], "last": int(j == nb - 1)}
           for t in range(tokens) for j in range(nb)]
    gam = [{"data": [int(v) for v in pad(gamma)[j * lanes:(j + 1) * lanes]]} for _ in range(tokens) for j in range(nb)]
    inv_k, eps_q = h.norm_consts(k, 1e-5)
    dut = RMSNorm(lanes, max_k=128)
    ilog, olog, out = [], [], []
    r = random.Random(0)

    async def src(ctx):
        ctx.set(dut.inv_k, inv_k)
        ctx.set(dut.eps_q, eps_q)
        await drive(ctx, dut.inp, inp, r, 1.0, log=ilog)

    async def gsrc(ctx):
        await drive(ctx, dut.gamma, gam, r, 1.0)

    async def sink(ctx):
        await collect(ctx, dut.out, len(inp), out, r, 1.0, log=olog)

    _run(dut, [src, gsrc], sink)
    return int(olog[-1] - ilog[0] + 1)


def model_norm(lanes: int, k: int, tokens: int) -> float:
    return df.norm_compute(df.SimConfig(norm_lanes=lanes), k, tokens)


def measure_attn(d: int, lanes: int, t: int, heads: int) -> int:
    from ternc.hw.attention import DecodeAttention
    from ternc.ir import hw_numerics as h
    from ternc.sim.amaranth_tb import collect, drive

    rng = np.random.default_rng(t)
    w = d // lanes
    scale = int(h.to_fx(1 / np.sqrt(d)))
    qb, kvb = [], []
    for _ in range(heads):
        q = h.to_fx(rng.normal(size=d)).astype(np.int64)
        kk = h.to_fx(rng.normal(size=(t, d))).astype(np.int64)
        vv = h.to_fx(rng.normal(size=(t, d))).astype(np.int64)
        qb += [{"data": [int(v) for v in q[i * lanes:(i + 1) * lanes]], "last": int(i == w - 1)} for i in range(w)]
        for mat in (kk, vv):
            kvb += [{"data": [int(v) for v in row[i * lanes:(i + 1) * lanes]]} for row in mat for i in range(w)]
    dut = DecodeAttention(d, lanes, max_ctx=64)
    qlog, olog, out = [], [], []
    r = random.Random(0)

    async def qsrc(ctx):
        ctx.set(dut.n_ctx, t)
        ctx.set(dut.scale, scale)
        await drive(ctx, dut.q, qb, r, 1.0, log=qlog)

    async def kvsrc(ctx):
        await drive(ctx, dut.kv, kvb, r, 1.0)

    async def sink(ctx):
        await collect(ctx, dut.out, w * heads, out, r, 1.0, log=olog, timeout=10 ** 6)

    _run(dut, [qsrc, kvsrc], sink)
    return int(olog[-1] - qlog[0] + 1)


def model_attn(d: int, lanes: int, t: int, heads: int) -> float:
    return heads * df.attn_compute(df.SimConfig(attn_lanes=lanes), d, t_sum=t, rows=1)


UNITS = {
    "linear pipeline": (LINEAR_CASES, measure_linear, model_linear, "G=3 T={} C={} K={} N={} tokens={}"),
    "RMSNorm": (NORM_CASES, measure_norm, model_norm, "lanes={} K={} tokens={}"),
    "decode attention": (ATTN_CASES, measure_attn, model_attn, "d={} lanes={} T={} heads={}"),
}


# ---------------------------------------------------------------------- the controllers (as built)
# Three tiny configurations of real compiled programs (small engine, as the RTL runs them). Every
# instruction of a prefill call and a decode call runs on its controller (hw/ctl_*.py) in Amaranth's
# simulator behind sim/memport_tb.py at full rate (p = 1, read latency CTL_LATENCY), bit-exact with the
# executor; its cycles (start to busy falling) are compared with the dataflow model's ctl_* function
# for the same instruction, and summed per unit (the top's CYC_* counters) per call.
CTL_LATENCY = 4
CTL_ENGINE = (3, 4, 8)
CTL_CONTEXT = 32
TINY_LLAMA = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256)   # tests/conftest.py TINY
CONFIGS = {   # name -> (model, extra passes before hw-numerics, prompt, decode steps)
    "tiny-bitnet": ("tiny-bitnet", [], [1, 2, 3, 4, 5], 1),
    "tiny-llama": ("llama", ["quantize-ternary"], [5, 17, 99, 3], 1),
    "tiny-bitnet kv4": ("tiny-bitnet", ["quantize-kv{bits=4,group=6,residual=2}"], [5, 6, 7, 8, 9, 1, 2, 3, 4], 1),
}
UNIT_OF = {"EMBED": "dma", "KV_APPEND": "dma", "ROPE": "dma", "RMSNORM": "norm", "LINEAR": "linear",
           "ATTN": "attn"}
UNIT_COUNTER = {"linear": "CYC_LINEAR", "norm": "CYC_NORM", "attn": "CYC_ATTN", "dma": "CYC_DMA"}


def compiled_module(name: str):
    """The kv260-compiled module of a calibration configuration."""
    import ternc
    from ternc.passes.pipeline import KV260_PIPELINE, compile

    model, extra, _, _ = CONFIGS[name]
    if model == "tiny-bitnet":
        from ternc.models import tiny_bitnet

        onnx = tiny_bitnet.default_onnx()
    else:
        onnx = _tiny_llama_onnx()
    passes = ([p for p in extra if p.startswith("quantize-ternary")] + list(KV260_PIPELINE[:-1])
              + [p for p in extra if not p.startswith("quantize-ternary")] + [KV260_PIPELINE[-1]])
    return compile(ternc.load(str(onnx)), passes=passes, report=False)[0]


def _tiny_llama_onnx():
    import os

    from ternc.frontend.torch_export import export_decoder
    from ternc.models import tiny_bitnet

    path = tiny_bitnet.cache_dir() / "calibration-tiny-llama.onnx"
    if not path.exists():
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.onnx")
        export_decoder(LlamaForCausalLM(LlamaConfig(**TINY_LLAMA)).eval(), tmp)
        os.replace(tmp, path)
    return path


def sim_config(**over) -> "df.SimConfig":
    g, t, c = CTL_ENGINE
    return df.SimConfig(group=g, tables=t, columns=c, attn_lanes=4, norm_lanes=4, **over)


def controllers(plan):
    """Controller instances for a plan's program (the geometry backends/fpga/top.py gives them)."""
    from ternc.backends.fpga.isa import Opcode, unpack_kvquant
    from ternc.hw.ctl_attn import AttnCtl, PrefillAttnCtl
    from ternc.hw.ctl_embed import EmbedCtl
    from ternc.hw.ctl_kv import KvAppendCtl
    from ternc.hw.ctl_linear import LinearCtl
    from ternc.hw.ctl_norm import NormCtl
    from ternc.hw.ctl_rope import RopeCtl

    g, t, c = CTL_ENGINE
    widths = [i["width"] for i in plan.program.instrs if i.op == Opcode.RMSNORM]
    ks = [i["kn"] & 0xFFFF for i in plan.program.instrs if i.op == Opcode.LINEAR]
    groups = [unpack_kvquant(i["quant"])[1] for i in plan.program.instrs if i.op == Opcode.KV_APPEND and i["quant"]]
    d = plan.head_dim
    return {
        Opcode.EMBED: lambda: EmbedCtl(plan.vocab),
        Opcode.RMSNORM: lambda: NormCtl(4, max(widths)),
        Opcode.LINEAR: lambda: LinearCtl(g, t, c, wbuf_depth=4096, max_chunks=-(-max(ks) // (g * t)), ram_style=None),
        Opcode.KV_APPEND: lambda: KvAppendCtl(d, max_group=max(groups, default=1)),
        Opcode.ATTN: lambda: AttnCtl(d, 4, CTL_CONTEXT),            # lanes 4: d = 42 runs lane-padded to 44
        "prefill attn": lambda: PrefillAttnCtl(d, 4, CTL_CONTEXT, block=4, max_width=max(
            (i["heads"] & 0xFF) * d for i in plan.program.instrs if i.op == Opcode.ATTN)),
        Opcode.ROPE: lambda: RopeCtl(max(i["heads"] & 0xFF for i in plan.program.instrs if i.op == Opcode.ROPE) * d, d),
    }


def instr_model(cfg, ins, n: int, pos: int, lat: float) -> float:
    """The dataflow model's controller cycles of one instruction (the ``compute`` of its Cost)."""
    from ternc.backends.fpga.isa import Opcode

    model = df.DataflowModel([ins], cfg)
    model.ddr = replace(model.ddr, latency_cycles=lat)
    return model.cost(0, ins, n, pos).compute


def measure_calls(name: str, units: set | None = None, log=print, decode_only: bool = False,
                  select=None) -> dict:
    """Per instruction RTL vs model for the prefill and first decode call of a configuration; identical
    instructions (same fields but addresses, same call) are simulated once."""
    from ternc.backends.fpga.isa import Opcode
    from ternc.backends.fpga.schedule import EngineConfig
    from ternc.sim.ctl_bench import assert_same_ddr, compile_program, program_states, run_controller

    _, _, prompt, decode = CONFIGS[name]
    eng = EngineConfig(*CTL_ENGINE)
    module = compiled_module(name)
    plan, im = compile_program(module, eng, CTL_CONTEXT)
    make = controllers(plan)
    ops = {op for op in make if not isinstance(op, str) and (units is None or op.name in units)}
    cfg = sim_config()
    seen: dict = {}
    rows = []
    for st in program_states(plan, im, eng, CTL_CONTEXT, prompt, decode, ops):
        ins = st.instr
        if (decode_only and st.pos == 0) or (select is not None and not select(ins)):
            continue
        key = (ins.op, ins.epilogue, int(ins.flags), ins["kn"], ins["width"], ins["heads"], ins["quant"],
               st.n_tokens, st.pos)
        if key not in seen:
            # the top dispatches ATTN with N > 1 to the block-wise prefill controller
            dut = make["prefill attn" if ins.op == Opcode.ATTN and st.n_tokens > 1 else ins.op]()
            got, res = run_controller(dut, st, p=1.0, latency=CTL_LATENCY)
            assert_same_ddr(got, st)
            assert res["error"] == 0, ins.text()
            seen[key] = res["cycles"]
            log(f"  {name}: {ins.text()[:70]} n={st.n_tokens} pos={st.pos}: RTL {res['cycles']}")
        rtl = seen[key]
        mod = instr_model(cfg, ins, st.n_tokens, st.pos, CTL_LATENCY)
        rows.append({"config": name, "index": st.index, "op": ins.op.name, "unit": UNIT_OF[ins.op.name],
                     "n": st.n_tokens, "pos": st.pos, "rtl": rtl, "model": round(mod, 2),
                     "error": round((mod - rtl) / rtl, 4)})
    return {"config": name, "instructions": rows}


def per_unit(rows: list[dict]) -> list[dict]:
    """Sums per (config, call, unit) of per-instruction rows."""
    acc: dict = {}
    for r in rows:
        k = (r["config"], "prefill" if r["pos"] == 0 else f"decode@{r['pos']}", r["unit"])
        a = acc.setdefault(k, [0, 0.0])
        a[0] += r["rtl"]
        a[1] += r["model"]
    return [{"config": c, "call": call, "unit": u, "rtl": v[0], "model": round(v[1], 1),
             "error": round((v[1] - v[0]) / v[0], 4)} for (c, call, u), v in acc.items()]


def run(units=None) -> list[dict]:
    rows = []
    for name, (cases, meas, model, fmt) in UNITS.items():
        if units and name not in units:
            continue
        for case in cases:
            rtl = meas(*case)
            mod = model(*case)
            rows.append({"unit": name, "config": fmt.format(*case), "rtl": rtl, "model": round(mod, 1),
                         "error": round((mod - rtl) / rtl, 4)})
    return rows


# ---------------------------------------------------------------------- the whole top (Verilator)
TOP_NEW_TOKENS = 2      # prefill + one decode step per configuration
TOP_COUNTERS = ("CYCLES", "CYC_LINEAR", "CYC_NORM", "CYC_ATTN", "CYC_DMA")


def top_model_counters(instrs, manifest: dict, n: int, pos: int) -> dict:
    """The dataflow model's figures for one call, named like the top's PERF counters."""
    cfg = df.config_from_artifact(manifest, board="rtl-sim")
    r = df.DataflowModel(instrs, cfg).call(n, pos)
    busy = r.unit_busy()
    out = {"CYCLES": r.accel_cycles}
    out.update({UNIT_COUNTER[u]: busy[u] for u in UNIT_COUNTER})
    return out


def top_source_digest(accel_config: dict) -> str:
    """The digest hw/synth.verilog_cached names the top's Verilog by: its configuration key and every
    HDL source it is built from (so it changes whenever the generated Verilog can)."""
    import hashlib

    from ternc.backends.fpga.top import AcceleratorConfig, _accel_sources, accelerator_key
    from ternc.hw.synth import REPO

    key = accelerator_key(AcceleratorConfig.from_json(accel_config))
    src = b"".join((REPO / p).read_bytes() for p in _accel_sources())
    return hashlib.sha256(key.encode() + src).hexdigest()[:16]


def _rows(name, instrs, manifest, calls, counters_per_call) -> list[dict]:
    rows = []
    for (n, pos), counters in zip(calls, counters_per_call):
        model = top_model_counters(instrs, manifest, n, pos)
        for c in TOP_COUNTERS:
            if not counters.get(c):
                continue
            rows.append({"config": name, "call": "prefill" if pos == 0 else f"decode@{pos}", "counter": c,
                         "rtl": int(counters[c]), "model": round(model[c], 1),
                         "error": round((model[c] - counters[c]) / counters[c], 4)})
    return rows


def top_model_rows(top: dict) -> list[dict]:
    """The stored whole-top runs against the model as it computes today (programs and configurations
    are stored with the runs)."""
    from ternc.backends.fpga.isa import Program

    rows = []
    for run in top["runs"]:
        instrs = Program.decode(bytes.fromhex(run["program_hex"])).instrs
        rtl = {}
        for r in top["rows"]:
            if r["config"] == run["config"]:
                rtl.setdefault(r["call"], {})[r["counter"]] = r["rtl"]
        per_call = [rtl["prefill" if pos == 0 else f"decode@{pos}"] for _, pos in run["calls"]]
        rows += _rows(run["config"], instrs, {"accelerator": run["accelerator"]}, run["calls"], per_call)
    return rows


def measure_top(name: str, out_dir, program: str = "full", log=print) -> dict:
    """Build the configuration's artifact (engine CTL_ENGINE), run prefill + decode on the composed top
    in Verilator (sim/rtl.simulate_rtl, token/logit-checked), and compare its counters per call with
    the model. ``program="prefix"``: the program up to the first opcode the top has no controller for."""
    import hashlib

    from ternc.backends.fpga.build import build_artifact, load_artifact
    from ternc.backends.fpga.schedule import EngineConfig
    from ternc.backends.fpga.top import AcceleratorConfig, built_opcodes
    from ternc.sim.rtl import accelerator_verilog_of, prefix_program, simulate_rtl

    _, _, prompt, _ = CONFIGS[name]
    module = compiled_module(name)
    path = build_artifact(module, Path(out_dir) / name.replace(" ", "_"), context=CTL_CONTEXT,
                          engine=EngineConfig(*CTL_ENGINE), synth=False, rtl=False)
    art = load_artifact(path)
    rep = simulate_rtl(path, prompt, TOP_NEW_TOKENS, program=program, write_report=False)
    if not rep.exact:
        raise AssertionError(f"{name}: the top is not token/logit-exact:\n{rep.text()}")
    instrs = art.program.instrs if program == "full" else prefix_program(
        art, built_opcodes(AcceleratorConfig.from_json(art.manifest["accelerator"]["config"]))).instrs
    vpath = accelerator_verilog_of(art)
    calls = [(len(prompt), 0)] + [(1, len(prompt) + i) for i in range(len(rep.calls) - 1)]
    rows = _rows(name, instrs, art.manifest, calls, rep.calls)
    for r in rows:
        log(f"  {name} {r['call']} {r['counter']}: RTL {r['rtl']}, model {r['model']} ({100 * r['error']:+.2f}%)")
    from ternc.backends.fpga.isa import Program

    return {"config": name, "program": program, "rows": rows, "calls": calls,
            "verilog_sha256_16": hashlib.sha256(vpath.read_bytes()).hexdigest()[:16],
            "verilog_source_digest": top_source_digest(art.manifest["accelerator"]["config"]),
            "accelerator": {"config": art.manifest["accelerator"]["config"],
                            "lm_head": art.manifest["accelerator"].get("lm_head", "host")},
            "program_hex": Program(list(instrs)).encode().hex(),
            "seconds": round(rep.seconds, 1), "tokens": rep.tokens}


def run_top(names=None, program: str = "full", log=print) -> dict:
    import tempfile

    runs = []
    with tempfile.TemporaryDirectory(prefix="ternc-calib-top-") as td:
        for name in names or CONFIGS:
            runs.append(measure_top(name, td, program, log))
    return {"source": f"composed top (hw/top.py) in Verilator through cocotb (sim/rtl.py), cocotbext-axi RAM on "
                      f"HP0-HP2, engine G={CTL_ENGINE[0]} T={CTL_ENGINE[1]} C={CTL_ENGINE[2]}, context {CTL_CONTEXT}; "
                      f"model: board rtl-sim (python -m ternc.sim.calibrate --top)",
            "program": program, "runs": [{k: v for k, v in r.items() if k != "rows"} for r in runs],
            "rows": [row for r in runs for row in r["rows"]]}


def run_controllers(names=None, log=print) -> dict:
    """Every configuration's calls, per instruction and per unit (the ``controllers`` section)."""
    instrs = []
    for name in names or CONFIGS:
        instrs += measure_calls(name, log=log)["instructions"]
    worst = max(instrs, key=lambda r: abs(r["error"]))
    return {"source": f"Amaranth simulator, each controller on every instruction of the calls, memory at full "
                      f"rate with read latency {CTL_LATENCY} (sim/memport_tb.py), engine G={CTL_ENGINE[0]} "
                      f"T={CTL_ENGINE[1]} C={CTL_ENGINE[2]} (python -m ternc.sim.calibrate)",
            "latency": CTL_LATENCY, "per_unit": per_unit(instrs),
            "instructions": instrs,
            "max_instruction_error": {k: worst[k] for k in ("config", "op", "n", "pos", "rtl", "model", "error")}}


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m ternc.sim.calibrate")
    ap.add_argument("--skip-units", action="store_true", help="keep the stored unit rows")
    ap.add_argument("--skip-controllers", action="store_true", help="keep the stored controller rows")
    ap.add_argument("--top", choices=("full", "prefix"), default=None,
                    help="also run the composed top in Verilator (slow) and store its counters vs the model")
    args = ap.parse_args(argv)
    p = Path(__file__).with_name("calibration.json")
    old = json.loads(p.read_text()) if p.exists() else {}
    rows = old.get("rows", []) if args.skip_units else run()
    ctl = old.get("controllers") if args.skip_controllers else run_controllers()
    out = {"source": "Amaranth simulator, full rate, first input -> last output (python -m ternc.sim.calibrate)",
           "rows": rows}
    if ctl:
        out["controllers"] = ctl
    if args.top:
        out["top"] = run_top(program=args.top)
    for k in old:
        out.setdefault(k, old[k])   # sections written by other tools (the whole-top runs)
    p.write_text(json.dumps(out, indent=1) + "\n")
    for r in rows:
        print(f"{r['unit']:18s} {r['config']:36s} RTL {r['rtl']:7d}  model {r['model']:9.1f}  {100 * r['error']:+.2f}%")
    for r in (ctl or {}).get("per_unit", []):
        print(f"{r['config']:16s} {r['call']:10s} {r['unit']:7s} RTL {r['rtl']:7d}  model {r['model']:9.1f}  "
              f"{100 * r['error']:+.2f}%")
    for r in out.get("top", {}).get("rows", []):
        print(f"{r['config']:16s} {r['call']:10s} {r['counter']:10s} RTL {r['rtl']:7d}  model {r['model']:9.1f}  "
              f"{100 * r['error']:+.2f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
