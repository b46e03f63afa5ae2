"""The one generic training loop: init or restore, step, eval, checkpoint, preemption.

`train_and_evaluate(config, workdir)` runs any method on any mesh. The trainer
knows no method: it jits the method's pure functions with explicit shardings,
feeds them grain batches, and owns optimizer, checkpoints, metrics and signals.
"""

from __future__ import annotations

import functools
import os
import signal
import threading
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import periodic_actions
from jax.experimental import multihost_utils
from PIL import Image

from jaxmilab import checkpoint as ckpt_lib
from jaxmilab import config_lib
from jaxmilab import metrics as metrics_lib
from jaxmilab import optimizers
from jaxmilab import registry
from jaxmilab import sharding as sharding_lib


_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


class NonFiniteLossError(FloatingPointError):
  """Raised when the loss becomes NaN or Inf; the last good checkpoint is kept."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array           # number of optimizer steps taken
  params: Any
  opt_state: Any
  model_state: Any          # non-trainable flax collections (e.g. batch_stats), {} if none


class _Preemption:
  """Turns SIGTERM into a flag the loop checks; multi-host runs agree through a sync point."""

  def __init__(self):
    self.requested = False
    self._old = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._old = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint and exiting.")
    self.requested = True

  def should_stop(self, step: int) -> bool:
    if jax.process_count() > 1:
      try:  # Needs jax.distributed with the preemption service (Cloud TPU sets it up).
        if multihost_utils.reached_preemption_sync_point(step):
          return True
      except Exception:  # pylint: disable=broad-except
        pass
      # All hosts must agree on the step at which they stop.
      return bool(multihost_utils.process_allgather(np.array(self.requested)).any())
    return self.requested

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


def _first_batch(train_iter) -> dict[str, np.ndarray]:
  """Peeks one batch for shapes without moving the checkpointable iterator."""
  state = train_iter.get_state()
  batch = next(train_iter)
  train_iter.set_state(state)
  return batch


def _train_step(state: TrainState, batch, rng, *, method, tx) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step; pure, jitted once by the trainer."""
  rng = jax.random.fold_in(rng, state.step)
  grad_fn = jax.value_and_grad(method.loss, has_aux=True)
  (loss, (metrics, model_state)), grads = grad_fn(state.params, state.model_state, batch, rng)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(metrics, loss=loss, grad_norm=optax.global_norm(grads))
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                    model_state=model_state), metrics


def _gather(outputs: dict[str, jax.Array]) -> dict[str, np.ndarray]:
  if jax.process_count() > 1:
    return {k: np.asarray(v) for k, v in multihost_utils.process_allgather(outputs, tiled=True).items()}
  return {k: np.asarray(v) for k, v in jax.device_get(outputs).items()}


class Trainer:
  """Builds the run from a config; `train_and_evaluate` is the entry point."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    config_lib.validate(config)
    jax.config.update("jax_threefry_partitionable", True)
    self.config = config
    self.workdir = workdir
    self.mesh = sharding_lib.create_mesh(config.mesh)
    batch_devices = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
    for key in ("batch_size", "data.eval_batch_size"):
      value = config.batch_size if key == "batch_size" else config.data.get("eval_batch_size", config.batch_size)
      if value % batch_devices or value % jax.process_count():
        raise ValueError(
            f"config.{key}={value} must be divisible by the {batch_devices} devices of the "
            f"(data, fsdp) mesh axes and by the {jax.process_count()} processes.")
    self.data = registry.get_data(config.data.name)(
        config.data, batch_size=config.batch_size, seed=config.seed,
        process_index=jax.process_index(), process_count=jax.process_count())
    self.method = registry.get_method(config.method.name)(config, self.data.info)
    self.tx = optimizers.create(config.optimizer, config.total_steps)
    self.rng = jax.random.key(config.seed)

    example = _first_batch(self.data.train)
    self.batch_sharding = sharding_lib.batch_sharding(self.mesh)
    global_example = {k: jax.ShapeDtypeStruct((v.shape[0] * jax.process_count(),) + v.shape[1:], v.dtype,
                                              sharding=self.batch_sharding) for k, v in example.items()}
    self.abstract_state = jax.eval_shape(self._init_state, self.rng, global_example)
    sharding_lib.check_tensor_parallel(self.mesh, self.abstract_state.params, config.model.name)
    self.state_shardings = sharding_lib.state_shardings(self.abstract_state, self.mesh, config.mesh)
    self._global_example = global_example
    repl = sharding_lib.replicated(self.mesh)
    self.train_step = jax.jit(
        functools.partial(_train_step, method=self.method, tx=self.tx),
        in_shardings=(self.state_shardings, self.batch_sharding, repl),
        out_shardings=(self.state_shardings, repl), donate_argnums=0)
    self.eval_step = jax.jit(
        lambda state, batch: self.method.eval_step(state.params, state.model_state, batch),
        in_shardings=(self.state_shardings, self.batch_sharding), out_shardings=self.batch_sharding)

  def _init_state(self, rng, batch) -> TrainState:
    variables = dict(self.method.init_variables(rng, batch))
    params = variables.pop("params")
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=self.tx.init(params),
                      model_state=variables)

  def initial_state(self) -> TrainState:
    """Parameters born sharded (jit with out_shardings), optionally merged with `init_from`."""
    # Init runs once, so its speed is irrelevant: compiling it unoptimised saves ~3x compile time.
    init = jax.jit(self._init_state, out_shardings=self.state_shardings, compiler_options=_FAST_COMPILE)
    state = init(self.rng, self._global_example)
    init_from = self.config.method.get("init_from")
    if init_from:
      loaded = ckpt_lib.load_variables(init_from)
      variables = {"params": jax.device_get(state.params), **jax.device_get(state.model_state)}
      merged = self.method.init_from(variables, {"params": loaded["params"], **loaded["model_state"]})
      params = merged.pop("params")
      state = state.replace(params=params, opt_state=self.tx.init(params), model_state=merged)
      state = jax.device_put(state, self.state_shardings)
      logging.info("Initialised parameters from %s.", init_from)
    return state

  def evaluate(self, state: TrainState) -> tuple[dict[str, float], np.ndarray | None]:
    outputs: list[dict[str, np.ndarray]] = []
    for batch in self.data.eval_batches():
      global_batch = sharding_lib.put_batch(dict(batch), self.mesh)
      out = self.eval_step(state, {k: v for k, v in global_batch.items()})
      merged = dict(_gather(global_batch))
      merged.update(_gather(out))
      outputs.append(merged)
    if not outputs:
      raise ValueError(f"config.data ({self.config.data.name}) produced no eval batches.")
    host = {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}
    return self.method.summarize_eval(host), self.method.eval_images(host)

  def _write_eval(self, writer, step: int, state: TrainState) -> dict[str, float]:
    scalars, image = self.evaluate(state)
    metrics_lib.write_split(writer, step, "eval", scalars)
    if image is not None and jax.process_index() == 0:
      writer.write_images(step, {"eval/images": image[None]})
      os.makedirs(os.path.join(self.workdir, "eval_images"), exist_ok=True)
      Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)).save(
          os.path.join(self.workdir, "eval_images", f"step_{step:08d}.png"))
    return scalars

  def run(self) -> TrainState:
    config = self.config
    if jax.process_index() == 0:
      os.makedirs(self.workdir, exist_ok=True)
      with open(os.path.join(self.workdir, "config.json"), "w", encoding="utf-8") as f:
        f.write(config.to_json_best_effort(indent=2))
    manager = ckpt_lib.create_manager(self.workdir, config.keep_checkpoints)
    latest = manager.latest_step()
    abstract = jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), self.abstract_state,
        self.state_shardings)
    if latest is not None:
      logging.info("Resuming from %s/%d.", ckpt_lib.checkpoint_dir(self.workdir), latest)
      state = ckpt_lib.restore(manager, latest, abstract, self.data.train)
      metrics_lib.truncate_jsonl(self.workdir, latest)
    else:
      state = self.initial_state()
    step = int(jax.device_get(state.step))
    writer = metrics_lib.create_writer(self.workdir)
    last_good = latest
    pending: list[tuple[int, dict[str, jax.Array]]] = []

    def check_pending() -> None:
      """Syncs the queued step metrics; a non-finite loss stops the run before any save."""
      values = jax.device_get([m for _, m in pending])
      for (s, _), m in zip(pending, values):
        if not np.isfinite(m["loss"]):
          manager.wait_until_finished()
          raise NonFiniteLossError(
              f"The loss is {float(m['loss'])} at step {s}. Training stopped; the last good "
              f"checkpoint ({'step ' + str(last_good) if last_good is not None else 'none'}) in "
              f"{ckpt_lib.checkpoint_dir(self.workdir)} is kept. Lower config.optimizer.learning_rate "
              f"or set config.optimizer.grad_clip_norm, then re-run to resume.")
      return values

    report = None
    if jax.process_index() == 0:
      report = periodic_actions.ReportProgress(
          num_train_steps=config.total_steps, writer=_Prefixed(writer, "train"),
          every_steps=config.log_every_steps, every_secs=None)
    with _Preemption() as preemption:
      while step < config.total_steps:
        with jax.profiler.StepTraceAnnotation("train", step_num=step):
          batch = sharding_lib.put_batch(next(self.data.train), self.mesh)
          state, step_metrics = self.train_step(state, batch, self.rng)
        step += 1
        pending.append((step, step_metrics))
        if report is not None:
          report(step)
        is_last = step == config.total_steps
        if step % config.log_every_steps == 0 or is_last:
          values = check_pending()
          mean = {k: float(np.mean([v[k] for v in values])) for k in values[0]}
          metrics_lib.write_split(writer, step, "train", mean)
          pending.clear()
        if step % config.eval_every_steps == 0 or is_last:
          self._write_eval(writer, step, state)
        stop = preemption.should_stop(step)
        if step % config.checkpoint_every_steps == 0 or is_last or stop:
          check_pending()
          writer.flush()  # Metrics up to this step are durable before the checkpoint exists.
          ckpt_lib.save(manager, step, state, self.data.train)
          last_good = step
        if stop:
          logging.warning("Stopped at step %d after a preemption request; re-run to resume.", step)
          break
    manager.wait_until_finished()
    manager.close()
    writer.flush()
    writer.close()
    return state


class _Prefixed:
  """Writer adapter used by ReportProgress so its scalars land under "train/"."""

  def __init__(self, writer, split):
    self._writer, self._split = writer, split

  def write_scalars(self, step, scalars):
    metrics_lib.write_split(self._writer, step, self._split, scalars)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains `config` in `workdir`, resuming from its newest checkpoint if there is one."""
  return Trainer(config, workdir).run()
