"""Backends: TVM (CPU / aarch64 / CUDA) and artifacts (`artifact.build_artifact`, `artifact.load_artifact`)."""
