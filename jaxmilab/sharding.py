"""Device mesh and shardings for parameters, optimizer state and batches.

One mesh with axes ("data", "fsdp", "model"); sizes come from `config.mesh`
(-1 = all remaining devices; every key is declared, with its default, in
`config_lib.MESH_DEFAULTS` and read through `config_lib.options`). Batches are split over
("data", "fsdp").
Parameters and optimizer state follow one rule (as big_vision's "fsdp" rule), so
a model needs no annotations to run data-parallel or FSDP (ZeRO-3):

* tensor parallelism is opt-in per parameter: `config.mesh.tensor_parallel`, a
  list of (regex over the parameter path, dimension) pairs (big_vision's
  `sharding_rules` idea), splits that dimension over "model" for the arrays whose
  path matches (first match wins; Adam's moments have the parameter's path inside
  theirs, so they match too). Without rules "model" splits nothing and only
  replicates the batch; see `check_tensor_parallel` for a limitation;
* each axis named in `config.mesh.shard_params_over` (default ("fsdp",)) splits
  the largest remaining axis that it divides; arrays smaller than
  `config.mesh.min_shard_size` elements stay replicated.

Multislice (several TPU slices joined by the data-centre network, DCN): the slices split
"data" (`create_hybrid_device_mesh`; data parallel across slices, FSDP and "model" inside a
slice, as MaxText's dcn_data_parallelism), and parameters are never sharded over an axis that
crosses slices unless `config.mesh.params_over_dcn` says so (`check_params_over_dcn`).

Activations: `batch_sharded_activations()` pins convolution and normalisation
outputs to the batch axes inside a `jax.set_mesh` context (the trainer enters one
for every step), so XLA does not carry the parameters' FSDP sharding into them.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any, Iterator, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxmilab import config_lib

MESH_AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")


def mesh_options(mesh_config) -> config_lib.Options:
  """config.mesh (a ConfigDict or dict; None = all defaults) read through MESH_DEFAULTS."""
  return config_lib.options(mesh_config, config_lib.MESH_DEFAULTS, component="mesh", part="mesh")


def mesh_shape(mesh_config: ml_collections.ConfigDict | dict, num_devices: int) -> tuple[int, ...]:
  """Resolves -1 in {data, fsdp, model} so the product is `num_devices`."""
  opts = mesh_options(mesh_config)
  sizes = [int(opts[a]) for a in MESH_AXES]
  unknown = [i for i, s in enumerate(sizes) if s == -1]
  if len(unknown) > 1:
    raise ValueError(
        f"config.mesh: at most one of {MESH_AXES} may be -1, got {dict(zip(MESH_AXES, sizes))}."
    )
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(
        f"config.mesh: sizes must be positive or -1, got {dict(zip(MESH_AXES, sizes))}."
    )
  known = int(np.prod([s for s in sizes if s != -1]))
  if unknown:
    if num_devices % known:
      raise ValueError(
          f"config.mesh {dict(zip(MESH_AXES, sizes))}: {num_devices} devices are not "
          f"divisible by {known}; change the fixed axis sizes."
      )
    sizes[unknown[0]] = num_devices // known
  if int(np.prod(sizes)) != num_devices:
    raise ValueError(
        f"config.mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, "
        f"but {num_devices} are available; use -1 for one axis to take the rest."
    )
  return tuple(sizes)


def num_slices(devices: Sequence[Any]) -> int:
  """Number of TPU slices among `devices` (Multislice: devices carry `slice_index`; else 1)."""
  return len({getattr(d, "slice_index", 0) for d in devices})


def dcn_mesh_shape(shape: Sequence[int], slices: int) -> tuple[int, ...]:
  """The part of `shape` (data, fsdp, model) laid across slices: the slices split "data".

  Multislice (MaxText's `dcn_data_parallelism`): slices are data-parallel replicas joined by the
  data-centre network (DCN); FSDP and tensor parallelism stay on a slice's ICI links. So "data"
  must be a multiple of the number of slices.
  """
  data = int(shape[0])
  if data % slices:
    raise ValueError(
        f"config.mesh {dict(zip(MESH_AXES, shape))}: {slices} slices are data-parallel replicas "
        f"over DCN, so mesh.data must be a multiple of {slices} (e.g. mesh.data={slices} with "
        f"mesh.fsdp=-1 for FSDP inside each slice)."
    )
  return (slices, 1, 1)


def device_mesh(
    shape: Sequence[int], devices: Sequence[Any], *, subset: bool = False
) -> np.ndarray:
  """The device array of `shape` (data, fsdp, model) over `devices`.

  TPU: `mesh_utils.create_device_mesh` on one slice, `mesh_utils.create_hybrid_device_mesh`
  across slices (ICI shape x DCN shape, `dcn_mesh_shape`); a topology that cannot be laid out is
  an error saying why (there is no silent fallback: a plain reshape of a multi-slice device
  list would put slices anywhere, e.g. inside the axes that shard parameters). CPU / GPU, or a
  TPU `subset` (config.mesh.num_devices, single-process runs): an explicit reshape in device
  order (GPU: by id, as mesh_utils does), which keeps process-local devices together.
  """
  from jax.experimental import mesh_utils  # pylint: disable=g-import-not-at-top

  devices = list(devices)
  platform = devices[0].platform
  slices = num_slices(devices)
  if platform != "tpu" or (subset and slices == 1):
    if platform == "gpu":
      devices = sorted(devices, key=lambda d: d.id)
    return np.asarray(devices).reshape(shape)
  where = (
      f"config.mesh {dict(zip(MESH_AXES, shape))} on {len(devices)} "
      f"{devices[0].device_kind} devices in {slices} slice(s)"
  )
  if subset:
    raise ValueError(f"{where}: config.mesh.num_devices restricts single-slice runs only.")
  try:
    if slices == 1:
      return mesh_utils.create_device_mesh(shape, devices=devices, allow_split_physical_axes=True)
    dcn = dcn_mesh_shape(shape, slices)
    ici = tuple(int(s) // d for s, d in zip(shape, dcn))
    return mesh_utils.create_hybrid_device_mesh(
        ici, dcn, devices=devices, allow_split_physical_axes=True
    )
  except (ValueError, AssertionError, NotImplementedError) as e:
    if "config.mesh" in str(e):
      raise
    raise ValueError(f"{where} cannot be laid out on the TPU topology: {e}") from e


def create_mesh(mesh_config, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The ("data", "fsdp", "model") mesh over `devices` (default: all devices); see device_mesh."""
  devices = list(jax.devices() if devices is None else devices)
  num_devices = int(mesh_options(mesh_config).num_devices)
  subset = 0 < num_devices < len(devices)
  if num_devices > 0:
    if num_devices > len(devices) or jax.process_count() > 1:
      raise ValueError(
          f"config.mesh.num_devices={num_devices}: only {len(devices)} devices in "
          f"{jax.process_count()} process(es); it restricts single-process runs only."
      )
    devices = devices[:num_devices]
  shape = mesh_shape(mesh_config, len(devices))
  return Mesh(device_mesh(shape, devices, subset=subset), MESH_AXES)


def dcn_axes(mesh: Mesh) -> dict[str, int]:
  """{axis: number of slices it spans} for the mesh axes that cross slices (DCN); {} on one slice.

  Read from the device array itself (not from the config), so it describes any layout.
  """
  devices = np.asarray(mesh.devices)
  out = {}
  for i, name in enumerate(mesh.axis_names):
    line = devices[tuple(slice(None) if j == i else 0 for j in range(devices.ndim))]
    spanned = len({getattr(d, "slice_index", 0) for d in np.ravel(line)})
    if spanned > 1:
      out[name] = spanned
  return out


def check_params_over_dcn(mesh: Mesh, mesh_config) -> None:
  """Refuses `shard_params_over` axes that cross slices unless `params_over_dcn` allows it.

  ZeRO over DCN all-gathers the weights and reduce-scatters the gradients over the slow
  data-centre network for every step; data parallelism across slices only all-reduces the
  gradients there once per step (`jaxmilab.compile` reports both figures).
  """
  opts = mesh_options(mesh_config)
  crossing = [a for a in opts.shard_params_over if a in dcn_axes(mesh) and mesh.shape[a] > 1]
  if crossing and not opts.params_over_dcn:
    raise ValueError(
        f"config.mesh.shard_params_over={tuple(opts.shard_params_over)}: "
        f"axis {crossing[0]!r} spans "
        f"{dcn_axes(mesh)[crossing[0]]} slices, so parameters would be all-gathered over the "
        f"data-centre network every step. Shard over axes inside a slice (e.g. ('fsdp',) with "
        f"mesh.data=<slices>, mesh.fsdp=-1), or set config.mesh.params_over_dcn=True to mean it."
    )


def params_sharded_over_dcn(shardings: Any, mesh: Mesh) -> bool:
  """True if some leaf of a NamedSharding pytree splits an array over an axis that crosses
  slices."""
  crossing = set(dcn_axes(mesh))

  def axes(spec):
    for entry in spec:
      for a in (entry if isinstance(entry, tuple) else (entry,)):
        yield a

  return any(bool(crossing & set(axes(s.spec))) for s in jax.tree.leaves(shardings))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (example) axis over ("data", "fsdp"), everything else replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def array_spec(
    shape: Sequence[int],
    mesh: Mesh,
    shard_over: Sequence[str],
    min_shard_size: int,
    model_dim: int | None = None,
) -> P:
  """PartitionSpec of one parameter-like array under the rule (module docstring).

  `shard_over` and `min_shard_size` are config.mesh.shard_params_over / min_shard_size;
  `model_dim`: the dimension a `tensor_parallel` rule assigns to "model" (None: none).
  """
  spec: list[Any] = [None] * len(shape)
  model = mesh.shape["model"]
  if model_dim is not None and model > 1 and shape:
    dim = model_dim % len(shape)
    if shape[dim] % model:
      raise ValueError(
          f"config.mesh.tensor_parallel: dimension {model_dim} of an array of shape "
          f"{tuple(shape)} is not divisible by mesh.model={model}; narrow the rule's "
          f"regex or change mesh.model."
      )
    spec[dim] = "model"
  if int(np.prod(shape, dtype=np.int64)) < min_shard_size:
    return P(*spec)
  for axis in shard_over:
    size = mesh.shape[axis]
    if size == 1:
      continue
    free = [i for i in np.argsort(shape)[::-1] if spec[i] is None and shape[i] % size == 0]
    if free:
      spec[int(free[0])] = axis
  return P(*spec)


def tensor_parallel_rules(mesh_config) -> list[tuple[re.Pattern[str], int]]:
  """Compiled `config.mesh.tensor_parallel` rules: ((regex, dimension), ...)."""
  rules = []
  for entry in mesh_options(mesh_config).tensor_parallel:
    if len(entry) != 2 or not isinstance(entry[1], int):
      raise ValueError(
          f"config.mesh.tensor_parallel: entries are (regex over parameter paths, "
          f"dimension), e.g. (r'attn/qkv/kernel', -1); got {entry!r}."
      )
    rules.append((re.compile(entry[0]), int(entry[1])))
  return rules


def path_name(path) -> str:
  """ "a/b/kernel" for a pytree key path (dict keys, attributes and indices joined by "/")."""
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
  return "/".join(parts)


def state_shardings(abstract_state: Any, mesh: Mesh, mesh_config) -> Any:
  """NamedShardings for every leaf of a (params / optimizer / train) state pytree."""
  opts = mesh_options(mesh_config)
  shard_over = tuple(opts.shard_params_over)
  for axis in shard_over:
    if axis not in MESH_AXES:
      raise ValueError(
          f"config.mesh.shard_params_over: unknown mesh axis {axis!r}; use {MESH_AXES}."
      )
  check_params_over_dcn(mesh, mesh_config)
  min_size = int(opts.min_shard_size)
  rules = tensor_parallel_rules(mesh_config)

  def leaf(path, x):
    shape = getattr(x, "shape", ())
    name = path_name(path)
    model_dim = next((d for pattern, d in rules if pattern.search(name)), None)
    return NamedSharding(mesh, array_spec(shape, mesh, shard_over, min_size, model_dim))

  return jax.tree_util.tree_map_with_path(leaf, abstract_state)


def _norm_types() -> tuple[type, ...]:
  from jaxmilab.models import masking  # pylint: disable=g-import-not-at-top

  return (nn.GroupNorm, nn.BatchNorm) + tuple(masking.NORM_TYPES)


def _constrain_to_batch(next_fun, args, kwargs, context):
  """Interceptor: conv / norm output maps stay split over the batch axes."""
  y = next_fun(*args, **kwargs)
  if (
      context.method_name == "__call__"
      and isinstance(y, jax.Array)
      and y.ndim == 4
      and isinstance(context.module, (nn.Conv, nn.ConvTranspose) + _norm_types())
  ):
    y = jax.lax.with_sharding_constraint(y, P(BATCH_AXES, *([P.UNCONSTRAINED] * 3)))
  return y


@contextlib.contextmanager
def batch_sharded_activations() -> Iterator[None]:
  """Pins 4-D conv / norm outputs to batch sharding when a mesh is set (`jax.set_mesh`).

  With parameters sharded over ("data", "fsdp") and no activation constraint, XLA's SPMD
  partitioner propagates the parameters' channel sharding into the activations and reshards
  them back ("involuntary full rematerialization"); FSDP wants activations split by example
  and weights all-gathered per layer. Only the example axis is constrained (the others stay
  free, e.g. for tensor-parallel channels). Outside a mesh context this is a no-op.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if (
      mesh.empty
      or not set(BATCH_AXES) <= set(mesh.axis_names)
      or all(mesh.shape[a] == 1 for a in BATCH_AXES)
  ):
    yield
    return
  with nn.intercept_methods(_constrain_to_batch):
    yield


def put_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Global arrays from each process's slice of the batch (leading axis concatenated over hosts)."""
  sharding = batch_sharding(mesh)
  return {
      k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
      for k, v in local_batch.items()
  }


def has_depthwise_kernels(abstract_params: Any) -> bool:
  """True if some parameter looks like a depthwise conv kernel [kh, kw, 1, C > 1]."""
  return any(
      len(x.shape) == 4 and x.shape[2] == 1 and x.shape[3] > 1
      for x in jax.tree_util.tree_leaves(abstract_params)
  )


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
        f"kernel gradients XLA's SPMD partitioner computes wrongly when the batch is replicated "
        f"over the 'model' axis (jax {jax.__version__}). Use config.mesh.model=1 and shard "
        f"parameters with config.mesh.fsdp instead."
    )
