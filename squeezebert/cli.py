"""What every command-line entry point shares: user errors as one clear line.

A config, data or path problem (ValueError, FileNotFoundError, a busy workdir, a checkpoint
that does not fit, a full disk, divergence) prints `error: <message>` and exits 1, without a
traceback; `--verbose` shows the traceback, `--pdb` (absl) opens the debugger.
"""

from __future__ import annotations

import pickle
import sys

from absl import app, flags

from squeezebert.workdir import CheckpointError

flags.DEFINE_bool("verbose", False, "on an error, print the full traceback")

USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, KeyError,
               FloatingPointError, CheckpointError, RuntimeError, pickle.UnpicklingError)


def run(main) -> None:
  """app.run(main), with user errors reported as one line (exit status 1)."""
  def wrapped(argv):
    try:
      return main(argv)
    except USER_ERRORS as e:
      f = flags.FLAGS
      if f.verbose or getattr(f, "pdb_post_mortem", False):
        raise
      msg = str(e) if not isinstance(e, KeyError) else f"unknown key {e}"
      print(f"error: {msg}\n(--verbose shows the traceback)", file=sys.stderr)
      sys.exit(1)

  app.run(wrapped)
