"""TFDS data directories: where a dataset is prepared, and preparing it by download.

The loaders' `source="auto"` order: a TFDS copy already prepared under the data dir, else
the raw files the user pointed at (GLUE TSVs, CoNLL files, SQuAD JSON), else TFDS's own
download and prepare (with its progress bars) when `download` is on; offline, one error line
saying what was tried and what to set.
"""

from __future__ import annotations

import glob
import os

TFDS_DIR_ENV = "TFDS_DATA_DIR"


def data_dir(explicit: str | None = None) -> str:
  """Explicit dir -> $TFDS_DATA_DIR -> TFDS' default (~/tensorflow_datasets)."""
  return explicit or os.environ.get(TFDS_DIR_ENV) or os.path.expanduser("~/tensorflow_datasets")


def prepared(name: str, explicit_dir: str | None = None) -> bool:
  """Whether <data dir>/<name>/[<config>/]<version>/dataset_info.json exists (no TF import)."""
  root = os.path.join(data_dir(explicit_dir), *name.split("/"))
  return bool(glob.glob(os.path.join(root, "*", "dataset_info.json"))
              or glob.glob(os.path.join(root, "*", "*", "dataset_info.json")))


class DataNotFoundError(FileNotFoundError):
  """No copy of a dataset could be found or made: the message lists what was tried."""


def resolve_auto(name: str, explicit_dir: str | None, raw_dir: str | None, raw_source: str,
                 raw_what: str, to_set: str, download: bool) -> str:
  """The `source="auto"` order for TFDS dataset `name`: "tfds" when it is prepared under the
  data dir, else `raw_source` when a raw-file dir (`raw_what`) is set, else "tfds" after TFDS
  downloads and prepares it (download on), else DataNotFoundError saying what was tried and
  `to_set`."""
  if prepared(name, explicit_dir):
    return "tfds"
  if raw_dir:
    return raw_source
  tried = f"TFDS has not prepared it under {data_dir(explicit_dir)} and no {raw_what} is set"
  if not download:
    raise DataNotFoundError(f"no data for {name}: {tried} (config.data.download is off). "
                            f"{to_set}")
  download_and_prepare(name, explicit_dir, tried, to_set)
  return "tfds"


def download_and_prepare(name: str, explicit_dir: str | None, tried: str, to_set: str) -> None:
  """TFDS downloads and prepares `name` under the data dir; DataNotFoundError (one line: what
  was tried, the download's failure, the flags and variables to set) when that fails."""
  import tensorflow_datasets as tfds  # lazy: importing TensorFlow costs seconds
  from tensorflow_datasets.core.download import downloader
  target = data_dir(explicit_dir)
  # TFDS retries each URL 10 times with backoff: offline that is minutes of waiting before
  # the error. Two tries tell a machine without internet from a flaky link quickly.
  retries, downloader.MAX_RETRIES = downloader.MAX_RETRIES, min(downloader.MAX_RETRIES, 2)
  try:
    os.makedirs(target, exist_ok=True)
    tfds.builder(name, data_dir=target).download_and_prepare()
  except Exception as e:  # noqa: BLE001 (network, permission, checksum... all end here)
    reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    raise DataNotFoundError(
        f"no data for {name}: {tried}, and the TFDS download into {target} failed "
        f"({type(e).__name__}: {reason}). {to_set}") from None
  finally:
    downloader.MAX_RETRIES = retries
