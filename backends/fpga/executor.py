"""Functional executor of a kv260 program: numpy on the DDR image, ir/hw_numerics definitions only.

It runs the same instruction stream the sequencer runs, reading operands from and writing results to
a byte array laid out by the artifact's memory map, so it proves that the program + images compute
what the interpreter (after the kv260 pipeline) computes, token for token and logit for logit. It is
also the functional core of the dataflow simulator (issue 11): a timing model can wrap ``step``.
"""

from __future__ import annotations

import numpy as np

from ...ir import hw_numerics as hn
from .images import kv_row_words, ternary_from_image
from .isa import Epilogue, Flag, Instr, Opcode, Program, unpack_heads, unpack_kn, unpack_kvquant, unpack_scale
from .schedule import EngineConfig


class ExecError(RuntimeError):
    pass


def _span(n: int, group_size: int, residual: int, sinks: int) -> tuple[int, int]:
    """[start, stop) of the quantized tokens of an n-token cache (ir/kvquant.quantized_span)."""
    from ...ir.kvquant import KVQuantConfig, quantized_span

    return quantized_span(n, KVQuantConfig(bits=8, group_size=group_size, residual=residual, sinks=sinks))


class Executor:
    def __init__(self, program: Program, memmap: dict, consts: bytes, weights: bytes, lm_head: np.ndarray,
                 engine: EngineConfig, context: int):
        self.program, self.mm, self.engine, self.context = program, memmap, engine, context
        self.ddr = np.zeros(memmap["total_bytes"], np.uint8)
        for name, blob in (("program", program.encode()), ("consts", consts), ("weights", weights)):
            a = memmap["regions"][name]["addr"]
            self.ddr[a:a + len(blob)] = np.frombuffer(blob, np.uint8)
        self.lm_head = lm_head
        self._w: dict[tuple, np.ndarray] = {}
        self.counts: dict[str, int] = {}

    # -------------------------------------------------------------- memory views
    def i32(self, addr: int, n: int) -> np.ndarray:
        if addr % 4 or addr + 4 * n > self.ddr.size:
            raise ExecError(f"int32 access [{addr:#x}, +{4 * n}) outside DDR or unaligned")
        return self.ddr[addr:addr + 4 * n].view("<i4")

    def i16(self, addr: int, n: int) -> np.ndarray:
        return self.ddr[addr:addr + 2 * n].view("<i2")

    def rows(self, addr: int, n_rows: int, width: int) -> np.ndarray:
        return self.i32(addr, n_rows * width).reshape(n_rows, width)

    def ternary(self, addr: int, n: int, k: int) -> np.ndarray:
        key = (addr, n, k)
        if key not in self._w:
            c, tb = self.engine.columns, self.engine.tables
            beats = -(-n // c) * -(-(-(-k // 3)) // tb)
            img = self.ddr[addr:addr + beats * self.engine.image_beat_bytes]
            self._w[key] = ternary_from_image(img, n, k, self.engine)
        return self._w[key]

    # -------------------------------------------------------------- one call
    def run(self, ids, pos: int) -> np.ndarray:
        """Run the program for tokens `ids` at positions pos.. (KV cache holds pos tokens); returns the
        host LM head's logits [1, N, vocab]."""
        ids = np.asarray(ids, np.int64).reshape(-1)
        n = ids.size
        if n < 1 or pos + n > self.context:
            raise ExecError(f"{n} tokens at position {pos} exceed the compiled context {self.context}")
        self.i32(self.mm["symbols"]["ids:0"], n)[:] = ids
        self.n, self.pos = n, pos
        logits = None
        for ins in self.program.instrs:
            self.counts[ins.op.name] = self.counts.get(ins.op.name, 0) + 1
            if ins.op == Opcode.END:
                break
            out = self.step(ins)
            if out is not None:
                logits = out
        if logits is None:
            raise ExecError("program ended without an LM_HEAD")
        return logits

    def step(self, ins: Instr):
        n, pos = self.n, self.pos
        op = ins.op
        if op == Opcode.EMBED:
            w = ins["width"]
            ids = self.i32(ins["ids"], n).astype(np.int64)
            vocab = self.lm_head.shape[0]
            if (ids < 0).any() or (ids >= vocab).any():
                raise ExecError(f"token id out of range 0..{vocab - 1}")
            table = self.rows(ins["table"], vocab, w)
            self.rows(ins["dst"], n, w)[:] = table[ids]
        elif op == Opcode.RMSNORM:
            w = ins["width"]
            y = hn.rmsnorm_fx_consts(self.rows(ins["src"], n, w), self.i32(ins["weight"], w), ins["inv_k"],
                                     ins["eps_q"])
            self.rows(ins["dst"], n, w)[:] = y
        elif op == Opcode.LINEAR:
            k, nn = unpack_kn(ins["kn"])
            x = self.rows(ins["src"], n, k)
            y = hn.ternary_linear_fx_ws(x, self.ternary(ins["weights"], nn, k), *unpack_scale(ins["ws"]))
            ep = ins.epilogue
            if ep == Epilogue.RESIDUAL:
                y = hn.add_fx(y, self.rows(ins["aux"], n, nn))
            elif ep == Epilogue.ROPE:
                y = self._rope(y, ins["aux"], ins["aux2"] & 0xFFFF, ins["aux2"] >> 16)
            elif ep in (Epilogue.GATE_SILU, Epilogue.GATE_RELU2):
                up = hn.ternary_linear_fx_ws(x, self.ternary(ins["aux"], nn, k), *unpack_scale(ins["aux2"]))
                f = hn.silu_gate_fx if ep == Epilogue.GATE_SILU else hn.relu2_gate_fx
                y = f(y, up)
            self.rows(ins["dst"], n, nn)[:] = y
        elif op == Opcode.KV_APPEND:
            hkv, _, d = unpack_heads(ins["heads"])
            ctx = ins["context"]
            src = self.rows(ins["src"], n, hkv * d).reshape(n, hkv, d)
            cache = self.i32(ins["cache"], hkv * ctx * kv_row_words(d)).reshape(hkv, ctx, -1)[:, :, :d]
            cache[:, pos:pos + n, :] = hn.kv_from_fx(src).transpose(1, 0, 2)
            if ins["quant"]:
                bits, gs, residual, sinks = unpack_kvquant(ins["quant"])
                _, old_stop = _span(pos, gs, residual, sinks)
                start, new_stop = _span(pos + n, gs, residual, sinks)
                lo = max(old_stop, start)
                if new_stop > lo:
                    cache[:, :new_stop] = hn.kv_quant_span_fx(cache[:, :new_stop], lo, new_stop, bits, gs,
                                                              bool(ins.flags & Flag.VALUES))
        elif op == Opcode.ATTN:
            hq, hkv, d = unpack_heads(ins["heads"])
            ctx, sk = ins["context"], pos + n
            q = self.rows(ins["q"], n, hq * d).reshape(n, hq, d).transpose(1, 0, 2)
            k = self.i32(ins["cache_k"], hkv * ctx * kv_row_words(d)).reshape(hkv, ctx, -1)[:, :sk, :d]
            v = self.i32(ins["cache_v"], hkv * ctx * kv_row_words(d)).reshape(hkv, ctx, -1)[:, :sk, :d]
            q_pos = pos + np.arange(n) if ins.flags & Flag.CAUSAL else np.full(n, sk)
            out = hn.attention_fx(q, k, v, ins["scale"], q_pos, np.arange(sk))
            self.rows(ins["dst"], n, hq * d)[:] = out.transpose(1, 0, 2).reshape(n, hq * d)
        elif op == Opcode.ROPE:
            heads, _, d = unpack_heads(ins["heads"])
            x = self.rows(ins["src"], n, heads * d).copy()
            self.rows(ins["dst"], n, heads * d)[:] = self._rope(x, ins["table"], heads, d)
        elif op == Opcode.LM_HEAD:
            if not ins.flags & Flag.HOST:
                raise ExecError("LM_HEAD on the fabric is not implemented")
            x = hn.from_fx(self.rows(ins["src"], n, ins["width"])).reshape(1, n, ins["width"])
            return np.matmul(x, self.lm_head.T)   # the IR's Linear, on the ARM cores
        else:
            raise ExecError(f"unknown opcode {op!r}")
        return None

    def _rope(self, y: np.ndarray, table: int, heads: int, d: int) -> np.ndarray:
        """Rows [n, heads*d] at positions pos.. rotated pairwise (i, i + d/2) per head (rope_fx)."""
        n, h = y.shape[0], d // 2
        tab = self.i16(table + 2 * d * self.pos, n * d).reshape(n, d).astype(np.int64)
        c, s = tab[:, None, :h], tab[:, None, h:]
        yh = y.reshape(n, heads, d)
        y0, y1 = hn.rope_fx(yh[..., :h], yh[..., h:], c, s)
        return np.concatenate([y0, y1], axis=-1).reshape(n, heads * d)

    def generate(self, prompt_ids, max_new_tokens: int) -> tuple[np.ndarray, list[np.ndarray]]:
        """Greedy: prefill, then one decode call per token. Returns (tokens [1, P + n], logits per call)."""
        ids = [int(i) for i in np.asarray(prompt_ids).reshape(-1)]
        logits = [self.run(ids, 0)]
        pos = len(ids)
        out = list(ids)
        for i in range(max_new_tokens):
            nxt = int(np.argmax(logits[-1][0, -1]))
            out.append(nxt)
            if i == max_new_tokens - 1:
                break
            logits.append(self.run([nxt], pos))
            pos += 1
        return np.asarray(out, np.int64).reshape(1, -1), logits
