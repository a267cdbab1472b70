"""Layer reduction: depth x initialisation x distillation, one trainer run per cell.

  python experiments/layer_reduction.py --root /tmp/lr_sst2 --task sst2 \
      --init_from /path/to/pretrained_dir --variant minilm-l6-h384 --depths 6,4,3,2 \
      --inits every_other --distill 0,1 --seeds 0,1 --set data.max_len=64
  python experiments/report.py --root /tmp/lr_sst2

Cells: `L{D}_full` (the deepest depth D: fine-tuned from --init_from, or from scratch when it
is empty), then for every smaller depth d, init in --inits and distillation in --distill:
`L{d}_{init}_{ce|kd}`:
  scratch      random init (the --variant preset with d layers)
  first_k      the bottom d layers of the deeper checkpoint
  every_other  d evenly spaced layers incl. first and last (DistilBERT: 12 -> [0,2,4,7,9,11])
  ce / kd      plain cross-entropy / distilled from the same seed's `L{D}_full` (the full model
               fine-tuned on the task; --alpha, --temperature)
The deeper checkpoint is --init_from (pretrained, as DistilBERT) or, without it, the same seed's
L{D}_full workdir. Finished cells are skipped; an interrupted one resumes.
"""

from __future__ import annotations

import sys
import os

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import common  # noqa: E402

def define_flags():
  """Flags of this script (defined only when it runs: tests import make_cells)."""
  flags.DEFINE_string("depths", "6,4,3,2", "layer counts; the largest is the full model")
  flags.DEFINE_string("inits", "every_other", "comma-separated: scratch, first_k, every_other")
  flags.DEFINE_string("distill", "0,1", "comma-separated 0/1: without / with distillation")
  flags.DEFINE_string("init_from", "", "pretrained checkpoint of the full depth (HF dir, ours, "
                      "workdir); empty: the full model trains from scratch")
  flags.DEFINE_string("variant", "squeezebert-small", "model preset for scratch cells (use the "
                      "preset matching --init_from, e.g. minilm-l6-h384)")
  flags.DEFINE_float("alpha", 0.5, "distillation mixing weight")
  flags.DEFINE_float("temperature", 2.0, "distillation temperature")
  common.define_flags()


FLAGS = flags.FLAGS
INITS = ("scratch", "first_k", "every_other")


def make_cells(depths, inits, distill, init_from, variant, alpha, temperature, root):
  if any(i not in INITS for i in inits):
    raise ValueError(f"--inits: unknown {sorted(set(inits) - set(INITS))}; known: {INITS}")
  if any(d not in (0, 1) for d in distill):
    raise ValueError(f"--distill takes 0 and/or 1, got {distill}")
  if any(d < 1 for d in depths):
    raise ValueError(f"--depths must be >= 1, got {depths}")
  full_depth = max(depths)
  full = common.Cell(f"L{full_depth}_full", info=dict(init="pretrained" if init_from else
                                                      "scratch", distill=False))
  full.overrides = {"model.variant": variant, "model.num_hidden_layers": full_depth}
  if init_from:
    full.overrides = {"init_from": init_from}
  cells = [full]

  def late(init, kd):
    def f(seed):
      out = {}
      full_wd = common.workdir(root, full.name, seed)
      if init != "scratch":
        out["init_from"] = init_from or full_wd
      if kd:
        out["distill.teacher"] = full_wd
      return out
    return f

  for d in sorted(set(depths) - {full_depth}, reverse=True):
    for init in inits:
      for kd in distill:
        over = {"model.num_hidden_layers": d}
        if init == "scratch":
          over["model.variant"] = variant
        else:
          over["init_layers"] = init
        if kd:
          over.update({"distill.alpha": alpha, "distill.temperature": temperature})
        cells.append(common.Cell(f"L{d}_{init}_{'kd' if kd else 'ce'}", over,
                                 info=dict(init=init, distill=bool(kd)),
                                 late_overrides=late(init, kd)))
  return cells


def main(argv):
  del argv
  cells = make_cells(common.int_list(FLAGS.depths, "depths"),
                     [x for x in FLAGS.inits.split(",") if x],
                     common.int_list(FLAGS.distill, "distill"), FLAGS.init_from, FLAGS.variant,
                     FLAGS.alpha, FLAGS.temperature, FLAGS.root)
  common.run_sweep(cells, FLAGS)


if __name__ == "__main__":
  define_flags()
  app.run(main)
