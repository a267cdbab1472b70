"""python -m squeezebert.predict --model RUN_OR_DIR "a sentence" [--input FILE --output OUT]
(see squeezebert/predict/__init__.py)."""

import json
import os
import sys

from absl import app, flags

from squeezebert import cli
from squeezebert.predict import pipeline, read_inputs

flags.DEFINE_string("model", None, "workdir or model directory", required=True)
flags.DEFINE_string("input", None, "a .tsv/.txt (one text or text<TAB>pair per line) or .jsonl")
flags.DEFINE_string("output", None, "write the predictions as JSON lines here")
flags.DEFINE_integer("batch_size", 32, "texts per forward pass")


def main(argv):
  f = flags.FLAGS
  texts = argv[1:]
  if f.input:
    texts += read_inputs(f.input)
  if not texts:
    raise app.UsageError('give texts as arguments ("a sentence") or --input FILE')
  preds = pipeline(f.model, f.batch_size)(texts)
  out = open(f.output, "w") if f.output else sys.stdout
  try:
    for text, p in zip(texts, preds):
      out.write(json.dumps(dict(text=text, **p)) + "\n")
  finally:
    if f.output:
      out.close()
      print(f"wrote {len(preds)} predictions to {os.path.abspath(f.output)}")


if __name__ == "__main__":
  cli.run(main)
