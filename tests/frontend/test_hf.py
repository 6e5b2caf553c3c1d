"""HF model folders as a source: the BitNet packed layout binds bit-identical ternary weights."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors import safe_open

import ternc
from ternc.frontend import FrontendError
from ternc.ir.ops import Op
from ternc.ir.packing import unpack_hf_bitnet


def _source_trits(folder):
    out = {}
    with safe_open(str(folder / "model.safetensors"), "np") as f:
        for k in f.keys():
            if k.endswith(".weight") and f.get_tensor(k).dtype == np.uint8:
                out[k] = f.get_tensor(k)
    return out


def test_hf_bitnet_folder_binds_source_trits_and_generates_like_torch(hf_bitnet_folder):
    import torch
    from transformers import AutoModelForCausalLM

    from ternc.frontend.torch_export import torch_greedy

    m = ternc.load(hf_bitnet_folder)
    packed = _source_trits(hf_bitnet_folder)
    tw = m.meta["ternary_weights"]
    assert tw["bound"] == len(packed) == 14 and sorted(tw["from_source"]) == sorted(packed)
    assert not tw["act_quant_added"]
    # every TernaryLinear constant is exactly one source tensor, decoded from its packed bytes
    want = {tuple(unpack_hf_bitnet(p, p.shape[0] * 4).reshape(-1).tolist()) for p in packed.values()}
    got = {tuple(np.asarray(m.constants[n.inputs[2]].data).reshape(-1).tolist())
           for f in m.functions for n in f.nodes if n.op == Op.TernaryLinear}
    assert got == want
    lm = AutoModelForCausalLM.from_pretrained(hf_bitnet_folder, local_files_only=True, dtype=torch.float32)
    ids = [[3, 70, 101, 200, 17]]
    np.testing.assert_array_equal(ternc.generate(m, ids, 8), torch_greedy(lm, ids, 8))


def test_compiled_reference_keeps_source_trits(hf_bitnet_folder, tmp_path):
    """`ternc compile` on the folder: the packed module still holds exactly the source trits."""
    from ternc.ir.packing import unpack

    m = ternc.load(hf_bitnet_folder)
    out = ternc.compile(m, passes="fold,raise-ternary,cse,dce,pack-ternary{format=i2}").module
    packed = _source_trits(hf_bitnet_folder)
    want = sorted(unpack_hf_bitnet(p, p.shape[0] * 4).tobytes() for p in packed.values())
    got = []
    for f in out.functions:
        for n in f.nodes:
            if n.op == Op.TernaryLinear and n.attr("format") == "i2":
                codes = np.asarray(out.constants[n.inputs[2]].data)
                got.append(unpack({"codes": codes}, "i2", n.attr("k")).tobytes())
    assert sorted(set(got)) == sorted(set(want))


def test_hub_id_is_refused_with_a_hint():
    with pytest.raises(FrontendError, match="pass the local folder"):
        ternc.load("microsoft/bitnet-b1.58-2B-4T")


def test_folder_without_safetensors_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FrontendError, match="no \\*.safetensors"):
        ternc.load(tmp_path)


def test_sliding_window_config_is_refused(tmp_path):
    import json

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mistral", "sliding_window": 8,
                                                      "max_position_embeddings": 256}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(FrontendError, match="sliding-window attention \\(window 8\\)"):
        ternc.load(tmp_path)
