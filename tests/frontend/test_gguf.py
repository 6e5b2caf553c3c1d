"""GGUF files as a source: TQ1_0/TQ2_0 blocks decode exactly and bind as TernaryLinear constants."""

from __future__ import annotations

import numpy as np
import pytest

import ternc
from ternc.frontend import FrontendError
from ternc.frontend.gguf import _one_scale
from ternc.ir.ops import Op
from ternc.ir.packing import GGUF_FORMATS


@pytest.mark.parametrize("fmt", ["TQ2_0", "TQ1_0"])
def test_one_scale_of_decoded_blocks(fmt, rng):
    w_t = rng.integers(-1, 2, (6, 512)).astype(np.int8)
    w_t[2, 256:] = 0  # an all-zero block (its d is 0)
    f = GGUF_FORMATS[fmt]
    got, d = f.decode(f.encode(w_t, 0.037), 512)
    assert _one_scale("w", got, d, "f.gguf") == np.float32(np.float16(0.037))


def test_tensor_with_differing_block_scales_is_refused():
    w_t = np.ones((2, 512), np.int8)
    d = np.array([[0.5, 0.25], [0.5, 0.5]], np.float32)
    with pytest.raises(FrontendError, match="2 different block scales"):
        _one_scale("blk.0.attn_q.weight", w_t, d, "f.gguf")


def test_tiny_ternary_gguf_binds_source_trits_and_tracks_torch(tiny_gguf):
    import gguf
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS

    m = ternc.load(tiny_gguf)
    tw = m.meta["ternary_weights"]
    assert tw["bound"] == 14 and tw["act_quant_added"]
    # reference: the gguf package's own dequantization, in transformers' layout (q/k rows permuted back)
    reader = gguf.GGUFReader(str(tiny_gguf))
    proc = TENSOR_PROCESSORS["llama"](config={"num_attention_heads": 4, "num_key_value_heads": 2})
    want = {}
    for t in reader.tensors:
        if t.tensor_type.name.startswith("TQ"):
            f = gguf.dequantize(t.data, t.tensor_type).reshape(int(t.shape[1]), int(t.shape[0]))
            want[t.name] = np.asarray(proc.process(f, t.name).weights)
    got = {}
    for f in m.functions:
        for n in f.nodes:
            if n.op == Op.TernaryLinear:
                trits = np.asarray(m.constants[n.inputs[2]].data)
                scale = float(np.asarray(m.constants[n.inputs[1]].data))
                got[trits.tobytes()] = (trits, scale)
    assert len(got) == 14
    for name, ref in want.items():
        s = np.abs(ref).max()
        t = np.round(ref / s).astype(np.int8)
        assert t.tobytes() in got, name  # the bound trits are exactly the file's
    # the float graph (transformers' dequantized GGUF) vs ternc with int8 activations added: measured
    lm = AutoModelForCausalLM.from_pretrained(str(tiny_gguf.parent), gguf_file=tiny_gguf.name, dtype=torch.float32)
    ids = np.array([[5, 80, 120, 7, 250, 33, 64, 1]])
    with torch.no_grad():
        ref = lm(torch.as_tensor(ids)).logits.numpy()
    out = ternc.interpret(m, {m.meta["decoder"]["input_ids"]: ids}, entry=m.meta["decoder"]["prefill"])
    logits = out[m.meta["decoder"]["logits"]]
    rel = float(np.abs(logits - ref).max() / np.abs(ref).max())
    print(f"tiny TQ GGUF: max relative logit error vs float dequantized torch = {rel:.4f}")
    assert rel < 0.1


def test_gguf_tokenizer_and_text_generation(tiny_gguf):
    m = ternc.load(tiny_gguf)
    tok = ternc.load_tokenizer(m)
    assert tok.decode(tok("Hello world")["input_ids"]) == "Hello world"
    res = ternc.generate_text(m, "Hi", 5, stop_at_eos=False)
    assert len(res["ids"]) == 5 and res["prompt_tokens"] == 2
    again = ternc.generate(m, [tok("Hi")["input_ids"]], 5)
    assert res["ids"] == again[0, 2:].tolist()


def test_not_a_gguf_file_is_refused(tmp_path):
    p = tmp_path / "broken.gguf"
    p.write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    with pytest.raises(FrontendError, match="broken.gguf"):
        ternc.load(p)
