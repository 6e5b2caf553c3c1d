"""Fuzz fixtures: one zygote per test module (see harness.py)."""

from __future__ import annotations

import pytest

from .harness import Zygote


@pytest.fixture(scope="module")
def zygote():
    z = Zygote()
    yield z
    z.close()


@pytest.fixture(scope="module")
def tvm_zygote():
    z = Zygote({"TERNC_FUZZ_TVM": "1"})
    yield z
    z.close()
