"""Decoder-LM structure: explicit KV-cache state with `prefill` and `decode` entry points.

After raising, a decoder LM's `main` holds Attention nodes. `make_decoder` derives:

  @prefill(input_ids[1, seq])                      -> (logits, present.{i}.key, present.{i}.value ...)
  @decode(input_ids[1, seq], past.{i}.key, past.{i}.value ...)
                                                   -> (logits, present.{i}.key, present.{i}.value ...)

KV tensors are [batch, kv_heads, tokens, head_dim]. For exports without past inputs, decode's
attention concatenates the past, and rotary positions are offset by the past length (the Range
that feeds RoPE's cos/sin starts at past_len). For exports with explicit past inputs, decode is the
exported graph and prefill is it with empty past. `meta["decoder"]` records the names
(`ir.decoder.DecoderSpec`).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..ir.core import Const, Function, Module, Node, Value
from ..ir.core import dce_function as dce
from ..ir.decoder import DecoderSpec, StateKind, StateTensor
from ..ir.ops import Op
from ..ir.types import DType, TensorType
from .onnx_import import FrontendError


def _rope_position_ranges(fn: Function) -> list[Node]:
    """Range nodes whose values flow into a RoPE's cos/sin operands (or, where the rotation stayed in
    primitive form, into the Cos/Sin of the rotary table)."""
    prod = fn.producers()
    seen, ranges = set(), []
    stack = [i for n in fn.nodes if n.op == Op.RoPE for i in n.inputs[1:]]
    stack += [n.inputs[0] for n in fn.nodes if n.op in (Op.Cos, Op.Sin)]
    while stack:
        v = stack.pop()
        if v in seen or v not in prod:
            continue
        seen.add(v)
        n = prod[v]
        if n.op == Op.Range:
            ranges.append(n)
            continue
        stack.extend(i for i in n.inputs if i)
    return ranges


def _embedding_rows(fn: Function, module: Module, ids: str) -> int | None:
    """Rows of the constant table the token ids index (the vocabulary size), if a Gather does that."""
    for n in fn.nodes:
        if n.op == Op.Gather and len(n.inputs) >= 2 and n.inputs[1] == ids and n.inputs[0] in module.constants \
                and int(n.attr("axis", 0) or 0) == 0:
            shape = module.constants[n.inputs[0]].type.shape
            if shape and isinstance(shape[0], int):
                return int(shape[0])
    return None


def _kv_shapes(module: Module, main: Function, attn: list[Node], ids: Value) -> dict[str, tuple[int, int]]:
    """(kv heads, head dim) of each attention's key input. From the declared types where they are
    static; else (TorchScript exports declare `unk__N` dims) measured by running the graph up to the
    keys on one token, since the KV-cache state needs them static."""
    types = main.value_types()
    out, unknown = {}, []
    for n in attn:
        shape = types[n.inputs[1]].shape
        if shape is not None and len(shape) == 4 and isinstance(shape[1], int) and isinstance(shape[3], int):
            out[n.inputs[1]] = (shape[1], shape[3])
        else:
            unknown.append(n.inputs[1])
    if unknown:
        from ..ir.interp import interpret

        probe = dce(Function("probe_kv", main.params, main.nodes, tuple(unknown)))
        feeds = {p.name: np.zeros(tuple(d if isinstance(d, int) else 1 for d in p.type.shape), p.type.dtype.np)
                 for p in probe.params}
        try:
            got = interpret(module.replace(functions=(probe,)), feeds, "probe_kv")
        except Exception as e:
            raise FrontendError(f"module @{module.name}: the key/value shapes are not declared and running the "
                                f"graph on one token to find them failed: {e}") from None
        for k in unknown:
            a = np.asarray(got[k])
            if a.ndim != 4:
                raise FrontendError(f"module @{module.name}: attention key %{k} has rank {a.ndim}, expected 4")
            out[k] = (int(a.shape[1]), int(a.shape[3]))
    return out


def with_decoder(module: Module) -> Module:
    """`make_decoder(module)` when its `main` has raised Attention nodes, else the module unchanged."""
    return make_decoder(module) if any(n.op == Op.Attention for n in module.func("main").nodes) else module


def make_decoder(module: Module) -> Module:
    """Add prefill/decode entry points to a module whose `main` has raised Attention nodes."""
    main = module.func("main")
    attn = [n for n in main.nodes if n.op == Op.Attention]
    if not attn:
        raise FrontendError(f"module @{module.name}: no Attention found after raising; cannot build a "
                            f"KV-cache decoder (is this a decoder LM export?)")
    ids = [p for p in main.params if p.type.dtype.is_int and "mask" not in p.name and "position" not in p.name]
    if not ids:
        raise FrontendError(f"module @{module.name}: no integer token-id input found")
    input_ids, logits = ids[0].name, main.results[0]
    types = main.value_types()

    if all(len(n.inputs) == 5 for n in attn):
        decode = replace(main, name="decode")
        past = [[n.inputs[3], n.inputs[4]] for n in attn]
        present = [[n.outputs[1].name, n.outputs[2].name] for n in attn]
        # prefill: the same graph with empty past tensors bound as constants
        consts = dict(module.constants)
        subst = {}
        for pk, pv in past:
            for p in (pk, pv):
                t = types[p]
                shape = tuple(0 if d == t.shape[2] and i == 2 else (d if isinstance(d, int) else 1)
                              for i, d in enumerate(t.shape))
                cname = f"empty.{p}"
                consts[cname] = Const.of(np.zeros(shape, t.dtype.np))
                subst[p] = cname
        pre_nodes = [Node(n.op, tuple(subst.get(i, i) for i in n.inputs), n.outputs, n.attrs, n.origin)
                     for n in main.nodes]
        prefill = Function("prefill", tuple(p for p in main.params if p.name not in subst), tuple(pre_nodes),
                           main.results)
        module = module.replace(constants=consts)
    elif all(len(n.inputs) == 3 for n in attn):
        past, present = [], []
        pre_nodes, dec_nodes, dec_params = [], [], list(main.params)
        attn_ids = {id(n) for n in attn}
        layer = 0
        ranges = {id(r) for r in _rope_position_ranges(main)}
        if not ranges:
            raise FrontendError(f"module @{module.name}: cannot find the rotary position Range; "
                                f"decode positions would be wrong")
        past_len = "__past_len"
        kv_shapes = _kv_shapes(module, main, attn, ids[0])
        for n in main.nodes:
            if id(n) in attn_ids:
                kt = types.get(n.inputs[1])
                hkv, hd = kv_shapes[n.inputs[1]]
                pk, pv = f"past.{layer}.key", f"past.{layer}.value"
                ok, ov = f"present.{layer}.key", f"present.{layer}.value"
                kv_t = TensorType(kt.dtype, (ids[0].type.shape[0], hkv, "past", hd))
                out_t = TensorType(kt.dtype, (ids[0].type.shape[0], hkv, "?", hd))
                dec_params += [Value(pk, kv_t), Value(pv, kv_t)]
                outs = (n.outputs[0], Value(ok, out_t), Value(ov, out_t))
                pre_nodes.append(Node(n.op, n.inputs, outs, n.attrs, n.origin))
                dec_nodes.append(Node(n.op, n.inputs + (pk, pv), outs, n.attrs, n.origin))
                past.append([pk, pv])
                present.append([ok, ov])
                layer += 1
            elif id(n) in ranges:
                pre_nodes.append(n)
                if not any(d.outputs[0].name == past_len for d in dec_nodes):
                    dec_nodes += [
                        Node.make(Op.Shape, ["past.0.key"], [Value("__past_len_1d", TensorType(DType.I64, (1,)))],
                                  start=2, end=3),
                        Node.make(Op.Squeeze, ["__past_len_1d"], [Value(past_len, TensorType(DType.I64, ()))]),
                    ]
                start, limit, delta = n.inputs
                s2, l2 = f"{n.outputs[0].name}.start", f"{n.outputs[0].name}.limit"
                dec_nodes += [
                    Node.make(Op.Cast, [past_len], [Value(s2 + "_off", TensorType(DType.I64, ()))],
                              to=types.get(n.outputs[0].name, TensorType(DType.I64, None)).dtype.value),
                    Node.make(Op.Add, [start, s2 + "_off"], [Value(s2, TensorType(DType.I64, ()))]),
                    Node.make(Op.Add, [limit, s2 + "_off"], [Value(l2, TensorType(DType.I64, ()))]),
                    Node(n.op, (s2, l2, delta), n.outputs, n.attrs, n.origin),
                ]
            else:
                pre_nodes.append(n)
                dec_nodes.append(n)
        flat_present = tuple(x for kv in present for x in kv)
        prefill = Function("prefill", main.params, tuple(pre_nodes), main.results + flat_present)
        decode = Function("decode", tuple(dec_params), tuple(dec_nodes), main.results + flat_present)
        # Past-length nodes must precede their uses: move them to the front of decode.
        front = [d for d in decode.nodes if d.outputs[0].name in ("__past_len_1d", past_len)]
        rest = [d for d in decode.nodes if d.outputs[0].name not in ("__past_len_1d", past_len)]
        decode = decode.with_nodes(front + rest)
    else:
        raise FrontendError(f"module @{module.name}: mixed Attention forms (some with past inputs, some without)")

    missing = [o for pair in present for o in pair if o not in decode.results]
    if missing:
        raise FrontendError(f"module @{module.name}: the export's attention layers produce {missing} but the graph "
                            f"does not output them; a with-past export must output every present.* key/value")
    kv0 = types.get(attn[0].inputs[1])
    if kv0 is not None and past and past[0][0] in {p.name for p in decode.params}:
        kv0 = next(p.type for p in decode.params if p.name == past[0][0])
    vocab = _embedding_rows(main, module, input_ids)
    spec = DecoderSpec(
        "prefill", "decode", input_ids, logits,
        kv=tuple((StateTensor(pk, ok, StateKind.KEY, i), StateTensor(pv, ov, StateKind.VALUE, i))
                 for i, ((pk, pv), (ok, ov)) in enumerate(zip(past, present))),
        kv_heads=int(kv0.shape[1]) if kv0 and isinstance(kv0.shape[1], int) else None,
        head_dim=int(kv0.shape[3]) if kv0 and isinstance(kv0.shape[3], int) else None,
        kv_dtype=kv0.dtype.value if kv0 else "f32",
        # runners range-check token ids against the vocabulary (kept in meta through `extra`)
        extra={"vocab_size": vocab} if vocab is not None else {})
    meta = spec.into(module.meta)
    fns = [f for f in module.functions if f.name not in ("prefill", "decode")]
    return module.replace(functions=tuple(fns) + (dce(prefill), dce(decode)), meta=meta)

