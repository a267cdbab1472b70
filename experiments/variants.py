"""The variant table: one row per model family member, same task, same trainer.

  python experiments/variants.py --root /tmp/variants_sst2 --task sst2 --seeds 0,1 \
      --set data.max_len=64
  python experiments/report.py --root /tmp/variants_sst2

Cells (all from the --variant preset's sizes; ModelConfig fields in brackets):
  bert_like       every projection dense (all groups 1)
  squeezebert     the paper's grouping: q/k/v 4, post-attention 1, FFN 4
  distilbert_like half the layers, initialised from every other layer of the same seed's
                  bert_like run (init_layers=every_other) and distilled from it
  albert_like     factorized embeddings [embedding_size = hidden / 4, then E -> H] and one
                  block shared by every layer [share_layers]
  squeeze_expand  SqueezeBERT + a depthwise sequence conv before each grouped FFN expand
                  (depthwise-separable) [separable_kernel=--kernel]
  hybrid          SqueezeBERT whose --conv_layers (default: the lower half) replace
                  self-attention with a depthwise sequence conv [conv_layers, conv_kernel]
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import common  # noqa: E402

def define_flags():
  """Flags of this script (defined only when it runs: tests import make_cells)."""
  flags.DEFINE_string("variant", "squeezebert-small", "model preset giving the sizes")
  flags.DEFINE_integer("kernel", 7, "depthwise conv width (odd) of squeeze_expand and hybrid")
  flags.DEFINE_string("conv_layers", "", "hybrid: layer indices with conv instead of attention "
                      "(default: the lower half)")
  common.define_flags()


FLAGS = flags.FLAGS

ALL_ONE = {f"model.{g}_groups": 1 for g in ("q", "k", "v", "post_attention", "intermediate",
                                            "output")}


def make_cells(preset: dict, variant: str, kernel: int, conv_layers: str, root: str):
  """preset: the ModelConfig fields of --variant (sizes)."""
  n, d = preset["num_hidden_layers"], preset["hidden_size"]
  if n < 2:
    raise ValueError(f"--variant {variant} has {n} layer(s): the table needs >= 2")
  conv_layers = conv_layers or ",".join(str(i) for i in range(n // 2))
  base = {"model.variant": variant}
  bert = common.Cell("bert_like", {**base, **ALL_ONE}, info=dict(family="bert_like"))

  def from_bert(seed):
    wd = common.workdir(root, bert.name, seed)
    return {"init_from": wd, "distill.teacher": wd}

  return [
      bert,
      common.Cell("squeezebert", dict(base), info=dict(family="squeezebert")),
      common.Cell("distilbert_like", {"model.num_hidden_layers": n // 2,
                                      "init_layers": "every_other"},
                  info=dict(family="distilbert_like"), late_overrides=from_bert),
      common.Cell("albert_like", {**base, **ALL_ONE, "model.embedding_size": max(d // 4, 1),
                                  "model.share_layers": True}, info=dict(family="albert_like")),
      common.Cell("squeeze_expand", {**base, "model.separable_kernel": kernel},
                  info=dict(family="squeeze_expand")),
      common.Cell("hybrid", {**base, "model.conv_layers": conv_layers,
                             "model.conv_kernel": kernel}, info=dict(family="hybrid")),
  ]


def main(argv):
  del argv
  from squeezebert.model.config import PRESETS, ModelConfig  # noqa: PLC0415
  variant = "tiny" if FLAGS.scale == "tiny" else FLAGS.variant
  if variant not in PRESETS:
    raise ValueError(f"unknown --variant {variant!r}; known: {sorted(PRESETS)}")
  preset = ModelConfig(**PRESETS[variant]).to_dict()
  cells = make_cells(preset, variant, FLAGS.kernel, FLAGS.conv_layers, FLAGS.root)
  common.run_sweep(cells, FLAGS)


if __name__ == "__main__":
  define_flags()
  app.run(main)
