"""Entry point: python -m squeezebert.main --config=configs/glue.py:task=sst2 --workdir=DIR

Kept tiny on purpose: the logic is in squeezebert.train.trainer, importable from tests and
notebooks.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from squeezebert import cli  # noqa: E402
from squeezebert.data import keep_tensorflow_off_accelerators  # noqa: E402
from squeezebert.train.trainer import train_and_evaluate  # noqa: E402

flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and predictions.")
config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  keep_tensorflow_off_accelerators()
  logging.info("config:\n%s", FLAGS.config)
  result = train_and_evaluate(FLAGS.config, FLAGS.workdir)
  print({k: v for k, v in result.items()})


if __name__ == "__main__":
  cli.run(main)
