"""What every command-line entry point shares: user errors as one clear line.

A config, data or path problem (ValueError, FileNotFoundError, a busy workdir, a checkpoint
that does not fit, a full disk, divergence) prints `error: <message>` and exits 1, without a
traceback; `--verbose` shows the traceback, `--pdb` (absl) opens the debugger.
"""

from __future__ import annotations

import logging
import pickle
import sys

from absl import app, flags

from squeezebert.workdir import CheckpointError

# Libraries whose INFO lines (orbax: ~80 per checkpoint save) drown a run's own log.
QUIET_LIBRARIES = ("/orbax/", "/tensorstore/", "/tensorflow_datasets/", "/etils/", "/jax/_src/",
                   "/flax/")


class QuietLibraries(logging.Filter):
  """Drops below-WARNING records logged from QUIET_LIBRARIES' source files (orbax's read-only
  notes are dropped where the read-only manager is made: workdir.Checkpoints)."""

  def filter(self, record):
    lib = any(part in (record.pathname or "") for part in QUIET_LIBRARIES)
    return record.levelno >= logging.WARNING or not lib

USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, KeyError,
               FloatingPointError, CheckpointError, RuntimeError, pickle.UnpicklingError)


def run(main) -> None:
  """app.run(main), with user errors reported as one line (exit status 1). Defines --verbose
  and --library_logs (here, not at import: importing the package defines no flags)."""
  flags.DEFINE_bool("verbose", False, "on an error, print the full traceback")
  flags.DEFINE_bool("library_logs", False, "show orbax / TFDS / JAX info logs (default: "
                    "warnings only)")
  def wrapped(argv):
    if not flags.FLAGS.library_logs:  # every record reaches the root's (absl's) handler
      for handler in logging.getLogger().handlers:
        handler.addFilter(QuietLibraries())
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
