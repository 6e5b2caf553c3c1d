"""TVM backend: lower ternc IR to Relax + TensorIR (lowering/, kernels/), compile (build.py),
run artifacts on the TVM runtime only (runtime.py). Submodules are imported lazily so that the
runtime path never loads the TVM compiler library."""
