"""`quantize-kv{bits=2|4|8,group=32,residual=32,sinks=0,rotate=false}`: KIVI-style KV-cache quantization.

Replaces every Attention node of the decoder entry points (DecoderSpec prefill/decode) by a
KVQuantAttention node with the same inputs/outputs plus the quantization config. Its meaning
(ir/interp.py, numerics in ir/kvquant.py): the cache (past + the new tokens) is stored quantized --
keys per channel over groups of `group` tokens, values per token over channel groups, `sinks` first
and `residual` (+ < group) last tokens in full precision, optional per-head Walsh-Hadamard rotation
-- and attention (prefill and decode) runs over that stored cache, dequantized.

State ("fake-quant"): the present/past tensors carried between steps hold the DEQUANTIZED cache, a
faithful 1:1 image of the packed codes (sinks/tail exact). Appending re-quantizes nothing already
quantized: kvquant's span only grows by whole groups and a group's codes depend only on its tokens,
so each step quantizes just the groups that newly leave the full-precision tail. Invariant (tested):
after any sequence of prefill/decode steps the carried cache equals
dequantize_kv(quantize_kv(exact K/V of all tokens)). meta["kv_bytes_per_token"] reports the real
packed storage (codes at `bits` bits + fp16 scales/zeros), not the f32 the interpreter carries.

`main` (no cache) is left unchanged. LOSSY: error is measured (tests/passes/test_quantize_kv.py,
bench/kv_quality.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ir.core import Module, Node
from ..ir.decoder import DecoderSpec
from ..ir.kvquant import KVQuantConfig, fp_kv_bytes_per_token, kv_bytes_per_token
from ..ir.ops import Op
from .base import PassResult
from .base import kv_bytes_per_token as module_kv_bytes


class KVPassError(ValueError):
    pass


@dataclass(frozen=True)
class QuantizeKVOptions:
    bits: int = 2
    group: int = 32
    residual: int = 32
    sinks: int = 0
    rotate: bool = False

    def __post_init__(self):
        self.config()  # validates

    def config(self) -> KVQuantConfig:
        return KVQuantConfig(bits=self.bits, group_size=self.group, residual=self.residual, sinks=self.sinks,
                             rotate=self.rotate)


def decoder_spec(module: Module, pass_name: str) -> DecoderSpec:
    """The module's decoder spec; refuses modules without one, and modules another KV pass already
    rewrote (quantize-kv, evict-kv and prune-prefill each take plain Attention; they do not compose yet)."""
    dec = DecoderSpec.of(module)
    if not dec:
        raise KVPassError(f"{pass_name}: module @{module.name} has no decoder entry points (meta['decoder']); "
                          f"load a decoder LM with ternc.load(..., decoder=True)")
    for fn in module.functions:
        if fn.name in dec.entries:
            done = {n.op.value for n in fn.nodes if n.op in (Op.KVQuantAttention, Op.KVEvict)}
            if done:
                raise KVPassError(f"{pass_name}: @{fn.name} already has {', '.join(sorted(done))} nodes; the KV "
                                  f"passes (quantize-kv, evict-kv, prune-prefill) do not compose: apply one")
    return dec


def _divisor(n: int, at_most: int) -> int | None:
    """The largest divisor of n that is at most `at_most` (and at least 2), for the error's suggestion."""
    return next((d for d in range(min(n, at_most), 1, -1) if n % d == 0), None)


def run(module: Module, opts: QuantizeKVOptions = QuantizeKVOptions()) -> PassResult:
    dec = decoder_spec(module, "quantize-kv")
    cfg = opts.config()
    if dec.head_dim:
        hd = dec.head_dim
        try:
            cfg.value_group(hd)  # head_dim must be a multiple of the value group
            if cfg.rotate:
                from ..ir.kvquant import hadamard

                hadamard(hd)  # raises for unsupported head dims
        except ValueError as e:
            raise KVPassError(f"quantize-kv{{group={cfg.group_size}{',rotate=true' if cfg.rotate else ''}}} does not "
                              f"fit this model (head_dim {hd}): {e}; choose a group that divides {hd}"
                              f"{' (e.g. group=' + str(_divisor(hd, cfg.group_size)) + ')' if _divisor(hd, cfg.group_size) else ''}"
                              ) from None
    attrs = dict(bits=cfg.bits, group_size=cfg.group_size, residual=cfg.residual, sinks=cfg.sinks,
                 rotate=int(cfg.rotate))
    rewritten = 0
    fns = []
    for fn in module.functions:
        if fn.name not in dec.entries:
            fns.append(fn)
            continue
        nodes = []
        for n in fn.nodes:
            if n.op == Op.Attention:
                if len(n.outputs) != 3:
                    raise KVPassError(f"quantize-kv: @{fn.name} {n.label} has no present K/V outputs")
                n = Node.make(Op.KVQuantAttention, n.inputs, n.outputs, n.origin, **n.attr_dict, **attrs)
                rewritten += 1
            nodes.append(n)
        fns.append(fn.with_nodes(nodes))
    if not rewritten:
        raise KVPassError("quantize-kv: no Attention node in the decoder entry points")
    before = module_kv_bytes(module)
    L, H, D = dec.n_layers, int(dec.kv_heads), int(dec.head_dim)
    after = kv_bytes_per_token(cfg, H, D, L)
    meta = dict(module.meta)
    meta["kv_bytes_per_token"] = after
    meta["kv_quant"] = dict(bits=cfg.bits, group_size=cfg.group_size, residual=cfg.residual, sinks=cfg.sinks,
                            rotate=cfg.rotate)
    out = module.replace(functions=tuple(fns), meta=meta)
    fp16 = fp_kv_bytes_per_token(H, D, L)
    return PassResult(out, {"rewritten": rewritten, "kv_bytes_per_token_before": before,
                            "kv_bytes_per_token_fp16": float(fp16), "kv_bytes_per_token_after": after,
                            "compression_vs_fp16": fp16 / after,
                            "fixed_fp_tokens": cfg.sinks + cfg.residual + cfg.group_size - 1})
