"""ternc: a compiler stack for ternary (1.58-bit) language models.

ONNX -> ternc IR -> passes (ternary packing, KV-cache quantization, token pruning, fusion) ->
TVM CPU/CUDA artifacts or an Amaranth TLMM FPGA accelerator.
"""

# pytest collects the repository root (this file's folder) as a package and may import this file
# outside the `ternc` package (e.g. from a checkout whose folder name is not an identifier): then
# there is no parent package to import from, and nothing needs to be set up.
if __package__:
    from .version import __version__  # noqa: E402
    from .api import compile, generate, generate_text, interpret, load, load_artifact, save  # noqa: E402
    from .tokenizer import load_tokenizer  # noqa: E402


def __getattr__(name):
    # Subpackages load on first use, so `ternc --version` (and any light import) does not import onnx.
    if name in ("frontend", "ir", "passes", "backends", "hw", "sim", "models"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'ternc' has no attribute {name!r}")


__all__ = ["compile", "generate", "generate_text", "interpret", "load", "load_artifact", "load_tokenizer", "save",
           "__version__"]
