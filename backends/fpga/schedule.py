"""Schedule: the kv260-pipelined IR's decode function -> a Program (isa.py) plus the memory plan.

The decode entry (``meta["decoder"]["decode"]``: input ids + past KV, any N tokens) is walked node by
node. Layout-only nodes (Reshape/Transpose between [1, seq, H*d] and [1, H, seq, d]) become views of
one token-major buffer; the position subgraph (Range/Cast/Mul/Cos/Sin ... that depends on shapes
only) becomes RoPE tables evaluated once by the interpreter for every position of the context; every
other node maps to one instruction, or the schedule raises :class:`ScheduleError` naming it.
Activation buffers are allocated by liveness (a freed buffer is reused by a later value of the
same or smaller width).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...ir import hw_numerics as hn
from ...ir.core import Function, Module, Node
from ...ir.ops import Op
from .isa import Epilogue, Flag, Instr, Opcode, Program, pack_heads, pack_kn, pack_kvquant, pack_scale


class ScheduleError(ValueError):
    pass


@dataclass(frozen=True)
class EngineConfig:
    """The TLMM engine's geometry (hw/tlmm.py): G activations per table, tables per chunk, columns."""

    group: int = 3
    tables: int = 28
    columns: int = 16

    @property
    def beat_bits(self) -> int:
        return self.columns * self.tables * (hn.tlg_index_bits(self.group) + 1)

    @property
    def beat_bytes(self) -> int:
        return -(-self.beat_bits // 8)

    @property
    def image_beat_bytes(self) -> int:
        """Bytes of one engine beat in the DDR weight image: ``beat_bytes`` padded to whole 16-byte
        DDR beats (16 x 28: 280 -> 288 B; 8 x 4: 20 -> 32 B), so the linear controller moves whole
        beats and every engine beat starts on one."""
        return -(-self.beat_bytes // 16) * 16


@dataclass
class Linear:
    """A ternary weight the program reads: its packed TL2 constants and the image it becomes."""

    name: str            # the nibbles constant's name (unique per weight)
    nibbles: str
    signs: str
    k: int
    n: int
    w_scale: float
    addr: int = 0        # filled by the memory map
    nbytes: int = 0


@dataclass
class Plan:
    """Everything images.py needs to lay out DDR, with symbolic addresses patched in at the end."""

    program: Program
    hidden: int
    vocab: int
    context: int
    n_layers: int
    kv_heads: int
    head_dim: int
    embed: str                                   # constant name of the embedding table
    lm_head: str                                 # constant name of the host LM head weight [V, H]
    norms: list[str] = field(default_factory=list)
    linears: dict[str, Linear] = field(default_factory=dict)
    ropes: list[tuple[str, str]] = field(default_factory=list)   # (cos value, sin value) pairs
    rope_slice: list[Node] = field(default_factory=list)
    act_sizes: list[int] = field(default_factory=list)           # widths of the activation buffers
    final_buffer: int = 0                                         # buffer index the host LM head reads
    symbols: list = field(default_factory=list)                  # (instr index, field, kind, key)


_POS_OPS = {Op.Shape, Op.Squeeze, Op.Unsqueeze, Op.Range, Op.Add, Op.Cast, Op.Mul, Op.Concat, Op.Cos,
            Op.Sin, Op.Gather, Op.Sub, Op.Expand, Op.Slice, Op.Reshape, Op.Div, Op.Identity, Op.ConstantOfShape}


def _const(module: Module, name: str, what: str, node: Node) -> np.ndarray:
    c = module.constants.get(name)
    if c is None or c.data is None:
        raise ScheduleError(f"node {node.label}: {what} %{name} must be a constant with data")
    return c.data


def schedule(module: Module, context: int, engine: EngineConfig = EngineConfig(),
             lm_head: str = "host") -> Plan:
    dec = module.meta.get("decoder")
    if not dec:
        raise ScheduleError(f"@{module.name}: not a decoder module (no meta['decoder']); kv260 compiles "
                            "decoder LMs with prefill/decode entries")
    if lm_head != "host":
        raise ScheduleError(f"lm_head={lm_head!r}: only 'host' (the ARM cores) is built; a fabric LM head "
                            "needs a non-ternary GEMV unit (not implemented)")
    fn: Function = module.func(dec["decode"])
    ids_name = dec["input_ids"]
    past = {n: (i, kv) for i, (pk, pv) in enumerate(dec["past"]) for kv, n in enumerate((pk, pv))}
    n_layers = len(dec["past"])
    kv_heads, head_dim = int(dec["kv_heads"]), int(dec["head_dim"])

    # Activation values are those downstream of the token ids; everything else that is not a
    # constant is the position subgraph (shapes, positions, cos/sin).
    act: set[str] = {ids_name}
    for n in fn.nodes:
        if n.op != Op.Shape and any(i in act for i in n.inputs if i):
            act.update(o.name for o in n.outputs)
    pos_nodes = [n for n in fn.nodes if n.op == Op.Shape or not any(i in act for i in n.inputs if i)]
    pos_ids = {id(n) for n in pos_nodes}
    for n in pos_nodes:
        if n.op not in _POS_OPS:
            raise ScheduleError(f"node {n.label}: a {n.op.value} on positions/shapes that the accelerator "
                                "cannot precompute into a table")

    instrs: list[Instr] = []
    syms: list = []
    views: dict[str, tuple[int, str, tuple]] = {}   # value -> (buffer, kind, (dims))
    sizes: list[int] = []
    free: list[int] = []
    uses: dict[str, int] = {}
    for idx, n in enumerate(fn.nodes):
        for i in n.inputs:
            uses[i] = idx
    for r in fn.results:
        uses[r] = len(fn.nodes)
    buf_values: dict[int, set[str]] = {}
    embed = lm_name = None
    plan = Plan(Program([]), 0, 0, context, n_layers, kv_heads, head_dim, "", "")
    layer_of_attn = 0

    def alloc(value: str, width: int, kind="tok", dims=()) -> int:
        best = None
        for b in free:
            if sizes[b] >= width and (best is None or sizes[b] < sizes[best]):
                best = b
        if best is None:
            sizes.append(width)
            best = len(sizes) - 1
        else:
            free.remove(best)
        views[value] = (best, kind, dims)
        buf_values[best] = {value}
        return best

    def alias(value: str, src: str, kind: str, dims=()):
        b = views[src][0]
        views[value] = (b, kind, dims)
        buf_values[b].add(value)

    def release(idx: int):
        for b, vals in list(buf_values.items()):
            if vals and all(uses.get(v, -1) <= idx for v in vals) and b not in free:
                free.append(b)
                buf_values[b] = set()

    def buf(value: str, node: Node, kind: str = "tok") -> int:
        if value not in views:
            raise ScheduleError(f"node {node.label}: input %{value} is not an activation buffer the "
                                "accelerator holds")
        b, k, _ = views[value]
        if k != kind:
            raise ScheduleError(f"node {node.label}: input %{value} is in layout {k}, expected {kind}")
        return b

    def emit(ins: Instr, refs: dict):
        """refs: field -> (kind, key) resolved by the memory map (kind: act/const/weight/rope/kv/ids)."""
        for f, ref in refs.items():
            syms.append((len(instrs), f, *ref))
        instrs.append(ins)

    def linear_of(n: Node, ops: list[str]) -> Linear:
        if n.attr("format") != "tl2" or n.attr("has_bias", 0):
            raise ScheduleError(f"node {n.label}: the TLMM engine runs TL2 weights without bias, got format "
                                f"{n.attr('format')!r} has_bias={n.attr('has_bias', 0)}")
        ws = float(np.asarray(_const(module, ops[0], "weight scale", n)).reshape(()))
        lin = Linear(ops[1], ops[1], ops[2], int(n.attr("k")), int(n.attr("n")), ws)
        for nm in ops[1:3]:
            _const(module, nm, "packed weight", n)
        plan.linears.setdefault(lin.name, lin)
        return lin

    def ws_field(lin: Linear) -> int:
        m, s = hn.encode_wscale(lin.w_scale)
        return pack_scale(m, s)

    for idx, n in enumerate(fn.nodes):
        if id(n) in pos_ids:
            continue
        out = n.outputs[0].name
        note = n.label
        if n.op == Op.Gather and n.inputs[1] == ids_name:
            table = _const(module, n.inputs[0], "embedding table", n)
            embed, width = n.inputs[0], int(table.shape[1])
            plan.vocab = int(table.shape[0])
            b = alloc(out, width)
            views["__embed__"] = views[out]
            emit(Instr(Opcode.EMBED, {"width": width}, note=note),
                 {"table": ("const", embed), "dst": ("act", b), "ids": ("ids", 0)})
        elif n.op == Op.RMSNorm:
            w = _const(module, n.inputs[1], "norm weight", n)
            src = buf(n.inputs[0], n)
            b = alloc(out, int(w.shape[-1]))
            if n.inputs[1] not in plan.norms:
                plan.norms.append(n.inputs[1])
            inv_k, eps_q = hn.norm_consts(int(w.shape[-1]), float(n.attr("eps")))
            emit(Instr(Opcode.RMSNORM, {"width": int(w.shape[-1]), "inv_k": inv_k, "eps_q": eps_q},
                       note=note), {"src": ("act", src), "dst": ("act", b), "weight": ("const", n.inputs[1])})
            _require_fx(n)
        elif n.op == Op.TernaryLinear:
            _require_fx(n)
            lin = linear_of(n, list(n.inputs[1:4]))
            src = buf(n.inputs[0], n)
            b = alloc(out, lin.n)
            emit(Instr(Opcode.LINEAR, {"kn": pack_kn(lin.k, lin.n), "ws": ws_field(lin)}, note=note),
                 {"src": ("act", src), "dst": ("act", b), "weights": ("weight", lin.name)})
        elif n.op == Op.FusedLinear:
            _require_fx(n)
            if n.attr("linear") != "TernaryLinear" or int(n.attr("linear_operands")) != 3:
                raise ScheduleError(f"node {n.label}: only ternary (TL2) linears run on the engine")
            lin = linear_of(n, list(n.inputs[1:4]))
            src = buf(n.inputs[0], n)
            ep = n.attr("epilogue")
            f = {"kn": pack_kn(lin.k, lin.n), "ws": ws_field(lin)}
            refs = {"src": ("act", src), "weights": ("weight", lin.name)}
            if ep == "residual_add":
                refs["aux"] = ("act", buf(n.inputs[4], n))
                b = alloc(out, lin.n)
                e = Epilogue.RESIDUAL
            elif ep == "rope":
                shape = [int(v) for v in _const(module, n.inputs[4], "head shape", n).reshape(-1)]
                if list(n.attr("perm")) != [0, 2, 1, 3] or len(shape) != 4 or shape[2] * shape[3] != lin.n:
                    raise ScheduleError(f"node {n.label}: RoPE epilogue expects a [1, seq, heads, d] split and "
                                        f"perm [0, 2, 1, 3], got shape {shape} perm {n.attr('perm')}")
                if shape[3] % 2:
                    raise ScheduleError(f"node {n.label}: RoPE needs an even head_dim, got {shape[3]}")
                pair = (n.inputs[5], n.inputs[6])
                if pair not in plan.ropes:
                    plan.ropes.append(pair)
                # LINEAR (NONE) then ROPE in place on its output rows: a fused ROPE epilogue would need
                # both lanes of every pair (i, i + d/2) in one engine tile (impossible for d = 42 on
                # 8 or 16 columns), the ROPE controller reads whole rows instead.
                b = alloc(out, lin.n, "heads", (shape[2], shape[3]))
                emit(Instr(Opcode.LINEAR, f, Epilogue.NONE, note=note), {**refs, "dst": ("act", b)})
                emit(Instr(Opcode.ROPE, {"heads": pack_heads(shape[2], shape[2], shape[3])}, note=f"{note} (rope)"),
                     {"src": ("act", b), "dst": ("act", b), "table": ("rope", plan.ropes.index(pair))})
                release(idx)
                continue
            elif ep in ("gated_silu", "gated_relu2"):
                up = linear_of(n, list(n.inputs[4:7]))
                if (up.k, up.n) != (lin.k, lin.n):
                    raise ScheduleError(f"node {n.label}: gate and up projections differ in shape")
                refs["aux"] = ("weight", up.name)
                f["aux2"] = ws_field(up)
                b = alloc(out, lin.n)
                e = Epilogue.GATE_SILU if ep == "gated_silu" else Epilogue.GATE_RELU2
            else:
                raise ScheduleError(f"node {n.label}: epilogue {ep!r} has no hardware implementation")
            refs["dst"] = ("act", b)
            emit(Instr(Opcode.LINEAR, f, e, note=note), refs)
        elif n.op == Op.Cast and n.inputs[0] in views and views[n.inputs[0]][0] == views.get(
                "__embed__", (-1,))[0] and n.attr("to") in ("f32", "f64"):
            # f16 embedding table widened to f32: the EMBED image already holds to_fx(table) (exact)
            alias(out, n.inputs[0], "tok")
        elif n.op == Op.Reshape:
            src = n.inputs[0]
            if src not in views:
                raise ScheduleError(f"node {n.label}: reshape of a value the accelerator does not hold")
            shape = [int(v) for v in _const(module, n.inputs[1], "shape", n).reshape(-1)]
            kind = views[src][1]
            if kind == "tok" and len(shape) == 4:
                alias(out, src, "tok4", tuple(shape[2:]))
            elif kind == "tok4" and len(shape) == 3:
                alias(out, src, "tok")
            else:
                raise ScheduleError(f"node {n.label}: reshape {kind} -> {shape} is not a head split/merge")
        elif n.op == Op.Transpose:
            src = n.inputs[0]
            kind = views.get(src, (0, "?"))[1]
            if list(n.attr("perm")) != [0, 2, 1, 3] or kind not in ("tok4", "heads"):
                raise ScheduleError(f"node {n.label}: only the [0, 2, 1, 3] head transpose is a view")
            alias(out, src, "heads" if kind == "tok4" else "tok4", views[src][2])
        elif n.op in (Op.Attention, Op.KVQuantAttention):
            _require_fx(n)
            quant = 0
            if n.op == Op.KVQuantAttention:
                if n.attr("rotate"):
                    raise ScheduleError(f"node {n.label}: quantize-kv rotate=1 has no hardware format")
                quant = pack_kvquant(int(n.attr("bits")), int(n.attr("group_size")), int(n.attr("residual")),
                                     int(n.attr("sinks")))
            q, k, v = n.inputs[:3]
            pk, pv = (n.inputs[3], n.inputs[4]) if len(n.inputs) > 4 else ("", "")
            if pk not in past or pv not in past:
                raise ScheduleError(f"node {n.label}: attention past must be the decode entry's past KV inputs")
            layer = past[pk][0]
            hq, d = views[q][2] if views[q][2] else (0, 0)
            hkv = views[k][2][0]
            for name, which in ((k, "k"), (v, "v")):
                emit(Instr(Opcode.KV_APPEND, {"heads": pack_heads(hkv, hkv, d), "context": context, "quant": quant},
                           flags=Flag.VALUES if which == "v" else Flag.NONE, note=f"{note} ({which})"),
                     {"src": ("act", buf(name, n, "heads")), "cache": ("kv", (layer, which))})
            b = alloc(out, hq * d, "heads", (hq, d))
            sc = int(hn.to_fx(float(n.attr("scale"))))
            emit(Instr(Opcode.ATTN, {"heads": pack_heads(hq, hkv, d), "scale": sc,
                                     "context": context}, flags=Flag.CAUSAL if n.attr("causal") else Flag.NONE,
                       note=note),
                 {"q": ("act", buf(q, n, "heads")), "dst": ("act", b), "cache_k": ("kv", (layer, "k")),
                  "cache_v": ("kv", (layer, "v"))})
            layer_of_attn += 1
        elif n.op == Op.Linear and out == dec["logits"]:
            w = _const(module, n.inputs[1], "LM head weight", n)
            if len(n.inputs) > 2 and n.inputs[2]:
                raise ScheduleError(f"node {n.label}: LM head bias is not supported")
            lm_name = n.inputs[1]
            src = buf(n.inputs[0], n)
            plan.final_buffer = src
            emit(Instr(Opcode.LM_HEAD, {"width": int(w.shape[1]), "vocab": int(w.shape[0])}, flags=Flag.HOST,
                       note=note), {"src": ("act", src)})
        else:
            raise ScheduleError(f"node {n.label}: op {n.op.value} has no kv260 instruction (the accelerator "
                                "runs embed, RMSNorm, TL2 linears with fused epilogues, RoPE, attention, LM head)")
        release(idx)
    instrs.append(Instr(Opcode.END))
    if embed is None or lm_name is None:
        raise ScheduleError(f"@{fn.name}: no embedding gather or no LM head Linear producing %{dec['logits']}")
    plan.program = Program(instrs, {"entry": fn.name, "lm_head": lm_head, "context": context})
    plan.embed, plan.lm_head = embed, lm_name
    plan.hidden = int(_const(module, embed, "embedding", fn.nodes[0]).shape[1])
    plan.act_sizes = sizes
    plan.symbols = syms
    plan.rope_slice = pos_nodes
    if layer_of_attn != n_layers:
        raise ScheduleError(f"@{fn.name}: {layer_of_attn} attention nodes for {n_layers} KV layers")
    return plan


def _require_fx(n: Node):
    if n.attr("numerics") != "fx":
        raise ScheduleError(f"node {n.label}: not in hardware numerics (run the kv260 pipeline, which ends "
                            "with hw-numerics)")
