"""Run logging: TensorBoard event files, a JSON-lines metrics file, a console progress bar."""

from __future__ import annotations

import json
import os
import time

from absl import logging
from etils import epath


def _tensorflow():
  """TensorFlow (the event-file writer), or None where it is not installed (then only
  metrics.jsonl is written, with one warning)."""
  try:
    import tensorflow as tf  # lazy: importing TensorFlow costs seconds
  except ImportError:
    return None
  return tf


def _kept_rows(path: str, step: int) -> tuple[list[str], int]:
  """The rows of steps <= `step` (the checkpoint a run resumes from), and how many rows the
  file had."""
  p = epath.Path(path)
  if not p.exists():
    return [], 0
  lines = p.read_text().splitlines(keepends=True)
  keep = []
  for line in lines:
    try:
      row_step = json.loads(line).get("step", 0)
    except ValueError:  # a line cut by a kill: dropped
      continue
    if row_step <= step:
      keep.append(line if line.endswith("\n") else line + "\n")
  return keep, len(lines)


class MetricLogger:
  """Writes <workdir>/metrics.jsonl and TensorBoard events under <workdir>/tb/<split>.
  Local files are appended to; on object stores (gs://), which cannot append, the file is
  rewritten whole at each write (it holds a few rows per eval/log step)."""

  def __init__(self, workdir: str, is_main: bool = True, resume_step: int = 0):
    self.is_main, self.workdir, self._tb = is_main, workdir, {}
    path = self.path = os.path.join(workdir, "metrics.jsonl")
    self._remote = "://" in path
    self._rows, self._jsonl = [], None
    if is_main:
      rows, n = _kept_rows(path, resume_step)  # steps a resumed run redoes are logged once
      if self._remote:
        self._rows = rows
      else:
        if len(rows) != n:
          with open(path + ".tmp", "w") as f:
            f.writelines(rows)
          os.replace(path + ".tmp", path)
        self._jsonl = open(path, "a")
    self._tf = _tensorflow() if is_main else None
    if is_main and self._tf is None:
      logging.warning("TensorFlow is not installed: no TensorBoard events, metrics go to "
                      "%s only", os.path.join(workdir, "metrics.jsonl"))

  def _writer(self, split):
    if split not in self._tb:
      self._tb[split] = self._tf.summary.create_file_writer(
          os.path.join(self.workdir, "tb", split))
    return self._tb[split]

  def write(self, split: str, step: int, metrics: dict):
    if not self.is_main:
      return
    scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))
               or getattr(v, "ndim", 1) == 0}
    row = json.dumps(dict(split=split, step=step, time=time.time(), **scalars)) + "\n"
    if self._remote:
      self._rows.append(row)
      epath.Path(self.path).write_text("".join(self._rows))
    else:
      self._jsonl.write(row)
      self._jsonl.flush()
    if self._tf is None:
      return
    with self._writer(split).as_default():
      for k, v in scalars.items():
        self._tf.summary.scalar(k, v, step=step)
    self._writer(split).flush()

  def close(self):
    if self._jsonl:
      self._jsonl.close()
    for w in self._tb.values():
      w.close()


class Progress:
  """tqdm bar with ETA; plain periodic log lines when disabled (CI, non-tty)."""

  def __init__(self, total: int, initial: int = 0, enabled: bool = True):
    self.bar = None
    if enabled:
      from tqdm import tqdm
      self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)
    self.total, self.last = total, initial

  def update(self, step: int):
    if self.bar is not None:
      self.bar.update(step - self.last)
    self.last = step

  def set_postfix(self, **kw):
    if self.bar is not None:
      self.bar.set_postfix({k: f"{v:.4g}" for k, v in kw.items()})
    else:
      logging.info("step %d/%d %s", self.last, self.total, kw)

  def close(self):
    if self.bar is not None:
      self.bar.close()
