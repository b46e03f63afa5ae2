"""orbax checkpoints at DIR/checkpoints/<step>/: train state + grain iterator state.

Saves are asynchronous for the arrays; the data-iterator state is captured when
`save` is called. orbax commits a step atomically (temporary folder + rename),
so the newest step directory is always complete.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, "checkpoints")


def create_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True, create=True,
                                         cleanup_tmp_directories=True)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iter: Any | None) -> None:
  items = {"state": ocp.args.StandardSave(state)}
  if data_iter is not None:
    items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
  manager.save(step, args=ocp.args.Composite(**items), force=True)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any,
            data_iter: Any | None) -> Any:
  """The state at `step`, sharded as `abstract_state` says; `data_iter` is rewound in place."""
  items = {"state": ocp.args.StandardRestore(abstract_state)}
  if data_iter is not None:
    items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
  return manager.restore(step, args=ocp.args.Composite(**items))["state"]


def load_variables(path: str) -> dict[str, Any]:
  """Train-state arrays (as numpy, on the host) from a workdir, its checkpoints/ or a step folder,
  or backbone parameters from an official .pth / .safetensors file (jaxmilab.convert).

  Used by `init_from`: returns {"params": ..., "model_state": ...}.
  """
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.isfile(path):  # An official .pth / .safetensors file (weights-only reader).
    from jaxmilab import convert  # pylint: disable=g-import-not-at-top
    return convert.load_as_variables(path)
  candidates = [path, checkpoint_dir(path)]
  for candidate in candidates:
    if os.path.isdir(os.path.join(candidate, "state")):
      step_dir = candidate
      break
    if os.path.isdir(candidate):
      steps = [int(d) for d in os.listdir(candidate) if d.isdigit()
               and os.path.isdir(os.path.join(candidate, d, "state"))]
      if steps:
        step_dir = os.path.join(candidate, str(max(steps)))
        break
  else:
    raise FileNotFoundError(
        f"init_from={path!r}: no orbax checkpoint found. Pass a workdir of a finished run, its "
        f"checkpoints/ folder, or a step folder checkpoints/<step>/ containing state/.")
  with ocp.StandardCheckpointer() as checkpointer:
    metadata = checkpointer.metadata(os.path.join(step_dir, "state"))
    tree = metadata.item_metadata.tree if hasattr(metadata, "item_metadata") else metadata
    abstract = jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype,
                                       sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0])),
        tree, is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"))
    state = checkpointer.restore(os.path.join(step_dir, "state"), abstract)
  state = jax.device_get(state)
  return {"params": state["params"], "model_state": state.get("model_state", {})}
