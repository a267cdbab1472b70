"""python -m squeezebert.quant --workdir RUN --mode ptq|int8 --out DIR [quant flags]

See squeezebert/quant/cli.py. Quantization flags left unset keep the defaults (ptq, or a float
run) or the QAT run's own settings (int8).
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from squeezebert import cli  # noqa: E402
from squeezebert.data import keep_tensorflow_off_accelerators  # noqa: E402
from squeezebert.quant import cli as quant_cli  # noqa: E402

flags.DEFINE_string("workdir", None, "training workdir (run.json + checkpoints)")
flags.DEFINE_enum("mode", "int8", ["ptq", "int8"], "ptq: quantize afresh; int8: as trained")
flags.DEFINE_string("out", None, "directory for the int8 model and quant_metrics.json")
flags.DEFINE_integer("weight_bits", None, "8 | 4")
flags.DEFINE_integer("act_bits", None, "8 | 16 | 0 (weights only)")
flags.DEFINE_string("act_mode", None, "dynamic | static")
flags.DEFINE_string("modules", None, "comma-separated modules (squeezebert.quant.MODULES)")
flags.DEFINE_integer("calib_batches", None, "static ranges: training batches to calibrate on")
flags.DEFINE_bool("eval_source", True, "also evaluate the source (float / QAT) model")
config_flags.DEFINE_config_file(
    "config", None, "the run's training config (default: <workdir>/train_config.json)",
    lock_config=False)
flags.mark_flags_as_required(["workdir", "out"])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  keep_tensorflow_off_accelerators()
  names = ("weight_bits", "act_bits", "act_mode", "modules", "calib_batches")
  overrides = {n: getattr(FLAGS, n) for n in names if getattr(FLAGS, n) is not None}
  result = quant_cli.run(FLAGS.workdir, FLAGS.mode, FLAGS.out, overrides, config=FLAGS.config,
                         eval_source=FLAGS.eval_source)
  print(json.dumps({k: result[k] for k in ("tag", "int8", "source", "size_ratio")
                    if k in result}, indent=2))


if __name__ == "__main__":
  cli.run(main)
