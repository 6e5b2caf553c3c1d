"""ternc IR: types, ops, modules, text form, verifier and the reference interpreter."""

from .core import Const, Function, Module, Node, Value, prune_constants
from .interp import Interpreter, InterpError, interpret
from .ops import Op
from .text import ParseError, parse, print_module
from .types import DType, TensorType
from .verify import VerifyError, verify

__all__ = [
    "Const", "DType", "Function", "InterpError", "Interpreter", "Module", "Node", "Op", "ParseError",
    "TensorType", "Value", "VerifyError", "interpret", "parse", "print_module", "prune_constants", "verify",
]
