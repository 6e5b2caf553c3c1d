"""Closed vocabularies shared by the IR, the passes, the backends and the hardware blocks.

Both enums subclass `str`: a member equals its textual value, which is what the IR stores in node
attributes (`FusedLinear {epilogue = "gated_silu"}`, `KVEvict {policy = "h2o"}`), so printed IR
and .ternc files keep plain strings.
"""

from __future__ import annotations

import enum


class Epilogue(str, enum.Enum):
    """The elementwise step after a linear: FusedLinear's `epilogue` attribute (semantics in
    ir/interp.py) and the FPGA epilogue block's op (hw/epilogue.py, numerics in ir/hw_numerics.py)."""
    NONE = "none"                  # the dequantized linear output itself (hardware only)
    RESIDUAL_ADD = "residual_add"  # Add(linear(x), r)
    RELU2 = "relu2"                # relu(linear(x))^2 (hardware only; no FusedLinear form)
    GATED_SILU = "gated_silu"      # GatedAct{act=silu}(linear_gate(x), linear_up(x))
    GATED_RELU2 = "gated_relu2"    # GatedAct{act=relu2}(linear_gate(x), linear_up(x))
    ROPE = "rope"                  # RoPE(Transpose(Reshape(linear(x))), cos, sin)
    SILU_MUL = "silu_mul"          # silu(linear(x)) * aux: a gate pass with the up values as aux (hardware only)
    RELU2_MUL = "relu2_mul"        # relu(linear(x))^2 * aux (hardware only)

    @property
    def gated(self) -> bool:
        return self in (Epilogue.GATED_SILU, Epilogue.GATED_RELU2)

    @property
    def act(self) -> str:
        """GatedAct's `act` of a gated epilogue."""
        if not self.gated:
            raise ValueError(f"epilogue {self.value} is not gated")
        return self.value.removeprefix("gated_")

    @classmethod
    def gated_by(cls, act: str) -> "Epilogue | None":
        """The gated epilogue of GatedAct{act}, or None for an act without one."""
        return next((e for e in cls if e.gated and e.act == act), None)

    @classmethod
    def parse(cls, name) -> "Epilogue":
        try:
            return cls(name)
        except ValueError:
            raise ValueError(f"unknown epilogue {name!r}; valid: {', '.join(e.value for e in cls)}") from None


# The epilogues a FusedLinear node may carry (the ones fuse-epilogue forms).
FUSED_EPILOGUES = (Epilogue.RESIDUAL_ADD, Epilogue.ROPE, Epilogue.GATED_SILU, Epilogue.GATED_RELU2)


class KVPolicy(str, enum.Enum):
    """KVEvict's `policy` attribute: which tokens the cache keeps (ir/interp.py, ir/kvevict.py)."""
    STREAMING = "streaming"  # StreamingLLM: sinks + most recent (evict-kv)
    H2O = "h2o"              # H2O: sinks + recent + heavy hitters by accumulated attention (evict-kv)
    LAZYLLM = "lazyllm"      # LazyLLM prefill pruning with revival (prune-prefill)

    @classmethod
    def parse(cls, name) -> "KVPolicy":
        try:
            return cls(name)
        except ValueError:
            raise ValueError(f"unknown KVEvict policy {name!r}; valid: {', '.join(p.value for p in cls)}") from None
