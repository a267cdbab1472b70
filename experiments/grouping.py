"""Grouping ablation: groups 1/2/4/8 of the q/k/v projections and of the FFN.

  python experiments/grouping.py --root /tmp/groups_sst2 --task sst2 --groups 1,2,4,8 \
      --seeds 0,1 --set data.max_len=64
  python experiments/report.py --root /tmp/groups_sst2

Cells `qkv{g}_ffn{h}`: q/k/v groups g and FFN (intermediate and output) groups h, for g, h in
--groups (a full grid; --axes qkv or ffn varies one while the other stays at --fixed).
The post-attention projection keeps 1 group, as in the paper. qkv1_ffn1 is the BERT-like
model, qkv4_ffn4 the SqueezeBERT grouping.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import common  # noqa: E402

def define_flags():
  """Flags of this script (defined only when it runs: tests import make_cells)."""
  flags.DEFINE_string("groups", "1,2,4,8", "group counts")
  flags.DEFINE_enum("axes", "both", ["both", "grid", "qkv", "ffn"], "grid: every (qkv, ffn) "
                    "pair; both: the diagonal (same groups) plus one axis at a time; qkv / ffn: "
                    "vary one, the other at --fixed")
  flags.DEFINE_integer("fixed", 1, "groups of the axis that is not varied")
  flags.DEFINE_string("variant", "squeezebert-small", "model preset (hidden/heads/FFN sizes)")
  common.define_flags()


FLAGS = flags.FLAGS


def make_cells(groups, axes, fixed, variant):
  if any(g < 1 for g in groups):
    raise ValueError(f"--groups must be >= 1, got {groups}")
  if axes == "grid":
    pairs = [(g, h) for g in groups for h in groups]
  elif axes == "qkv":
    pairs = [(g, fixed) for g in groups]
  elif axes == "ffn":
    pairs = [(fixed, h) for h in groups]
  else:
    pairs = [(g, g) for g in groups] + [(g, fixed) for g in groups] + [(fixed, h) for h in groups]
  cells, seen = [], set()
  for g, h in pairs:
    if (g, h) in seen:
      continue
    seen.add((g, h))
    cells.append(common.Cell(
        f"qkv{g}_ffn{h}",
        {"model.variant": variant, "model.q_groups": g, "model.k_groups": g,
         "model.v_groups": g, "model.post_attention_groups": 1,
         "model.intermediate_groups": h, "model.output_groups": h},
        info=dict(qkv_groups=g, ffn_groups=h)))
  return cells


def main(argv):
  del argv
  cells = make_cells(common.int_list(FLAGS.groups, "groups"), FLAGS.axes, FLAGS.fixed,
                     FLAGS.variant)
  common.run_sweep(cells, FLAGS)


if __name__ == "__main__":
  define_flags()
  app.run(main)
