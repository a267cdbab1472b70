"""python -m squeezebert.convert --from DIR --to DIR [--format hf|ours] [--head H]

Direction is read from the source: an HF directory (config.json) converts to ours, one of our
model directories or a training workdir exports to HF. `--format` forces the target format.
"""

import sys

from absl import app, flags, logging

from squeezebert import convert, load

flags.DEFINE_string("from", None, "source directory (HF checkpoint, ours, or a training workdir)")
flags.DEFINE_string("to", None, "target directory")
flags.DEFINE_enum("format", None, ["hf", "ours"], "target format (default: the other one)")
flags.DEFINE_string("head", None, "head to load (default: from the checkpoint)")
flags.DEFINE_string("vocab", None, "vocab.txt to copy next to an HF export")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  src, dst = getattr(FLAGS, "from"), FLAGS.to
  if not src or not dst:
    sys.exit("convert: both --from and --to are required")
  is_hf_src = convert.is_hf_dir(src)
  target = FLAGS.format or ("ours" if is_hf_src else "hf")
  model = load.from_pretrained(src, head=FLAGS.head)
  if target == "hf":
    convert.export_hf(model, dst, vocab_file=FLAGS.vocab)
  else:
    convert.save_pretrained(model, dst)
  logging.info("wrote %s (%s format, head=%s)", dst, target, model.head)
  print(f"converted {src} -> {dst} ({target}, head={model.head})")


if __name__ == "__main__":
  app.run(main)
