"""Reading PyTorch `.pth` and `.safetensors` weight files into numpy, never running pickled code.

A `.pth` written by `torch.save` (zip format, torch >= 1.6, and the older "legacy" stream
format) stores its object tree as a pickle whose tensors point at raw byte records. Pickle can
call any importable function while loading, which is how a malicious checkpoint runs code; here
the pickle is read by an `Unpickler` whose `find_class` knows only a handful of names
(`collections.OrderedDict`, torch's tensor/parameter rebuild functions, the typed storage
classes and dtypes, `torch.Size`) and maps each of them to a local numpy function. Anything else
(e.g. `os.system`, `builtins.eval`) raises `UnsafeCheckpointError` before it is called, naming
the file and the global. torch is not needed. `.safetensors` (a JSON header + raw bytes, no code) is
read with the `safetensors` library, memory-mapped.

Public API:
  read_checkpoint(path) -> the unpickled object (dicts / OrderedDicts / np.ndarray leaves)
  read_safetensors(path) -> dict[str, np.ndarray]
  load_state_dict(path) -> dict[str, np.ndarray]  (BasicSR: `params_ema`, else `params`, else
      the bare state dict; also `state_dict` / `model` / `net` wrappers; `module.` prefixes
      stripped like BasicSR's `load_network`)
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any

import ml_dtypes
import numpy as np


class CheckpointError(ValueError):
  """A weights file that cannot be read (corrupt, unsupported or malicious)."""


class UnsafeCheckpointError(CheckpointError):
  """A `.pth` whose pickle references code other than tensor / dict reconstruction."""


# torch storage class -> numpy dtype (torch/storage.py `_LegacyStorage` subclasses).
_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
# torch dtypes that can appear as globals (e.g. in `_rebuild_tensor_v2` metadata).
_TORCH_DTYPES = {
    "float64": np.float64,
    "float32": np.float32,
    "float16": np.float16,
    "bfloat16": ml_dtypes.bfloat16,
    "int64": np.int64,
    "int32": np.int32,
    "int16": np.int16,
    "int8": np.int8,
    "uint8": np.uint8,
    "bool": np.bool_,
}
_SAFETENSORS_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class _StorageType:
  """Stand-in for a torch typed-storage class: only carries its numpy dtype."""

  def __init__(self, name: str, dtype: Any):
    self.name, self.dtype = name, np.dtype(dtype)


class _Storage:
  """A flat storage: a 1-D numpy array of `numel` elements."""

  def __init__(self, array: np.ndarray):
    self.array = array


def _rebuild_tensor(storage, storage_offset, size, stride, *unused) -> np.ndarray:
  """torch._utils._rebuild_tensor(_v2): a strided view of a storage, bounds-checked, copied."""
  if not isinstance(storage, _Storage):
    raise UnsafeCheckpointError(f"tensor rebuild got {type(storage).__name__}, not a storage")
  size = tuple(int(s) for s in size)
  stride = tuple(int(s) for s in stride)
  offset = int(storage_offset)
  flat = storage.array
  if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size + stride):
    raise CheckpointError(f"invalid tensor layout size={size} stride={stride} offset={offset}")
  if any(s == 0 for s in size):
    return np.zeros(size, flat.dtype)
  last = offset + sum((n - 1) * st for n, st in zip(size, stride))
  if last >= flat.size:
    raise CheckpointError(
        f"tensor of size {size} stride {stride} offset {offset} reads past "
        f"its storage of {flat.size} elements (corrupt file)"
    )
  # A view: legacy files fill their storages after the pickle; `_materialize` copies at the end.
  return np.lib.stride_tricks.as_strided(
      flat[offset:], shape=size, strides=tuple(st * flat.itemsize for st in stride), writeable=False
  )


def _rebuild_parameter(data, requires_grad=None, backward_hooks=None, *unused) -> np.ndarray:
  """torch._utils._rebuild_parameter(_with_state): the data tensor."""
  del requires_grad, backward_hooks
  if not isinstance(data, np.ndarray):
    raise UnsafeCheckpointError(f"parameter rebuild got {type(data).__name__}, not a tensor")
  return data


def _torch_size(*args) -> tuple:
  return tuple(*args)


_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "Size"): _torch_size,
}
_SAFE_GLOBALS.update(
    {("torch", name): _StorageType(name, dt) for name, dt in _STORAGE_DTYPES.items()}
)
_SAFE_GLOBALS.update({("torch", name): np.dtype(dt) for name, dt in _TORCH_DTYPES.items()})


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves only _SAFE_GLOBALS; storages come from `load_storage(type, key, numel)`."""

  def __init__(self, stream: io.BytesIO, path: str, load_storage):
    super().__init__(stream)
    self._path = path
    self._load_storage = load_storage
    self._storages: dict[str, _Storage] = {}

  def find_class(self, module: str, name: str):
    try:
      return _SAFE_GLOBALS[(module, name)]
    except KeyError:
      raise UnsafeCheckpointError(
          f"Refusing to load {self._path!r}: its pickle references `{module}.{name}`, which is "
          f"not tensor or dict reconstruction (a checkpoint can run code this way). Only "
          f"weights-only checkpoints are read. If you trust the file, re-save its state dict "
          f"elsewhere with torch.save(state_dict) or safetensors.torch.save_file."
      ) from None

  def persistent_load(self, pid):
    if (
        not isinstance(pid, tuple)
        or len(pid) < 5
        or pid[0] != "storage"
        or not isinstance(pid[1], _StorageType)
    ):
      raise UnsafeCheckpointError(
          f"Refusing to load {self._path!r}: unexpected persistent id "
          f"{str(pid)[:80]!r} (only typed tensor storages are read)."
      )
    storage_type, key, numel = pid[1], str(pid[2]), int(pid[4])
    if key not in self._storages:
      self._storages[key] = _Storage(self._load_storage(storage_type.dtype, key, numel))
    return self._storages[key]


def _check_numel(path: str, key: str, raw: bytes, dtype: np.dtype, numel: int) -> np.ndarray:
  if len(raw) < numel * dtype.itemsize:
    raise CheckpointError(
        f"{path!r}: storage {key} holds {len(raw)} bytes, fewer than "
        f"{numel} x {dtype.itemsize} (truncated or corrupt file)."
    )
  return np.frombuffer(raw, dtype=dtype, count=numel)


def _read_zip(path: str) -> Any:
  with zipfile.ZipFile(path) as zf:
    names = zf.namelist()
    pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pkl) != 1:
      raise CheckpointError(
          f"{path!r} is a zip file but not a torch.save checkpoint "
          f"(no <archive>/data.pkl record; found {names[:5]})."
      )
    prefix = pkl[0][: -len("data.pkl")]
    big_endian = False
    if prefix + "byteorder" in names:
      big_endian = zf.read(prefix + "byteorder").decode().strip() == "big"

    def load_storage(dtype, key, numel):
      record = f"{prefix}data/{key}"
      if record not in names:
        raise CheckpointError(f"{path!r}: missing tensor record {record!r} (corrupt file).")
      with zf.open(record) as f:  # read only what the tensor needs
        raw = f.read(max(numel, 0) * dtype.itemsize)
      arr = _check_numel(path, key, raw, dtype, numel)
      return arr.byteswap() if big_endian else arr

    return _RestrictedUnpickler(io.BytesIO(zf.read(pkl[0])), path, load_storage).load()


def _read_legacy(path: str, data: bytes) -> Any:
  """torch.save(..., _use_new_zipfile_serialization=False): pickles + raw storages in a stream."""
  stream = io.BytesIO(data)

  def safe_load(what: str):
    # Every record is a pickle (like torch's own reader, one load per record on one stream),
    # read with the restricted unpickler as well.
    try:
      return _RestrictedUnpickler(stream, path, load_storage).load()
    except (pickle.UnpicklingError, EOFError, ValueError, struct.error) as e:
      if isinstance(e, CheckpointError):
        raise
      raise CheckpointError(
          f"{path!r}: not a torch checkpoint, cannot read its {what} "
          f"record ({type(e).__name__}: {e})."
      ) from e

  pending: dict[str, tuple[np.dtype, int]] = {}
  arrays: dict[str, np.ndarray] = {}

  def load_storage(dtype, key, numel):
    # Storages are filled after the main pickle: hand out an array that is filled in place.
    if numel < 0 or numel * dtype.itemsize > len(data):
      raise CheckpointError(
          f"{path!r}: storage {key} claims {numel} elements, more than the "
          f"file holds (corrupt file)."
      )
    pending[key] = (dtype, numel)
    arrays[key] = np.zeros(numel, dtype)
    return arrays[key]

  magic = safe_load("magic number")
  if magic != _LEGACY_MAGIC:
    raise CheckpointError(
        f"{path!r} is neither a zip torch checkpoint, a legacy torch "
        f"checkpoint nor a .safetensors file."
    )
  if safe_load("protocol") != _LEGACY_PROTOCOL:
    raise CheckpointError(f"{path!r}: unsupported legacy torch protocol version.")
  safe_load("system info")
  obj = safe_load("object")
  keys = safe_load("storage keys")
  for key in keys:
    key = str(key)
    if key not in pending:
      raise CheckpointError(f"{path!r}: storage {key} is listed but not referenced (corrupt).")
    dtype, numel = pending[key]
    (count,) = struct.unpack("<q", stream.read(8))
    if count != numel:
      raise CheckpointError(f"{path!r}: storage {key} has {count} elements, expected {numel}.")
    raw = stream.read(numel * dtype.itemsize)
    arrays[key][...] = _check_numel(path, key, raw, dtype, numel)
  return obj


def _materialize(obj: Any) -> Any:
  """Copies every array out of its storage (contiguous, writeable); rebuilds containers."""
  if isinstance(obj, np.ndarray):
    return np.array(obj)
  if isinstance(obj, collections.OrderedDict):
    return collections.OrderedDict((k, _materialize(v)) for k, v in obj.items())
  if isinstance(obj, dict):
    return {k: _materialize(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return type(obj)(_materialize(v) for v in obj)
  return obj


def read_checkpoint(path: str) -> Any:
  """The object saved in a torch `.pth` (zip or legacy), with tensors as numpy arrays.

  Raises FileNotFoundError, UnsafeCheckpointError (a global other than tensor / dict
  reconstruction: nothing of it is run) or CheckpointError (corrupt / unknown format).
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Checkpoint {path!r} does not exist.")
  if zipfile.is_zipfile(path):
    try:
      return _materialize(_read_zip(path))
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile) as e:
      raise CheckpointError(f"{path!r}: cannot read the torch checkpoint ({e}).") from e
  with open(path, "rb") as f:
    data = f.read()
  return _materialize(_read_legacy(path, data))


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """All tensors of a `.safetensors` file, read with the `safetensors` library.

  The file is memory-mapped (`safe_open(..., framework="numpy")`); each tensor is copied out of
  the map once. safetensors holds only a JSON header and raw bytes, so no code can run while
  reading it. numpy has no bfloat16, so BF16 tensors are read through the library's flax
  framework (on the host CPU) and come back as ml_dtypes.bfloat16 arrays.
  """
  import safetensors  # pylint: disable=g-import-not-at-top

  if not os.path.isfile(path):
    raise FileNotFoundError(f"Checkpoint {path!r} does not exist.")
  out: dict[str, np.ndarray] = {}
  wide: list[str] = []
  try:
    with safetensors.safe_open(path, framework="numpy") as f:
      for key in f.keys():
        dtype = f.get_slice(key).get_dtype()
        if dtype not in _SAFETENSORS_DTYPES:
          raise CheckpointError(f"{path!r}: tensor {key!r} has unsupported dtype {dtype}.")
        if dtype == "BF16":
          wide.append(key)
        else:
          out[key] = np.array(f.get_tensor(key), copy=True)
    if wide:
      import jax  # pylint: disable=g-import-not-at-top

      with jax.default_device(jax.local_devices(backend="cpu")[0]):
        with safetensors.safe_open(path, framework="flax") as f:
          for key in wide:
            out[key] = np.asarray(f.get_tensor(key)).astype(ml_dtypes.bfloat16, copy=True)
  except safetensors.SafetensorError as e:
    raise CheckpointError(f"{path!r}: not a readable .safetensors file ({e}).") from e
  return out


def _is_tensor_dict(obj: Any) -> bool:
  return (
      isinstance(obj, dict)
      and bool(obj)
      and all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items())
  )


def extract_state_dict(obj: Any, path: str) -> dict[str, np.ndarray]:
  """BasicSR's choice of weights: `params_ema`, else `params`, else the bare state dict (also
  `state_dict` / `model` / `net` wrappers); strips a `module.` prefix like `load_network`."""
  if isinstance(obj, dict):
    for key in ("params_ema", "params", "state_dict", "model", "net"):
      if key in obj and isinstance(obj[key], dict):
        obj = obj[key]
        break
  if not _is_tensor_dict(obj):
    keys = list(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
    raise CheckpointError(
        f"{path!r} holds no state dict: expected a dict of tensors or one "
        f"under 'params_ema' / 'params'; found {keys}."
    )
  sd = {}
  for key, value in obj.items():
    sd[key[len("module.") :] if key.startswith("module.") else key] = value
  if all(k.startswith("net.") for k in sd):  # PyTorch Lightning modules (e.g. PromptIR's)
    sd = {k[len("net.") :]: v for k, v in sd.items()}
  return sd


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """{official key: numpy array} from a BasicSR `.pth` or a `.safetensors` file."""
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"Checkpoint {path!r} does not exist. Pass a .pth / .safetensors "
        f"file or an orbax checkpoint folder."
    )
  with open(path, "rb") as f:
    head = f.read(9)
  # safetensors starts with an 8-byte header length and the JSON header's "{".
  if path.endswith(".safetensors") or (head[8:9] == b"{" and not zipfile.is_zipfile(path)):
    return extract_state_dict(read_safetensors(path), path)
  return extract_state_dict(read_checkpoint(path), path)
