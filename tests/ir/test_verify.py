"""The verifier names the offending function and node."""

from __future__ import annotations

import pytest

from ternc.ir import DType, Function, Module, Node, Op, TensorType, Value, VerifyError, verify

F = TensorType(DType.F32, (2,))


def _mod(nodes, results=("y",), params=(Value("x", F),)):
    return Module("m", (Function("main", params, tuple(nodes), results),))


def test_use_before_definition():
    m = _mod([Node.make(Op.Relu, ["z"], [Value("y", F)])])
    with pytest.raises(VerifyError, match=r"@main, node %y = Relu: input #0 %z is not defined"):
        verify(m)


def test_double_definition():
    m = _mod([Node.make(Op.Relu, ["x"], [Value("y", F)]), Node.make(Op.Relu, ["x"], [Value("y", F)])])
    with pytest.raises(VerifyError, match="%y is defined twice"):
        verify(m)


def test_arity():
    m = _mod([Node.make(Op.Add, ["x"], [Value("y", F)])])
    with pytest.raises(VerifyError, match="Add takes 2..2 inputs, got 1"):
        verify(m)


def test_required_attribute():
    m = _mod([Node.make(Op.RMSNorm, ["x", "x"], [Value("y", F)])])
    with pytest.raises(VerifyError, match="missing required attribute 'eps'"):
        verify(m)


def test_undefined_result():
    m = _mod([Node.make(Op.Relu, ["x"], [Value("y", F)])], results=("w",))
    with pytest.raises(VerifyError, match="result %w is not defined"):
        verify(m)


def test_valid_module_passes():
    m = _mod([Node.make(Op.Relu, ["x"], [Value("y", F)])])
    assert verify(m) is m
