"""The machine a benchmark runs on: environment record, memory, and peak FLOP/s for MFU.

Peak table: dense (no sparsity) FLOP/s per chip from the vendors' datasheets. "fp32" is what
XLA runs a float32 dot as by default: TF32 tensor cores on A100/H100/H200, bf16 MXU passes
on TPU (so TPU fp32 uses the bf16 figure). CPU has no table: the bench measures its own
dense-matmul peak (`measure_cpu_peak`), per dtype, on the cores it has.

Memory. GPU/TPU: `device.memory_stats()['peak_bytes_in_use']` (process-wide peak so far:
run one configuration per process for a clean figure). CPU has no allocator stats: the
compiled executable's `memory_analysis()` (argument + output + temp bytes) stands in, and
the process max RSS is reported beside it.
"""

from __future__ import annotations

import functools
import os
import platform
import resource
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# (substring of jax's device_kind, bf16 FLOP/s, fp32 FLOP/s as XLA runs it), first match wins.
PEAK_FLOPS = (
    ("H200", 989e12, 495e12),
    ("H100", 989e12, 495e12),      # SXM; the PCIe card is ~756/378
    ("A100", 312e12, 156e12),
    ("TPU v6", 918e12, 918e12),     # v6e (Trillium); device_kind "TPU v6 lite"
    ("TPU v5 lite", 197e12, 197e12),  # v5e
    ("TPU v5", 459e12, 459e12),     # v5p
    ("TPU v4", 275e12, 275e12),
)


def table_peak(device_kind: str, dtype: str) -> float | None:
  """Datasheet peak for this device kind and compute dtype (None: not in the table)."""
  for key, bf16, fp32 in PEAK_FLOPS:
    if key.lower() in device_kind.lower():
      return bf16 if dtype in ("bfloat16", "float16") else fp32
  return None


@functools.lru_cache(maxsize=None)
def measure_matmul_peak(dtype: str = "float32", n: int = 2048, repeats: int = 5) -> float:
  """Best dense-matmul FLOP/s of an n x n x n jitted dot on the default device (on CPU the
  bench's 'peak': what XLA:CPU's GEMM reaches on these cores)."""
  dt = jnp.dtype(dtype)
  a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), np.float32), dt)
  b = jnp.asarray(np.random.default_rng(1).standard_normal((n, n), np.float32), dt)
  f = jax.jit(jnp.dot).lower(a, b).compile()
  jax.block_until_ready(f(a, b))
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(f(a, b))
    best = min(best, time.perf_counter() - t0)
  return 2 * n**3 / best


def peak_flops(dtype: str) -> dict:
  """{'flops': peak FLOP/s, 'source': where it came from} for the default device."""
  dev = jax.devices()[0]
  if dev.platform == "cpu":
    return dict(flops=measure_matmul_peak(dtype), source=f"measured: best 2048^3 {dtype} jnp.dot "
                f"on {os.cpu_count()} CPU cores")
  peak = table_peak(dev.device_kind, dtype)
  return dict(flops=peak, source=f"datasheet table ({dev.device_kind})" if peak else
              f"unknown device kind {dev.device_kind!r}: no MFU")


def memory_report(compiled, device) -> dict:
  out: dict[str, Any] = {}
  try:
    stats = device.memory_stats()
  except Exception:
    stats = None
  if stats and "peak_bytes_in_use" in stats:
    out["peak_bytes"] = int(stats["peak_bytes_in_use"])
    out["peak_source"] = "device_peak_bytes_in_use"
  try:
    ma = compiled.memory_analysis()
  except Exception:
    ma = None
  if ma is not None:
    parts = {k: int(getattr(ma, f"{k}_size_in_bytes", 0) or 0)
             for k in ("argument", "output", "temp", "alias", "generated_code")}
    out["compiled"] = parts
    compiled_total = parts["argument"] + parts["output"] + parts["temp"] - parts["alias"]
    out["compiled_total_bytes"] = compiled_total
    if "peak_bytes" not in out:
      out["peak_bytes"] = compiled_total
      out["peak_source"] = "compiled_memory_analysis"
  # ru_maxrss is KiB on Linux, bytes on macOS.
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  out["process_max_rss_bytes"] = int(rss if platform.system() == "Darwin" else rss * 1024)
  if "peak_bytes" not in out:
    out["peak_bytes"] = out["process_max_rss_bytes"]
    out["peak_source"] = "process_max_rss"
  return out


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def environment() -> dict:
  dev = jax.devices()[0]
  return dict(backend=jax.default_backend(), device=str(dev), device_kind=dev.device_kind,
              cpu_model=_cpu_model(),
              device_count=jax.device_count(), jax_version=jax.__version__,
              cpu_count=os.cpu_count(), load_avg=list(os.getloadavg()),
              xla_flags=os.environ.get("XLA_FLAGS", ""))


