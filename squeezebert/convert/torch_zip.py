"""Read a PyTorch `pytorch_model.bin` (zip format) into numpy WITHOUT torch and without
executing pickled code: a restricted unpickler that only rebuilds tensors from storages.

Anything outside the allow-list (a class or function the checkpoint asks to construct)
raises `pickle.UnpicklingError` naming it, like torch.load(weights_only=True) does.
"""

from __future__ import annotations

import collections
import pickle
import zipfile

import ml_dtypes
import numpy as np

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
  def __init__(self, name):
    self.dtype = np.dtype(_STORAGE_DTYPES[name])


def _check_view(n_storage: int, offset, size, stride) -> None:
  """The tensor view (offset, size, stride) addresses only elements of its storage: every
  reachable index offset + sum((size_i - 1) * stride_i) lies in [0, n_storage). Checked in
  Python integers before numpy builds anything, so a crafted file can neither read memory
  outside the storage nor crash the reader."""
  if not isinstance(offset, int) or offset < 0:
    raise pickle.UnpicklingError(f"tensor storage offset {offset!r} is not a non-negative int")
  size, stride = tuple(size), tuple(stride)
  if len(size) != len(stride) or not all(isinstance(x, int) for x in size + stride):
    raise pickle.UnpicklingError(f"tensor size {size} / stride {stride} are not int tuples "
                                 "of equal length")
  if any(x < 0 for x in size) or any(x < 0 for x in stride):
    raise pickle.UnpicklingError(f"negative tensor size or stride: size {size}, stride {stride}")
  if any(x == 0 for x in size):
    if offset > n_storage:
      raise pickle.UnpicklingError(f"tensor offset {offset} past its storage of {n_storage}")
    return
  last = offset + sum((n - 1) * st for n, st in zip(size, stride))
  if last >= n_storage:
    raise pickle.UnpicklingError(
        f"tensor view (offset {offset}, size {size}, stride {stride}) reaches element {last} "
        f"of a storage of {n_storage} elements")


def _rebuild_tensor_v2(storage, offset, size, stride, *unused):
  itemsize = storage.dtype.itemsize
  _check_view(len(storage), offset, size, stride)
  if not size:
    return storage[offset:offset + 1].reshape(()).copy()
  if any(n == 0 for n in size):
    return np.zeros(tuple(size), storage.dtype)
  view = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                         strides=tuple(st * itemsize for st in stride))
  return np.ascontiguousarray(view)


def _rebuild_parameter(data, requires_grad, backward_hooks, *unused):
  return data


class _Unpickler(pickle.Unpickler):
  def __init__(self, fh, zf: zipfile.ZipFile, prefix: str):
    super().__init__(fh)
    self._zf, self._prefix = zf, prefix

  def find_class(self, module, name):
    if module == "collections" and name == "OrderedDict":
      return collections.OrderedDict
    if module == "torch._utils" and name == "_rebuild_tensor_v2":
      return _rebuild_tensor_v2
    if module == "torch._utils" and name == "_rebuild_parameter":
      return _rebuild_parameter
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not a plain tensor "
                                 "state dict (no pickle code execution)")

  def persistent_load(self, pid):
    if not isinstance(pid, tuple) or len(pid) != 5:
      raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
    kind, storage_type, key, _location, numel = pid
    if kind != "storage" or not isinstance(storage_type, _StorageType):
      raise pickle.UnpicklingError(f"unsupported persistent id {kind!r}")
    try:
      raw = self._zf.read(f"{self._prefix}/data/{key}")
    except KeyError:
      raise pickle.UnpicklingError(f"storage {key!r} is not in the archive") from None
    itemsize = storage_type.dtype.itemsize
    if len(raw) % itemsize or (isinstance(numel, int) and numel * itemsize > len(raw)):
      raise pickle.UnpicklingError(f"storage {key!r} holds {len(raw)} bytes, not a whole "
                                   f"number of its {numel} {storage_type.dtype} elements")
    return np.frombuffer(raw, dtype=storage_type.dtype)


def load_torch_bin(path: str) -> dict[str, np.ndarray]:
  if not zipfile.is_zipfile(path):
    raise ValueError(f"{path}: not a zip-format PyTorch checkpoint (legacy pre-1.6 tar/pickle "
                     "files are not read, to avoid executing pickled code); re-save it with "
                     "a recent torch or as safetensors")
  with zipfile.ZipFile(path) as zf:
    pkl = [n for n in zf.namelist() if n.endswith("data.pkl")]
    if len(pkl) != 1:
      raise ValueError(f"{path}: expected one data.pkl in the archive, found {pkl}")
    prefix = pkl[0][: -len("/data.pkl")]
    with zf.open(pkl[0]) as fh:
      try:
        obj = _Unpickler(fh, zf, prefix).load()
      except pickle.UnpicklingError as e:
        raise pickle.UnpicklingError(f"{path}: {e}") from None
      except (EOFError, ValueError, TypeError, IndexError) as e:
        raise pickle.UnpicklingError(f"{path}: malformed checkpoint pickle ({e})") from None
  if not isinstance(obj, dict):
    raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
  return {k: np.asarray(v) for k, v in obj.items()}
