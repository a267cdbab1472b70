"""python -m squeezebert.convert --from DIR --to DIR [--format hf|ours] [--head H]

Direction is read from the source: an HF directory (config.json) converts to ours, one of our
model directories or a training workdir exports to HF. `--format` forces the target format.
"""

import os

from absl import app, flags, logging

from squeezebert import cli
from squeezebert import assets as assets_lib
from squeezebert import convert, load
from squeezebert import workdir as workdir_lib

flags.DEFINE_string("from", None, "source directory (HF checkpoint, ours, or a training workdir)")
flags.DEFINE_string("to", None, "target directory")
flags.DEFINE_enum("format", None, ["hf", "ours"], "target format (default: the other one)")
flags.DEFINE_string("head", None, "head to load (default: from the checkpoint)")
flags.DEFINE_string("vocab", None, "vocab.txt for the exported tokenizer (default: the run's)")
flags.DEFINE_bool("overwrite", False, "write into a --to directory that is not empty")
FLAGS = flags.FLAGS
# What a model directory of either format holds (removed from the target by --overwrite).
MODEL_FILES = ("config.json", "model.safetensors", "pytorch_model.bin", "vocab.txt",
               "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
               convert.OURS_CONFIG, "squeezebert_int8.json")


def check_destination(src: str, dst: str, overwrite: bool) -> None:
  """--to must not be --from or inside it (the source would be overwritten or made to look
  like another format), and must be empty unless --overwrite."""
  s, d = os.path.realpath(src), os.path.realpath(dst)
  if d == s or d.startswith(s + os.sep):
    raise app.UsageError(f"--to {dst} is the source directory or inside it: choose another "
                         "directory (the source is never written)")
  if workdir_lib.is_workdir(dst):
    raise app.UsageError(f"--to {dst} is a training workdir: export to another directory")
  if os.path.exists(dst) and (not os.path.isdir(dst) or os.listdir(dst)) and not overwrite:
    raise app.UsageError(f"--to {dst} exists and is not empty: pass --overwrite to write into "
                         "it, or choose an empty directory")
  if overwrite and os.path.isdir(dst):  # no stale config/weights of another model survive
    for name in MODEL_FILES:
      if os.path.exists(os.path.join(dst, name)):
        os.remove(os.path.join(dst, name))


def main(argv):
  del argv
  src, dst = getattr(FLAGS, "from"), FLAGS.to
  if not src or not dst:
    raise app.UsageError("both --from and --to are required")
  check_destination(src, dst, FLAGS.overwrite)
  is_hf_src = convert.is_hf_dir(src)
  target = FLAGS.format or ("ours" if is_hf_src else "hf")
  model = load.from_pretrained(src, head=FLAGS.head)
  extras = assets_lib.of(src)
  if FLAGS.vocab:
    extras.vocab = FLAGS.vocab
  labels = extras.id2label if model.head in ("classification", "token") else None
  if labels and len(labels) != model.num_labels:
    labels = None  # another head than the run's: its label names do not apply
  if target == "hf":
    convert.export_hf(model, dst, id2label=labels, files=extras.files())
  else:
    convert.save_pretrained(model, dst, extra=dict(labels=list(labels.values()) if labels else None),
                            files=extras.files())
  logging.info("wrote %s (%s format, head=%s)", dst, target, model.head)
  print(f"converted {src} -> {dst} ({target}, head={model.head})")


if __name__ == "__main__":
  cli.run(main)
