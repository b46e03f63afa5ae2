"""The contract between a training recipe (a `Method`) and the generic trainer.

A method owns the losses, the metrics and what evaluation computes; the trainer
owns everything else (sharding, jit, optimizer, checkpoints, logging, the loop).
All methods' functions are pure and traced once by the trainer:

  variables = method.init_variables(rng, batch)          # flax variables
  loss, (metrics, new_model_state) = method.loss(params, model_state, batch, rng)
  outputs = method.eval_step(params, model_state, batch)  # per-example arrays
  scalars = method.summarize_eval(host_outputs)           # numpy, on the host

`batch` is a dict of global, sharded arrays whose leading axis is the example
axis; `model_state` holds the non-trainable flax collections (e.g. "batch_stats"),
`{}` when there are none.
"""

from __future__ import annotations

import abc
from typing import Any, Mapping

import jax
import ml_collections
import numpy as np

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
  def loss(self, params: PyTree, model_state: PyTree, batch: Mapping[str, jax.Array],
           rng: jax.Array) -> tuple[jax.Array, tuple[Metrics, PyTree]]:
    """Scalar loss to minimise, (scalar metrics to log, updated model_state)."""

  @abc.abstractmethod
  def eval_step(self, params: PyTree, model_state: PyTree,
                batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Per-example outputs (leading axis = batch) that `summarize_eval` turns into scalars."""

  @abc.abstractmethod
  def summarize_eval(self, outputs: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Scalars from the eval outputs of the whole eval set, concatenated on the host.

    `outputs` also holds the batch's own keys (e.g. "label") and a bool "valid"
    mask (False on padding examples, which must be ignored).
    """

  def eval_images(self, outputs: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """An optional [H, W, 3] float image in [0, 1] (e.g. input | restored | clean rows)."""
    return None

  def evaluator(self) -> "evaluation_base.Evaluator":
    """A fresh streaming evaluator (jaxmilab.evaluation.base) for one pass over the eval set.

    TRANSITION: the default keeps every batch and calls `summarize_eval` at the end; each
    method overrides this with sufficient statistics, after which the default goes away.
    """
    return _ConcatenatingEvaluator(self)

  def create_optimizer(self, optimizer_config: ml_collections.ConfigDict, total_steps: int):
    """The optax transformation the trainer applies (default: one from config.optimizer).

    Methods with several parameter groups override it (e.g. dcpt: separate optimizers for
    network and classifier, frozen parts, via optax.multi_transform)."""
    from jaxmilab import optimizers  # pylint: disable=g-import-not-at-top
    return optimizers.create(optimizer_config, total_steps)

  def init_from(self, variables: dict[str, PyTree], loaded: dict[str, PyTree]) -> dict[str, PyTree]:
    """Merges variables loaded from another run (`config.method.init_from`) into fresh ones.

    The default keeps every loaded array whose path and shape exist in `variables`
    and errors on nothing else; methods override to be stricter.
    """
    return merge_matching(variables, loaded)


def merge_matching(fresh: PyTree, loaded: PyTree) -> PyTree:
  """Takes `loaded` leaves where the same path exists in `fresh` with the same shape."""
  flat_loaded = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(loaded)}

  def pick(path, x):
    y = flat_loaded.get(jax.tree_util.keystr(path))
    if y is not None and np.shape(y) == np.shape(x):
      return jax.numpy.asarray(y, dtype=x.dtype)
    return x

  return jax.tree_util.tree_map_with_path(pick, fresh)


class _ConcatenatingEvaluator(evaluation_base.Evaluator):
  """TRANSITION adapter: host memory grows with the eval set (to be removed)."""

  def __init__(self, method: Method):
    super().__init__()
    self._method = method
    self._outputs: list[dict[str, np.ndarray]] = []

  def update(self, batch, outputs):
    self._outputs.append({**batch, **outputs})

  def merge_across_processes(self):
    import jax  # pylint: disable=g-import-not-at-top
    if jax.process_count() > 1:
      raise NotImplementedError(f"{type(self._method).__name__} has no streaming evaluator yet.")
    return self

  def _host(self):
    return {k: np.concatenate([o[k] for o in self._outputs]) for k in self._outputs[0]}

  def compute(self):
    return self._method.summarize_eval(self._host())

  def images(self):
    return self._method.eval_images(self._host())
