"""Simulation benches: Amaranth-simulator stream drivers (amaranth_tb.py), the cocotb bench of the
TLMM core (cocotb_tlmm.py) and its Verilator/Icarus runner with build cache and lint (rtl.py)."""
