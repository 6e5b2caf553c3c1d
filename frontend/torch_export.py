"""torch -> ONNX (dynamo exporter) -> ternc IR, including Hugging Face decoder LMs.

`export_decoder` wraps a HF causal LM so the export has plain tensor inputs/outputs: `input_ids`
-> `logits`, and with `with_past=True` also `past_key_values.{i}.key/value` -> `present.{i}.key/value`
(dynamic `seq` and `past` dims). `export_decoder_torchscript` does the same through the legacy
TorchScript exporter, with an `attention_mask` input as such exports have.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path

import numpy as np


@contextlib.contextmanager
def _quiet():
    """The exporter's chatter (its progress prints, torchvision 'not installed' log lines, deprecation
    warnings) stays out of normal runs; `ternc --verbose` sets TERNC_VERBOSE=1 to see it."""
    if os.environ.get("TERNC_VERBOSE"):
        yield
        return
    import logging
    import warnings

    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, lv in zip(loggers, levels):
                lg.setLevel(lv)


def _wrappers():
    import torch

    class LogitsOnly(torch.nn.Module):
        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def forward(self, input_ids):
            return self.lm(input_ids=input_ids, use_cache=False).logits

    class WithPast(torch.nn.Module):
        def __init__(self, lm, n_layers):
            super().__init__()
            self.lm = lm
            self.n_layers = n_layers

        def forward(self, input_ids, *past):
            from transformers.cache_utils import DynamicCache

            cache = DynamicCache(config=self.lm.config)
            for i in range(self.n_layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
            out = self.lm(input_ids=input_ids, past_key_values=cache, use_cache=True)
            res = [out.logits]
            for i in range(self.n_layers):
                layer = out.past_key_values.layers[i]
                res += [layer.keys, layer.values]
            return tuple(res)

    class MaskedLogits(torch.nn.Module):
        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def forward(self, input_ids, attention_mask):
            return self.lm(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    class MaskedWithPast(WithPast):
        def forward(self, input_ids, attention_mask, *past):
            from transformers.cache_utils import DynamicCache

            cache = DynamicCache(config=self.lm.config)
            for i in range(self.n_layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
            out = self.lm(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache, use_cache=True)
            res = [out.logits]
            for i in range(self.n_layers):
                layer = out.past_key_values.layers[i]
                res += [layer.keys, layer.values]
            return tuple(res)

    return LogitsOnly, WithPast, MaskedLogits, MaskedWithPast


def _past_shape(cfg):
    kvh = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return kvh, hd


def export_decoder_torchscript(lm, path: str | os.PathLike, with_past: bool = False, example_len: int = 7,
                               opset: int = 17) -> Path:
    """Export a HF causal LM with the legacy TorchScript exporter (`dynamo=False`), as older tools
    and hubs did: inputs `input_ids` and `attention_mask` [batch, past + seq] (dims named through
    `dynamic_axes`), with `with_past` also `past_key_values.{i}.key/value` -> `present.{i}.key/value`."""
    import torch

    _, _, MaskedLogits, MaskedWithPast = _wrappers()
    cfg = lm.config
    lm = lm.eval()
    ids = torch.randint(0, cfg.vocab_size, (1, example_len), generator=torch.Generator().manual_seed(0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet(), torch.no_grad():
        if not with_past:
            mask = torch.ones(1, example_len, dtype=torch.int64)
            torch.onnx.export(MaskedLogits(lm).eval(), (ids, mask), str(path), dynamo=False, opset_version=opset,
                              input_names=["input_ids", "attention_mask"], output_names=["logits"],
                              dynamic_axes={"input_ids": {0: "batch", 1: "seq"},
                                            "attention_mask": {0: "batch", 1: "seq"},
                                            "logits": {0: "batch", 1: "seq"}})
        else:
            n = cfg.num_hidden_layers
            kvh, hd = _past_shape(cfg)
            past = [torch.randn(1, kvh, 3, hd) for _ in range(2 * n)]
            mask = torch.ones(1, 3 + example_len, dtype=torch.int64)
            kv_names = [f"past_key_values.{i}.{t}" for i in range(n) for t in ("key", "value")]
            outs = ["logits"] + [f"present.{i}.{t}" for i in range(n) for t in ("key", "value")]
            axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "past_seq"},
                    "logits": {0: "batch", 1: "seq"}}
            axes.update({k: {0: "batch", 2: "past"} for k in kv_names})
            axes.update({k: {0: "batch", 2: "past_seq"} for k in outs[1:]})
            torch.onnx.export(MaskedWithPast(lm, n).eval(), (ids, mask, *past), str(path), dynamo=False,
                              opset_version=opset, input_names=["input_ids", "attention_mask"] + kv_names,
                              output_names=outs, dynamic_axes=axes)
    return path


def export_decoder(lm, path: str | os.PathLike, with_past: bool = False, example_len: int = 7,
                   opset: int | None = None) -> Path:
    """Export a HF causal LM (LlamaForCausalLM, BitNetForCausalLM, ...) to ONNX with dynamic seq."""
    import torch

    LogitsOnly, WithPast, _, _ = _wrappers()
    cfg = lm.config
    lm = lm.eval()
    ids = torch.randint(0, cfg.vocab_size, (1, example_len), generator=torch.Generator().manual_seed(0))
    seq = torch.export.Dim("seq", min=1, max=4096)
    kw = {"opset_version": opset} if opset else {}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet(), torch.no_grad():
        if not with_past:
            prog = torch.onnx.export(LogitsOnly(lm).eval(), (ids,), dynamo=True, dynamic_shapes=({1: seq},),
                                     input_names=["input_ids"], output_names=["logits"], **kw)
        else:
            n = cfg.num_hidden_layers
            kvh, hd = _past_shape(cfg)
            past = [torch.randn(1, kvh, 3, hd) for _ in range(2 * n)]
            pl = torch.export.Dim("past", min=0, max=4096)
            names = ["input_ids"] + [f"past_key_values.{i}.{t}" for i in range(n) for t in ("key", "value")]
            outs = ["logits"] + [f"present.{i}.{t}" for i in range(n) for t in ("key", "value")]
            prog = torch.onnx.export(WithPast(lm, n).eval(), (ids, *past), dynamo=True,
                                     dynamic_shapes=({1: seq}, tuple({2: pl} for _ in range(2 * n))),
                                     input_names=names, output_names=outs, **kw)
        prog.save(str(path))
    return path


def from_torch(module, example_inputs, dynamic_shapes=None, input_names=None, output_names=None,
               decoder: bool = True):
    """Export `module(*example_inputs)` with torch.onnx.export(dynamo=True) and import it (as
    `ternc.load` does: decoder LMs get prefill/decode entry points unless decoder=False)."""
    import torch

    from .decoder import with_decoder
    from .onnx_import import from_onnx

    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    with tempfile.TemporaryDirectory() as d, _quiet(), torch.no_grad():
        p = os.path.join(d, "model.onnx")
        prog = torch.onnx.export(module, example_inputs, dynamo=True, dynamic_shapes=dynamic_shapes,
                                 input_names=input_names, output_names=output_names)
        prog.save(p)
        module = from_onnx(p)
    return with_decoder(module) if decoder else module


def torch_greedy(lm, prompt_ids, max_new_tokens: int) -> np.ndarray:
    """Reference greedy decoding with the torch model (full recompute, no sampling)."""
    import torch

    ids = torch.as_tensor(np.asarray(prompt_ids, dtype=np.int64)).reshape(1, -1)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = lm(input_ids=ids, use_cache=False).logits
            ids = torch.cat([ids, logits[:, -1:].argmax(-1)], dim=1)
    return ids.numpy()
