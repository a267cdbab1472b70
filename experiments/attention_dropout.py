"""Does dropping attention-probability dropout change accuracy? (flash kernels have none)

  python experiments/attention_dropout.py --root /tmp/attn_dropout --task sst2 --seeds 0,1,2 \
      --steps 1000 --set data.max_len=64 --set learning_rate=3e-4
  python experiments/report.py --root /tmp/attn_dropout

Cells: `attn_dropout_0.1` (the HF default, trained on the manual attention path) and
`attn_dropout_0` (attention_impl=xla: jax.nn.dot_product_attention, the path cuDNN flash
attention replaces on a GPU). Hidden dropout stays at 0.1 in both.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import common  # noqa: E402


def define_flags():
  flags.DEFINE_string("variant", "squeezebert-small", "model preset")
  common.define_flags(default_seeds="0,1,2")


FLAGS = flags.FLAGS


def make_cells(variant: str):
  return [
      common.Cell("attn_dropout_0.1", {"model.variant": variant,
                                       "model.attention_probs_dropout_prob": 0.1,
                                       "model.attention_impl": "manual"},
                  info=dict(attention_dropout=0.1, attention="manual")),
      common.Cell("attn_dropout_0", {"model.variant": variant,
                                     "model.attention_probs_dropout_prob": 0.0,
                                     "model.attention_impl": "xla"},
                  info=dict(attention_dropout=0.0, attention="xla")),
  ]


def main(argv):
  del argv
  common.run_sweep(make_cells(FLAGS.variant), FLAGS)


if __name__ == "__main__":
  define_flags()
  app.run(main)
