"""orbax checkpoints at DIR/checkpoints/<step>/: train state + grain iterator state.

Saves are asynchronous for the arrays; the data-iterator state is captured when
`save` is called. orbax commits a step atomically (temporary folder + rename, or a
commit marker on object stores), so the newest step directory is always complete.
Paths are `etils.epath` paths: a local folder or any filesystem epath knows,
`gs://bucket/run` included (orbax and tensorstore write there directly).

The train state holds "step", "params", "opt_state", "model_state" and, when
`config.ema_decay` > 0, "params_ema" (the exponential moving average that
evaluation uses). `load_variables` reads only the parameters and model state.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath


def checkpoint_dir(workdir: str | os.PathLike) -> epath.Path:
  """DIR/checkpoints; local paths made absolute (orbax refuses relative checkpoint paths)."""
  text = os.fspath(workdir)
  if "://" not in text:
    text = os.path.abspath(os.path.expanduser(text))
  return epath.Path(text) / "checkpoints"


def _check_gcs_client(path: epath.Path) -> None:
  """orbax lists and deletes gs:// steps with google-cloud-storage, which it does not install."""
  if not str(path).startswith("gs://"):
    return
  try:
    import google.cloud.storage  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    # orbax/checkpoint/_src/path/gcs_utils.py `get_bucket` (its hierarchical-namespace check when
    # listing steps) imports google.cloud.storage for every gs:// checkpoint folder.
    raise ImportError(
        f"Checkpoints in {path} need the google-cloud-storage package (orbax uses it to list "
        f"steps on gs://): pip install google-cloud-storage"
    ) from e


def create_manager(workdir: str | os.PathLike, keep: int) -> ocp.CheckpointManager:
  _check_gcs_client(checkpoint_dir(workdir))
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, enable_async_checkpointing=True, create=True, cleanup_tmp_directories=True
  )
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iter: Any | None) -> None:
  items = {"state": ocp.args.StandardSave(state)}
  if data_iter is not None:
    items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
  manager.save(step, args=ocp.args.Composite(**items), force=True)


def restore_state(
    manager: ocp.CheckpointManager, step: int, abstract_state: Any, data_iter: Any | None
) -> Any:
  """The state at `step`, sharded as `abstract_state` says; `data_iter` is rewound in place."""
  items = {"state": ocp.args.StandardRestore(abstract_state)}
  if data_iter is not None:
    items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
  return manager.restore(step, args=ocp.args.Composite(**items))["state"]


def _is_local_file(path: str) -> bool:
  return "://" not in path and os.path.isfile(os.path.expanduser(path))


def find_state_dir(path: str | os.PathLike) -> epath.Path:
  """The `state/` folder of a workdir (newest step), its checkpoints/ folder or a step folder."""
  root = epath.Path(os.path.expanduser(str(path)) if "://" not in str(path) else str(path))
  for candidate in (root, checkpoint_dir(root)):
    if (candidate / "state").is_dir():
      return candidate / "state"
    if candidate.is_dir():
      steps = [
          int(d.name) for d in candidate.iterdir() if d.name.isdigit() and (d / "state").is_dir()
      ]
      if steps:
        return candidate / str(max(steps)) / "state"
  raise FileNotFoundError(
      f"init_from={str(path)!r}: no orbax checkpoint found. Pass a workdir of a finished run, its "
      f"checkpoints/ folder, or a step folder checkpoints/<step>/ containing state/."
  )


def load_variables(
    path: str | os.PathLike,
    *,
    ema: bool = True,
    mesh: jax.sharding.Mesh | None = None,
    mesh_config: Any = None,
) -> dict[str, Any]:
  """Parameters and model state from a run (`init_from`), or an official .pth / .safetensors file.

  Returns {"params", "model_state", "source"}; the optimizer state is never read. With
  `ema` (default) a checkpoint that has "params_ema" gives those (as BasicSR's test options
  load `params_ema`); "source" says which were taken. Given `mesh`, the arrays come back
  sharded over it by the run's rule (`sharding.state_shardings` with `mesh_config`), so a
  large model is never gathered on one device; otherwise they are numpy arrays on the host.
  """
  if _is_local_file(str(path)):  # An official .pth / .safetensors file (weights-only reader).
    from jaxmilab import convert  # pylint: disable=g-import-not-at-top

    loaded = dict(convert.load_as_variables(os.path.abspath(os.path.expanduser(str(path)))))
    loaded.setdefault("source", "file")
    return loaded
  from jaxmilab import sharding as sharding_lib  # pylint: disable=g-import-not-at-top

  state_dir = find_state_dir(path)
  with ocp.PyTreeCheckpointer() as checkpointer:
    # The item handler's metadata (the tree), not `checkpointer.metadata`: that also reads the
    # step-level _CHECKPOINT_METADATA, which lives one folder up (checkpoints/<step>/), and warns
    # "Metadata file does not exist" on every healthy checkpoint.
    metadata = checkpointer.handler.metadata(epath.Path(state_dir))
    tree = metadata.tree if hasattr(metadata, "tree") else metadata
    tree = dict(tree)
    use_ema = ema and tree.get("params_ema") is not None
    keys = ["params", "model_state"] + (["params_ema"] if use_ema else [])
    wanted = {k: tree[k] for k in keys if tree.get(k) is not None}
    is_array = lambda m: hasattr(m, "shape") and hasattr(m, "dtype")  # noqa: E731
    on_host = mesh is None
    if on_host:
      mesh = jax.sharding.Mesh([jax.local_devices()[0]], ("data",))
      shardings = jax.tree.map(
          lambda m: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()),
          wanted,
          is_leaf=is_array,
      )
    else:
      shardings = sharding_lib.state_shardings(
          jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), wanted, is_leaf=is_array),
          mesh,
          mesh_config if mesh_config is not None else {},
      )
    abstract = jax.tree.map(
        lambda m, s: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=s),
        wanted,
        shardings,
        is_leaf=is_array,
    )
    restore_args = ocp.checkpoint_utils.construct_restore_args(abstract)
    state = checkpointer.restore(
        state_dir,
        args=ocp.args.PyTreeRestore(item=abstract, restore_args=restore_args, partial_restore=True),
    )
  if on_host:
    state = jax.device_get(state)
  params = state["params_ema"] if use_ema else state["params"]
  return {
      "params": params,
      "model_state": state.get("model_state") or {},
      "source": f"{state_dir}:{'params_ema' if use_ema else 'params'}",
  }
