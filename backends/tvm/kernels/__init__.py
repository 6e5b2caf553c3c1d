"""TensorIR kernels for the ternary integer contract (ir/semantics.py) and the scheduled float,
attention and KV kernels, built with TVM's TE/TIR APIs.

Every ternary kernel consumes the layouts of `ir/packing.py` directly (the registered formats,
including the unpacked `t2` int8 [N, K]) and produces the exact int32 accumulators of
`semantics.ternary_matmul_i32`. Modules, by concern:

  common    K padding, casts, `scheduled` (the attributes every hand-scheduled kernel carries)
  decode    TIR_DECODERS: per format, how the generic kernels read a packed weight (`w_expr`)
  compute   TE definitions: quantize, dot, dot16, lut, GQA scores / PV
  cpu       CPU schedules (dot, dot16, lut), dense, attention, KV append
  vnni      AVX-512 VNNI on packed i2 codes (x86 with avx512vnni only) and its target probe
  cuda      CUDA schedules (quantize, gemv, gemm), dp4a kernels on i2, decode-time GQA
  cuda_ternary  the dp4a W2A8 GEMV / GEMM TensorIR (standalone too: bench/gpu_gemv.py)
  select    matmul_func / quantize_func, kernel kinds per format and target, KernelTuner

Kernels (all with a symbolic token count M, K and N static):

  quantize        x f32 [M, K] -> x_q int8 [M, Kp] (zero-padded to Kp >= K), a_scale f32 [M, 1]
  dot  (CPU)      acc[m, n] = sum_k x_q[m, k] * w(n, k): each weight row decoded once from the
                  packed bytes into an int8 scratch row (L1), reused by every token; the K
                  reduction runs as 32 int32 vector lanes in registers (rfactor), then lane sums
  dot16 (CPU)     the same with 64 int16 lanes (exact while K <= 16320: a lane sums <= 255
                  products of magnitude <= 128), about 2x faster for prefill
  vnni (CPU, i2)  x86 AVX-512 VNNI only (target_has_vnni): the packed 2-bit codes c = w + 1 go
                  straight into `vpdpbusd` (acc = sum c*x - sum x) against activations permuted once
                  per token inside the kernel; register tiles over (tokens, rows), rows parallel
  lut  (CPU)      T-MAC style table lookup (tl2, tl1): per group of g activations (g = 3 for tl2,
                  2 for tl1) a table of all signed sums is precomputed once per token; each packed
                  weight index reads the table (tl2 applies the sign bit to the looked-up sum)
  gemv (CUDA)     one warp-group per output row block, packed bytes decoded in registers (decode)
  gemm (CUDA)     tiled over tokens x outputs (prefill)
  dp4a (CUDA, i2) the i2 codes as int32 words into `__dp4a` (cuda_ternary.py)
  quantize_dp4a   CUDA decode: x f32 -> dp4a activation words, code sum, a_scale in one kernel

A new packing format joins by registering in ir/packing.py and adding a `TirDecoder` to
`decode.TIR_DECODERS` (and, optionally, a kernel of its own here).
"""

from .common import KPAD, padded_k, scheduled
from .compute import (DOT16_LANES, DOT16_MAX_K, LUT_FORMATS, dot16_te, dot_te, gqa_pv_te, gqa_scores_te, lut_te,
                      quantize_te)
from .cpu import FLOAT_LANES, attention_pv_func, attention_scores_func, dense_func, kv_append_func, kv_write_func
from .cuda import (DP4A_FORMAT, GEMM_TOKEN_TILE, dp4a_gemm_func, dp4a_gemv_func, dp4a_pack_func, gqa_decode_pv_func,
                   gqa_decode_scores_func, quantize_dp4a_func, quantize_dp4a_te)
from .decode import SUPPORTED_FORMATS, TIR_DECODERS, TirDecoder, decoded_te, decoder, w_expr
from .select import (DEFAULT_TUNER, KernelTiming, KernelTuner, available_kinds, build_standalone, choose_kind,
                     default_cache_file, host_key,
                     matmul_func, measure_kinds, quantize_func, run_standalone, static_kind, target_runs_here)
from .vnni import VNNI_FEATURES, VNNI_FORMAT, VNNI_TILES, target_has_vnni

__all__ = [
    "KPAD", "padded_k", "scheduled", "DOT16_LANES", "DOT16_MAX_K", "LUT_FORMATS", "dot16_te", "dot_te", "gqa_pv_te",
    "gqa_scores_te", "lut_te", "quantize_te", "FLOAT_LANES", "attention_pv_func", "attention_scores_func",
    "dense_func", "kv_append_func", "kv_write_func", "DP4A_FORMAT", "GEMM_TOKEN_TILE", "dp4a_gemm_func", "dp4a_gemv_func",
    "dp4a_pack_func", "quantize_dp4a_func", "quantize_dp4a_te", "gqa_decode_pv_func", "gqa_decode_scores_func", "SUPPORTED_FORMATS", "TIR_DECODERS",
    "TirDecoder", "decoded_te", "decoder", "w_expr", "DEFAULT_TUNER", "KernelTiming", "KernelTuner", "default_cache_file", "host_key",
    "available_kinds", "build_standalone", "choose_kind", "matmul_func", "measure_kinds", "quantize_func",
    "run_standalone", "static_kind", "target_runs_here", "VNNI_FEATURES", "VNNI_FORMAT", "VNNI_TILES",
    "target_has_vnni",
]
