"""Benchmarks: inference latency (`inference`), training step speed and MFU (`train`),
FLOP counts (`flops`), the machine and its peak (`device`). CLI: python -m squeezebert.bench."""

from squeezebert.bench.device import environment, measure_matmul_peak, memory_report, peak_flops
from squeezebert.bench.flops import analytic_flops, head_flops, train_flops, xla_cost
from squeezebert.bench.inference import (compare, compare_paths, compare_quant, make_config,
                                         model_state, quant_table, run_benchmark, saved_sizes,
                                         summary)
from squeezebert.bench.train import compare_hf, run_train_benchmark
