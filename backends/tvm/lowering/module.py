"""lower_module: the entry points of a Module -> one TVM IRModule (Lowered)."""

from __future__ import annotations

import numpy as np

from tvm import relax

from ....ir.core import Module
from ....ir.decoder import DecoderSpec
from ....ir.ops import Op
from .. import kernels
from ..target import CAPABILITIES, tvm_target
from .common import IMPLS, EntrySignature, KernelRegistry, Lowered, LoweringError
from .function import FunctionLowerer


def _weight_storage(module: Module, entries: list[str], target_kind) -> dict:
    """Weights stored in another dtype than their IR constant (zero-copy byte views), decided once
    for all entries: on CUDA, i2 codes are int32 words [N, 8 ceil(K/128)] (what dp4a reads), so
    decode's kernels take them without a view op (which would split CUDA-graph capture regions)."""
    if not tvm_target(target_kind).gpu:
        return {}
    out = {}
    for name in entries:
        for n in module.func(name).nodes:
            if n.op not in (Op.TernaryLinear, Op.TernaryMatMul) or n.attr("format") != kernels.DP4A_FORMAT.name:
                continue
            codes = n.inputs[2] if n.op == Op.TernaryLinear else n.inputs[1]
            c = module.constants.get(codes)
            k, nn = n.attr("k"), n.attr("n")
            if c is None or c.data is None or k is None or nn is None:
                continue
            kw = kernels.DP4A_FORMAT.words_per_row(int(k))
            if c.data.dtype == np.uint8 and c.data.shape == (int(nn), 4 * kw):
                out[codes] = ("int32", (int(nn), kw))
    return out


def _decode_token_dim(module: Module, name: str) -> str | None:
    """The symbol of decode's new-token count (input_ids [B, seq]) when `name` is a decoder's decode."""
    dec = DecoderSpec.of(module)
    if dec is None or name != dec.decode:
        return None
    p = next((p for p in module.func(name).params if p.name == dec.input_ids), None)
    if p is None or p.type.shape is None or len(p.type.shape) != 2 or not isinstance(p.type.shape[1], str):
        return None
    return p.type.shape[1]


INPLACE_SUFFIX = "__kv_inplace"


def inplace_kv_plan(module: Module, name: str, target_kind) -> dict | None:
    """{past input: present output} when decoder entry `name` can run over a preallocated KV cache
    written in place (CPU targets): every past input is float32 [b, h, past, d] (one `past` symbol)
    and is read only by Shape and, as its key/value, by a plain Attention node whose matching output
    is the present; nothing else reads a present. Else None (e.g. KV quantization or eviction)."""
    dec = DecoderSpec.of(module)
    if dec is None or name != dec.decode or tvm_target(target_kind).gpu or dec.state or dec.kv_budget:
        return None
    fn = module.func(name)
    kv = {t.past: t for layer in dec.kv for t in layer}
    params = {p.name: p for p in fn.params}
    syms = set()
    for past in kv:
        p = params.get(past)
        if p is None or p.type.shape is None or len(p.type.shape) != 4 or p.type.dtype.value != "f32" \
                or not isinstance(p.type.shape[2], str):
            return None
        syms.add(p.type.shape[2])
    presents = {t.present for t in kv.values()}
    if len(syms) != 1 or not presents <= set(fn.results):
        return None
    seen = set()
    for n in fn.nodes:
        for i, x in enumerate(n.inputs):
            if x in presents:
                return None
            if x not in kv or n.op == Op.Shape:
                continue
            if n.op != Op.Attention or i not in (3, 4) or len(n.outputs) < 3 \
                    or n.outputs[i - 2].name != kv[x].present:
                return None
            seen.add(x)
    return {past: kv[past].present for past in kv} if seen == set(kv) else None


#: KV eviction policies the TVM backend lowers (attention.py).
EVICTION_POLICIES = ("streaming", "h2o")


def check_lowerable(module: Module, entries: list[str]) -> None:
    """Refuse, before anything is built, a module using ops the TVM backend has no lowering for,
    listing every such op with its node count and first node."""
    missing: dict[str, list] = {}
    for name in entries:
        for n in module.func(name).nodes:
            if n.op not in IMPLS:
                missing.setdefault(n.op.value, []).append(f"@{name} {n.label}")
            elif n.op == Op.KVEvict and n.attr("policy") not in EVICTION_POLICIES:
                missing.setdefault(f"{n.op.value} with KV eviction policy {n.attr('policy')!r} (only "
                                   f"{' and '.join(EVICTION_POLICIES)} lower)", []).append(f"@{name} {n.label}")
    if missing:
        ops = "; ".join(f"{op} ({len(where)} node{'s' if len(where) > 1 else ''}, first {where[0]})"
                        for op, where in sorted(missing.items()))
        raise LoweringError(f"the TVM backend has no lowering for {len(missing)} op(s) this module uses: {ops}")


def lower_module(module: Module, entries: list[str] | None = None, target_kind="cpu",
                 kernel_policy: str = "auto", target=None, decode_tokens: int | None = None,
                 tuner: kernels.KernelTuner | None = None) -> Lowered:
    """Lower the named entry points (default: prefill/decode for decoders, else every function).

    decode_tokens: fix a decoder's decode entry to this many new tokens per call (CUDA: 1, so its
    shapes are static but for the KV length and CUDA graphs can capture them).
    target_kind: a TvmTarget or its name ("cpu", "aarch64", "cuda"); kernel_policy: "auto" (measured
    choice per ternary weight shape, CPU host targets only), "dot", "lut", ... or fixed choices
    {(format, k, n, m): kind} (kernels.choose_kind); target: the tvm Target the measurement compiles
    for; tuner: the KernelTuner holding measured choices (default: the process-wide
    kernels.DEFAULT_TUNER). Refuses (UnsupportedError) a module using attribute values the backend
    does not implement."""
    CAPABILITIES.check(module, f"the TVM backend (target {tvm_target(target_kind).name})")
    if entries is None:
        dec = DecoderSpec.of(module)
        entries = list(dec.entries) if dec else module.entry_names
    check_lowerable(module, entries)
    bb = relax.BlockBuilder()
    sigs: dict[str, EntrySignature] = {}
    log: list = []
    registry = KernelRegistry(bb, _weight_storage(module, entries, target_kind))
    for name in entries:
        tok = _decode_token_dim(module, name) if decode_tokens else None
        fl = FunctionLowerer(module, module.func(name), bb, target_kind, kernel_policy, log, registry, target,
                             fixed_dims={tok: int(decode_tokens)} if tok else None, tuner=tuner)
        sigs[name] = fl.lower()
    inplace = None
    dec = DecoderSpec.of(module)
    plan = inplace_kv_plan(module, dec.decode, target_kind) if dec and dec.decode in entries else None
    if plan:  # decode over a preallocated cache written in place (what the runners call per token)
        name = dec.decode + INPLACE_SUFFIX
        fl = FunctionLowerer(module, module.func(dec.decode), bb, target_kind, kernel_policy, log, registry, target,
                             tuner=tuner, entry_name=name, inplace_kv=plan)
        sigs[name] = fl.lower()
        inplace = {"entry": name, "decode": dec.decode, "caches": list(plan),
                   "presents": [plan[p] for p in plan], "length_input": "kv_len"}
    mod = bb.get()
    for name, sig in sigs.items():  # parameters after the inputs are weights (static for CUDA graphs)
        gv = mod.get_global_var(name)
        mod[gv] = mod[gv].with_attr("num_input", len(sig.inputs) + (name == (inplace or {}).get("entry")))
    weights: list[str] = []
    for s in sigs.values():
        for w in s.weights:
            if w not in weights:
                weights.append(w)
    storage = {w: v for w, v in registry.weight_storage.items() if w in weights}
    if inplace:
        inplace["signature"] = sigs.pop(inplace["entry"]).to_json()
    return Lowered(mod, sigs, weights, log, storage, inplace)
