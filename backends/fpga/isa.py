"""The KV260 accelerator's instruction set: what the sequencer executes and the program file holds.

A *program* is the layer schedule of one decoder call (prefill of N tokens, or a decode step with
N = 1) as a flat instruction stream. It is compiled once (``schedule.py``) and is position- and
length-independent: the host writes the call's parameters into registers (``N_TOKENS``, ``TOKEN_POS`` =
tokens already in the KV cache, ``DDR_BASE``) and starts the sequencer, which runs the stream from
word 0 until ``END`` (or ``LM_HEAD`` with the host flag, which stops and hands the final hidden state
to the ARM cores).

Encoding: every instruction is 8 little-endian 32-bit words (32 bytes), word 0 = ``opcode`` (bits
7..0) | ``epilogue`` (bits 15..8) | ``flags`` (bits 31..16); words 1..7 are the opcode's fields in the
order of :data:`FIELDS` (unused words are 0). Addresses are byte offsets from ``DDR_BASE`` (32 bits:
the accelerator addresses a 4 GiB window). Activation buffers are token-major: row t (t < N_TOKENS)
of a buffer of width W holds W FX words (int32 Q15.16, ``ir/hw_numerics.py``) at ``addr + 4*W*t``.

Opcodes (all loop over the call's N_TOKENS rows; "FX" = ``hw_numerics`` Q15.16):

====== =========== ======================================================================================
0x01   EMBED       ``dst[t] = table[ids[t]]`` (FX rows of width ``width``); ids are int32 at ``ids``.
0x02   RMSNORM     ``dst[t] = hw_numerics.rmsnorm_fx_consts(src[t], weight, inv_k, eps_q)`` (the norm
                   unit, hw/norm.py); ``(inv_k, eps_q) = hw_numerics.norm_consts(width, eps)``.
0x03   LINEAR      ternary linear on the TLMM engine: quantize (``quantize_act_fx``) -> TL2 table
                   lookups over the weight image (engine beat layout, ``images.py``) -> dequantize
                   (``dq_factor``/``dequantize_fx`` with the layer's ``ws`` = ws_m | ws_s << 24) ->
                   epilogue (below) -> ``dst``. ``kn`` = K | N << 16.
0x04   KV_APPEND   ``cache[h, POS + t, :] = kv_from_fx(src[t, h*d:(h+1)*d])`` for every KV head h
                   (cache layout [heads][context][d] of int32 words holding the 24-bit KV format).
                   ``quant`` = bits | group_size << 8 | residual << 16 | sinks << 24 (0: none): then the
                   token groups that join the KIVI span are quantized in place
                   (``hw_numerics.kv_quant_span_fx``; flag VALUES selects the V grouping).
0x05   ATTN        ``dst[t] = attention_fx(q[t], cache_k[:, :POS+t+1], cache_v[...])`` per query head
                   with GQA (query head h reads KV head h // (hq / hkv)); causal; ``scale`` is the
                   FX softmax scale (to_fx(1/sqrt(d)) for Llama/BitNet); the attention unit's
                   definition is ``hw_numerics.attention_decode_fx`` (hw/attention.py).
                   ``heads`` = hq | hkv << 8 | d << 16.
0x06   LM_HEAD     flag HOST (the only mode built): stop; the host reads ``src`` (N_TOKENS x width FX)
                   and computes the logits on the ARM cores (float32 GEMV, the IR's Linear).
0x07   ROPE        ``dst[t] = rope(src[t])`` in place or not: each of ``heads`` heads (``heads`` = h | h << 8 |
                   d << 16, ``pack_heads``) of the FX row (width h*d) has its pairs (i, i + d/2) rotated
                   by ``rope_fx`` with row POS + t of the RoPE table at ``table`` (per position cos[d/2]
                   then sin[d/2], int16 Q1.14, ``images.py``). Executed by hw/ctl_rope.py; the schedule
                   emits LINEAR (epilogue NONE) + ROPE for q/k (the fused ROPE epilogue needs both lanes
                   of a pair in one engine tile, impossible e.g. for d = 42 on 8/16 columns).
0x0F   END         stop; status DONE.
====== =========== ======================================================================================

Epilogues of LINEAR (``epilogue`` byte; the hardware ``Epilogue`` ops of ``hw/epilogue.py``):

* ``NONE``: dst = y.
* ``RESIDUAL``: dst = add_fx(y, aux[t]) (``aux`` = the residual buffer, width N).
* ``ROPE`` (kept in the encoding and the executor; the schedule emits the ROPE opcode instead): ``aux``
  = RoPE table (``images.py``: per position p, cos[d/2] then sin[d/2] as int16 Q1.14), ``aux2`` = heads | head_dim << 16; each head's pair (i, i + d/2) is rotated with the table row of
  position POS + t (``rope_fx``).
* ``GATE_SILU`` / ``GATE_RELU2``: a second weight image at ``aux`` with its scale in ``aux2`` (up
  projection); dst = silu_gate_fx / relu2_gate_fx(y_gate, y_up). Both projections share one
  quantized activation (one quantizer pass, two engine passes).

Registers the program reads (the full map is ``regmap.py``): N_TOKENS, TOKEN_POS, DDR_BASE.
"""

from __future__ import annotations

import enum
import json
import struct
from dataclasses import dataclass, field

WORDS = 8
INSTR_BYTES = 4 * WORDS


class Opcode(enum.IntEnum):
    EMBED = 0x01
    RMSNORM = 0x02
    LINEAR = 0x03
    KV_APPEND = 0x04
    ATTN = 0x05
    LM_HEAD = 0x06
    ROPE = 0x07
    END = 0x0F


class Epilogue(enum.IntEnum):
    NONE = 0
    RESIDUAL = 1
    ROPE = 2
    GATE_SILU = 3
    GATE_RELU2 = 4


class Flag(enum.IntFlag):
    NONE = 0
    HOST = 1        # LM_HEAD: computed by the host (ARM cores)
    CAUSAL = 2      # ATTN: causal mask (query t sees cache entries 0 .. POS + t)
    VALUES = 4      # KV_APPEND: the V cache (quantization groups channels per token, not tokens)


#: Field names of words 1..7 per opcode (in order).
FIELDS: dict[Opcode, tuple[str, ...]] = {
    Opcode.EMBED: ("table", "dst", "width", "ids"),
    Opcode.RMSNORM: ("src", "dst", "width", "weight", "inv_k", "eps_q"),
    Opcode.LINEAR: ("src", "dst", "kn", "weights", "ws", "aux", "aux2"),
    Opcode.KV_APPEND: ("src", "cache", "heads", "context", "quant"),
    Opcode.ATTN: ("q", "dst", "heads", "cache_k", "cache_v", "scale", "context"),
    Opcode.LM_HEAD: ("src", "width", "vocab"),
    Opcode.ROPE: ("src", "dst", "heads", "table"),
    Opcode.END: (),
}


class ISAError(ValueError):
    pass


@dataclass(frozen=True)
class Instr:
    op: Opcode
    fields: dict = field(default_factory=dict)
    epilogue: Epilogue = Epilogue.NONE
    flags: Flag = Flag.NONE
    note: str = ""  # the IR node it came from (disassembly / errors only; not encoded)

    def __post_init__(self):
        names = FIELDS[self.op]
        extra = set(self.fields) - set(names)
        if extra:
            raise ISAError(f"{self.op.name}: unknown fields {sorted(extra)}; it has {names}")
        for k, v in self.fields.items():
            if not (isinstance(v, int) and 0 <= v < 1 << 32):
                raise ISAError(f"{self.op.name}.{k} = {v!r} does not fit an unsigned 32-bit word")

    def __getitem__(self, name: str) -> int:
        return self.fields.get(name, 0)

    def words(self) -> list[int]:
        w0 = int(self.op) | int(self.epilogue) << 8 | int(self.flags) << 16
        return [w0] + [self.fields.get(n, 0) for n in FIELDS[self.op]] + [0] * (WORDS - 1 - len(FIELDS[self.op]))

    def text(self) -> str:
        ep = f".{self.epilogue.name.lower()}" if self.op == Opcode.LINEAR else ""
        fl = f" [{self.flags!s}]" if self.flags else ""
        args = ", ".join(f"{k}=0x{v:x}" if k in _ADDR_FIELDS else f"{k}={v}" for k, v in self.fields.items())
        return f"{self.op.name.lower()}{ep}{fl} {args}" + (f"  ; {self.note}" if self.note else "")


_ADDR_FIELDS = {"table", "dst", "ids", "src", "weight", "weights", "aux", "q", "cache", "cache_k", "cache_v"}


def pack_kn(k: int, n: int) -> int:
    if not (0 < k < 1 << 16 and 0 < n < 1 << 16):
        raise ISAError(f"K={k}, N={n}: each must fit 16 bits")
    return k | n << 16


def unpack_kn(v: int) -> tuple[int, int]:
    return v & 0xFFFF, v >> 16


def pack_scale(m: int, s: int) -> int:
    if not (0 <= m < 1 << 24 and 0 <= s < 1 << 8):
        raise ISAError(f"scale (m={m}, s={s}) does not fit m:24 | s:8")
    return m | s << 24


def unpack_scale(v: int) -> tuple[int, int]:
    return v & 0xFFFFFF, v >> 24


def pack_heads(hq: int, hkv: int, d: int) -> int:
    if not (0 < hq < 256 and 0 < hkv < 256 and 0 < d < 1 << 16):
        raise ISAError(f"heads={hq}, kv_heads={hkv}, head_dim={d} do not fit 8 | 8 | 16 bits")
    return hq | hkv << 8 | d << 16


def unpack_heads(v: int) -> tuple[int, int, int]:
    return v & 0xFF, (v >> 8) & 0xFF, v >> 16


@dataclass
class Program:
    """An instruction stream plus the facts the host needs (lm head placement, I/O buffers)."""

    instrs: list[Instr]
    meta: dict = field(default_factory=dict)

    def encode(self) -> bytes:
        return b"".join(struct.pack("<8I", *i.words()) for i in self.instrs)

    @staticmethod
    def decode(blob: bytes, meta: dict | None = None) -> "Program":
        if len(blob) % INSTR_BYTES:
            raise ISAError(f"program is {len(blob)} bytes, not a multiple of {INSTR_BYTES}")
        instrs = []
        for off in range(0, len(blob), INSTR_BYTES):
            w = struct.unpack_from("<8I", blob, off)
            try:
                op = Opcode(w[0] & 0xFF)
            except ValueError:
                raise ISAError(f"instruction {off // INSTR_BYTES}: unknown opcode 0x{w[0] & 0xFF:02x}") from None
            names = FIELDS[op]
            instrs.append(Instr(op, dict(zip(names, w[1:1 + len(names)])), Epilogue((w[0] >> 8) & 0xFF),
                                Flag(w[0] >> 16)))
        return Program(instrs, dict(meta or {}))

    def disassemble(self) -> str:
        return "\n".join(f"{i:4d}: {ins.text()}" for i, ins in enumerate(self.instrs))

    def to_json(self) -> str:
        return json.dumps({"meta": self.meta, "instrs": [
            {"op": i.op.name, "epilogue": i.epilogue.name, "flags": int(i.flags), "fields": i.fields,
             "note": i.note} for i in self.instrs]}, indent=1, sort_keys=True)


def pack_kvquant(bits: int, group_size: int, residual: int, sinks: int) -> int:
    for name, v in (("bits", bits), ("group_size", group_size), ("residual", residual), ("sinks", sinks)):
        if not 0 <= v < 256:
            raise ISAError(f"quantize-kv {name}={v} does not fit 8 bits")
    return bits | group_size << 8 | residual << 16 | sinks << 24


def unpack_kvquant(v: int) -> tuple[int, int, int, int]:
    return v & 0xFF, (v >> 8) & 0xFF, (v >> 16) & 0xFF, v >> 24
