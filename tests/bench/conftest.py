"""Benchmarks run only when asked for: `pytest -m bench tests/bench`."""

import pytest


def pytest_collection_modifyitems(config, items):
    if "bench" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="benchmark: run with -m bench")
    for item in items:
        if item.get_closest_marker("bench"):
            item.add_marker(skip)
