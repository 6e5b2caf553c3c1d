"""IR verifier: structural invariants, reported with the offending function and node."""

from __future__ import annotations

from .core import Function, Module, Node
from .decoder import DecoderSpec, DecoderSpecError
from .enums import KVPolicy
from .ops import Op, signature

# Attributes a node of these ops must carry.
REQUIRED_ATTRS: dict[Op, tuple[str, ...]] = {
    Op.Cast: ("to",),
    Op.Transpose: (),
    Op.TernaryMatMul: ("format", "k", "n"),
    Op.TernaryLinear: ("format", "k", "n"),
    Op.Attention: ("scale", "causal"),
    Op.RMSNorm: ("eps",),
    Op.LayerNorm: ("eps",),
    Op.GatedAct: ("act",),
    Op.KVQuantAttention: ("scale", "bits"),
    Op.KVEvict: ("policy", "scale", "causal"),
    Op.FusedLinear: ("epilogue", "linear", "linear_operands"),
}


class VerifyError(ValueError):
    pass


def _fail(fn: Function, node: Node | None, msg: str):
    where = f"@{fn.name}" + (f", node {node.label}" if node is not None else "")
    raise VerifyError(f"{where}: {msg}")


# KVEvict policies: (required attrs, inputs min..max, allowed output counts); see ir/interp.py _kv_evict.
_KVEVICT = {
    KVPolicy.STREAMING: (("budget", "sinks"), 3, 5, (3,)),
    KVPolicy.H2O: (("budget", "sinks", "recent"), 3, 6, (4,)),
    KVPolicy.LAZYLLM: (("layer", "schedule"), 7, 8, (4, 6)),
}


def _check_kvevict(fn: Function, node: Node) -> None:
    policy = node.attr("policy")
    if policy not in _KVEVICT:
        _fail(fn, node, f"unknown KVEvict policy {policy!r}; valid: {', '.join(p.value for p in _KVEVICT)}")
    attrs, lo, hi, n_outs = _KVEVICT[policy]
    for a in attrs:
        if node.attr(a) is None:
            _fail(fn, node, f"KVEvict{{policy={policy}}} needs attribute '{a}'")
    if not lo <= len(node.inputs) <= hi:
        _fail(fn, node, f"KVEvict{{policy={policy}}} takes {lo}..{hi} inputs, got {len(node.inputs)}")
    if policy == KVPolicy.LAZYLLM:
        schedule, layer = node.attr("schedule"), node.attr("layer")
        if not isinstance(schedule, tuple) or not isinstance(layer, int) or not 0 <= layer < len(schedule):
            _fail(fn, node, f"lazyllm needs a schedule list and 0 <= layer < len(schedule), got layer={layer!r}")
        if not node.inputs[6]:
            _fail(fn, node, "lazyllm needs the row positions (input #6)")
        n_outs = (4,) if layer + 1 == len(schedule) else (6,)
    if len(node.outputs) not in n_outs:
        _fail(fn, node, f"KVEvict{{policy={policy}}} here has {' or '.join(map(str, n_outs))} outputs, "
                        f"got {len(node.outputs)}")


def verify_function(fn: Function, module: Module) -> None:
    defined: set[str] = set()
    for p in fn.params:
        if p.name in defined:
            _fail(fn, None, f"parameter %{p.name} declared twice")
        if p.name in module.constants:
            _fail(fn, None, f"parameter %{p.name} shadows constant @{p.name}")
        defined.add(p.name)
    for node in fn.nodes:
        sig = signature(node.op)
        n_in = len(node.inputs)
        if n_in < sig.min_in or (sig.max_in >= 0 and n_in > sig.max_in):
            want = f"{sig.min_in}..{sig.max_in}" if sig.max_in >= 0 else f">= {sig.min_in}"
            _fail(fn, node, f"{node.op.value} takes {want} inputs, got {n_in}")
        if sig.n_out >= 0 and len(node.outputs) != sig.n_out:
            _fail(fn, node, f"{node.op.value} has {sig.n_out} outputs, got {len(node.outputs)}")
        if not node.outputs:
            _fail(fn, node, "node has no outputs")
        for i, name in enumerate(node.inputs):
            if not name:
                if i < sig.min_in:
                    _fail(fn, node, f"required input #{i} is missing")
                continue
            if name not in defined and name not in module.constants:
                _fail(fn, node, f"input #{i} %{name} is not defined before use")
        for a in REQUIRED_ATTRS.get(node.op, ()):
            if node.attr(a) is None:
                _fail(fn, node, f"missing required attribute '{a}'")
        if node.op == Op.KVEvict:
            _check_kvevict(fn, node)
        for o in node.outputs:
            if o.name in defined or o.name in module.constants:
                _fail(fn, node, f"value %{o.name} is defined twice")
            defined.add(o.name)
    for r in fn.results:
        if r not in defined and r not in module.constants:
            _fail(fn, None, f"result %{r} is not defined")


def verify(module: Module) -> Module:
    """Check every function; returns the module so it can be chained. Raises VerifyError."""
    names = [f.name for f in module.functions]
    if len(set(names)) != len(names):
        raise VerifyError(f"module @{module.name}: duplicate function names {names}")
    if not module.functions:
        raise VerifyError(f"module @{module.name}: no functions")
    for fn in module.functions:
        verify_function(fn, module)
    try:
        dec = DecoderSpec.of(module)
    except DecoderSpecError as e:
        raise VerifyError(f"module @{module.name}: {e}") from None
    if dec:
        for key, name in (("prefill", dec.prefill), ("decode", dec.decode)):
            if name not in names:
                raise VerifyError(f"module @{module.name}: decoder entry '{key}' names missing function @{name}")
    return module
