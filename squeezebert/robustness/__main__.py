"""python -m squeezebert.robustness --workdir RUN [--model DIR] [--attack char_swap,hotflip,...]

Dev accuracy of a trained GLUE classifier (the run's best checkpoint) under character noise
(char_swap, char_delete, char_insert, char_keyboard), word noise (word_drop, word_repeat,
word_shuffle) at each --rates value, and a HotFlip token-substitution attack with --budget
flips. --model: evaluate another model of the same run instead (its int8 conversion from
`python -m squeezebert.quant`; the attack then transfers the float model's gradients).
Writes --out (JSON) and the same name with .md (a table); seeds fixed by --seed.
"""

from absl import app, flags

from squeezebert import cli
from squeezebert.robustness import evaluate

flags.DEFINE_string("workdir", None, "training workdir of a GLUE classifier", required=True)
flags.DEFINE_string("model", "", "evaluate this model dir instead (e.g. the run's int8 model)")
flags.DEFINE_string("attack", ",".join(evaluate.ATTACKS), "comma-separated: "
                    + ", ".join(evaluate.ATTACKS))
flags.DEFINE_string("rates", ",".join(map(str, evaluate.DEFAULT_RATES)), "noise rates")
flags.DEFINE_integer("budget", 3, "HotFlip: maximum substitutions per example")
flags.DEFINE_integer("seed", 0, "noise seed")
flags.DEFINE_integer("limit", 0, ">0: only the first N dev examples")
flags.DEFINE_string("out", None, "result JSON path (default: WORKDIR/robustness.json)")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  try:
    rates = [float(r) for r in FLAGS.rates.split(",") if r]
  except ValueError:
    raise app.UsageError(f"--rates must be comma-separated numbers, got {FLAGS.rates!r}")
  res = evaluate.run(FLAGS.workdir, [a for a in FLAGS.attack.split(",") if a], rates,
                     seed=FLAGS.seed, budget=FLAGS.budget, limit=FLAGS.limit,
                     model_dir=FLAGS.model or None)
  out = FLAGS.out or f"{FLAGS.workdir.rstrip('/')}/robustness.json"
  evaluate.write(res, out)
  print(evaluate.table(res))
  print(f"wrote {out}")


if __name__ == "__main__":
  cli.run(main)
