"""Helpers shared by tasks whose metrics need host-side metadata of each loaded split (NER, QA).

The trainer calls `task.metrics(collected)` without a split name, so each loaded split gets its own
range of feature idx values and the metadata is found from the idx of the collected rows.
"""

from __future__ import annotations

import numpy as np

# Feature idx = SPLIT_STRIDE * (split number) + sentence number, so metrics() can tell which
# loaded split a collected batch came from (the trainer passes no split name).
SPLIT_STRIDE = 1 << 24


def split_base(registry: dict, split: str) -> int:
  if split not in registry:
    registry[split] = {"base": SPLIT_STRIDE * (len(registry) + 1)}
  return registry[split]["base"]


def lookup_split(registry: dict, idx: np.ndarray):
  """(split name, its metadata, local indices) of the real rows' idx values."""
  base = int(idx[0]) // SPLIT_STRIDE * SPLIT_STRIDE
  if np.any(idx // SPLIT_STRIDE * SPLIT_STRIDE != base):
    raise ValueError("collected outputs mix several splits")
  for split, meta in registry.items():
    if meta["base"] == base:
      return split, meta, idx - base
  raise ValueError(f"outputs with idx {int(idx[0])} come from no split this task loaded")
