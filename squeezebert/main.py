"""Entry point: train, evaluate or predict.

  python -m squeezebert.main --config=configs/glue.py:task=sst2 --workdir=DIR     # train
  python -m squeezebert.main --workdir=DIR --mode=eval|predict                    # a run's own config

Kept tiny on purpose: the logic is in squeezebert.train.trainer, importable from tests and
notebooks.
"""

import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # TF only reads data: no oneDNN banner

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from squeezebert import cli  # noqa: E402
from squeezebert import workdir as workdir_lib  # noqa: E402
from squeezebert.data import keep_tensorflow_off_accelerators  # noqa: E402
from squeezebert.train import distributed, trainer  # noqa: E402

flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and predictions.")
config_flags.DEFINE_config_file(
    "config", None, "Training config file (optional with --mode=eval|predict on a workdir: "
    "its saved config is used).", lock_config=True)
flags.DEFINE_enum("mode", None, ["train", "eval", "predict"],
                  "overrides config.mode (eval/predict: the best checkpoint)")
flags.DEFINE_string("coordinator_address", None, "Multi-process runs: host:port of process "
                    "0 (else $JAX_COORDINATOR_ADDRESS or the cluster's own).")
flags.DEFINE_integer("num_processes", None, "Multi-process runs: how many (else "
                     "$JAX_NUM_PROCESSES or the cluster's).")
flags.DEFINE_integer("process_id", None, "Multi-process runs: this process's index (else "
                     "$JAX_PROCESS_ID or the cluster's).")
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS


def load_config():
  """--config, or (eval/predict without --config) the workdir's saved train config."""
  if FLAGS.config is not None:
    config = FLAGS.config
    if FLAGS.mode:
      config.unlock()
      config.mode = FLAGS.mode
    return config
  if FLAGS.mode not in ("eval", "predict"):
    raise app.UsageError("--config is required to train (eval/predict of a workdir can leave "
                         "it out: --mode=eval|predict)")
  config = workdir_lib.read_train_config(FLAGS.workdir)
  config.mode = FLAGS.mode
  return config


def summary(result: dict, workdir: str, wall_s: float) -> str:
  scalars = {k: v for k, v in result.items() if isinstance(v, (int, float)) and k != "step"}
  lines = [f"done in {wall_s / 60:.1f} min: step {result.get('step')}, "
           + ", ".join(f"{k} {v:.4g}" for k, v in scalars.items() if k != "best_step")]
  if result.get("best_step") is not None:
    best = ", ".join(f"{k} {v:.4g}" for k, v in (result.get("best_metrics") or {}).items())
    lines.append(f"best checkpoint: step {result['best_step']}" + (f" ({best})" if best else ""))
  files = [f for f in (trainer.FINAL_FILE, "metrics.jsonl", "checkpoints", "predictions", "tb")
           if workdir_lib.exists(os.path.join(workdir, f))]
  if result.get("preempted"):
    lines.insert(0, f"preempted at step {result.get('step')}: rerun the same command to resume")
  lines.append(f"files in {workdir}: {', '.join(files)}")
  lines += [f"{k}: {v}" for k, v in result.items() if k.endswith("_file")]
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  keep_tensorflow_off_accelerators()
  config = load_config()
  # Before any other JAX call (flags > environment > cluster auto-detection).
  mode = config.get("distributed", "auto")
  if FLAGS.coordinator_address and mode == "auto":
    mode = True
  distributed.initialize(mode, FLAGS.coordinator_address, FLAGS.num_processes,
                         FLAGS.process_id)
  logging.debug("config:\n%s", config)  # the full config goes to <workdir>/train_config.json
  t0 = time.time()
  result = trainer.train_and_evaluate(config, FLAGS.workdir)
  if distributed.is_main():
    print(summary(result, FLAGS.workdir, time.time() - t0))
  logging.info("result: %s", json.dumps(result, default=str))


if __name__ == "__main__":
  cli.run(main)
