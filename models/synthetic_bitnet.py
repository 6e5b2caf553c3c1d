"""Synthetic BitNet-shaped models with random ternary weights, built directly as ternc IR.

Shared by the benchmarks (bench/cpu_vs_llamacpp.py, bench/gpu_decode.py) and their tests. The
weights are deterministic per tensor name and seed, so llama.cpp's GGUF, ternc's module and the
torch peer (`TorchFP16`) hold the same matrices.

`Config` gives the shape; `FULL` is the 1bitLLM bitnet_b1_58-large layout (llama.cpp's "bitnet"
architecture), `TINY` a 2-layer smoke size, `B2B4T` BitNet-b1.58-2B4T's shape (GQA, ReLU^2).
`build_module(cfg)` returns an IR module with `prefill(input_ids[1, seq])` and
`decode(input_ids[1, S], past...)` over an explicit KV cache; like llama.cpp, prefill computes the
logits (and the last layer's FFN) for the last prompt token only.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Config:
    name: str
    layers: int
    hidden: int
    ffn: int
    heads: int
    vocab: int
    max_pos: int = 1024
    eps: float = 1e-5
    rope_theta: float = 10000.0
    act: str = "silu"
    kv_heads: int = 0  # 0: as many as query heads (no GQA)

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def n_kv(self) -> int:
        return self.kv_heads or self.heads

    @property
    def ternary_params(self) -> int:
        return self.layers * (sum(n * k for n, k in (proj_shape(self, p) for p in PROJ)))


FULL = Config("bitnet-b1.58-large", layers=24, hidden=1536, ffn=4096, heads=16, vocab=32002)
TINY = Config("bitnet-tiny", layers=2, hidden=256, ffn=768, heads=4, vocab=1024)
B2B4T = Config("bitnet-b1.58-2B4T-shaped", layers=30, hidden=2560, ffn=6912, heads=20, kv_heads=5, vocab=128256,
               max_pos=4096, rope_theta=500000.0, act="relu2")


# ------------------------------------------------------------------------------------------------
# Weights (deterministic per tensor name, shared by both engines)
# ------------------------------------------------------------------------------------------------
def _rng(name: str, seed: int) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little"))


def ternary(name: str, n: int, k: int, seed: int) -> np.ndarray:
    """Random ternary [N, K] (torch Linear layout), about 1/3 zeros."""
    return (_rng(name, seed).integers(0, 3, size=(n, k), dtype=np.int8) - 1).astype(np.int8)


def embedding(cfg: Config, seed: int) -> np.ndarray:
    return (_rng("token_embd", seed).standard_normal((cfg.vocab, cfg.hidden), dtype=np.float32) * 0.02).astype(np.float16)


W_SCALE = 0.02  # per-tensor weight scale (mean|W| of a real checkpoint is of this order)
PROJ = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def proj_shape(cfg: Config, proj: str) -> tuple[int, int]:
    """(N, K) of a projection."""
    if proj in ("attn_k", "attn_v"):
        return cfg.n_kv * cfg.head_dim, cfg.hidden
    if proj in ("attn_q", "attn_output"):
        return cfg.hidden, cfg.hidden
    if proj in ("ffn_gate", "ffn_up"):
        return cfg.ffn, cfg.hidden
    return cfg.hidden, cfg.ffn


# ------------------------------------------------------------------------------------------------
# ternc: the same model as an IR module with prefill/decode entry points
# ------------------------------------------------------------------------------------------------
def rope_tables(cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """HF/NeoX-layout cos/sin [max_pos, head_dim] (halves duplicated)."""
    d = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
    ang = np.arange(cfg.max_pos, dtype=np.float64)[:, None] * inv[None, :]
    ang = np.concatenate([ang, ang], axis=-1)
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


def build_module(cfg: Config, fmt: str = "i2", seed: int = 0, static_decode: int | None = 1):
    """ternc IR Module @bitnet with `prefill(input_ids[1, seq])` and `decode(input_ids[1, S], past...)`.

    static_decode: decode's token count S as a static dim (1: one token per step, as llama.cpp's
    decode graph; every shape but the cache length is then static), or None for a symbolic `seq`."""
    from ternc.ir import packing
    from ternc.ir.core import Const, Function, Module, Node, Value
    from ternc.ir.decoder import DecoderSpec, StateKind, StateTensor
    from ternc.ir.ops import Op
    from ternc.ir.types import DType, TensorType

    F32, I64 = DType.F32, DType.I64
    H, FF, NH, HD, NKV = cfg.hidden, cfg.ffn, cfg.heads, cfg.head_dim, cfg.n_kv
    consts: dict[str, Const] = {}

    def const(name, arr, dtype=None):
        consts[name] = Const.of(arr, dtype)
        return name

    embed = const("token_embd", embedding(cfg, seed))  # f16 [V, H], tied LM head (as the GGUF)
    cos, sin = rope_tables(cfg)
    const("rope_cos", cos)
    const("rope_sin", sin)
    ones_h = const("ones_h", np.ones(H, np.float32))
    ones_f = const("ones_ff", np.ones(FF, np.float32))
    const("w_scale", np.array(W_SCALE, np.float32))
    const("shape_heads", np.array([0, 0, NH, HD], np.int64))
    const("shape_kv_heads", np.array([0, 0, NKV, HD], np.int64))
    const("shape_hidden", np.array([0, 0, H], np.int64))
    const("c0", np.array(0, np.int64))
    const("c1", np.array(1, np.int64))
    const("last_start", np.array([-1], np.int64))
    const("last_end", np.array([2**62], np.int64))
    const("axis1", np.array([1], np.int64))
    weights = {}
    for i in range(cfg.layers):
        for p in PROJ:
            n, k = proj_shape(cfg, p)
            w_t = ternary(f"blk.{i}.{p}", n, k, seed)
            if fmt == "t2":
                weights[(i, p)] = [const(f"blk.{i}.{p}", w_t, DType.T2)]
            else:
                parts = packing.pack(w_t, fmt)
                weights[(i, p)] = [const(f"blk.{i}.{p}.{nm}", a) for nm, a in parts.items()]

    def build(decode: bool) -> Function:
        nodes: list[Node] = []
        S = static_decode if decode and static_decode else "seq"  # decode's token count
        cnt = [0]

        def val(shape, dtype=F32, name=None):
            cnt[0] += 1
            return Value(name or f"v{cnt[0]}", TensorType(dtype, tuple(shape)))

        def op(o, inputs, shape, dtype=F32, name=None, **attrs):
            v = val(shape, dtype, name)
            nodes.append(Node.make(o, inputs, [v], **attrs))
            return v.name

        def lin(x, i, p, shape_lead):
            n, k = proj_shape(cfg, p)
            return op(Op.TernaryLinear, [x, "w_scale", *weights[(i, p)]], [*shape_lead, n], format=fmt, k=k, n=n)

        params = [Value("input_ids", TensorType(I64, (1, S)))]
        if decode:
            for i in range(cfg.layers):
                params += [Value(f"past.{i}.key", TensorType(F32, (1, NKV, "past", HD))),
                           Value(f"past.{i}.value", TensorType(F32, (1, NKV, "past", HD)))]
        # positions: Range(past_len, past_len + seq)
        seq1 = op(Op.Shape, ["input_ids"], [1], I64, start=1, end=2)
        seq = op(Op.Squeeze, [seq1], [], I64)
        if decode:
            pl1 = op(Op.Shape, ["past.0.key"], [1], I64, start=2, end=3)
            start = op(Op.Squeeze, [pl1], [], I64)
        else:
            start = "c0"
        limit = op(Op.Add, [start, seq], [], I64)
        pos = op(Op.Range, [start, limit, "c1"], [S], I64)
        cos_t = op(Op.Gather, ["rope_cos", pos], [S, HD], axis=0)
        sin_t = op(Op.Gather, ["rope_sin", pos], [S, HD], axis=0)
        h = op(Op.Gather, [embed, "input_ids"], [1, S, H], DType.F16, axis=0)
        h = op(Op.Cast, [h], [1, S, H], to=F32.value)
        present = []
        lead = [1, S]
        for i in range(cfg.layers):
            last = i == cfg.layers - 1
            x = op(Op.RMSNorm, [h, ones_h], [1, S, H], eps=cfg.eps)
            qkv = []
            for p in ("attn_q", "attn_k", "attn_v"):
                t = lin(x, i, p, lead)
                nh = NH if p == "attn_q" else NKV
                t = op(Op.Reshape, [t, "shape_heads" if p == "attn_q" else "shape_kv_heads"], [1, S, nh, HD])
                t = op(Op.Transpose, [t], [1, nh, S, HD], perm=(0, 2, 1, 3))
                qkv.append(t)
            q = op(Op.RoPE, [qkv[0], cos_t, sin_t], [1, NH, S, HD])
            k = op(Op.RoPE, [qkv[1], cos_t, sin_t], [1, NKV, S, HD])
            ins = [q, k, qkv[2]] + ([f"past.{i}.key", f"past.{i}.value"] if decode else [])
            outs = [val([1, NH, S, HD]), val([1, NKV, "?", HD], name=f"present.{i}.key"),
                    val([1, NKV, "?", HD], name=f"present.{i}.value")]
            nodes.append(Node.make(Op.Attention, ins, outs, scale=1.0 / float(np.sqrt(HD)), causal=1))
            present += [outs[1].name, outs[2].name]
            a = op(Op.Transpose, [outs[0].name], [1, S, NH, HD], perm=(0, 2, 1, 3))
            a = op(Op.Reshape, [a, "shape_hidden"], [1, S, H])
            a = op(Op.RMSNorm, [a, ones_h], [1, S, H], eps=cfg.eps)
            o = lin(a, i, "attn_output", lead)
            if last and not decode:  # like llama.cpp: only the output token goes on (inp_out_ids)
                o = op(Op.Slice, [o, "last_start", "last_end", "axis1"], [1, 1, H])
                h = op(Op.Slice, [h, "last_start", "last_end", "axis1"], [1, 1, H])
                lead = [1, 1]
            h = op(Op.Add, [h, o], [*lead, H])
            x = op(Op.RMSNorm, [h, ones_h], [*lead, H], eps=cfg.eps)
            g = lin(x, i, "ffn_gate", lead)
            u = lin(x, i, "ffn_up", lead)
            m = op(Op.GatedAct, [g, u], [*lead, FF], act=cfg.act)
            m = op(Op.RMSNorm, [m, ones_f], [*lead, FF], eps=cfg.eps)
            d = lin(m, i, "ffn_down", lead)
            h = op(Op.Add, [h, d], [*lead, H])
        x = op(Op.RMSNorm, [h, ones_h], [*lead, H], eps=cfg.eps)
        logits = op(Op.Linear, [x, embed], [*lead, cfg.vocab], name="logits")
        return Function("decode" if decode else "prefill", tuple(params), tuple(nodes), (logits, *present))

    kv = tuple((StateTensor(f"past.{i}.key", f"present.{i}.key", StateKind.KEY, i),
                StateTensor(f"past.{i}.value", f"present.{i}.value", StateKind.VALUE, i)) for i in range(cfg.layers))
    spec = DecoderSpec("prefill", "decode", "input_ids", "logits", kv, kv_heads=NKV, head_dim=HD, kv_dtype="f32")
    meta = {"decoder": spec.to_meta(), "bench_config": asdict(cfg)}
    return Module("bitnet", (build(False), build(True)), consts, meta)


class TorchFP16:
    """The same graph as build_module in torch fp16; decode over a static KV cache (graph-capturable)."""

    def __init__(self, cfg: Config, seed: int, max_len: int, device: str = "cuda", dtype: str = "float16"):
        import torch

        self.torch, self.cfg, dev = torch, cfg, torch.device(device)
        self.dev, self.dt = dev, getattr(torch, dtype)
        self.embed = torch.from_numpy(embedding(cfg, seed)).to(dev).to(self.dt)  # f16 [V, H], tied LM head
        self.w = {}
        for i in range(cfg.layers):
            for p in PROJ:
                n, k = proj_shape(cfg, p)
                self.w[(i, p)] = torch.from_numpy(ternary(f"blk.{i}.{p}", n, k, seed)).to(dev).to(self.dt)
        d = cfg.head_dim
        inv = 1.0 / (cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
        ang = np.arange(cfg.max_pos, dtype=np.float64)[:, None] * inv[None, :]
        ang = np.concatenate([ang, ang], axis=-1)
        self.cos = torch.from_numpy(np.cos(ang).astype(np.float32)).to(dev).to(self.dt)
        self.sin = torch.from_numpy(np.sin(ang).astype(np.float32)).to(dev).to(self.dt)
        self.max_len = max_len
        shape = (1, cfg.n_kv, max_len, d)
        self.k = [torch.zeros(shape, dtype=self.dt, device=dev) for _ in range(cfg.layers)]
        self.v = [torch.zeros(shape, dtype=self.dt, device=dev) for _ in range(cfg.layers)]
        self.graph = None
        self._fwd = self.forward  # the step function prefill / decode / capture call

    def compiled_twin(self, mode: str | None = None, backend: str = "inductor") -> "TorchFP16":
        """The same model (weights shared, KV cache of its own) whose forward is `torch.compile`d
        (static shapes: one graph for the prompt length, one for a decode step); `capture` then
        records the compiled step as a CUDA graph -- the compiled fp16 peer."""
        import copy

        twin = copy.copy(self)
        twin.k = [self.torch.zeros_like(t) for t in self.k]
        twin.v = [self.torch.zeros_like(t) for t in self.v]
        twin.graph = None
        twin._fwd = self.torch.compile(twin.forward, dynamic=False, mode=mode, backend=backend)
        return twin

    def weight_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in [*self.w.values(), self.embed])

    def _rms(self, x):
        xf = x.float()
        return (xf * self.torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.cfg.eps)).to(self.dt)

    def _lin(self, x, i, p):
        # BitNet activation quantization (per token absmax -> int8), then the fp16 GEMM on {-1,0,1}.
        # x_q / 128 is exact in fp16 and keeps the fp16 output in range.
        amax = x.float().abs().amax(-1, keepdim=True).clamp_min(1e-5)
        xq = (x.float() * (127.0 / amax)).round().clamp(-128, 127)
        y = self.torch.nn.functional.linear((xq / 128.0).to(self.dt), self.w[(i, p)])
        return (y.float() * (amax * (128.0 / 127.0) * W_SCALE)).to(self.dt)

    def _rope(self, x, cos, sin):
        h = x.shape[-1] // 2
        rot = self.torch.cat([-x[..., h:], x[..., :h]], dim=-1)
        return x * cos + rot * sin

    def forward(self, ids, pos, mask):
        """ids [1, S] int64 at absolute positions pos [S]; mask [S, max_len] additive. Writes K/V into the cache."""
        F, cfg = self.torch.nn.functional, self.cfg
        S, NH, NKV, HD = ids.shape[1], cfg.heads, cfg.n_kv, cfg.head_dim
        cos, sin = self.cos[pos][None, None], self.sin[pos][None, None]
        h = self.embed[ids]
        for i in range(cfg.layers):
            x = self._rms(h)
            q = self._lin(x, i, "attn_q").view(1, S, NH, HD).transpose(1, 2)
            k = self._lin(x, i, "attn_k").view(1, S, NKV, HD).transpose(1, 2)
            v = self._lin(x, i, "attn_v").view(1, S, NKV, HD).transpose(1, 2)
            q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
            self.k[i].index_copy_(2, pos, k)
            self.v[i].index_copy_(2, pos, v)
            a = F.scaled_dot_product_attention(q, self.k[i], self.v[i], attn_mask=mask[None, None], enable_gqa=True)
            a = self._rms(a.transpose(1, 2).reshape(1, S, cfg.hidden))
            h = h + self._lin(a, i, "attn_output")
            x = self._rms(h)
            g, u = self._lin(x, i, "ffn_gate"), self._lin(x, i, "ffn_up")
            m = self._rms(F.relu(g).square() * u)
            h = h + self._lin(m, i, "ffn_down")
        return F.linear(self._rms(h[:, -1:]), self.embed)[0, -1]

    def mask(self, pos):
        t = self.torch
        j = t.arange(self.max_len, device=self.dev)
        return t.where(j[None, :] <= pos[:, None], 0.0, float("-inf")).to(self.dt)

    def prefill(self, ids):
        t = self.torch
        pos = t.arange(len(ids), device=self.dev)
        return self._fwd(t.tensor([list(ids)], device=self.dev), pos, self.mask(pos))

    def decode_eager(self, tok, p):
        t = self.torch
        pos = t.tensor([p], device=self.dev)
        return self._fwd(t.tensor([[tok]], device=self.dev), pos, self.mask(pos))

    def capture(self):
        """One decode step as a CUDA graph over static input buffers (token, position, mask)."""
        t = self.torch
        self.g_tok = t.zeros((1, 1), dtype=t.int64, device=self.dev)
        self.g_pos = t.zeros((1,), dtype=t.int64, device=self.dev)
        self.g_mask = self.mask(self.g_pos)
        s = t.cuda.Stream()
        s.wait_stream(t.cuda.current_stream())
        with t.cuda.stream(s):
            for _ in range(2):
                self._fwd(self.g_tok, self.g_pos, self.g_mask)
        t.cuda.current_stream().wait_stream(s)
        self.graph = t.cuda.CUDAGraph()
        with t.cuda.graph(self.graph):
            self.g_out = self._fwd(self.g_tok, self.g_pos, self.g_mask)

    def decode_graph(self, tok, p):
        self.g_tok.fill_(tok)
        self.g_pos.fill_(p)
        self.g_mask.copy_(self.mask(self.g_pos))
        self.graph.replay()
        return self.g_out

    def generate(self, ids, steps, mode, forced=None):
        """Greedy (or teacher-forced on `forced`): tokens, prefill logits, s prefill, s per step, argmaxes."""
        t = self.torch
        t.cuda.synchronize()
        t0 = time.perf_counter()
        first = self.prefill(ids)
        tok = int(first.argmax())
        t_pre = time.perf_counter() - t0
        step = self.decode_graph if mode == "graph" else self.decode_eager
        toks, dts, argmaxes = [tok], [], [tok]
        p = len(ids)
        for s in range(steps):
            feed = forced[s] if forced is not None else tok
            t0 = time.perf_counter()
            lg = step(feed, p)
            tok = int(lg.argmax())
            dts.append(time.perf_counter() - t0)
            p += 1
            toks.append(tok)
            argmaxes.append(tok)
        return toks, first.float().cpu().numpy(), t_pre, dts, argmaxes
