"""The registry table and the textual pipeline spec parser."""

import dataclasses

import pytest

from ternc.passes.registry import REGISTRY, SpecError, format_spec, option_fields, parse_spec


def test_registry_rows_are_well_formed():
    assert {"fold", "dce", "cse", "fuse-epilogue", "raise-ternary", "quantize-ternary", "pack-ternary",
            "split-ternary"} <= set(REGISTRY)
    for name, info in REGISTRY.items():
        assert info.name == name and info.summary
        assert dataclasses.is_dataclass(info.options) and info.options.__dataclass_params__.frozen
        info.options()  # every option has a default
    assert not REGISTRY["quantize-ternary"].lossless and REGISTRY["pack-ternary"].lossless


def test_parse_spec_types_and_lists():
    steps = parse_spec(" fold{max_elements=1024, shapes=false} , pack-ternary{format=tl1},"
                       "quantize-ternary{skip=[lm_head*, *.o_proj], keep_lm_head=0},cse{},raise-ternary{rtol=1e-3}")
    assert [i.name for i, _ in steps] == ["fold", "pack-ternary", "quantize-ternary", "cse", "raise-ternary"]
    assert steps[0][1].max_elements == 1024 and steps[0][1].shapes is False
    assert steps[1][1].format == "tl1"
    assert steps[2][1].skip == ("lm_head*", "*.o_proj") and steps[2][1].keep_lm_head is False
    assert steps[4][1].rtol == 1e-3
    assert parse_spec("quantize-ternary{skip=one}")[0][1].skip == ("one",)
    assert parse_spec("") == []
    # round trip through the printer (non-default options only)
    spec = format_spec(steps)
    assert spec == ("fold{max_elements=1024,shapes=false},pack-ternary{format=tl1},"
                    "quantize-ternary{skip=[lm_head*,*.o_proj],keep_lm_head=false},cse,raise-ternary{rtol=0.001}")
    assert format_spec(parse_spec(spec)) == spec


@pytest.mark.parametrize("spec, message", [
    ("fold,frobnicate", r"unknown pass 'frobnicate'; valid passes: cse, dce, .*fold"),
    ("pack-ternary{fmt=tl2}", r"unknown option 'fmt' for pass 'pack-ternary'; valid options of 'pack-ternary': "
                              r"format: str = tl2"),
    ("pack-ternary{format=tl9}", r"unknown ternary format 'tl9'; valid: i2, tl1, tl2, tq1"),
    ("fold{max_elements=lots}", r"option max_elements='lots': expected an integer"),
    ("fold{shapes=maybe}", r"expected true or false"),
    ("fold{max_elements=[1,2]}", r"expected a single int, got a list"),
    ("dce{x=1}", r"pass 'dce' takes no options"),
    ("fold{max_elements=1,max_elements=2}", r"given twice"),
    ("fold{max_elements}", r"expected '=' after option 'max_elements'"),
    ("fold dce", r"expected ',' between passes"),
    ("fold,", r"expected a pass name"),
    ("fold{shapes=true", r"expected ',' or '}'"),
])
def test_spec_errors(spec, message):
    with pytest.raises(SpecError, match=message):
        parse_spec(spec)


def test_option_fields_describe_types():
    assert option_fields(REGISTRY["quantize-ternary"])["skip"] == (tuple[str, ...], ())


def test_non_finite_and_subnormal_float_options_are_spec_errors():
    from ternc.passes.registry import SpecError, parse_spec

    for v in ("1e-320", "nan", "inf", "-inf"):
        with pytest.raises(SpecError, match="finite, normal number"):
            parse_spec(f"prune-prefill{{keep={v}}}")


def test_quantize_kv_group_that_does_not_divide_head_dim():
    import ternc
    from ternc.models import tiny_bitnet
    from ternc.passes.quantize_kv import KVPassError

    m = ternc.load(tiny_bitnet.default_onnx())  # head_dim 42
    with pytest.raises(KVPassError, match=r"head_dim 42.*e\.g\. group=21"):
        ternc.compile(m, passes="quantize-kv", report=False)


def test_hw_numerics_value_is_checked_at_parse_time():
    from ternc.passes.registry import SpecError, parse_spec

    with pytest.raises(SpecError, match="numerics must be 'fx' or 'float'"):
        parse_spec("hw-numerics{numerics=-1}")  # found by the spec fuzzer (was a ValueError from the pass)
