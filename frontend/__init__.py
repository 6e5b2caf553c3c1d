"""Frontends: ONNX (and torch via ONNX export) -> ternc IR."""

from .onnx_import import FrontendError, UnsupportedOpError, from_onnx, load_onnx

__all__ = ["FrontendError", "UnsupportedOpError", "from_onnx", "load_onnx", "from_torch"]


def from_torch(module, example_inputs, **kw):
    """Export a torch module with `torch.onnx.export(..., dynamo=True)` and import it."""
    from .torch_export import from_torch as _ft

    return _ft(module, example_inputs, **kw)
