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


def _rebuild_tensor_v2(storage, offset, size, stride, *unused):
  itemsize = storage.dtype.itemsize
  if not size:
    return storage[offset:offset + 1].reshape(()).copy()
  view = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                         strides=tuple(s * itemsize for s in stride))
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
    kind, storage_type, key, _location, _numel = pid
    if kind != "storage":
      raise pickle.UnpicklingError(f"unsupported persistent id {kind!r}")
    raw = self._zf.read(f"{self._prefix}/data/{key}")
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
      obj = _Unpickler(fh, zf, prefix).load()
  if not isinstance(obj, dict):
    raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
  return {k: np.asarray(v) for k, v in obj.items()}
