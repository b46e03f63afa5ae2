"""The trainer end to end on the DCPT smoke config: outputs, resume, EMA, --mode=eval, sharding,
non-finite loss and gradients, host syncs, errors."""

from __future__ import annotations

import json
import os
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmilab import checkpoint as ckpt_lib
from jaxmilab import config_lib
from jaxmilab import metrics as metrics_lib
from jaxmilab import trainer
from jaxmilab import workdir as workdir_lib
from jaxmilab.data import base as data_base


class HostReadProbe:
  """Records device-to-host reads made inside the trainer's ordinary steps.

  It wraps trainer._ordinary_step_guard (which the loop enters around every step that is not a
  log / eval / checkpoint step) and counts, while inside, calls of jax.device_get,
  multihost_utils.process_allgather, jax.block_until_ready and jax.Array value reads (float(),
  bool(), .item(), ...) made by the loop's thread. On accelerators the trainer's transfer guard
  catches the rest; on CPU, where arrays are host memory, the guard is inert, hence this probe.
  """

  def __init__(self):
    self.ordinary_steps = 0
    self.reads: list[str] = []
    self._inside = False
    self._thread = None

  def _wrap(self, name, fn):
    def wrapped(*args, **kwargs):
      # Only the loop's own thread: clu's timing barriers and orbax's async save wait in their
      # helper threads, which is what keeps them off the loop.
      if self._inside and threading.get_ident() == self._thread:
        self.reads.append(name)
      return fn(*args, **kwargs)

    return wrapped

  def install(self, mp: pytest.MonkeyPatch) -> "HostReadProbe":
    import contextlib  # pylint: disable=g-import-not-at-top
    from jax._src import array  # pylint: disable=g-import-not-at-top
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    original_guard = trainer._ordinary_step_guard  # pylint: disable=protected-access

    @contextlib.contextmanager
    def guard(level):
      if level == "allow":
        with original_guard(level):
          yield
        return
      self.ordinary_steps += 1
      self._inside, self._thread = True, threading.get_ident()
      try:
        with original_guard(level):
          yield
      finally:
        self._inside = False

    mp.setenv(trainer.ORDINARY_STEP_GUARD_ENV, "disallow_explicit")
    mp.setattr(trainer, "_ordinary_step_guard", guard)
    mp.setattr(jax, "device_get", self._wrap("device_get", jax.device_get))
    mp.setattr(jax, "block_until_ready", self._wrap("block_until_ready", jax.block_until_ready))
    mp.setattr(
        multihost_utils,
        "process_allgather",
        self._wrap("process_allgather", multihost_utils.process_allgather),
    )
    mp.setattr(
        array.ArrayImpl, "_value", property(self._wrap("value", array.ArrayImpl._value.fget))
    )
    mp.setattr(
        array.ArrayImpl,
        "block_until_ready",
        self._wrap("block_until_ready", array.ArrayImpl.block_until_ready),
    )
    return self


def run_main_with_probe(out_path: str) -> None:
  """`python -m jaxmilab.main` (flags from sys.argv) under the probe; writes its counts as JSON."""
  from jaxmilab import main as main_lib  # pylint: disable=g-import-not-at-top

  probe = HostReadProbe()
  with pytest.MonkeyPatch.context() as mp:
    probe.install(mp)
    try:
      main_lib.run()
    except SystemExit as e:
      if e.code not in (0, None):
        raise
    finally:
      with open(out_path, "w", encoding="utf-8") as f:
        json.dump({"ordinary_steps": probe.ordinary_steps, "reads": probe.reads}, f)


EMA = 0.5  # large enough that the EMA differs visibly from the parameters after 6 steps


def smoke(**overrides):
  """The DCPT smoke config on one device unless the test asks for a mesh."""
  return config_lib.load("configs/dcpt.py:smoke", {"mesh.num_devices": 1, **overrides})


def train_records(workdir):
  return [
      {k: v for k, v in r.items() if k not in config_lib.TIMING_KEYS}
      for r in metrics_lib.read_jsonl(workdir)
      if r["split"] == "train" and set(r) - {"step", "split", *config_lib.TIMING_KEYS}
  ]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """The smoke run with EMA, its ordinary steps under a device-to-host transfer guard."""
  workdir = str(tmp_path_factory.mktemp("straight"))
  with pytest.MonkeyPatch.context() as mp:
    # log every 2 steps: steps 1, 3, 5 are ordinary (no log, eval or checkpoint) and must not
    # read anything back from the devices.
    probe = HostReadProbe().install(mp)
    state = trainer.train_and_evaluate(smoke(ema_decay=EMA, log_every_steps=2), workdir)
  return workdir, jax.device_get(state), probe


def test_ordinary_steps_read_nothing_back(uninterrupted):
  probe = uninterrupted[2]
  assert probe.ordinary_steps == 3 and probe.reads == []


def test_smoke_writes_metrics_checkpoints_and_images(uninterrupted):
  workdir = uninterrupted[0]
  records = metrics_lib.read_jsonl(workdir)
  evals = [r for r in records if r["split"] == "eval"]
  assert [r["step"] for r in evals] == [6]
  for key in ("psnr", "psnr_input", "ssim", "accuracy", "psnr/gaussian_noise", "accuracy/haze"):
    assert np.isfinite(evals[0][key]), key
  assert [r["step"] for r in train_records(workdir)] == [2, 4, 6]
  train = [r for r in records if r["split"] == "train" and "loss" in r]
  for r in train:
    assert r["learning_rate"] == pytest.approx(1e-3) and r["images_per_sec"] > 0
    assert "mfu" not in r  # CPU: no known peak, no MFU
  compile_rows = [r for r in records if r["split"] == "compile"]
  assert len(compile_rows) == 1 and compile_rows[0]["flops_per_device"] > 0
  assert sorted(
      int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()
  ) == [2, 4, 6]
  assert os.path.exists(os.path.join(workdir, "eval_images", "step_00000006.png"))
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))


def test_resume_is_bit_for_bit(uninterrupted, tmp_path):
  """Stop after step 4 (as a kill after the checkpoint would), restart: identical end state."""
  straight_dir, straight_params = uninterrupted[:2]
  workdir = str(tmp_path)
  trainer.train_and_evaluate(smoke(total_steps=4, ema_decay=EMA, log_every_steps=2), workdir)
  # A half-written record after the checkpoint, as a kill mid-interval leaves, must disappear.
  with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
    f.write(json.dumps({"step": 5, "split": "train", "loss": 123.0}) + "\n")
  resumed = jax.device_get(
      trainer.train_and_evaluate(smoke(ema_decay=EMA, log_every_steps=2), workdir)
  )
  for name in ("params", "params_ema", "opt_state"):
    for a, b in zip(
        jax.tree.leaves(getattr(straight_params, name)), jax.tree.leaves(getattr(resumed, name))
    ):
      np.testing.assert_array_equal(a, b, err_msg=name)
  assert train_records(workdir) == train_records(straight_dir)


def test_ema_is_checkpointed_evaluated_and_exported(uninterrupted, tmp_path):
  workdir, state = uninterrupted[:2]
  differs = [
      not np.allclose(a, b)
      for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(state.params_ema))
  ]
  assert any(differs)
  loaded = ckpt_lib.load_variables(workdir)  # default: the EMA, as BasicSR's tests
  assert loaded["source"].endswith("params_ema")
  for a, b in zip(jax.tree.leaves(loaded["params"]), jax.tree.leaves(state.params_ema)):
    np.testing.assert_array_equal(a, b)
  raw = ckpt_lib.load_variables(workdir, ema=False)
  for a, b in zip(jax.tree.leaves(raw["params"]), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(a, b)


def test_init_from_workdir_loads_params_sharded_without_optimizer_state(uninterrupted):
  """init_from reads params (here their EMA) and model state only, born sharded by the new
  run's rule on its mesh, equal to the host copy."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from jaxmilab import sharding as sharding_lib  # pylint: disable=g-import-not-at-top

  mesh_config = ml_collections.ConfigDict(
      dict(data=2, fsdp=4, model=1, min_shard_size=0, shard_params_over=("fsdp",))
  )
  mesh = sharding_lib.create_mesh(mesh_config)
  loaded = ckpt_lib.load_variables(uninterrupted[0], mesh=mesh, mesh_config=mesh_config)
  host = ckpt_lib.load_variables(uninterrupted[0])
  assert set(loaded) == {"params", "model_state", "source"}
  specs = set()
  for (path, a), b in zip(
      jax.tree_util.tree_leaves_with_path(loaded["params"]), jax.tree.leaves(host["params"])
  ):
    assert a.sharding.mesh.shape == mesh.shape, path
    want = sharding_lib.array_spec(a.shape, mesh, ("fsdp",), 0)
    assert a.sharding.spec == want, (jax.tree_util.keystr(path), a.sharding.spec, want)
    specs.add(a.sharding.spec)
    np.testing.assert_array_equal(np.asarray(a), b)
  assert any("fsdp" in s for s in specs)


def test_mode_eval_evaluates_newest_checkpoint_without_changing_it(uninterrupted, tmp_path):
  """--mode=eval on a copy of the run: the training's final eval row again (EMA weights), no
  optimizer step, no new checkpoint, every collection of the state as saved."""
  import shutil  # pylint: disable=g-import-not-at-top

  workdir = str(tmp_path / "run")
  shutil.copytree(uninterrupted[0], workdir)
  t = trainer.Trainer(smoke(ema_decay=EMA, log_every_steps=2), workdir)
  state, scalars = t.evaluate_checkpoint()
  evals = metrics_lib.read_split(workdir, "eval")
  assert [r["step"] for r in evals] == [6, 6]
  for key, value in evals[0].items():
    if key not in config_lib.TIMING_KEYS:
      assert evals[1][key] == value, key
  assert scalars["psnr"] == evals[0]["psnr"]
  saved = jax.device_get(uninterrupted[1])
  for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(jax.device_get(state))):
    np.testing.assert_array_equal(a, b)
  assert sorted(
      int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()
  ) == [2, 4, 6]
  with pytest.raises(FileNotFoundError, match="no checkpoint and config.method.init_from is empty"):
    trainer.evaluate_checkpoint(smoke(), str(tmp_path / "empty"))


def test_host_read_probe_sees_reads(monkeypatch):
  """Negative control: the probe of the uninterrupted run does record the reads a per-step
  sync would make (device_get, allgather, float() of a device scalar)."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  probe = HostReadProbe().install(monkeypatch)
  with trainer._ordinary_step_guard("disallow_explicit"):  # pylint: disable=protected-access
    jax.device_get({"a": jnp.ones(2)})
    multihost_utils.process_allgather(np.array(True))
    float(jnp.ones(()) * 2)
  with trainer._ordinary_step_guard("allow"):  # pylint: disable=protected-access
    jax.device_get(jnp.ones(2))  # a sync step may read
  assert probe.ordinary_steps == 1
  assert {"device_get", "process_allgather", "value"} <= set(probe.reads)


# SGD, not Adam: Adam's per-weight normalisation turns rounding-level gradient differences of
# near-zero-gradient weights into learning-rate-sized updates, and it would hide a gradient that
# is off by a constant factor (e.g. a missing mean over devices). Plain SGD exposes both.
SGD = {
    "optimizer.name": "sgd",
    "optimizer.momentum": 0.9,
    "optimizer.learning_rate": 0.05,
    "total_steps": 4,
}


@pytest.fixture(scope="module")
def single_device_sgd(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("single_sgd"))
  trainer.train_and_evaluate(smoke(**SGD), workdir)
  return train_records(workdir)


# Data parallel and FSDP only: NAFNet has depthwise convolutions, so "model" > 1 is refused for it
# (sharding.check_tensor_parallel, tests/test_sharding.py); tensor parallelism is tested on SwinIR
# in tests/test_trainer_slow.py.
@pytest.mark.parametrize(
    "mesh",
    [
        dict(data=8, fsdp=1, model=1),
        # FSDP over 4 of the 8 fake devices: ~95 s on 2 cores, so in the slow suite (CI runs it).
        pytest.param(dict(data=2, fsdp=4, model=1), marks=pytest.mark.slow),
    ],
)
def test_sharded_losses_equal_single_device(single_device_sgd, tmp_path, mesh):
  """The same run on 8 fake devices (data parallel / FSDP) as on one device."""
  overrides = {f"mesh.{k}": v for k, v in mesh.items()}
  overrides.update({"mesh.num_devices": 8, "mesh.min_shard_size": 0, **SGD})
  t = trainer.Trainer(smoke(**overrides), str(tmp_path))
  sharded_axes = {axis for s in jax.tree.leaves(t.state_shardings) for axis in s.spec if axis}
  assert sharded_axes == {a for a in ("fsdp", "model") if mesh[a] > 1}
  t.run()
  a, b = single_device_sgd, train_records(str(tmp_path))
  assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4]
  for ra, rb in zip(a, b):
    for key, rtol in (("loss", 2e-4), ("l_pix", 5e-4), ("l_cls", 2e-4), ("grad_norm", 1e-3)):
      np.testing.assert_allclose(ra[key], rb[key], rtol=rtol, err_msg=f"step {ra['step']} {key}")


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
  original = trainer._train_step

  def poisoned(state, batch, rng, **kw):
    new_state, metrics = original(state, batch, rng, **kw)
    poison = jnp.where(new_state.step >= 3, jnp.nan, 0.0)
    params = jax.tree.map(lambda p: p + poison, new_state.params)
    return new_state.replace(params=params), dict(metrics, loss=metrics["loss"] + poison)

  monkeypatch.setattr(trainer, "_train_step", poisoned)
  with pytest.raises(trainer.NonFiniteLossError, match=r"loss .* step 3\b.*step 2") as stop:
    trainer.train_and_evaluate(smoke(), str(tmp_path))
  steps = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert steps == [2]
  loaded = ckpt_lib.load_variables(str(tmp_path))
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(loaded["params"]))
  # The advice works as worded: a lower lr is a config change the workdir guard refuses unless
  # the re-run passes --config_change=allow, which the message names; it then resumes at step 2.
  assert "re-run with --config_change=allow to resume from step 2" in str(stop.value)
  monkeypatch.setattr(trainer, "_train_step", original)
  lower = {"optimizer.learning_rate": 1e-4, "total_steps": 4}
  with pytest.raises(workdir_lib.WorkdirError, match="optimizer.learning_rate"):
    trainer.train_and_evaluate(smoke(**lower), str(tmp_path))
  trainer.train_and_evaluate(smoke(**lower), str(tmp_path), config_change="allow")
  rows = metrics_lib.read_split(str(tmp_path), "train")
  assert rows[-1]["step"] == 4 and np.isfinite(rows[-1]["loss"])


def test_nan_gradient_with_finite_loss_stops_at_its_step(tmp_path, monkeypatch):
  """A NaN gradient under a finite loss (d sqrt(x) / dx at x = 0) is caught at step 1 through
  grad_norm, although the loss only turns NaN at step 2; no checkpoint is written."""
  from jaxmilab.methods import dcpt  # pylint: disable=g-import-not-at-top

  original = dcpt.Method.loss

  def loss(self, params, model_state, batch, rng):
    value, aux = original(self, params, model_state, batch, rng)
    first = jax.tree.leaves(params)[0]
    return value + 0.0 * jnp.sqrt(0.0 * jnp.sum(first)), aux

  monkeypatch.setattr(dcpt.Method, "loss", loss)
  with pytest.raises(
      trainer.NonFiniteLossError,
      match=r"grad_norm is nan at step 1\b.*re-run into a new --workdir \(nothing was saved here\)",
  ):
    trainer.train_and_evaluate(smoke(log_every_steps=2), str(tmp_path))
  assert not [d for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()]


def test_config_errors_name_the_key(tmp_path):
  with pytest.raises(config_lib.ConfigError, match="no_such_key"):
    smoke(**{"data.no_such_key": 1})
  with pytest.raises(ValueError, match="batch_size=9"):
    trainer.Trainer(smoke(batch_size=9, **{"mesh.num_devices": 8}), str(tmp_path))
  with pytest.raises(ValueError, match="config.mesh"):
    trainer.Trainer(smoke(**{"mesh.data": 3}), str(tmp_path))
  with pytest.raises(ValueError, match="depthwise"):
    trainer.Trainer(
        smoke(**{"mesh.num_devices": 8, "mesh.data": 4, "mesh.model": 2}), str(tmp_path)
    )
  with pytest.raises(ValueError, match="Unknown model 'resnet9000'"):
    trainer.Trainer(smoke(**{"model.name": "resnet9000"}), str(tmp_path))


def test_missing_data_folder_is_a_clear_error(tmp_path):
  config = config_lib.load(
      "configs/dcpt.py:paper",
      {
          "data.root": str(tmp_path / "nowhere"),
          "model.preset": "nafnet_tiny",
          "batch_size": 8,
          "data.eval_batch_size": 8,
          "data.worker_count": 0,
      },
  )
  with pytest.raises(data_base.DataError, match="nowhere"):
    trainer.Trainer(config, str(tmp_path / "run"))


class _Quadratic:
  """loss = sum((w - batch["t"])**2): gradients known in closed form."""

  def loss(self, params, model_state, batch, rng):
    del rng
    return jnp.sum((params["w"] - batch["t"]) ** 2), ({}, model_state)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_ema_update_matches_numpy_reference(accumulate):
  """BasicSR's model_ema: ema <- d ema + (1 - d) params after each optimizer update (one per
  call; with accumulation a call takes `accumulate` micro-batches, stacked), starting from the
  initial parameters."""
  import optax  # pylint: disable=g-import-not-at-top

  decay, lr, updates = 0.5, 0.1, 4
  tx = optax.sgd(lr)
  w0 = jnp.array([1.0, -2.0])
  state = trainer.TrainState(
      step=jnp.zeros((), jnp.int32),
      params={"w": w0},
      opt_state=tx.init({"w": w0}),
      model_state={},
      params_ema={"w": w0},
  )
  step = jax.jit(
      lambda s, b: trainer._train_step(  # pylint: disable=protected-access
          s,
          b,
          jax.random.key(0),
          method=_Quadratic(),
          tx=tx,
          schedule=lambda c: lr * (c + 1),
          accumulate=accumulate,
          ema_decay=decay,
      )
  )
  w, ema = np.asarray(w0), np.asarray(w0)
  for i in range(updates):
    targets = [np.array([0.5, 0.5]) * (i * accumulate + j + 1) for j in range(accumulate)]
    batch = np.stack(targets) if accumulate > 1 else targets[0]
    state, metrics = step(state, {"t": jnp.asarray(batch, jnp.float32)})
    w = w - lr * np.mean([2 * (w - t) for t in targets], axis=0)
    ema = decay * ema + (1 - decay) * w
    np.testing.assert_allclose(state.params["w"], w, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(state.params_ema["w"], ema, rtol=1e-6, atol=1e-6)
    assert int(state.step) == (i + 1) * accumulate
    assert float(metrics["learning_rate"]) == pytest.approx(lr * (i + 1))


def test_sigterm_is_honoured_at_the_next_log_step(tmp_path, monkeypatch):
  """SIGTERM during step 1 stops the run at the log step 3 (not at step 2, and not at the end),
  with a checkpoint there and the interval's row written; the slow test (test_trainer_slow)
  checks that the resumed run then equals an uninterrupted one."""
  import signal  # pylint: disable=g-import-not-at-top

  original_guard = trainer._ordinary_step_guard  # pylint: disable=protected-access
  sent = []

  def guard(level):
    if not sent:
      sent.append(True)
      os.kill(os.getpid(), signal.SIGTERM)
    return original_guard(level)

  monkeypatch.setattr(trainer, "_ordinary_step_guard", guard)
  workdir = str(tmp_path)
  before = signal.getsignal(signal.SIGTERM)
  state = trainer.train_and_evaluate(
      smoke(total_steps=9, log_every_steps=3, checkpoint_every_steps=9, eval_every_steps=9), workdir
  )
  assert int(state.step) == 3
  assert sorted(
      int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit()
  ) == [3]
  assert [r["step"] for r in train_records(workdir)] == [3]
  assert signal.getsignal(signal.SIGTERM) is before  # the run's handler is removed again
  # Drivers that chain runs (quickstarts, benchmarks) refuse the partial run; the finished
  # one passes.
  config = smoke(total_steps=9, log_every_steps=3, checkpoint_every_steps=9, eval_every_steps=9)
  with pytest.raises(trainer.Interrupted, match="step 3 of 9"):
    trainer.check_finished(state, config, workdir)
  trainer.check_finished(state.replace(step=jnp.asarray(9)), config, workdir)
