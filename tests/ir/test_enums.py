"""ir/enums.py: one vocabulary for epilogues and KV policies (IR attributes, passes, hardware)."""

import pytest

from ternc.ir.enums import FUSED_EPILOGUES, Epilogue, KVPolicy


def test_epilogue_vocabulary():
    assert [e.value for e in FUSED_EPILOGUES] == ["residual_add", "rope", "gated_silu", "gated_relu2"]
    assert Epilogue.gated_by("silu") is Epilogue.GATED_SILU and Epilogue.gated_by("gelu") is None
    assert Epilogue.GATED_RELU2.act == "relu2" and not Epilogue.ROPE.gated
    assert Epilogue("rope") == "rope"  # a member equals its attribute text
    with pytest.raises(ValueError, match="unknown epilogue 'silu_gate'"):
        Epilogue.parse("silu_gate")


def test_kv_policies():
    assert {p.value for p in KVPolicy} == {"streaming", "h2o", "lazyllm"}
    with pytest.raises(ValueError, match="unknown KVEvict policy"):
        KVPolicy.parse("lru")
