"""Quantization ablation: fp32 vs post-training quantization vs quantization-aware training.

  python experiments/qat.py --root /tmp/qat_sst2 --task sst2 --bits 8,4 \
      --modules all --modules ffn --seeds 0 --set data.max_len=64
  python experiments/report.py --root /tmp/qat_sst2

Cells (weight bits b in --bits, activations 8-bit, module sets from --modules):
  fp32                  the float model (trained)
  ptq_w{b}a8            fp32's best checkpoint quantized after training (dynamic per-token
                        activation ranges), an int8 model
  ptq_w8a8_static       the same with static ranges calibrated on training batches
  qat_w{b}a8[_mods]     trained with qwix QAT (fake quantization, straight-through gradients);
                        its metric is the fake-quantized model's
  qat_w{b}a8[_mods]_int8  that QAT run converted to the real int8 model (int8 x int8 -> int32
                        matmuls): the deployable accuracy, latency and size
--modules: "all" (qkv, attention matmuls, post-attention, FFN, pooler, head) or a '+'-joined
subset of squeezebert.quant.MODULES, e.g. ffn or qkv+ffn (repeat the flag for several sets).
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import common  # noqa: E402

def define_flags():
  """Flags of this script (defined only when it runs: tests import make_cells)."""
  flags.DEFINE_string("bits", "8,4", "weight bit widths (8, 4)")
  flags.DEFINE_multi_string("modules", ["all"], "quantized module sets: all, or e.g. ffn, qkv+ffn")
  flags.DEFINE_string("variant", "squeezebert-small", "model preset")
  flags.DEFINE_bool("static", True, "add the PTQ w8a8 cell with static (calibrated) ranges")
  common.define_flags(default_seeds="0")


FLAGS = flags.FLAGS


def make_cells(bits, module_sets, variant, static=True):
  from squeezebert.quant.config import DEFAULT_MODULES, MODULES  # noqa: PLC0415
  if any(b not in (4, 8) for b in bits):
    raise ValueError(f"--bits takes 8 and/or 4, got {bits}")
  fp32 = common.Cell("fp32", {"model.variant": variant},
                     info=dict(method="fp32", weight_bits=32, act_bits=32, modules="-"))
  cells = [fp32]
  for b in bits:
    cells.append(common.Cell(f"ptq_w{b}a8", source="fp32",
                             quant=dict(mode="ptq", weight_bits=b, act_bits=8),
                             info=dict(method="ptq", weight_bits=b, act_bits=8, modules="all")))
  if static and 8 in bits:
    cells.append(common.Cell("ptq_w8a8_static", source="fp32",
                             quant=dict(mode="ptq", weight_bits=8, act_bits=8, act_mode="static"),
                             info=dict(method="ptq-static", weight_bits=8, act_bits=8,
                                       modules="all")))
  for mods in module_sets:
    if mods == "all":
      mod_list, suffix = DEFAULT_MODULES, ""
    else:
      mod_list = tuple(mods.split("+"))
      bad = sorted(set(mod_list) - set(MODULES))
      if bad:
        raise ValueError(f"--modules {mods!r}: unknown {bad}; known: {MODULES}")
      suffix = "_" + "+".join(mod_list)
    for b in bits:
      name = f"qat_w{b}a8{suffix}"
      info = dict(weight_bits=b, act_bits=8, modules=mods)
      cells.append(common.Cell(name, {"model.variant": variant, "quant.mode": "qat",
                                      "quant.weight_bits": b, "quant.act_bits": 8,
                                      "quant.modules": ",".join(mod_list)},
                               info=dict(method="qat", **info)))
      cells.append(common.Cell(name + "_int8", source=name, quant=dict(mode="int8"),
                               info=dict(method="qat-int8", **info)))
  return cells


def main(argv):
  del argv
  cells = make_cells(common.int_list(FLAGS.bits, "bits"), FLAGS.modules, FLAGS.variant,
                     FLAGS.static)
  common.run_sweep(cells, FLAGS)


if __name__ == "__main__":
  define_flags()
  app.run(main)
