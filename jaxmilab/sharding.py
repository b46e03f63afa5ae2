"""Device mesh and shardings for parameters, optimizer state and batches.

One mesh with axes ("data", "fsdp", "model"); sizes come from `config.mesh`
(-1 = all remaining devices). Batches are split over ("data", "fsdp").
Parameters and optimizer state follow one shape-based rule (as big_vision's
"fsdp" rule), so a model needs no annotations to run data-parallel, FSDP
(ZeRO-3) or with its output channels split over "model":

* "model" (if > 1) splits the last axis of arrays with >= 2 dims when divisible
  (output channels / features); see `check_tensor_parallel` for a limitation;
* each axis named in `config.mesh.shard_params_over` (default ("fsdp",)) splits
  the largest remaining axis that it divides; arrays smaller than
  `config.mesh.min_shard_size` elements stay replicated.

Because the rule depends only on shapes, Adam's moments get the same sharding as
their parameters without bookkeeping.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")


def mesh_shape(mesh_config: ml_collections.ConfigDict | dict, num_devices: int) -> tuple[int, ...]:
  """Resolves -1 in {data, fsdp, model} so the product is `num_devices`."""
  sizes = [int(mesh_config.get(a, 1)) for a in MESH_AXES]
  unknown = [i for i, s in enumerate(sizes) if s == -1]
  if len(unknown) > 1:
    raise ValueError(f"config.mesh: at most one of {MESH_AXES} may be -1, got {dict(zip(MESH_AXES, sizes))}.")
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"config.mesh: sizes must be positive or -1, got {dict(zip(MESH_AXES, sizes))}.")
  known = int(np.prod([s for s in sizes if s != -1]))
  if unknown:
    if num_devices % known:
      raise ValueError(f"config.mesh {dict(zip(MESH_AXES, sizes))}: {num_devices} devices are not "
                       f"divisible by {known}; change the fixed axis sizes.")
    sizes[unknown[0]] = num_devices // known
  if int(np.prod(sizes)) != num_devices:
    raise ValueError(f"config.mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, "
                     f"but {num_devices} are available; use -1 for one axis to take the rest.")
  return tuple(sizes)


def create_mesh(mesh_config, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The ("data", "fsdp", "model") mesh over `devices` (default: all devices)."""
  devices = list(jax.devices() if devices is None else devices)
  num_devices = int(mesh_config.get("num_devices", -1))
  if num_devices > 0:
    if num_devices > len(devices) or jax.process_count() > 1:
      raise ValueError(f"config.mesh.num_devices={num_devices}: only {len(devices)} devices in "
                       f"{jax.process_count()} process(es); it restricts single-process runs only.")
    devices = devices[:num_devices]
  shape = mesh_shape(mesh_config, len(devices))
  try:
    from jax.experimental import mesh_utils
    device_array = mesh_utils.create_device_mesh(shape, devices=devices, allow_split_physical_axes=True)
  except Exception:  # Non-TPU topologies: plain reshape keeps process-local devices together.
    device_array = np.asarray(devices).reshape(shape)
  return Mesh(device_array, MESH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (example) axis over ("data", "fsdp"), everything else replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def array_spec(shape: Sequence[int], mesh: Mesh, shard_over: Sequence[str] = ("fsdp",),
               min_shard_size: int = 2**14) -> P:
  """PartitionSpec of one parameter-like array under the shape rule (module docstring)."""
  spec: list[Any] = [None] * len(shape)
  if int(np.prod(shape, dtype=np.int64)) < min_shard_size:
    return P(*spec)
  model = mesh.shape["model"]
  if model > 1 and len(shape) >= 2 and shape[-1] % model == 0:
    spec[-1] = "model"
  for axis in shard_over:
    size = mesh.shape[axis]
    if size == 1:
      continue
    free = [i for i in np.argsort(shape)[::-1] if spec[i] is None and shape[i] % size == 0]
    if free:
      spec[int(free[0])] = axis
  return P(*spec)


def state_shardings(abstract_state: Any, mesh: Mesh, mesh_config) -> Any:
  """NamedShardings for every leaf of a (params / optimizer / train) state pytree."""
  shard_over = tuple(mesh_config.get("shard_params_over", ("fsdp",)))
  for axis in shard_over:
    if axis not in MESH_AXES:
      raise ValueError(f"config.mesh.shard_params_over: unknown mesh axis {axis!r}; use {MESH_AXES}.")
  min_size = int(mesh_config.get("min_shard_size", 2**14))

  def leaf(x):
    shape = getattr(x, "shape", ())
    return NamedSharding(mesh, array_spec(shape, mesh, shard_over, min_size))

  return jax.tree_util.tree_map(leaf, abstract_state)


def put_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Global arrays from each process's slice of the batch (leading axis concatenated over hosts)."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}


def has_depthwise_kernels(abstract_params: Any) -> bool:
  """True if some parameter looks like a depthwise conv kernel [kh, kw, 1, C > 1]."""
  return any(len(x.shape) == 4 and x.shape[2] == 1 and x.shape[3] > 1
             for x in jax.tree_util.tree_leaves(abstract_params))


def check_tensor_parallel(mesh: Mesh, abstract_params: Any, model_name: str) -> None:
  """Refuses meshes on which XLA computes wrong gradients for this model.

  jax/XLA 0.10.2: the SPMD partitioner multiplies the kernel gradient of a grouped
  (depthwise) convolution by the number of devices that hold the same batch slice, i.e. by
  the "model" axis size (tests/test_sharding.py reproduces it, as an expected failure that
  will flag the fix). Until then, models with depthwise convolutions (NAFNet, Restormer,
  PromptIR) must use mesh.model = 1; FSDP ("fsdp" axis) is exact for them.
  """
  if mesh.shape["model"] > 1 and has_depthwise_kernels(abstract_params):
    raise ValueError(
        f"config.mesh.model={mesh.shape['model']}: {model_name} has depthwise convolutions, whose "
        f"kernel gradients XLA's SPMD partitioner computes wrongly when the batch is replicated over "
        f"the 'model' axis (jax {jax.__version__}). Use config.mesh.model=1 and shard parameters with "
        f"config.mesh.fsdp instead.")
