"""The contract between a training recipe (a `Method`) and the generic trainer.

A method owns the losses, the metrics and what evaluation computes; the trainer
owns everything else (sharding, jit, optimizer, checkpoints, logging, the loop).
All methods' functions are pure and traced once by the trainer:

  variables = method.init_variables(rng, batch)          # flax variables
  loss, (metrics, new_model_state) = method.loss(params, model_state, batch, rng)
  outputs = method.eval_step(params, model_state, batch)  # per-example arrays
  ev = method.evaluator()                                 # streaming, on the host:
  ev.update(local_batch, local_outputs)                   #   per eval batch (process-local numpy)
  ev.merge_across_processes(); ev.compute(); ev.images()  #   once per evaluation

`batch` is a dict of global, sharded arrays whose leading axis is the example
axis; `model_state` holds the non-trainable flax collections (e.g. "batch_stats"),
`{}` when there are none.
"""

from __future__ import annotations

import abc
from typing import Any, Mapping, Sequence

import jax
import ml_collections
import numpy as np

from jaxmilab.convert import mapping
from jaxmilab.data.base import DataInfo
from jaxmilab.evaluation import base as evaluation_base

PyTree = Any
Metrics = dict[str, jax.Array]


class Method(abc.ABC):
  """A training recipe. Subclasses are pure: no state besides the config and modules."""

  def __init__(self, config: ml_collections.ConfigDict, data_info: DataInfo):
    self.config = config
    self.data_info = data_info

  @abc.abstractmethod
  def init_variables(self, rng: jax.Array, batch: Mapping[str, jax.Array]) -> dict[str, PyTree]:
    """Flax variables ({"params": ..., other collections}) for a batch of this shape."""

  @abc.abstractmethod
  def loss(
      self, params: PyTree, model_state: PyTree, batch: Mapping[str, jax.Array], rng: jax.Array
  ) -> tuple[jax.Array, tuple[Metrics, PyTree]]:
    """Scalar loss to minimise, (scalar metrics to log, updated model_state)."""

  @abc.abstractmethod
  def eval_step(
      self, params: PyTree, model_state: PyTree, batch: Mapping[str, jax.Array]
  ) -> dict[str, jax.Array]:
    """Per-example outputs (leading axis = batch) that the `evaluator()` consumes."""

  @abc.abstractmethod
  def evaluator(self) -> evaluation_base.Evaluator:
    """A fresh streaming evaluator (jaxmilab.evaluation.base) for one pass over the eval set.

    The trainer calls `update(batch, outputs)` per eval batch with the process-local numpy
    batch (its bool "valid" marks padding) and the process-local `eval_step` outputs, as two
    dicts; then `merge_across_processes()`, `compute()` and `images()`. Statistics are
    fixed-size sums, so host memory does not grow with the eval set.
    """

  def create_optimizer(self, optimizer_config: ml_collections.ConfigDict, total_steps: int):
    """The optax transformation the trainer applies (default: one from config.optimizer).

    Methods with several parameter groups override it (e.g. dcpt: separate optimizers for
    network and classifier, frozen parts, via optax.multi_transform)."""
    from jaxmilab import optimizers  # pylint: disable=g-import-not-at-top

    return optimizers.create(optimizer_config, total_steps)

  def init_from(self, variables: dict[str, PyTree], loaded: dict[str, PyTree]) -> dict[str, PyTree]:
    """Merges variables loaded from another run (`config.method.init_from`) into fresh ones.

    The default keeps every loaded array whose path and shape exist in `variables`
    (`merge_variables`, not strict); methods override it for named parts or to be strict.
    The trainer refuses a merge that kept no loaded array (another architecture).
    """
    return merge_variables(variables, loaded)


def merge_variables(
    fresh: PyTree,
    loaded: PyTree,
    *,
    strict: bool = False,
    parts: Sequence[Sequence[str]] | None = None,
    source: str = "",
    model: str = "",
    hint: str = "",
    limit: int | None = None,
) -> PyTree:
  """The one way methods merge `config.method.init_from` arrays into fresh variables.

  Takes each `loaded` array whose path and shape exist in `fresh`. `parts` (paths of
  sub-trees, e.g. `[("params", "encoder"), ("batch_stats", "encoder")]`) restricts the merge
  to those sub-trees of both trees; the rest of `fresh` is kept. strict=True first requires
  the two trees (or their `parts`) to match exactly (same paths, same shapes) and otherwise
  raises `mapping.CheckpointMismatchError` naming the missing / unexpected / mis-shaped paths,
  with `source`, `model` and `hint` in its first line (`limit`: one line naming the first
  `limit` paths of each kind; `mapping.check_params`).
  """
  if parts is not None:
    fresh_parts, loaded = select_parts(fresh, parts), select_parts(loaded, parts)
  else:
    fresh_parts = fresh
  if strict:
    mapping.check_params(loaded, fresh_parts, source=source, model=model, hint=hint, limit=limit)
  return merge_matching(fresh, loaded)


def select_parts(tree: PyTree, parts: Sequence[Sequence[str]]) -> dict[str, Any]:
  """The nested dict holding only the sub-trees of `tree` at `parts` (paths absent are skipped)."""
  out: dict[str, Any] = {}
  for path in parts:
    node = tree
    for key in path:
      if not isinstance(node, Mapping) or key not in node:
        break
      node = node[key]
    else:
      target = out
      for key in path[:-1]:
        target = target.setdefault(key, {})
      target[path[-1]] = node
  return out


def merge_matching(fresh: PyTree, loaded: PyTree) -> PyTree:
  """Takes `loaded` leaves where the same path exists in `fresh` with the same shape."""
  flat_loaded = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(loaded)}

  def pick(path, x):
    y = flat_loaded.get(jax.tree_util.keystr(path))
    if y is not None and np.shape(y) == np.shape(x):
      return jax.numpy.asarray(y, dtype=x.dtype)
    return x

  return jax.tree_util.tree_map_with_path(pick, fresh)
