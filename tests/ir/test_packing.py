"""Ternary packing formats: round trips, byte counts, documented layouts, and cross-checks against
transformers' BitNet packing and gguf's TQ1_0 / TQ2_0 quantizers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ternc.ir.packing import (
    FORMATS,
    GGUF_FORMATS,
    bits_per_weight,
    pack,
    pack_hf_bitnet,
    packed_nbytes,
    part_names,
    tl2_encode,
    to_gguf_tq1_0,
    to_gguf_tq2_0,
    tq1_decode_bytes,
    tq1_encode_groups,
    unpack,
    unpack_hf_bitnet,
)

ternary_matrices = st.tuples(st.integers(1, 6), st.integers(1, 300)).flatmap(
    lambda shape: arrays(np.int8, shape, elements=st.sampled_from([-1, 0, 1]))
)


def random_ternary(n: int, k: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1, 2, size=(n, k)).astype(np.int8)


@pytest.mark.parametrize("fmt", FORMATS)
@settings(max_examples=60, deadline=None)
@given(w_t=ternary_matrices)
def test_round_trip_property(fmt, w_t):
    packed = pack(w_t, fmt)
    assert tuple(packed) == part_names(fmt)
    assert all(a.dtype == np.uint8 and a.shape[0] == w_t.shape[0] for a in packed.values())
    out = unpack(packed, fmt, w_t.shape[1])
    assert out.dtype == np.int8
    np.testing.assert_array_equal(out, w_t)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 6, 7, 29, 127, 128, 129, 255, 256, 257, 640])
def test_round_trip_awkward_k(fmt, k):
    w_t = random_ternary(3, k, seed=k)
    np.testing.assert_array_equal(unpack(pack(w_t, fmt), fmt, k), w_t)


def test_round_trip_extreme_rows():
    for w_t in (np.full((2, 11), -1, np.int8), np.full((2, 11), 1, np.int8), np.zeros((2, 11), np.int8)):
        for fmt in FORMATS:
            np.testing.assert_array_equal(unpack(pack(w_t, fmt), fmt, 11), w_t)


# Hand-derived from the layout rules: (N, K) -> bytes per format.
#   i2: 32 bytes per 128-weight block; tl1: ceil(K/4); tl2: T=ceil(K/3), ceil(T/2)+ceil(T/8); tq1: ceil(K/5).
@pytest.mark.parametrize(
    "n,k,expected",
    [
        (1, 1, {"i2": 32, "tl1": 1, "tl2": 2, "tq1": 1}),
        (3, 7, {"i2": 96, "tl1": 6, "tl2": 9, "tq1": 6}),  # T=3: 2 nibble bytes + 1 sign byte
        (2, 128, {"i2": 64, "tl1": 64, "tl2": 2 * (22 + 6), "tq1": 2 * 26}),  # T=43
        (4, 129, {"i2": 256, "tl1": 4 * 33, "tl2": 4 * (22 + 6), "tq1": 4 * 26}),
        (1536, 1536, {"i2": 1536 * 384, "tl1": 1536 * 384, "tl2": 1536 * (256 + 64), "tq1": 1536 * 308}),
    ],
)
def test_exact_byte_counts(n, k, expected):
    w_t = random_ternary(n, k)
    for fmt in FORMATS:
        assert packed_nbytes(n, k, fmt) == expected[fmt]
        assert sum(a.nbytes for a in pack(w_t, fmt).values()) == expected[fmt]


def test_bits_per_weight_is_the_aligned_cost():
    n, k = 4, 3840  # a multiple of 128, 4, 6, 24 and 5: no padding in any format
    for fmt in FORMATS:
        assert packed_nbytes(n, k, fmt) * 8 == pytest.approx(bits_per_weight(fmt) * n * k)
    assert bits_per_weight("tq1") < bits_per_weight("tl2") < bits_per_weight("i2") == bits_per_weight("tl1")


def test_i2_layout_matches_bitnet_cpp_i2s():
    # One +1 weight at k in an all-zero row: byte 32*(k//128) + k%32 carries code 2 in field
    # g = (k%128)//32 at bits 7-2g..6-2g; every other field is code 1 (weight 0).
    k_total = 256
    for k in (0, 5, 31, 32, 77, 100, 127, 128, 200, 255):
        w_t = np.zeros((1, k_total), np.int8)
        w_t[0, k] = 1
        codes = pack(w_t, "i2")["codes"][0]
        byte_index, field = 32 * (k // 128) + k % 32, (k % 128) // 32
        expected = np.full(64, 0b01010101, np.uint8)
        expected[byte_index] = 0b01010101 & ~(0b11 << (6 - 2 * field)) | (0b10 << (6 - 2 * field))
        np.testing.assert_array_equal(codes, expected)


def test_tl1_layout():
    w_t = np.array([[-1, 1, 0, 1, 1, -1]], np.int8)  # pairs: index 3*w0 + w1 + 4 = 2, 5, 6, (pad) 4
    np.testing.assert_array_equal(pack(w_t, "tl1")["nibbles"], [[0x52, 0x46]])


def test_tl2_layout_uses_field_encoding():
    w_t = random_ternary(5, 61, seed=3)  # T = 21 triples: 11 nibble bytes, 3 sign bytes
    index, sign = tl2_encode(w_t)
    packed = pack(w_t, "tl2")
    nibbles, signs = packed["nibbles"].astype(int), packed["signs"].astype(int)
    for t in range(index.shape[1]):
        assert (nibbles[:, t // 2] >> (4 * (t % 2))) & 0xF == pytest.approx(index[:, t])
        assert (signs[:, t // 8] >> (t % 8)) & 1 == pytest.approx(sign[:, t])


def test_tq1_byte_scheme_exhaustive():
    digits = np.stack(np.unravel_index(np.arange(243), (3,) * 5), axis=-1)  # first digit most significant
    values = digits @ np.array([81, 27, 9, 3, 1])
    np.testing.assert_array_equal(values, np.arange(243))
    encoded = tq1_encode_groups(digits)
    assert len(np.unique(encoded)) == 243
    np.testing.assert_array_equal(encoded, np.ceil(values * 256 / 243).astype(np.uint8))
    np.testing.assert_array_equal(tq1_decode_bytes(encoded), digits)
    w_t = (digits.reshape(1, -1) - 1).astype(np.int8)  # the groups laid out contiguously, as tq1 does
    np.testing.assert_array_equal(pack(w_t, "tq1")["trits"][0], encoded)


def test_rejects_non_ternary_and_unknown_format():
    for bad in (np.array([[0, 2]]), np.array([[0.5, 0.0]]), np.array([[np.nan, 1.0]]), np.array([[-3, 1]])):
        for fmt in FORMATS:
            with pytest.raises(ValueError, match="outside"):
                pack(bad, fmt)
    with pytest.raises(ValueError, match=r"'q4'.*i2, tl1, tl2, tq1"):
        pack(np.zeros((1, 4), np.int8), "q4")
    with pytest.raises(ValueError, match=r"'q4'.*i2, tl1, tl2, tq1"):
        unpack({}, "q4", 4)
    with pytest.raises(ValueError, match=r"'q4'"):
        packed_nbytes(1, 4, "q4")
    with pytest.raises(ValueError):
        pack(np.zeros((4,), np.int8), "i2")  # not 2-D
    assert np.array_equal(unpack(pack(np.array([[1.0, -1.0, 0.0]]), "tq1"), "tq1", 3), [[1, -1, 0]])


def test_unpack_rejects_corrupt_or_misshapen_input():
    w_t = random_ternary(2, 20)
    with pytest.raises(ValueError, match="code 3"):
        unpack({"codes": np.full((2, 32), 0xFF, np.uint8)}, "i2", 20)
    with pytest.raises(ValueError, match="0..8"):
        unpack({"nibbles": np.full((2, 5), 0x9, np.uint8)}, "tl1", 20)
    with pytest.raises(ValueError, match="0..13"):
        unpack({"nibbles": np.full((2, 4), 0xE, np.uint8), "signs": np.zeros((2, 1), np.uint8)}, "tl2", 20)
    with pytest.raises(ValueError, match="valid base-3"):
        unpack({"trits": np.full((2, 4), 1, np.uint8)}, "tq1", 20)  # v=0 -> 0, v=1 -> 2: 1 is no image
    for fmt in FORMATS:
        with pytest.raises(ValueError):
            unpack(pack(w_t, fmt), fmt, 200)  # K does not match the array widths
    with pytest.raises(ValueError):
        unpack({"nibbles": pack(w_t, "tl2")["nibbles"]}, "tl2", 20)  # missing "signs"


# ---------------------------------------------------------------- transformers BitNet packing


def _hf_bitnet():
    pytest.importorskip("torch")
    return pytest.importorskip("transformers.integrations.bitnet")


@pytest.mark.parametrize("n,k", [(4, 8), (5, 3), (9, 17), (16, 130), (7, 1)])
def test_hf_bitnet_packing_byte_exact(n, k):
    import torch

    hf = _hf_bitnet()
    w_t = random_ternary(n, k, seed=n * 1000 + k)
    hf_packed = hf.pack_weights(torch.from_numpy(w_t.copy())).numpy()  # pack_weights mutates its input
    np.testing.assert_array_equal(pack_hf_bitnet(w_t), hf_packed)
    np.testing.assert_array_equal(unpack_hf_bitnet(hf_packed, n), w_t)
    # transformers' own unpacker (undecorated: torch.compile is irrelevant here) reads our bytes.
    hf_unpack = getattr(hf.unpack_weights, "_torchdynamo_orig_callable", hf.unpack_weights)
    hf_w = hf_unpack(torch.from_numpy(pack_hf_bitnet(w_t)), torch.int8).numpy()[:n]
    np.testing.assert_array_equal(hf_w, w_t)
    # The documented reorder to our i2: unpack the HF tensor, repack along K.
    np.testing.assert_array_equal(pack(unpack_hf_bitnet(hf_packed, n), "i2")["codes"], pack(w_t, "i2")["codes"])


# ---------------------------------------------------------------- gguf TQ1_0 / TQ2_0


def _gguf():
    quants = pytest.importorskip("gguf.quants")
    from gguf import GGMLQuantizationType

    return quants, GGMLQuantizationType


@pytest.mark.parametrize("scale", [0.375, 0.0123])  # fp16-exact, and one that fp16 rounds
@pytest.mark.parametrize("qtype_name", ["TQ1_0", "TQ2_0"])
def test_gguf_quantizers_agree(qtype_name, scale):
    quants, qtypes = _gguf()
    qtype = getattr(qtypes, qtype_name)
    ours = {"TQ1_0": to_gguf_tq1_0, "TQ2_0": to_gguf_tq2_0}[qtype_name]
    w_t = random_ternary(6, 768, seed=11)
    w_t[2, 256:512] = 0  # an all-zero block: gguf stores d = 0 there
    w_scaled = (w_t * np.float32(scale)).astype(np.float32)
    gguf_bytes = quants.quantize(w_scaled, qtype)
    np.testing.assert_array_equal(ours(w_t, scale), gguf_bytes)
    # gguf's dequantizer gives back w_t * scale, with the scale rounded to fp16 (per-block d).
    np.testing.assert_array_equal(quants.dequantize(gguf_bytes, qtype), w_t * np.float32(np.float16(scale)))
    if float(np.float16(scale)) == scale:  # python-float compare (NEP 50 would cast to fp16)
        np.testing.assert_array_equal(quants.dequantize(gguf_bytes, qtype), w_scaled)


def test_tq2_0_is_i2_with_fields_reversed():
    quants, qtypes = _gguf()
    w_t = random_ternary(3, 512, seed=5)
    blocks = quants.quantize(w_t.astype(np.float32), qtypes.TQ2_0).reshape(3, 2, 66)
    qs = blocks[..., :64].astype(np.int64)
    reversed_fields = sum(((qs >> (2 * g)) & 3) << (6 - 2 * g) for g in range(4))
    np.testing.assert_array_equal(reversed_fields.reshape(3, -1), pack(w_t, "i2")["codes"])


def test_tq1_0_bytes_use_the_tq1_trit_scheme():
    quants, qtypes = _gguf()
    w_t = random_ternary(2, 256, seed=9)
    block = quants.quantize(w_t.astype(np.float32), qtypes.TQ1_0).reshape(2, 54)
    qs, qh = block[:, :48], block[:, 48:52]
    digits = tq1_decode_bytes(qs).astype(np.int8) - 1  # [2, 48, 5]
    # TQ1_0 groups are strided: qs byte j (< 32) holds weights j + 32m; byte 32 + j holds 160 + j + 16m.
    for j in range(32):
        np.testing.assert_array_equal(digits[:, j], w_t[:, j + 32 * np.arange(5)])
    for j in range(16):
        np.testing.assert_array_equal(digits[:, 32 + j], w_t[:, 160 + j + 16 * np.arange(5)])
    qh_digits = tq1_decode_bytes(qh).astype(np.int8) - 1
    for j in range(4):
        np.testing.assert_array_equal(qh_digits[:, j, :4], w_t[:, 240 + j + 4 * np.arange(4)])
    # Regrouped contiguously, the same 5 weights give the same byte in our tq1 format.
    regrouped = w_t[:, j + 32 * np.arange(5)]
    np.testing.assert_array_equal(pack(regrouped, "tq1")["trits"][:, 0], qs[:, j])


@pytest.mark.parametrize("qtype_name", ["TQ2_0", "TQ1_0"])
def test_gguf_block_decoders_invert_the_encoders_and_match_gguf(qtype_name):
    """The GGUF block formats live in the packing registry (GGUF_FORMATS): decode(encode(w)) is w,
    per-block d is the fp16 scale (0 on all-zero blocks), and w * d is what gguf dequantizes."""
    quants, qtypes = _gguf()
    f = GGUF_FORMATS[qtype_name]
    w_t = random_ternary(6, 512, seed=3)
    w_t[2, 256:] = 0
    enc = f.encode(w_t, 0.037)
    assert enc.shape == (6, 2 * f.block_bytes)
    got, d = f.decode(enc, 512)
    np.testing.assert_array_equal(got, w_t)
    assert d[2, 1] == 0 and d[0, 0] == np.float32(np.float16(0.037))
    ref = quants.dequantize(enc, getattr(qtypes, qtype_name)).reshape(6, 512)
    np.testing.assert_array_equal(got * np.repeat(d, 256, axis=1), ref)
    with pytest.raises(ValueError, match=rf"{qtype_name} rows must be uint8"):
        f.decode(enc[:, :-1], 512)


def test_gguf_helpers_reject_bad_input():
    with pytest.raises(ValueError, match="multiple of 256"):
        to_gguf_tq2_0(random_ternary(2, 100), 1.0)
    with pytest.raises(ValueError, match="multiple of 256"):
        to_gguf_tq1_0(random_ternary(2, 300), 1.0)
    with pytest.raises(ValueError, match="scale"):
        to_gguf_tq1_0(random_ternary(2, 256), 0.0)


def test_gguf_file_round_trip(tmp_path):
    # What the benchmark team does: write the helper's bytes as a quantized tensor, read them back.
    quants, qtypes = _gguf()
    import gguf

    w_t, scale = random_ternary(4, 512, seed=21), 0.25
    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_tensor("w_tq2", to_gguf_tq2_0(w_t, scale), raw_dtype=qtypes.TQ2_0)
    writer.add_tensor("w_tq1", to_gguf_tq1_0(w_t, scale), raw_dtype=qtypes.TQ1_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tensors = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    for name, qtype in (("w_tq2", qtypes.TQ2_0), ("w_tq1", qtypes.TQ1_0)):
        tensor = tensors[name]
        assert tensor.tensor_type == qtype and list(tensor.shape) == [512, 4]  # GGUF lists ne0 (K) first
        np.testing.assert_array_equal(quants.dequantize(tensor.data, qtype), w_t * np.float32(scale))


# ---------------------------------------------------------------- the format registry


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8, 24, 127, 128, 129, 300])
def test_format_objects_describe_what_pack_produces(k):
    """Every registered format's parts, row bytes, byte count and capacity match its pack output,
    and the capacity is exactly where extra zero weights stop changing the packed bytes."""
    from ternc.ir.packing import REGISTRY, get_format

    w = random_ternary(3, k)
    for name, layout in REGISTRY.items():
        assert get_format(name) is layout and get_format(layout) is layout
        parts = layout.pack(w)
        assert tuple(parts) == layout.part_names
        assert [a.shape for a in parts.values()] == layout.part_shapes(3, k)
        assert [str(a.dtype) for a in parts.values()] == list(layout.part_dtypes)
        assert sum(a.nbytes for a in parts.values()) == layout.nbytes(3, k)
        cap = layout.capacity(k)
        assert cap >= k
        wide = np.zeros((3, cap), np.int8)
        wide[:, :k] = w
        if layout.packed:  # the padded matrix packs to the same bytes
            assert layout.row_bytes(cap) == layout.row_bytes(k)
            assert all(np.array_equal(a, b) for a, b in zip(layout.pack(wide).values(), parts.values()))
        assert layout.row_bytes(cap + 1) != layout.row_bytes(k)  # one weight more does not fit
        np.testing.assert_array_equal(layout.unpack(parts, k), w)


def test_unpacked_t2_and_i2_geometry_and_tl2_fields():
    from ternc.ir.packing import FORMATS, I2, REGISTRY, T2, TL2, UNPACKED

    assert UNPACKED == "t2" and "t2" in REGISTRY and "t2" not in FORMATS and not T2.packed
    assert part_names("t2") == ("w",) and T2.part_dtypes == ("int8",)
    assert (I2.blocks(129), I2.capacity(129), I2.words_per_row(129)) == (2, 256, 16)
    assert I2.row_bytes(129) == {"codes": 64}
    w = random_ternary(4, 40)
    idx, sgn = TL2.fields(pack(w, "tl2"), 40)
    want_idx, want_sgn = tl2_encode(w)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_array_equal(sgn, want_sgn)
    with pytest.raises(ValueError, match="0..13"):
        TL2.fields({"nibbles": np.full((1, 7), 0xEE, np.uint8), "signs": np.zeros((1, 2), np.uint8)}, 40)
