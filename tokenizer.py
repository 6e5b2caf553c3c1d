"""Text in, text out: the model's own tokenizer, sampling and streaming decode.

The tokenizer comes from (first match): an explicit path (HF folder, tokenizer folder or .gguf);
an artifact's `tokenizer/` files (written by `ternc compile`, listed with sha256 in its manifest);
the source a module was imported from (`meta["source"]`: an HF folder or a GGUF file's metadata).
All offline, through transformers (`local_files_only`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

TOKENIZER_DIR = "tokenizer"


class TokenizerError(ValueError):
    pass


def _from_path(path: Path):
    from .frontend.hf import quiet_transformers

    quiet_transformers()
    from transformers import AutoTokenizer

    try:
        if path.suffix == ".gguf":
            return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise TokenizerError(f"{path}: cannot load a tokenizer from it: {e}") from None


def tokenizer_source(model) -> Path | None:
    """Where `model`'s tokenizer lives (None: the model carries none)."""
    art = getattr(model, "path", None)
    if art is not None and (Path(art) / TOKENIZER_DIR).is_dir():
        return Path(art) / TOKENIZER_DIR
    src = (getattr(model, "meta", None) or {}).get("source") or {}
    if src.get("kind") in ("hf", "gguf") and src.get("path") and Path(src["path"]).exists():
        return Path(src["path"])
    return None


def load_tokenizer(model=None, path: str | os.PathLike | None = None):
    """The tokenizer for `model` (a Module or artifact Runner), or from `path`."""
    where = Path(path) if path else tokenizer_source(model)
    if where is None:
        raise TokenizerError("this model carries no tokenizer (it was imported from ONNX); pass one with "
                             "--tokenizer HF_FOLDER|FILE.gguf, or use --prompt-ids")
    if not where.exists():
        raise TokenizerError(f"{where}: no such tokenizer file or folder")
    return _from_path(where)


def tokenizer_files(tok) -> dict[str, bytes]:
    """The files `save_pretrained` writes for `tok` ({relative name: bytes}), for an artifact."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        tok.save_pretrained(d)
        return {p.name: p.read_bytes() for p in sorted(Path(d).iterdir()) if p.is_file()}


def eos_ids(tok, model=None) -> list[int]:
    ids = set()
    if tok is not None and tok.eos_token_id is not None:
        ids.add(int(tok.eos_token_id))
    gen = ((getattr(model, "meta", None) or {}).get("source") or {}).get("eos_token_id")
    if isinstance(gen, int):
        ids.add(gen)
    elif isinstance(gen, list):
        ids.update(int(i) for i in gen)
    return sorted(ids)


def encode_prompt(tok, prompt: str | None = None, messages: list[dict] | None = None) -> list[int]:
    """Token ids of a plain prompt, or of chat `messages` through the tokenizer's chat template."""
    if messages is not None:
        if not getattr(tok, "chat_template", None):
            raise TokenizerError("this model's tokenizer has no chat template; use a plain prompt")
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return [int(i) for i in ids]
    return [int(i) for i in tok(prompt)["input_ids"]]


class StreamDecoder:
    """Incremental detokenization: feed ids, get the newly completed text (no split UTF-8 characters)."""

    def __init__(self, tok, skip_special_tokens: bool = True):
        self.tok, self.skip = tok, skip_special_tokens
        self.ids: list[int] = []
        self.emitted = ""

    def flush(self) -> str:
        """The text held back at the end (a character the last tokens left incomplete)."""
        text = self.tok.decode(self.ids, skip_special_tokens=self.skip)
        new = text[len(self.emitted):] if text.startswith(self.emitted) else ""
        self.emitted = text
        return new

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        text = self.tok.decode(self.ids, skip_special_tokens=self.skip)
        if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for the next token
            return ""
        new = text[len(self.emitted):] if text.startswith(self.emitted) else ""
        self.emitted = text
        return new


def pick_token(logits: np.ndarray, rng: np.random.Generator | None, temperature: float = 0.0, top_k: int = 0,
               top_p: float = 1.0) -> int:
    """Greedy (temperature 0) or sampled next token from a [vocab] logits row.

    Sampling: logits / temperature, keep the top_k largest (0: all), then the smallest set of most
    probable tokens whose probability reaches top_p, renormalize, draw with `rng` (seeded: repeatable).
    """
    logits = np.asarray(logits, dtype=np.float64).reshape(-1)
    if temperature <= 0:
        return int(np.argmax(logits))
    if rng is None:
        raise ValueError("sampling needs a random generator (pass seed=...)")
    z = logits / temperature
    order = np.argsort(-z, kind="stable")
    if top_k and top_k > 0:
        order = order[:top_k]
    zs = z[order]
    p = np.exp(zs - zs.max())
    p /= p.sum()
    if top_p < 1.0:
        keep = int(np.searchsorted(np.cumsum(p), top_p) + 1)
        order, p = order[:keep], p[:keep] / p[:keep].sum()
    return int(order[rng.choice(len(order), p=p)])


def check_sampling(temperature: float, top_k: int, top_p: float) -> None:
    if not np.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def generate_text(model, prompt: str | None = None, max_new_tokens: int = 16, messages: list[dict] | None = None,
                  tokenizer: Any = None, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                  seed: int | None = None, stream: Callable[[str], Any] | None = None,
                  stop_at_eos: bool = True) -> dict:
    """Generate text: prompt (or chat messages) -> {"text", "ids", "prompt_tokens", "finish_reason"}."""
    from .api import generate

    tok = tokenizer or load_tokenizer(model)
    ids = encode_prompt(tok, prompt, messages)
    dec = StreamDecoder(tok)
    pieces: list[str] = []

    def on_token(t: int):
        piece = dec.push(t)
        pieces.append(piece)
        if stream and piece:
            stream(piece)

    eos = eos_ids(tok, model) if stop_at_eos else []
    out = generate(model, [ids], max_new_tokens, eos_token_id=eos or None, callback=on_token,
                   temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    tail = dec.flush()
    if stream and tail:
        stream(tail)
    new = [int(t) for t in out[0, len(ids):]]
    finish = "stop" if new and new[-1] in eos else "length"
    return {"text": tok.decode(new, skip_special_tokens=True), "ids": new, "prompt_tokens": len(ids),
            "finish_reason": finish}
