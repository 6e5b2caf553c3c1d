"""Ternary TIR kernels: int32 accumulators bit-exact with semantics.ternary_matmul_i32, for every
packing format and kernel kind; the quantize kernel exact with semantics.quantize_act."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from ternc.backends.tvm import kernels as K  # noqa: E402
from ternc.ir import packing, semantics  # noqa: E402

CASES = [(fmt, kind) for fmt in K.SUPPORTED_FORMATS for kind in K.available_kinds(fmt, "cpu")]
# K values hit every padding case: not multiples of 3, 4, 5, 32 or 128, plus exact multiples
SHAPES = [(1, 131, 7), (5, 96, 33), (3, 256, 16), (2, 7, 5)]


def _parts(w, fmt):
    return list(packing.pack(w, fmt).values())


@pytest.mark.parametrize("fmt,kind", CASES)
def test_matmul_bit_exact_random(fmt, kind):
    rng = np.random.default_rng(hash((fmt, kind)) % 2**32)
    for m, k, n in SHAPES:
        w = rng.integers(-1, 2, size=(n, k)).astype(np.int8)
        x = rng.integers(-128, 128, size=(m, k)).astype(np.int8)
        lib = K.build_standalone(fmt, k, n, kind)
        got = K.run_standalone(lib, x, _parts(w, fmt), n)
        np.testing.assert_array_equal(got, semantics.ternary_matmul_i32(x, w), err_msg=f"{fmt}/{kind} M={m} K={k} N={n}")


@pytest.mark.parametrize("fmt,kind", CASES)
def test_matmul_extremes(fmt, kind):
    """Largest magnitudes: x = -128 everywhere against all +1 / all -1 rows, and x = 127."""
    k, n = 200, 4
    w = np.stack([np.ones(k), -np.ones(k), np.zeros(k), np.tile([1, -1, 0], k)[:k]]).astype(np.int8)
    x = np.stack([np.full(k, -128), np.full(k, 127)]).astype(np.int8)
    got = K.run_standalone(K.build_standalone(fmt, k, n, kind), x, _parts(w, fmt), n)
    ref = semantics.ternary_matmul_i32(x, w)
    np.testing.assert_array_equal(got, ref)
    assert got[0, 0] == -128 * k and got[0, 1] == 128 * k


def test_decoder_matches_unpack_for_every_byte_value():
    """The in-TIR decoder (w_expr, through the t2-free 'dot' kernel) agrees with packing.unpack on
    a weight that uses every TL2 index/sign and every I2/TL1/TQ1 code."""
    rng = np.random.default_rng(7)
    k, n = 3 * 27, 9
    trip = packing.tl2_digits(np.arange(-13, 14)).reshape(-1)  # all 27 triples
    w = np.stack([np.roll(trip, 3 * i) for i in range(n)]).astype(np.int8)
    x = np.eye(k, dtype=np.int8)[: k] * 1  # identity: acc[i, j] = w[j, i]
    for fmt in K.SUPPORTED_FORMATS:
        got = K.run_standalone(K.build_standalone(fmt, k, n, "dot"), x, _parts(w, fmt), n)
        np.testing.assert_array_equal(got.T, packing.unpack(packing.pack(w, fmt), fmt, k))
    del rng


def test_quantize_kernel_exact():
    """Per-token absmax int8 quantization incl. exact .5 ties (round half to even) and padding."""
    k = 37
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, k)).astype(np.float32) * np.float32(3)
    x[0, :6] = [127.0, 0.5, 1.5, 2.5, -0.5, -2.5]  # a_scale = 1: ties at .5
    x[1] = 0.0  # all-zero row: eps clamp
    x[2, 0] = 1e-7
    lib = tvm.compile(tvm.IRModule({"main": K.quantize_func(k, semantics.ACT_EPS)}), "llvm")
    xq = tvm.runtime.empty((6, K.padded_k(k)), "int8")
    sc = tvm.runtime.empty((6, 1), "float32")
    lib["main"](tvm.runtime.tensor(x), xq, sc)
    ref_q, ref_s = semantics.quantize_act(x)
    np.testing.assert_array_equal(xq.numpy()[:, :k], ref_q)
    np.testing.assert_array_equal(xq.numpy()[:, k:], 0)
    np.testing.assert_array_equal(sc.numpy(), ref_s)
    assert list(xq.numpy()[0, :6]) == [127, 0, 2, 2, 0, -2]


def test_measured_kernel_choice():
    """`auto` times both CPU kernels for a tl2 shape, checks them exact, and picks the faster one."""
    log = []
    kind = K.choose_kind("tl2", 96, 64, 1, "cpu", "auto", log)
    assert kind in ("dot", "dot16", "lut")
    (entry,) = log
    assert set(entry["timings_us"]) == {"dot", "dot16", "lut"}
    assert entry["chosen"] == min(entry["timings_us"], key=entry["timings_us"].get)
    assert K.choose_kind("i2", 96, 64, 1, "cpu", "auto") in ("dot", "dot16")  # no LUT kernel for i2
    assert K.choose_kind("tl2", 96, 64, 1, "cpu", "lut") == "lut"
    assert K.choose_kind("i2", 96, 64, 1, "cpu", "lut") == "dot"  # a kind the format lacks: the default


def test_kernel_tuner_is_an_explicit_cache():
    """Measurements live in the KernelTuner passed in (a shape is timed once per tuner), not in the
    shared default."""
    tuner, log = K.KernelTuner(), []
    before = dict(K.DEFAULT_TUNER.measured)
    kind = K.choose_kind("tl1", 48, 8, 1, "cpu", "auto", log, tuner=tuner)
    key = ("tl1", 48, 8, 1, "None")
    assert list(tuner.measured) == [key] and tuner.measured[key]["chosen"] == kind
    assert K.choose_kind("tl1", 48, 8, 1, "cpu", "auto", log, tuner=tuner) == kind and len(log) == 1
    assert K.DEFAULT_TUNER.measured == before


def test_kernel_tuner_cache_file_is_reused(tmp_path, monkeypatch):
    """A tuner with a cache file records its measured choice there; another tuner (another process,
    a later build on the host) reads it instead of measuring again."""
    path = tmp_path / "kernels.json"
    kinds = K.available_kinds("tl1", "cpu", 48)
    log = []
    kind = K.KernelTuner(cache_file=path).choose("tl1", 48, 8, 1, kinds, None, log)
    assert path.exists() and log[0]["chosen"] == kind and "timings_us" in log[0]

    def boom(*a, **kw):
        raise AssertionError("measured a shape the cache file holds")

    from ternc.backends.tvm.kernels import select

    monkeypatch.setattr(select, "measure_kinds", boom)  # where KernelTuner looks it up
    log2 = []
    assert K.KernelTuner(cache_file=path).choose("tl1", 48, 8, 1, kinds, None, log2) == kind
    assert log2[0]["cached"] is True
    monkeypatch.setenv("TERNC_KERNEL_CACHE", "off")
    assert K.default_cache_file() is None
    monkeypatch.setenv("TERNC_KERNEL_CACHE", str(path))
    assert K.default_cache_file() == path


def test_dot16_int16_lanes_exact_at_the_bound():
    """dot16 accumulates 255 products of magnitude 128 per int16 lane at K = DOT16_MAX_K: the
    worst case (x = -128, w = +1 / -1) must still be exact; beyond the bound dot16 is not offered."""
    k = K.DOT16_MAX_K
    w = np.stack([np.ones(k), -np.ones(k)]).astype(np.int8)
    x = np.full((1, k), -128, np.int8)
    got = K.run_standalone(K.build_standalone("i2", k, 2, "dot16"), x, _parts(w, "i2"), 2)
    np.testing.assert_array_equal(got, [[-128 * k, 128 * k]])
    assert "dot16" not in K.available_kinds("i2", "cpu", k + 1)
    with pytest.raises(ValueError, match="dot16 needs K"):
        K.dot16_te("i2", k + 1, 2)


@pytest.mark.parametrize("kind", ["gemv", "gemm"])
def test_cuda_kernels_compile(kind):
    """The CUDA kernels lower and generate CUDA source for sm_90 (no GPU needed)."""
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_90"}, host="llvm")
    mod = tvm.IRModule({"main": K.matmul_func("tl2", 131, 40, kind)})
    try:
        ex = tvm.compile(mod, target)
    except Exception as e:  # no CUDA toolkit to build the device code
        if "nvrtc" in str(e).lower() or "nvcc" in str(e).lower() or "cuda" in str(e).lower() and "found" in str(e).lower():
            pytest.skip(f"CUDA toolchain unavailable: {e}")
        raise
    src = ex.mod.imports[0].inspect_source()
    assert "__global__" in src


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", ["i2", "tl2"])
@pytest.mark.parametrize("kind,m", [("gemv", 1), ("gemm", 13)])
def test_cuda_kernels_bit_exact(fmt, kind, m):
    dev = tvm.cuda(0)
    if not dev.exist:
        pytest.skip("no CUDA GPU")
    rng = np.random.default_rng(11)
    k, n = 131, 40
    w = rng.integers(-1, 2, size=(n, k)).astype(np.int8)
    x = rng.integers(-128, 128, size=(m, k)).astype(np.int8)
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_90"}, host="llvm")
    lib = tvm.compile(tvm.IRModule({"main": K.matmul_func(fmt, k, n, kind)}), target)
    got = K.run_standalone(lib, x, _parts(w, fmt), n, dev=dev)
    np.testing.assert_array_equal(got, semantics.ternary_matmul_i32(x, w))


# ------------------------------------------------------------------------------------------------
# AVX-512 VNNI kernel on packed i2 codes (x86 hosts with avx512_vnni only)
# ------------------------------------------------------------------------------------------------
def _host_cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


HOST_VNNI = {"avx512_vnni", "avx512bw", "avx512vl"} <= _host_cpu_flags()
needs_vnni = pytest.mark.skipif(not HOST_VNNI, reason="host CPU lacks avx512_vnni (/proc/cpuinfo flags)")


def _host_target():
    from ternc.backends.tvm.build import make_target

    return make_target("cpu")


# K: below one 128-block, odd/even block counts, not multiples of 32/128/256; N: ragged row tiles
VNNI_SHAPES = [(64, 5), (131, 7), (256, 16), (300, 9), (640, 33), (1000, 3), (7, 1)]


@needs_vnni
@pytest.mark.parametrize("k,n", VNNI_SHAPES)
def test_vnni_bit_exact_random(k, n):
    assert "vnni" in K.available_kinds("i2", "cpu", k, _host_target())
    rng = np.random.default_rng(k * 1000 + n)
    lib = K.build_standalone("i2", k, n, "vnni", target=_host_target())
    w = rng.integers(-1, 2, size=(n, k)).astype(np.int8)
    parts = _parts(w, "i2")
    for m in (1, 3, 32):
        x = rng.integers(-128, 128, size=(m, k)).astype(np.int8)
        got = K.run_standalone(lib, x, parts, n)
        np.testing.assert_array_equal(got, semantics.ternary_matmul_i32(x, w), err_msg=f"vnni M={m} K={k} N={n}")


@needs_vnni
@pytest.mark.parametrize("k", [200, 256, 1300])
def test_vnni_extremes(k):
    """x = -128 / 127 everywhere against all +1 / all -1 / zero / mixed rows (N = 5: ragged tiles)."""
    n = 5
    w = np.stack([np.ones(k), -np.ones(k), np.zeros(k), np.tile([1, -1, 0], k)[:k], np.tile([-1, 1], k)[:k]])
    w = w.astype(np.int8)
    lib = K.build_standalone("i2", k, n, "vnni", target=_host_target())
    for rows in ([-128], [127], [-128, 127, -128], [127] * 32):
        x = np.stack([np.full(k, v) for v in rows]).astype(np.int8)
        got = K.run_standalone(lib, x, _parts(w, "i2"), n)
        np.testing.assert_array_equal(got, semantics.ternary_matmul_i32(x, w))
        assert got[0, 0] == rows[0] * k and got[0, 1] == -rows[0] * k


def test_vnni_availability_follows_the_target():
    """vnni is offered for i2 only, on LLVM x86 targets whose CPU/mattr has AVX-512 VNNI."""
    def tgt(**cfg):
        return tvm.target.Target({"kind": "llvm", **cfg})

    assert K.target_has_vnni(tgt(mcpu="cascadelake")) and K.target_has_vnni(tgt(mcpu="znver5"))
    for t in (None, "llvm", tgt(mcpu="skylake-avx512"), tgt(mcpu="haswell"),
              tgt(mtriple="aarch64-linux-gnu"), tgt(mtriple="aarch64-linux-gnu", mcpu="cortex-a76")):
        assert not K.target_has_vnni(t), t
    assert K.target_has_vnni(tgt(mcpu="haswell", mattr=["+avx512f", "+avx512bw", "+avx512vl", "+avx512vnni"]))
    vt = tgt(mcpu="cascadelake")
    assert "vnni" in K.available_kinds("i2", "cpu", 1536, vt)
    assert "vnni" not in K.available_kinds("i2", "cpu", 1536)
    for fmt in ("t2", "tl1", "tl2", "tq1"):
        assert "vnni" not in K.available_kinds(fmt, "cpu", 1536, vt)
    assert "vnni" not in K.available_kinds("i2", "cuda", 1536, vt)
    assert K.choose_kind("i2", 96, 64, 1, "cpu", "vnni", target=tgt(mcpu="haswell")) == "dot"  # lacks it


def _foreign_x86_cpu() -> str:
    from tvm.target import codegen

    host = str(codegen.llvm_get_system_cpu())
    return "cascadelake" if host != "cascadelake" else "icelake-server"


def test_foreign_mcpu_is_not_measured(monkeypatch):
    """choose_kind("auto") for a target CPU other than the host's must not run its kernels here
    (SIGILL on a host without its features): a static default, nothing measured."""
    def boom(*a, **kw):
        raise AssertionError("measured kernels for a foreign target")

    monkeypatch.setattr(K, "measure_kinds", boom)
    foreign = tvm.target.Target({"kind": "llvm", "mcpu": _foreign_x86_cpu()})
    assert not K.target_runs_here(foreign)
    log = []
    assert K.choose_kind("i2", 1536, 64, 1, "cpu", "auto", log, target=foreign) == "vnni"
    assert K.choose_kind("tl2", 96, 64, 32, "cpu", "auto", log, target=foreign) == "dot"
    a64 = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76"})
    assert not K.target_runs_here(a64)
    assert K.choose_kind("i2", 1536, 64, 1, "cpu", "auto", log, target=a64) == "dot"
    assert [e["chosen"] for e in log] == ["vnni", "dot"] and not any("timings_us" in e for e in log)
    assert K.target_runs_here(None) and K.target_runs_here(_host_target()) and K.target_runs_here("llvm")


@needs_vnni
def test_measured_choice_includes_vnni():
    """On a VNNI host, `auto` times dot, dot16 and vnni for an i2 shape (all checked exact) and picks
    the fastest."""
    log = []
    kind = K.choose_kind("i2", 300, 40, 1, "cpu", "auto", log, target=_host_target())
    (entry,) = log
    assert set(entry["timings_us"]) == {"dot", "dot16", "vnni"}
    assert kind == entry["chosen"] == min(entry["timings_us"], key=entry["timings_us"].get)


def test_fixed_choices_are_used_and_checked(monkeypatch):
    """A mapping policy (a previous build's choices, `ternc compile --kernels`) is followed without
    measuring; a kind the target lacks is a clear error, a shape it lacks is chosen as by "auto"."""
    def boom(*a, **kw):
        raise AssertionError("measured a shape that has a fixed choice")

    monkeypatch.setattr(K, "measure_kinds", boom)
    log = []
    assert K.choose_kind("tl2", 96, 64, 1, "cpu", {("tl2", 96, 64, 1): "lut"}, log) == "lut"
    assert log == [{"format": "tl2", "k": 96, "n": 64, "m": 1, "chosen": "lut"}]
    with pytest.raises(ValueError, match="fixed kernel choice 'lut' for i2 K=96 N=64 M=1 is not available"):
        K.choose_kind("i2", 96, 64, 1, "cpu", {("i2", 96, 64, 1): "lut"})
    assert K.choose_kind("i2", 96, 64, 1, "aarch64", {}) == "dot"  # unmeasured target: its static kind
