"""The one generic training loop: init or restore, step, eval, checkpoint, preemption.

`train_and_evaluate(config, workdir)` runs any method on any mesh; `evaluate_checkpoint`
evaluates a run without training (`main --mode=eval`). The trainer knows no method: it
jits the method's pure functions with explicit shardings inside `jax.set_mesh(mesh)`,
feeds them grain batches, and owns optimizer, EMA, checkpoints, metrics and signals.

One production path for compilation: `Trainer.lower_train_step()` lowers the very jit
the loop runs, from abstract shapes; the loop, `jaxmilab.compile` (ahead-of-time for a
TPU topology), tests/test_pod_compile.py and benchmarks/train_step.py all compile it.

Host synchronisation: ordinary steps only dispatch work (no device-to-host transfer, no
cross-host collective on the host); the loop reads metrics back, checks them for NaN /
Inf and honours a SIGTERM at the next log step (where processes agree on it).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import signal
import sys
import threading
import time
from typing import Any, Iterator, Sequence

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import periodic_actions
from jax.experimental import multihost_utils

from jaxmilab import checkpoint as ckpt_lib
from jaxmilab import compilation_cache
from jaxmilab import config_lib
from jaxmilab import console
from jaxmilab import goodput as goodput_lib
from jaxmilab import metrics as metrics_lib
from jaxmilab import optimizers
from jaxmilab import prefetch as prefetch_lib
from jaxmilab import registry
from jaxmilab import sharding as sharding_lib
from jaxmilab import workdir as workdir_lib

_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}

# Device-to-host transfer guard around ordinary (non-log, non-eval, non-checkpoint) steps:
# "allow" in production; tests set "disallow_explicit" to prove that such steps never sync.
ORDINARY_STEP_GUARD_ENV = "JAXMILAB_ORDINARY_STEP_TRANSFER_GUARD"

# Peak dense bfloat16 FLOP/s per device, for train/mfu (vendor figures; absent kinds: no MFU).
PEAK_FLOPS_PER_DEVICE = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,  # v5e
    "TPU v5e": 197e12,
    "TPU v5": 459e12,  # v5p
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,  # v6e (Trillium)
    "TPU v6e": 918e12,
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
}


class NonFiniteLossError(FloatingPointError):
  """Raised when the loss or the gradient norm becomes NaN or Inf; the last good checkpoint
  is kept."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # number of trainer steps (micro-steps under accumulation)
  params: Any
  opt_state: Any
  model_state: Any  # non-trainable flax collections (e.g. batch_stats), {} if none
  params_ema: Any = None  # exponential moving average of params (config.ema_decay > 0)

  def eval_params(self) -> Any:
    """The parameters evaluation uses: the EMA when there is one (BasicSR's net_g_ema)."""
    return self.params if self.params_ema is None else self.params_ema


class _Preemption:
  """SIGTERM becomes a flag, honoured at the next log step by every process count.

  Every step calls jax's preemption sync point (a local check of the coordination
  service's agreed step: no host sync), as its contract asks; when the service says stop,
  the run stops at that step. Our own SIGTERM flag is honoured only at log steps, where the
  loop syncs with the devices anyway: with several processes they agree on it there (one
  allgather). Stopping at a log step also keeps `metrics.jsonl` exact: the stopped run has
  written the row of every finished interval, so the resumed run's rows equal an
  uninterrupted run's (a service-driven stop between log steps leaves the next row covering
  only the steps after the resume).
  """

  # The signal that stopped the newest run of this process ("SIGTERM", "SIGINT") or None.
  last_stop: str | None = None

  def __init__(self):
    self.requested = False
    self.interrupted = False  # Ctrl-C (SIGINT): honoured at the next step (one process)
    self._old = None
    self._old_int = None

  def __enter__(self):
    _Preemption.last_stop = None
    if threading.current_thread() is threading.main_thread():
      self._old = signal.signal(signal.SIGTERM, self._handle)
      self._old_int = signal.signal(signal.SIGINT, self._handle_interrupt)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint at the next log step.")
    self.requested = True
    _Preemption.last_stop = _Preemption.last_stop or "SIGTERM"

  def _handle_interrupt(self, signum, frame):
    """First Ctrl-C: checkpoint at the next step and stop; a second one aborts at once."""
    del signum, frame
    if self.interrupted:
      signal.signal(signal.SIGINT, signal.default_int_handler)
      raise KeyboardInterrupt("second Ctrl-C")
    self.interrupted = True
    _Preemption.last_stop = _Preemption.last_stop or "SIGINT"
    print(
        "Ctrl-C: saving a checkpoint at the next step, then stopping (Ctrl-C again aborts at "
        "once, losing the steps since the last checkpoint).",
        file=sys.stderr,
        flush=True,
    )

  @staticmethod
  def _service_available() -> bool:
    from jax._src import distributed  # pylint: disable=g-import-not-at-top

    return (
        distributed.global_state.client is not None
        and distributed.global_state.preemption_sync_manager is not None
    )

  def should_stop(self, step: int, log_step: bool) -> bool:
    if (
        jax.process_count() > 1
        and self._service_available()
        and multihost_utils.reached_preemption_sync_point(step)
    ):
      return True
    if self.interrupted and jax.process_count() == 1:
      return True
    if not log_step:
      return False
    if jax.process_count() == 1:
      return self.requested
    # All processes must stop at the same step: agree on the SIGTERM / SIGINT flags (one
    # allgather; a Ctrl-C reaches one process).
    flag = np.array(self.requested or self.interrupted)
    return bool(np.asarray(multihost_utils.process_allgather(flag)).any())

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)
    if self._old_int is not None:
      signal.signal(signal.SIGINT, self._old_int)


def _check_init_from_took_something(
    init_from: str, fresh: Any, merged: Any, loaded: Any, model_name: Any
) -> None:
  """ValueError (one line) when `method.init_from` kept every fresh parameter: `init_from` then
  holds another architecture (no path and shape in common), and training would silently start
  from scratch. Checked after the merge, so methods that remap paths (bcam, cdsp, macl) count."""
  if not jax.tree.leaves(loaded):
    return
  if all(a is b for a, b in zip(jax.tree.leaves(merged), jax.tree.leaves(fresh))):
    path, leaf = jax.tree_util.tree_leaves_with_path(loaded)[0]
    raise ValueError(
        f"config.method.init_from={init_from}: none of its {len(jax.tree.leaves(loaded))} "
        f"parameters has the path and shape of a parameter of this model "
        f"(config.model.name={model_name!r}; e.g. {jax.tree_util.keystr(path)} "
        f"{tuple(np.shape(leaf))}): it holds another architecture. Point init_from at a run or "
        f"file of the same model."
    )


def _first_batch(train_iter) -> dict[str, np.ndarray]:
  """Peeks one batch for shapes without moving the checkpointable iterator."""
  state = train_iter.get_state()
  batch = next(train_iter)
  train_iter.set_state(state)
  return batch


def _mean_gradients(
    params, model_state, batch, rng, step, *, method, accumulate: int, grad_shardings=None
):
  """(loss, metrics, model_state, gradients) averaged over `accumulate` micro-batches.

  accumulate == 1: one value_and_grad on `batch`. accumulate = k > 1: `batch` carries a leading
  micro-batch axis [k, B, ...]; a `lax.scan` runs the k forward/backward passes in this one
  jitted program, summing the gradients in float32 (cast back to each parameter's dtype after
  dividing by k) and threading `model_state` (BatchNorm statistics) from micro-batch to
  micro-batch as k separate steps would. Micro-batch i uses the rng of micro-step `step + i`,
  so the draws (masks, crops) are those of k plain steps. The loss and the method's metrics are
  the means over the micro-batches.
  """
  grad_fn = jax.value_and_grad(method.loss, has_aux=True)
  if accumulate == 1:
    with sharding_lib.batch_sharded_activations():
      (loss, (metrics, model_state)), grads = grad_fn(
          params, model_state, batch, jax.random.fold_in(rng, step)
      )
    return loss, metrics, model_state, grads

  def constrain(tree):
    return (
        tree if grad_shardings is None else jax.lax.with_sharding_constraint(tree, grad_shardings)
    )

  def micro(carry, inputs):
    model_state, grad_sum = carry
    micro_batch, i = inputs
    with sharding_lib.batch_sharded_activations():
      (loss, (metrics, model_state)), grads = grad_fn(
          params, model_state, micro_batch, jax.random.fold_in(rng, step + i)
      )
    grad_sum = constrain(jax.tree.map(lambda a, g: a + g.astype(jnp.float32), grad_sum, grads))
    return (model_state, grad_sum), (loss, metrics)

  zeros = constrain(jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params))
  (model_state, grad_sum), (losses, metrics) = jax.lax.scan(
      micro, (model_state, zeros), (batch, jnp.arange(accumulate, dtype=jnp.int32))
  )
  grads = jax.tree.map(lambda g, p: (g / accumulate).astype(p.dtype), grad_sum, params)
  metrics = jax.tree.map(lambda m: jnp.mean(m.astype(jnp.float32), axis=0), metrics)
  return jnp.mean(losses.astype(jnp.float32)), metrics, model_state, grads


def _train_step(
    state: TrainState,
    batch,
    rng,
    *,
    method,
    tx,
    schedule,
    accumulate: int,
    ema_decay: float,
    grad_shardings=None,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer update; pure, jitted once by the trainer (inside `jax.set_mesh`).

  With `accumulate` = k > 1 the update consumes k micro-batches (`batch` is [k, B, ...], see
  `_mean_gradients`) and `state.step` advances by k: steps keep counting micro-batches, as
  `config.total_steps` and the `*_every_steps` cadences do. `grad_norm` is the norm of the
  (averaged) gradient the update applies.
  """
  loss, metrics, model_state, grads = _mean_gradients(
      state.params,
      state.model_state,
      batch,
      rng,
      state.step,
      method=method,
      accumulate=accumulate,
      grad_shardings=grad_shardings,
  )
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  params_ema = state.params_ema
  if params_ema is not None:
    # BasicSR model_ema: ema = decay * ema + (1 - decay) * params after every optimizer update.
    params_ema = jax.tree.map(
        lambda e, p: (ema_decay * e + (1 - ema_decay) * p).astype(e.dtype), params_ema, params
    )
  metrics = dict(
      metrics,
      loss=loss,
      grad_norm=optax.global_norm(grads),
      learning_rate=schedule(state.step // accumulate),
  )
  return (
      TrainState(
          step=state.step + accumulate,
          params=params,
          opt_state=opt_state,
          model_state=model_state,
          params_ema=params_ema,
      ),
      metrics,
  )


def _eval_step(state: TrainState, batch, *, method) -> dict[str, jax.Array]:
  with sharding_lib.batch_sharded_activations():
    return method.eval_step(state.eval_params(), state.model_state, batch)


def _put_step_batch(local_batch: dict[str, np.ndarray], *, sharding) -> dict[str, jax.Array]:
  """Global arrays of the train step's input from this process's rows (`sharding` splits the
  example axis, the leading one or, for stacked micro-batches [k, B, ...], the second)."""
  return {
      k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
      for k, v in local_batch.items()
  }


def process_local(x: jax.Array) -> np.ndarray:
  """This process's rows of a batch-sharded global array, in the order of its local batch.

  No cross-host transfer: the addressable shards are deduplicated (replicas over "model")
  and concatenated by their offset on the example axis.
  """
  if x.ndim == 0:
    return np.asarray(x)
  shards = {}
  for s in x.addressable_shards:
    shards.setdefault(s.index[0].start or 0, s)
  return np.concatenate([np.asarray(shards[k].data) for k in sorted(shards)], axis=0)


def peak_flops_per_device(device: jax.Device) -> float | None:
  return PEAK_FLOPS_PER_DEVICE.get(getattr(device, "device_kind", ""))


def compiled_stats(compiled) -> dict[str, float]:
  """Per-device FLOPs and memory of a compiled step (XLA's cost and memory analyses)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else (cost or {})
  mem = compiled.memory_analysis()
  out = {"flops_per_device": float(cost.get("flops", float("nan")))}
  for key in ("optimal_seconds", "estimated_seconds"):  # Present on some backends (TPU).
    if key in cost and float(cost[key]) >= 0:  # libtpu gives a negative placeholder for none
      out["compiler_seconds_estimate"] = float(cost[key])
  if mem is not None:
    out.update(
        argument_bytes_per_device=float(mem.argument_size_in_bytes),
        output_bytes_per_device=float(mem.output_size_in_bytes),
        temp_bytes_per_device=float(mem.temp_size_in_bytes),
        alias_bytes_per_device=float(mem.alias_size_in_bytes),
    )
    # Donated state: outputs alias arguments, so the peak is arguments + temporaries + the
    # outputs that are not aliased.
    out["peak_bytes_per_device"] = (
        out["argument_bytes_per_device"]
        + out["temp_bytes_per_device"]
        + out["output_bytes_per_device"]
        - out["alias_bytes_per_device"]
    )
  return out


_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def oom_figures(message: str) -> tuple[float, float] | None:
  """(bytes needed, bytes available) from the TPU compiler's out-of-memory error, else None.

  A program that does not fit one chip is a result of ahead-of-time compilation, not a crash
  (jaxmilab.compile, benchmarks.tea_attention). libtpu 0.0.42 says "RESOURCE_EXHAUSTED: Ran out of
  memory on HBM, the total memory required for HLO temporaries (18.12G) exceeds available HBM
  (15.75G)." (the XLA reference's fwd+bwd at --aot_size=256 on v5e); other versions
  "... Used 18.12G of 15.75G hbm. ...".
  """
  m = re.search(
      r"required for [^(]*\(([\d.]+)([KMGT]?)B?\) exceeds available HBM "
      r"\(([\d.]+)([KMGT]?)B?\)",
      message,
  ) or re.search(r"Used ([\d.]+)([KMGT]?)B? of ([\d.]+)([KMGT]?)B? hbm", message)
  if not m:
    return None
  return (float(m.group(1)) * _UNITS[m.group(2)], float(m.group(3)) * _UNITS[m.group(4)])


class Trainer:
  """Builds the run from a config; `run` trains, `evaluate_checkpoint` only evaluates.

  `devices` (default: all) may be the devices of a TPU topology description with no
  hardware behind it (jaxmilab.compile); `data` replaces the config's dataset (e.g. a
  stand-in of the same shapes), otherwise `registry.get_data(config.data.name)` builds it.
  """

  def __init__(
      self,
      config: ml_collections.ConfigDict,
      workdir: str | os.PathLike | None,
      *,
      devices: Sequence[jax.Device] | None = None,
      data=None,
  ):
    config_lib.validate(config)
    jax.config.update("jax_threefry_partitionable", True)
    self.config = config
    self.workdir = workdir_lib.as_path(workdir) if workdir is not None else None
    self.mesh = sharding_lib.create_mesh(config.mesh, devices)
    batch_devices = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
    for key in ("batch_size", "data.eval_batch_size"):
      value = (
          config.batch_size
          if key == "batch_size"
          else config.data.get("eval_batch_size", config.batch_size)
      )
      if value % batch_devices or value % jax.process_count():
        raise ValueError(
            f"config.{key}={value} must be divisible by the {batch_devices} devices of the "
            f"(data, fsdp) mesh axes and by the {jax.process_count()} processes."
        )
    self.data = (
        data
        if data is not None
        else registry.get_data(config.data.name)(
            config.data,
            batch_size=config.batch_size,
            seed=config.seed,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
    )
    self.method = registry.get_method(config.method.name)(config, self.data.info)
    self.accumulate = int(config.optimizer.get("accumulate_steps", 1))
    if self.accumulate > 1:
      # One trainer call = one optimizer update = `accumulate` micro-steps: the cadences must
      # land on update boundaries.
      for key in ("total_steps", "log_every_steps", "eval_every_steps", "checkpoint_every_steps"):
        if int(config[key]) % self.accumulate:
          raise ValueError(
              f"config.{key}={config[key]} must be a multiple of "
              f"config.optimizer.accumulate_steps={self.accumulate} (steps count "
              f"micro-batches; one update consumes {self.accumulate})."
          )
    self.tx = self.method.create_optimizer(config.optimizer, config.total_steps)
    self.schedule = optimizers.create_schedule(
        config.optimizer, max(config.total_steps // self.accumulate, 1)
    )
    self.ema_decay = float(config.get("ema_decay", 0.0))
    if not 0.0 <= self.ema_decay < 1.0:
      raise ValueError(f"config.ema_decay={self.ema_decay} must be in [0, 1) (0 = no EMA).")

    example = _first_batch(self.data.train)
    self.batch_sharding = sharding_lib.batch_sharding(self.mesh)
    self.repl = sharding_lib.replicated(self.mesh)
    self._global_example = {
        k: jax.ShapeDtypeStruct(
            (v.shape[0] * jax.process_count(),) + v.shape[1:], v.dtype, sharding=self.batch_sharding
        )
        for k, v in example.items()
    }
    # The train step's input: [accumulate, B, ...] micro-batches (the leading axis unsharded)
    # when accumulating, else the batch itself.
    self.step_batch_sharding = self.batch_sharding
    self._step_example = self._global_example
    if self.accumulate > 1:
      self.step_batch_sharding = jax.sharding.NamedSharding(
          self.mesh, jax.sharding.PartitionSpec(None, *self.batch_sharding.spec)
      )
      self._step_example = {
          k: jax.ShapeDtypeStruct(
              (self.accumulate,) + v.shape, v.dtype, sharding=self.step_batch_sharding
          )
          for k, v in self._global_example.items()
      }
    abstract_rng = jax.eval_shape(lambda: jax.random.key(0))
    self._abstract_rng = jax.ShapeDtypeStruct(
        abstract_rng.shape, abstract_rng.dtype, sharding=self.repl
    )
    with self.mesh_context():
      self.abstract_state = jax.eval_shape(
          self._init_state, self._abstract_rng, self._global_example
      )
    sharding_lib.check_tensor_parallel(self.mesh, self.abstract_state.params, config.model.name)
    self.state_shardings = sharding_lib.state_shardings(self.abstract_state, self.mesh, config.mesh)
    self.abstract_sharded_state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        self.abstract_state,
        self.state_shardings,
    )
    self.train_step = jax.jit(
        functools.partial(
            _train_step,
            method=self.method,
            tx=self.tx,
            schedule=self.schedule,
            accumulate=self.accumulate,
            ema_decay=self.ema_decay,
            grad_shardings=self.state_shardings.params,
        ),
        in_shardings=(self.state_shardings, self.step_batch_sharding, self.repl),
        out_shardings=(self.state_shardings, self.repl),
        donate_argnums=0,
    )
    self.eval_step = jax.jit(
        functools.partial(_eval_step, method=self.method),
        in_shardings=(self.state_shardings, self.batch_sharding),
        out_shardings=self.batch_sharding,
    )

  # -- compilation ---------------------------------------------------------------------------
  def mesh_context(self):
    """`jax.set_mesh(self.mesh)`: every trace, lowering and call of the steps runs in it."""
    return jax.set_mesh(self.mesh)

  def lower_train_step(self) -> jax.stages.Lowered:
    """The loop's train step lowered from abstract shapes (no data, no parameters in memory)."""
    with self.mesh_context():
      return self.train_step.lower(
          self.abstract_sharded_state, self._step_example, self._abstract_rng
      )

  def compile_train_step(self, compiler_options: dict[str, Any] | None = None):
    """(compiled train step, seconds it took); the loop calls exactly this executable."""
    t0 = time.perf_counter()
    compiled = self.lower_train_step().compile(compiler_options=compiler_options)
    return compiled, time.perf_counter() - t0

  # -- state ---------------------------------------------------------------------------------
  def _init_state(self, rng, batch) -> TrainState:
    variables = dict(self.method.init_variables(rng, batch))
    params = variables.pop("params")
    ema = jax.tree.map(jnp.copy, params) if self.ema_decay > 0 else None
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=self.tx.init(params),
        model_state=variables,
        params_ema=ema,
    )

  def _rng(self) -> jax.Array:
    # Made by a jitted function with replicated output: device_put of a process-local key onto
    # a sharding that spans other processes' devices is an error with several processes.
    return jax.jit(lambda: jax.random.key(self.config.seed), out_shardings=self.repl)()

  def initial_state(self) -> TrainState:
    """Parameters born sharded (jit with out_shardings), optionally merged with `init_from`."""
    # Init runs once, so its speed is irrelevant: compiling it unoptimised saves ~3x compile time.
    init = jax.jit(
        self._init_state, out_shardings=self.state_shardings, compiler_options=_FAST_COMPILE
    )
    with self.mesh_context():
      state = init(self._rng(), self._global_example)
    init_from = self.config.method.get("init_from")
    if init_from:
      state = self._merge_init_from(state, init_from)
    return state

  def _merge_init_from(self, state: TrainState, init_from: str) -> TrainState:
    """Loaded parameters and model state (never optimizer state), sharded as this run wants."""
    loaded = ckpt_lib.load_variables(init_from, mesh=self.mesh, mesh_config=self.config.mesh)
    variables = {"params": state.params, **state.model_state}
    merged = self.method.init_from(variables, {"params": loaded["params"], **loaded["model_state"]})
    _check_init_from_took_something(
        init_from,
        variables["params"],
        merged["params"],
        loaded["params"],
        self.config.model.get("name"),
    )
    params = merged.pop("params")
    params, merged = jax.device_put(
        (params, merged), (self.state_shardings.params, self.state_shardings.model_state)
    )
    ema = None
    if state.params_ema is not None:
      ema = jax.device_put(jax.tree.map(jnp.copy, params), self.state_shardings.params_ema)
    with self.mesh_context():
      opt_state = jax.jit(self.tx.init, out_shardings=self.state_shardings.opt_state)(params)
    logging.info("Initialised parameters from %s (%s).", init_from, loaded["source"])
    return state.replace(params=params, opt_state=opt_state, model_state=merged, params_ema=ema)

  # -- evaluation ----------------------------------------------------------------------------
  def evaluate(self, state: TrainState) -> tuple[dict[str, float], np.ndarray | None]:
    """Streams the eval set through `method.evaluator()`: host memory is independent of its size.

    Each process updates its evaluator with its own numpy batch and the rows of the outputs
    its devices computed (no gather of the eval set); the sufficient statistics are summed
    across processes once at the end.
    """
    evaluator = self.method.evaluator()
    batches = 0
    with self.mesh_context():
      for batch in self.data.eval_batches():
        local = {k: np.asarray(v) for k, v in batch.items()}
        outputs = self.eval_step(state, sharding_lib.put_batch(local, self.mesh))
        evaluator.update(local, {k: process_local(v) for k, v in outputs.items()})
        batches += 1
    if not batches:
      raise ValueError(f"config.data ({self.config.data.name}) produced no eval batches.")
    evaluator.merge_across_processes()
    return evaluator.compute(), evaluator.images()

  def _write_eval(self, writer, step: int, state: TrainState) -> dict[str, float]:
    t0 = time.perf_counter()
    scalars, image = self.evaluate(state)
    metrics_lib.write_split(
        writer, step, "eval", dict(scalars, eval_seconds=time.perf_counter() - t0)
    )
    if image is not None and jax.process_index() == 0:
      writer.write_images(step, {"eval/images": image[None]})
      metrics_lib.write_png(self.workdir / "eval_images" / f"step_{step:08d}.png", image)
    return scalars

  # -- restore -------------------------------------------------------------------------------
  def _restore_or_init(self, manager, with_data: bool) -> tuple[TrainState, int | None]:
    latest = manager.latest_step()
    if latest is not None:
      logging.info("Resuming from %s/%d.", ckpt_lib.checkpoint_dir(self.workdir), latest)
      state = ckpt_lib.restore_state(
          manager, latest, self.abstract_sharded_state, self.data.train if with_data else None
      )
      return state, latest
    return self.initial_state(), None

  def evaluate_checkpoint(self) -> tuple[TrainState, dict[str, float]]:
    """`--mode=eval`: evaluates the newest checkpoint of the workdir, else `init_from` weights.

    No optimizer step and no change to any collection: the state is only read. Rows are
    written as split "eval" at the checkpoint's step (0 for init_from / fresh weights).
    """
    lead = jax.process_index() == 0
    if workdir_lib.latest_step(self.workdir) is None and not self.config.method.get("init_from"):
      # Checked before the checkpoint manager exists: it would leave an empty checkpoints/.
      raise FileNotFoundError(
          f"--mode=eval: {ckpt_lib.checkpoint_dir(self.workdir)} has no checkpoint and "
          f"config.method.init_from is empty; train first or set --config.method.init_from."
      )
    with workdir_lib.hold(self.workdir, lead=lead):
      if lead:  # Another experiment's checkpoint would not restore into this config.
        workdir_lib.check_config(self.workdir, self.config)
      manager = ckpt_lib.create_manager(self.workdir, self.config.keep_checkpoints)
      try:
        state, latest = self._restore_or_init(manager, with_data=False)
        step = int(jax.device_get(state.step))
        writer = self._console_writer(
            metrics_lib.create_writer(self.workdir, console=False), self.config.total_steps
        )
        scalars = self._write_eval(writer, step, state)
        writer.flush()
        writer.close()
      finally:
        manager.close()
    del latest
    return state, scalars

  # -- training ------------------------------------------------------------------------------
  def _write_config(self, step: int | None = None) -> None:
    """config.json (and the accepted change in config_history.jsonl, see workdir.py)."""
    if jax.process_index() == 0:
      self.workdir.mkdir(parents=True, exist_ok=True)
      change = getattr(self, "_config_change", None)
      if change is not None:
        change.record(self.workdir, step)
      (self.workdir / "config.json").write_text(self.config.to_json_best_effort(indent=2))

  def _profile_window(self) -> tuple[int, int] | None:
    window = tuple(self.config.get("profile_steps", ()) or ())
    if not window:
      return None
    if len(window) != 2 or not 0 < window[0] <= window[1]:
      raise ValueError(
          f"config.profile_steps={window}: use (first, last) steps, 0 < first <= "
          f"last, or () for no profile."
      )
    return int(window[0]), int(window[1])

  def run(self, *, config_change: str = "refuse") -> TrainState:
    """Trains to `config.total_steps`, resuming from the newest checkpoint of the workdir.

    Holds the workdir's lock for the whole run and refuses another experiment's workdir before
    writing anything (jaxmilab/workdir.py; `config_change="allow"` accepts the change and
    records it in config_history.jsonl); config.json is written once the restore succeeded.
    Prints one closing line: the final metrics and the checkpoint path (or "already complete
    at step N" when there was nothing left to train).
    """
    lead = jax.process_index() == 0
    with workdir_lib.hold(self.workdir, lead=lead):
      self._config_change = (
          workdir_lib.check_config(self.workdir, self.config, config_change=config_change)
          if lead
          else None
      )
      start = workdir_lib.latest_step(self.workdir)
      state = self._train()
      step = int(jax.device_get(state.step))
      if lead and getattr(self, "_progress", None) is not None:
        stopped = {"SIGINT": "Ctrl-C", "SIGTERM": "SIGTERM"}.get(
            _Preemption.last_stop or "", "preemption"
        )
        self._progress.load_last(
            metrics_lib.read_jsonl(self.workdir)
            if (self.workdir / metrics_lib.JSONL_NAME).exists()
            else []
        )
        latest = workdir_lib.latest_step(self.workdir)
        print(
            self._progress.closing_line(
                str(self.workdir),
                step,
                str(ckpt_lib.checkpoint_dir(self.workdir) / str(latest))
                if latest is not None
                else None,
                already_complete=start is not None and start >= self.config.total_steps,
                stopped=stopped if step < self.config.total_steps else None,
            ),
            flush=True,
        )
    return state

  def _console_writer(self, writer, step: int):
    """The run's writer behind console.ProgressWriter (progress / eval / closing lines)."""
    self._progress = console.ProgressWriter(
        writer,
        total_steps=self.config.total_steps,
        start_step=step,
        enabled=jax.process_index() == 0,
    )
    return self._progress

  def _train(self) -> TrainState:
    config = self.config
    goodput = goodput_lib.Goodput()
    ckpt_dir = ckpt_lib.checkpoint_dir(self.workdir)
    fresh = not ckpt_dir.exists()
    manager = ckpt_lib.create_manager(self.workdir, config.keep_checkpoints)
    t0 = time.time()
    try:
      state, latest = self._restore_or_init(manager, with_data=True)
    except BaseException:
      # A failed init (init_from missing, another architecture) leaves no empty checkpoints/.
      manager.close()
      if fresh and jax.process_index() == 0:
        with contextlib.suppress(Exception):  # the init's error is the one to report
          ckpt_dir.rmdir()  # only if empty
      raise
    self._write_config(latest)  # only now: a failed restore leaves the workdir's config as it was
    if latest is not None:
      goodput.add("restore_seconds", time.time() - t0)
      if jax.process_index() == 0 and (self.workdir / metrics_lib.JSONL_NAME).exists():
        goodput.resume_from(metrics_lib.read_split(self.workdir, goodput_lib.SPLIT), latest)
      metrics_lib.truncate_jsonl(self.workdir, latest)
    step = int(jax.device_get(state.step))
    # Nothing to train (already complete): no writer, so no empty TensorBoard event file.
    writer = self._console_writer(
        metrics_lib.create_writer(self.workdir, console=False)
        if step < config.total_steps
        else metrics_lib.null_writer(),
        step,
    )
    last_good = latest
    pending: list[tuple[int, dict[str, jax.Array]]] = []

    train_step, stats = None, {}
    if step < config.total_steps:
      # The loop calls this executable: compiled once, timed, and its cost analysis kept for MFU.
      cache_before = compilation_cache.stats()
      train_step, compile_seconds = self.compile_train_step()
      # Persistent-cache hits / misses of this compile (0 / 0 where no cache is set up).
      cache = {f"cache_{k}": n - cache_before[k] for k, n in compilation_cache.stats().items()}
      goodput.add("compile_seconds", compile_seconds)
      stats = compiled_stats(train_step)
      logging.info("Compiled the train step in %.1f s: %s", compile_seconds, json.dumps(stats))
      metrics_lib.write_split(
          writer,
          step,
          "compile",
          {
              "train_step_seconds": compile_seconds,
              **cache,
              **{k: v for k, v in stats.items() if v == v},
          },
      )
    peak = peak_flops_per_device(self.mesh.devices.flat[0])

    def check_pending() -> list[dict[str, np.ndarray]]:
      """Syncs the queued step metrics; a non-finite loss or gradient stops the run."""
      values = jax.device_get([m for _, m in pending])
      for (s, _), m in zip(pending, values):
        bad = [k for k in ("loss", "grad_norm") if not np.isfinite(m[k])]
        if bad:
          manager.wait_until_finished()
          fix = "Lower config.optimizer.learning_rate or set config.optimizer.grad_clip_norm"
          if last_good is None:
            on = f"{fix}, then re-run into a new --workdir (nothing was saved here)."
          else:
            on = (
                f"{fix} and re-run with {workdir_lib.ALLOW_FLAG} to resume from step "
                f"{last_good} under the changed config (or start a new --workdir)."
            )
          raise NonFiniteLossError(
              f"The {' and the '.join(bad)} is {', '.join(str(float(m[k])) for k in bad)} at "
              f"step {s}. Training stopped; the last good checkpoint "
              f"({'step ' + str(last_good) if last_good is not None else 'none'}) in "
              f"{ckpt_lib.checkpoint_dir(self.workdir)} is kept. {on}"
          )
      return values

    report = None
    if jax.process_index() == 0:
      report = periodic_actions.ReportProgress(
          num_train_steps=config.total_steps,
          writer=_Prefixed(writer, "train"),
          every_steps=config.log_every_steps,
          every_secs=None,
      )
    timed = report.timed if report is not None else (lambda name, **kw: contextlib.nullcontext())
    profile = self._profile_window()
    profiling = False
    guard = os.environ.get(ORDINARY_STEP_GUARD_ENV, "allow")
    rng = self._rng()
    k = self.accumulate  # micro-steps per trainer call (one optimizer update)
    ckpt_minutes = float(config.get("checkpoint_every_minutes", 0.0) or 0.0)
    last_ckpt_time = time.perf_counter()
    put = functools.partial(_put_step_batch, sharding=self.step_batch_sharding)
    # The next steps' inputs are read and put on the devices while the current step runs.
    inputs = prefetch_lib.DevicePrefetch(
        self.data.train, put, micro_batches=k, size=int(config.get("prefetch_batches", 2))
    )
    goodput.loop_started()
    interval_start, excluded = time.perf_counter(), 0.0
    steps_in_interval = calls_in_interval = 0
    # contextlib.closing: the prefetch thread stops however the loop ends.
    with _Preemption() as preemption, self.mesh_context(), contextlib.closing(inputs):
      while step < config.total_steps:
        if profile and step < profile[0] <= step + k:
          jax.profiler.start_trace(str(self.workdir / "profile"))
          profiling = True
        is_last = step + k == config.total_steps
        log_step = (step + k) % config.log_every_steps == 0 or is_last
        eval_step = (step + k) % config.eval_every_steps == 0 or is_last
        ckpt_step = (step + k) % config.checkpoint_every_steps == 0 or is_last
        sync_step = log_step or eval_step or ckpt_step
        with _ordinary_step_guard(guard if not sync_step else "allow"):
          with jax.profiler.StepTraceAnnotation("train", step_num=step):
            wait0 = inputs.wait_seconds
            batch = next(inputs)
            excluded += inputs.wait_seconds - wait0
            state, step_metrics = train_step(state, batch, rng)
          step += k
          steps_in_interval += k
          calls_in_interval += 1
          pending.append((step, step_metrics))
          if report is not None:
            for micro_step in range(step - k + 1, step + 1):  # clu wants every step once
              report(micro_step)
          # The preemption sync point counts calls (one per update) on every process.
          stop = preemption.should_stop(step // k, log_step)
        if log_step and ckpt_minutes > 0 and not ckpt_step:
          due = time.perf_counter() - last_ckpt_time >= 60.0 * ckpt_minutes
          if jax.process_count() > 1:  # process 0's clock decides for all
            due = bool(multihost_utils.broadcast_one_to_all(np.array(due)))
          ckpt_step = due
        if profiling and (step >= profile[1] or is_last or stop):
          jax.block_until_ready(state)
          jax.profiler.stop_trace()
          profiling = False
        if log_step:
          values = check_pending()
          seconds = time.perf_counter() - interval_start - excluded
          mean = {name: float(np.mean([v[name] for v in values])) for name in values[0]}
          mean["learning_rate"] = float(values[-1]["learning_rate"])
          if seconds > 0:
            mean["images_per_sec"] = steps_in_interval * config.batch_size / seconds
            if peak and stats["flops_per_device"] == stats["flops_per_device"]:
              # flops_per_device is one call's: `k` micro-batches.
              mean["mfu"] = stats["flops_per_device"] * calls_in_interval / seconds / peak
          metrics_lib.write_split(writer, step, "train", mean)
          goodput.add("data_wait_seconds", inputs.wait_seconds)
          inputs.wait_seconds = 0.0
          metrics_lib.write_split(writer, step, goodput_lib.SPLIT, goodput.row())
          pending.clear()
          interval_start, excluded, steps_in_interval, calls_in_interval = (
              time.perf_counter(),
              0.0,
              0,
              0,
          )
        if eval_step:
          t0 = time.perf_counter()
          with timed("eval"):
            self._write_eval(writer, step, state)
          excluded += time.perf_counter() - t0
          goodput.add("eval_seconds", time.perf_counter() - t0)
        if ckpt_step or stop:
          t0 = time.perf_counter()
          with timed("checkpoint"):
            check_pending()
            writer.flush()  # Metrics up to this step are durable before the checkpoint exists.
            ckpt_lib.save(manager, step, state, inputs.consumed_state())
          excluded += time.perf_counter() - t0
          goodput.add("checkpoint_seconds", time.perf_counter() - t0)
          last_ckpt_time = time.perf_counter()
          last_good = step
        if stop:
          logging.warning("Stopped at step %d after a preemption request; re-run to resume.", step)
          break
    manager.wait_until_finished()
    manager.close()
    writer.flush()
    writer.close()
    return state


@contextlib.contextmanager
def _ordinary_step_guard(level: str) -> Iterator[None]:
  if level == "allow":
    yield
    return
  with jax.transfer_guard_device_to_host(level):
    yield


class _Prefixed:
  """Writer adapter used by ReportProgress so its scalars land under "train/"."""

  def __init__(self, writer, split):
    self._writer, self._split = writer, split

  def write_scalars(self, step, scalars):
    metrics_lib.write_split(self._writer, step, self._split, scalars)


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, config_change: str = "refuse"
) -> TrainState:
  """Trains `config` in `workdir`, resuming from its newest checkpoint if there is one.

  Another experiment's workdir is refused before the run is built (and again, under the
  workdir's lock, before anything is written); see jaxmilab/workdir.py.
  """
  if jax.process_index() == 0 and workdir_lib.read_config(workdir) is not None:
    workdir_lib.check_config(workdir, config, config_change=config_change)
  return Trainer(config, workdir).run(config_change=config_change)


def stopped_by() -> str | None:
  """ "SIGINT" or "SIGTERM" when the newest run of this process stopped early on that signal."""
  return _Preemption.last_stop


class Interrupted(console.RunInterrupted):
  """A run stopped before `config.total_steps` after a preemption request (SIGTERM, Ctrl-C)."""


def check_finished(state: TrainState, config: ml_collections.ConfigDict, workdir: str) -> None:
  """Raises `Interrupted` when `state` stopped short of `config.total_steps`.

  A SIGTERM makes the trainer checkpoint and return early, which is what `jaxmilab.main` and a
  pod supervisor want (the process exits, the supervisor restarts it). A driver that chains
  runs (the quickstarts, the effect benchmarks) must not hand such a partial run to its next
  stage or its results table: it calls this after each run and stops."""
  step = int(jax.device_get(state.step))
  if step < int(config.total_steps):
    raise Interrupted(
        f"{workdir}: the run stopped at step {step} of {config.total_steps} after a "
        f"preemption request (SIGTERM). Its checkpoint is kept; re-run the same "
        f"command to resume."
    )


def train_to_end(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """`train_and_evaluate` for drivers that chain runs: `Interrupted` instead of a partial run."""
  state = train_and_evaluate(config, workdir)
  check_finished(state, config, workdir)
  return state


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Evaluates the newest checkpoint in `workdir` (or `config.method.init_from`) only."""
  return Trainer(config, workdir).evaluate_checkpoint()[1]
