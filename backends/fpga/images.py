"""Images: the DDR address map and the bytes the host loads before running the program.

DDR map (byte offsets from the DDR_BASE register; every region 4 KiB aligned, in this order):

  program   the encoded instruction stream (isa.py, 32 B per instruction)
  ids       int32[context]: the call's token ids (host-written)
  consts    embedding FX int32 [vocab, hidden]; each RMSNorm weight FX int32 [width]; each RoPE
            table: per position p < context, cos[d/2] then sin[d/2] as int16 Q1.14
  weights   per ternary linear, its engine image: tiles of ``columns`` output rows x chunks of
            ``tables`` TL2 triples, tile-major; one beat = columns x tables 5-bit fields (4-bit
            index | sign << 4), field (column c, table t) at bits [5(c*tables + t), +5), LSB first,
            ``beat_bytes`` bytes per beat (16 x 28 engine: 280 B), each beat stored padded with zero
            bytes to ``image_beat_bytes`` (whole 16-byte DDR beats: 288 B). Rows past N and triples
            past ceil(K/3) are 0. Built from the IR's packed TL2 bytes (nibbles/signs), never from floats.
  kv        per layer, K then V: int32 [kv_heads][context][kv_row_words(head_dim)] KV words (hw_numerics
            Q11.12); a cache row is padded to whole 16-byte DDR beats (pad words are 0, never read as data)
  act       activation buffers: int32 FX [context][width] each (liveness-shared)

Files written into the artifact: ``program.bin``, ``images/consts.bin``, ``images/weights.bin`` (each
loaded at its region's address), ``images/lm_head.npy`` (f32 [vocab, hidden], host side), and
``memmap.json`` (regions, per-symbol addresses).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...ir import hw_numerics as hn
from ...ir import packing
from ...ir.hw_numerics import kv_row_words  # noqa: F401  (re-exported for the executor)
from ...ir.core import Function, Module
from ...ir.interp import Interpreter
from .schedule import EngineConfig, Linear, Plan

ALIGN = 4096


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


# ------------------------------------------------------------------ weights: packed TL2 -> beats
def weight_image(nibbles: np.ndarray, signs: np.ndarray, k: int, engine: EngineConfig) -> np.ndarray:
    """Packed TL2 [N, ...] -> uint8 [tiles * chunks, image_beat_bytes] in the engine's beat layout; the
    fields come from the format registry's reader of the packed bytes (ir/packing.py TL2.fields)."""
    index, sign = packing.get_format("tl2").fields({"nibbles": nibbles, "signs": signs}, k)
    index, sign = index.astype(np.int64), sign.astype(np.int64)
    n, t = index.shape
    c, tb = engine.columns, engine.tables
    fb = hn.tlg_index_bits(engine.group) + 1
    tiles, chunks = -(-n // c), -(-t // tb)
    f = np.zeros((tiles * c, chunks * tb), np.int64)
    f[:n, :t] = index | sign << (fb - 1)
    f = f.reshape(tiles, c, chunks, tb).transpose(0, 2, 1, 3).reshape(tiles * chunks, c * tb)
    bits = ((f[..., None] >> np.arange(fb)) & 1).astype(np.uint8).reshape(tiles * chunks, -1)
    pad = engine.image_beat_bytes * 8 - bits.shape[1]
    bits = np.pad(bits, ((0, 0), (0, pad)))
    return np.packbits(bits, axis=-1, bitorder="little")


def ternary_from_image(image: np.ndarray, n: int, k: int, engine: EngineConfig) -> np.ndarray:
    """Inverse of weight_image (rows of ``image_beat_bytes``): the ternary int8 [N, K] matrix the
    engine multiplies by."""
    c, tb = engine.columns, engine.tables
    fb = hn.tlg_index_bits(engine.group) + 1
    t = -(-k // 3)
    tiles, chunks = -(-n // c), -(-t // tb)
    bits = np.unpackbits(np.asarray(image, np.uint8).reshape(tiles * chunks, -1), axis=-1,
                         bitorder="little")[:, :c * tb * fb].astype(np.int64)
    f = (bits.reshape(tiles * chunks, c * tb, fb) << np.arange(fb)).sum(-1)
    f = f.reshape(tiles, chunks, c, tb).transpose(0, 2, 1, 3).reshape(tiles * c, chunks * tb)[:n, :t]
    return packing.tl2_decode(f & ((1 << (fb - 1)) - 1), f >> (fb - 1), k)


# ------------------------------------------------------------------ RoPE tables
def rope_tables(module: Module, plan: Plan) -> list[np.ndarray]:
    """Per (cos, sin) pair: int16 [context, d] rows (cos[d/2] | sin[d/2]), Q1.14, from the IR's own
    position subgraph evaluated by the interpreter for positions 0 .. context-1, rounded exactly as
    the fx RoPE rounds them."""
    if not plan.ropes:
        return []
    dec = module.meta["decoder"]
    fn = module.func(dec["decode"])
    want = [v for pair in plan.ropes for v in pair]
    sub = Function("rope_tables", fn.params, tuple(plan.rope_slice), tuple(want))
    feeds = {}
    for p in fn.params:
        shape = [1 if d == "batch" else d for d in (p.type.shape or ())]
        if p.name == dec["input_ids"]:
            feeds[p.name] = np.zeros((1, plan.context), np.int64)
        else:  # an empty past: positions start at 0
            feeds[p.name] = np.zeros([1, plan.kv_heads, 0, plan.head_dim], p.type.dtype.np)
        _ = shape
    res = Interpreter(module.replace(functions=(sub,))).run("rope_tables", feeds)
    out = []
    for cos_name, sin_name in plan.ropes:
        cos = np.asarray(res[cos_name], np.float64).reshape(plan.context, -1)
        sin = np.asarray(res[sin_name], np.float64).reshape(plan.context, -1)
        h = cos.shape[1] // 2
        q14 = float(1 << hn.ROPE_FRAC)
        rows = np.concatenate([np.round(cos[:, :h] * q14), np.round(sin[:, :h] * q14)], axis=1)
        out.append(rows.astype(np.int16))
    return out


# ------------------------------------------------------------------ the map
@dataclass
class MemoryMap:
    regions: dict = field(default_factory=dict)     # name -> [addr, bytes]
    symbols: dict = field(default_factory=dict)     # "kind:key" -> addr

    def addr(self, kind: str, key) -> int:
        return self.symbols[f"{kind}:{key}"]

    @property
    def total(self) -> int:
        return max(a + n for a, n in self.regions.values())

    def to_json(self) -> dict:
        return {"regions": {k: {"addr": a, "bytes": n} for k, (a, n) in self.regions.items()},
                "symbols": dict(sorted(self.symbols.items())), "total_bytes": self.total}


@dataclass
class Images:
    program: bytes
    consts: bytes
    weights: bytes
    lm_head: np.ndarray
    memmap: MemoryMap


def build_images(module: Module, plan: Plan, engine: EngineConfig) -> Images:
    mm = MemoryMap()
    c = module.constants
    cursor = 0

    def region(name, nbytes):
        nonlocal cursor
        mm.regions[name] = [cursor, nbytes]
        cursor = _align(cursor + max(nbytes, 1))
        return mm.regions[name][0]

    prog_bytes = len(plan.program.instrs) * 32
    region("program", prog_bytes)
    mm.symbols["ids:0"] = region("ids", 4 * plan.context)

    # consts
    parts, off = [], 0

    def put(key, arr):
        nonlocal off
        b = np.ascontiguousarray(arr).tobytes()
        mm.symbols[key] = off
        parts.append(b + bytes(_align(len(b)) - len(b)))
        off += _align(len(b))

    put(f"const:{plan.embed}", hn.to_fx(c[plan.embed].data).astype("<i4"))
    for name in plan.norms:
        put(f"const:{name}", hn.to_fx(c[name].data).astype("<i4"))
    for i, tab in enumerate(rope_tables(module, plan)):
        put(f"rope:{i}", tab.astype("<i2"))
    consts = b"".join(parts)
    base = region("consts", len(consts))
    for k in [k for k in mm.symbols if k.startswith(("const:", "rope:"))]:
        mm.symbols[k] += base

    # weights
    parts, off = [], 0
    lin: Linear
    for lin in plan.linears.values():
        img = weight_image(c[lin.nibbles].data, c[lin.signs].data, lin.k, engine).tobytes()
        lin.addr, lin.nbytes = off, len(img)
        mm.symbols[f"weight:{lin.name}"] = off
        parts.append(img + bytes(_align(len(img)) - len(img)))
        off += _align(len(img))
    weights = b"".join(parts)
    base = region("weights", len(weights))
    for lin in plan.linears.values():
        lin.addr += base
        mm.symbols[f"weight:{lin.name}"] = lin.addr

    kv_bytes = 4 * plan.kv_heads * plan.context * kv_row_words(plan.head_dim)
    base = region("kv", 2 * plan.n_layers * kv_bytes)
    for layer in range(plan.n_layers):
        for j, which in enumerate("kv"):
            mm.symbols[f"kv:{(layer, which)}"] = base + (2 * layer + j) * kv_bytes
    offs, off = [], 0
    for w in plan.act_sizes:
        offs.append(off)
        off += _align(4 * plan.context * w)
    base = region("act", off)
    for i, o in enumerate(offs):
        mm.symbols[f"act:{i}"] = base + o

    # patch the program's symbolic fields
    instrs = list(plan.program.instrs)
    for idx, fld, kind, key in plan.symbols:
        ins = instrs[idx]
        instrs[idx] = type(ins)(ins.op, {**ins.fields, fld: mm.addr(kind, key)}, ins.epilogue, ins.flags, ins.note)
    plan.program.instrs = instrs
    if mm.total >= 1 << 32:
        raise ValueError(f"DDR map needs {mm.total / 2**30:.2f} GiB > the 4 GiB window")
    lm = np.ascontiguousarray(c[plan.lm_head].data, dtype=np.float32)
    return Images(plan.program.encode(), consts, weights, lm, mm)
