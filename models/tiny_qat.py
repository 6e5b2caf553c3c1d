"""The tiny ternary QAT model used as a test fixture (tests/fixtures/tiny_qat.safetensors).

Trained by `python bench/train_tiny_qat.py [--steps 400] [--out tests/fixtures/tiny_qat.safetensors]`.

Model: transformers' BitNetForCausalLM architecture (relu^2 gated FFN, attention/FFN sub-norms,
RoPE, GQA), byte-level (vocab 256), hidden 128, 3 layers, 4 heads / 2 KV heads, FFN 256. Every
projection is a `QATLinear`: BitNet b1.58 fake quantization with straight-through estimators --
weights ternary absmean per tensor (T = clip(round(W / s), -1, 1), s = mean|W|), activations int8
per token absmax (x_q = clip(round(x * A), -128, 127), A = 127 / max|x|) -- computing exactly what
transformers' BitLinear (and ternc's integer contract, ir/semantics.py) computes:
y = (x_q @ T^T) / (A * (1 / s)). The embedding, norms and lm_head stay float.

Corpus (offline): the docstrings of a fixed list of Python standard-library modules (~195 KB of bytes;
the exact set varies by a few hundred bytes with the stdlib version and what else is imported);
held-out evaluation text: Python's LICENSE.txt (see `eval_ids`). CPU, a few minutes.

Checkpoint (safetensors, no pickle): `<linear>.ternary` int8 {-1,0,1} [N, K] and `<linear>.scale`
f32 [1] (s) for each projection, float tensors for the rest, the config in the metadata.

`load_torch()` rebuilds the fake-quant float model; `load_module()` builds the ternc IR module:
BitNetForCausalLM with transformers' BitLinear holding the packed ternary weights, exported with
ternc.frontend.torch_export.export_decoder (cached in .cache/), imported with ternc.load, and
`fold,raise-ternary,cse,dce` so the projections are TernaryLinear (int8 x ternary -> exact int32).
"""

from __future__ import annotations

import inspect
import json
import os
import sysconfig
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "tiny_qat.safetensors"
CONFIG = dict(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-5, rope_theta=10000.0,
              tie_word_embeddings=False)
CORPUS_MODULES = ["inspect", "collections", "functools", "itertools", "argparse", "pathlib", "typing", "json",
                  "re", "os", "subprocess", "threading", "asyncio", "logging", "unittest", "dataclasses",
                  "datetime", "decimal", "fractions", "statistics", "textwrap", "string", "shutil", "tempfile",
                  "zipfile", "tarfile", "csv", "sqlite3", "email", "http", "urllib", "socket", "select",
                  "heapq", "bisect", "random", "math", "abc", "contextlib", "enum", "pickle", "copy", "pprint"]


def corpus_bytes() -> bytes:
    import importlib

    parts = []
    for name in CORPUS_MODULES:
        mod = importlib.import_module(name)
        for obj in [mod] + [getattr(mod, a) for a in sorted(vars(mod)) if not a.startswith("_")]:
            documented = inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismodule(obj)
            doc = inspect.getdoc(obj) if documented else None
            if doc and (obj is mod or getattr(obj, "__module__", None) == name):
                parts.append(doc)
    return "\n\n".join(parts).encode("utf-8", "replace")


def eval_ids(n: int = 320) -> np.ndarray:
    """Held-out evaluation bytes: the first `n` bytes of Python's LICENSE.txt."""
    text = (Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt").read_bytes()
    return np.frombuffer(text[:n], dtype=np.uint8).astype(np.int64)


def _qat_linear_cls():
    import torch

    class QATLinear(torch.nn.Module):
        """BitNet b1.58 fake quantization with STE; inference math identical to BitLinear."""

        def __init__(self, in_features: int, out_features: int):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.empty(out_features, in_features))
            torch.nn.init.normal_(self.weight, std=in_features ** -0.5)

        def ternary(self):
            if getattr(self, "fixed", None) is not None:  # loaded from a checkpoint: (T, s) as stored
                return self.fixed
            s = self.weight.abs().mean().clamp(min=1e-5)
            w = self.weight / s
            t = w + (w.round().clamp(-1, 1) - w).detach()
            return t, s

        def forward(self, x):
            a = 127.0 / x.detach().abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
            xs = x * a
            xq = xs + (xs.round().clamp(-128, 127) - xs).detach()
            t, s = self.ternary()
            acc = torch.nn.functional.linear(xq, t)
            return acc / (a * (1.0 / s))

    return QATLinear


def build_qat(seed: int = 0):
    import torch
    from transformers import BitNetConfig, BitNetForCausalLM

    torch.manual_seed(seed)
    lm = BitNetForCausalLM(BitNetConfig(**CONFIG))
    QATLinear = _qat_linear_cls()
    for name, mod in list(lm.named_modules()):
        if isinstance(mod, torch.nn.Linear) and not name.endswith("lm_head"):
            lm.set_submodule(name, QATLinear(mod.in_features, mod.out_features))
    return lm


def linear_names(lm) -> list[str]:
    return [n for n, m in lm.named_modules() if type(m).__name__ == "QATLinear"]


def train(steps: int, seq: int = 128, batch: int = 8, lr: float = 3e-3, seed: int = 0, log=print):
    import torch

    torch.manual_seed(seed)
    data = torch.tensor(np.frombuffer(corpus_bytes(), dtype=np.uint8).astype(np.int64))
    lm = build_qat(seed).train()
    opt = torch.optim.AdamW(lm.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for step in range(steps):
        idx = torch.randint(0, data.numel() - seq - 1, (batch,), generator=gen)
        x = torch.stack([data[i:i + seq + 1] for i in idx.tolist()])
        out = lm(input_ids=x[:, :-1], labels=x[:, :-1].clone())
        loss = torch.nn.functional.cross_entropy(out.logits.reshape(-1, 256), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"step {step:4d}  loss {loss.item():.3f}  ({time.time() - t0:.0f} s)")
    return lm.eval(), data.numel()


def save_checkpoint(lm, path: Path, meta: dict) -> None:
    import torch
    from safetensors.torch import save_file

    tensors = {}
    qat = set(linear_names(lm))
    with torch.no_grad():
        for name in qat:
            mod = lm.get_submodule(name)
            t, s = mod.ternary()
            tensors[f"{name}.ternary"] = t.round().to(torch.int8).contiguous()
            tensors[f"{name}.scale"] = s.reshape(1).float().contiguous()
        for name, p in lm.state_dict().items():
            if not any(name.startswith(q + ".") for q in qat):
                tensors[name] = p.detach().float().contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"config": json.dumps(CONFIG), **{k: json.dumps(v) for k, v in meta.items()}}
    save_file(tensors, str(path), metadata=metadata)


def _read(path: Path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    return load_file(str(path)), meta


def load_torch(path: Path = FIXTURE):
    """The fake-quant float model (QATLinear) with the checkpoint's ternary weights."""
    import torch

    tensors, _ = _read(path)
    lm = build_qat()
    with torch.no_grad():
        for name in linear_names(lm):
            mod = lm.get_submodule(name)
            t, s = tensors[f"{name}.ternary"].float(), tensors[f"{name}.scale"][0]
            mod.weight.copy_(t * s)
            mod.fixed = (t, s)  # mean|T * s| != s (T has zeros): use the stored ternary weights and scale
        rest = {k: v for k, v in tensors.items() if not k.endswith((".ternary", ".scale"))}
        missing, unexpected = lm.load_state_dict(rest, strict=False)
        assert not unexpected and all(m.endswith(".weight") and any(m.startswith(q) for q in linear_names(lm))
                                      for m in missing), (missing, unexpected)
    return lm.eval()


def ternary_weights(path: Path = FIXTURE) -> dict[str, tuple[np.ndarray, float]]:
    """{linear name: (T int8 [N, K], s)} from the checkpoint."""
    tensors, _ = _read(path)
    return {k[: -len(".ternary")]: (tensors[k].numpy(), float(tensors[k[: -len(".ternary")] + ".scale"][0]))
            for k in tensors if k.endswith(".ternary")}


def build_bitlinear(path: Path = FIXTURE):
    """BitNetForCausalLM with transformers' BitLinear (packed ternary weights) from the checkpoint."""
    import torch
    from transformers import BitNetConfig, BitNetForCausalLM
    from transformers.integrations.bitnet import BitLinear, pack_weights

    from ternc.models.tiny_bitnet import _plain

    tensors, _ = _read(path)
    lm = BitNetForCausalLM(BitNetConfig(**CONFIG)).eval()
    with torch.no_grad():
        for name, mod in list(lm.named_modules()):
            if isinstance(mod, torch.nn.Linear) and not name.endswith("lm_head"):
                bl = BitLinear(mod.in_features, mod.out_features, bias=False, dtype=torch.float32)
                bl.weight.copy_(pack_weights(tensors[f"{name}.ternary"].to(torch.float32)))
                bl.weight_scale.fill_(1.0 / float(tensors[f"{name}.scale"][0]))
                bl.activation_quant = _plain(BitLinear.activation_quant, bl)
                bl.post_quant_process = _plain(BitLinear.post_quant_process, bl)
                lm.set_submodule(name, bl)
        rest = {k: v for k, v in tensors.items() if not k.endswith((".ternary", ".scale"))}
        lm.load_state_dict(rest, strict=False)
    return lm.eval()


def load_module(path: Path = FIXTURE, raise_ternary: bool = True):
    """The ternc IR module (decoder entry points); TernaryLinear projections when raise_ternary."""
    import hashlib

    import ternc

    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]
    cache = Path(os.environ.get("TERNC_TEST_CACHE", REPO / ".cache" / "test-models"))
    onnx_path = cache / f"tiny-qat-{digest}.onnx"
    if not onnx_path.exists():
        from ternc.frontend.torch_export import export_decoder

        cache.mkdir(parents=True, exist_ok=True)
        tmp = onnx_path.with_suffix(f".{os.getpid()}.tmp.onnx")
        export_decoder(build_bitlinear(path), tmp)
        os.replace(tmp, onnx_path)
    module = ternc.load(onnx_path)
    if raise_ternary:
        from ternc.passes.pipeline import compile as run_passes

        module, _ = run_passes(module, passes="fold,raise-ternary,cse,dce", report=False)
    return module
