"""Which examples a data shard holds, and which shards a process reads."""

from __future__ import annotations


def shard_range(n: int, index: int, count: int) -> tuple[int, int]:
  """[start, end) of shard `index` of `count` over n examples (sizes differ by at most 1)."""
  if not 0 <= index < count:
    raise ValueError(f"shard index {index} outside [0, {count})")
  return index * n // count, (index + 1) * n // count


def owned_shards(count: int, process_index: int, process_count: int) -> list[int]:
  """The contiguous block of shards a process reads: its rows of every global batch are the
  concatenation of these shards' rows, in shard order."""
  if count % process_count:
    raise ValueError(f"config.data.shards={count} must be a multiple of the process count "
                     f"{process_count}")
  per = count // process_count
  return list(range(process_index * per, (process_index + 1) * per))
