"""Streaming evaluation in the trainer: per-process batches and outputs, fixed-size statistics.

A toy method (per-example PSNR of `lq + w` against `gt`) evaluated by the trainer with its
streaming evaluator must give exactly what the previous path gave (every batch concatenated
on the host, then `summarize_eval`), on a mesh whose "model" axis replicates the outputs; and
the host memory of the streaming path must not grow with the eval set while the
concatenating one does.

  python tests/test_eval_streaming.py   # prints the peak host memory, 1x and 10x eval set
"""

from __future__ import annotations

import os
import sys
import tracemalloc

if __name__ == "__main__":
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from jaxmilab import config_lib  # noqa: E402
from jaxmilab import registry  # noqa: E402
from jaxmilab import trainer as trainer_lib  # noqa: E402
from jaxmilab.data import base as data_base  # noqa: E402
from jaxmilab.evaluation import base as evaluation_base  # noqa: E402
from jaxmilab.methods import base as method_base  # noqa: E402

SIZE = 16


def psnr_per_example(restored, gt):
  mse = np.mean((np.clip(restored, 0, 1) - gt) ** 2, axis=(1, 2, 3))
  return 10 * np.log10(1.0 / np.maximum(mse, 1e-10))


class ToyEvaluator(evaluation_base.Evaluator):
  """PSNR sum and count (fixed size), plus the first two valid examples for a picture."""

  def __init__(self):
    super().__init__()
    self.add("psnr_sum", 0.0)
    self.add("count", 0.0)
    self._kept: list[np.ndarray] = []

  def update(self, batch, outputs):
    valid = batch["valid"]
    self.add("psnr_sum", psnr_per_example(outputs["restored"], batch["gt"])[valid].sum())
    self.add("count", valid.sum())
    for row in np.flatnonzero(valid)[: 2 - len(self._kept)]:
      self._kept.append(np.concatenate([batch["lq"][row], outputs["restored"][row]], axis=1))

  def compute(self):
    return {"psnr": float(evaluation_base.ratio(self.sums["psnr_sum"], self.sums["count"]))}

  def images(self):
    return np.concatenate(self._kept, axis=0) if self._kept else None


class ConcatenatingEvaluator(evaluation_base.Evaluator):
  """The previous evaluation: every batch kept, concatenated, then `summarize_eval`."""

  def __init__(self, method):
    super().__init__()
    self._method, self._outputs = method, []

  def update(self, batch, outputs):
    self._outputs.append({**batch, **outputs})

  def _host(self):
    return {k: np.concatenate([o[k] for o in self._outputs]) for k in self._outputs[0]}

  def compute(self):
    return self._method.summarize_eval(self._host())

  def images(self):
    return self._method.eval_images(self._host())


class ToyMethod(method_base.Method):
  streaming = True

  def init_variables(self, rng, batch):
    del rng, batch
    return {"params": {"w": jnp.full((3,), 0.05, jnp.float32)}}

  def loss(self, params, model_state, batch, rng):
    loss = jnp.mean((batch["lq"] + params["w"] - batch["gt"]) ** 2)
    return loss, ({}, model_state)

  def eval_step(self, params, model_state, batch):
    return {"restored": batch["lq"] + params["w"]}

  def summarize_eval(self, outputs):
    valid = outputs["valid"]
    return {"psnr": float(np.mean(psnr_per_example(outputs["restored"], outputs["gt"])[valid]))}

  def eval_images(self, outputs):
    rows = np.flatnonzero(outputs["valid"])[:2]
    return np.concatenate(
        [np.concatenate([outputs["lq"][r], outputs["restored"][r]], axis=1) for r in rows], axis=0
    )

  def evaluator(self):
    return ToyEvaluator() if self.streaming else ConcatenatingEvaluator(self)


class _Train:

  def __init__(self, batch):
    self.batch = batch

  def __next__(self):
    return self.batch

  def get_state(self):
    return {}

  def set_state(self, state):
    del state


def toy_data(num_eval: int, batch_size: int) -> data_base.Datasets:
  """Deterministic random pairs; the last eval batch is padded (valid False)."""

  def example(i):
    rng = np.random.default_rng(i)
    gt = rng.random((SIZE, SIZE, 3), dtype=np.float32)
    return {"lq": np.clip(gt + rng.normal(0, 0.1, gt.shape).astype(np.float32), 0, 1), "gt": gt}

  def eval_batches():
    for start in range(0, num_eval, batch_size):
      rows = [example(i) if i < num_eval else example(0) for i in range(start, start + batch_size)]
      batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
      batch["valid"] = np.arange(start, start + batch_size) < num_eval
      yield batch

  train = {k: v[None].repeat(batch_size, 0) for k, v in example(0).items()}
  return data_base.Datasets(
      train=_Train(train), eval_batches=eval_batches, info=data_base.DataInfo()
  )


def make_trainer(monkeypatch_or_none, num_eval: int, streaming: bool, mesh=None):
  config = config_lib.base_config()
  config.model.name, config.method.name, config.data.name = "toy", "toy", "toy"
  config.data.eval_batch_size = 8
  config.method.init_from = ""
  for k, v in (mesh or dict(data=1, fsdp=1, model=1, num_devices=1)).items():
    config.mesh[k] = v
  method = type("Toy", (ToyMethod,), {"streaming": streaming})
  if monkeypatch_or_none is not None:
    monkeypatch_or_none.setattr(registry, "get_method", lambda name: method)
  else:
    registry.get_method = lambda name: method
  return trainer_lib.Trainer(config, None, data=toy_data(num_eval, 8))


@pytest.mark.parametrize(
    "mesh",
    [dict(data=1, fsdp=1, model=1, num_devices=1), dict(data=2, fsdp=2, model=2, num_devices=8)],
)
def test_streaming_equals_concatenated(monkeypatch, mesh):
  results = {}
  for streaming in (True, False):
    t = make_trainer(monkeypatch, 21, streaming, mesh)
    results[streaming] = t.evaluate(t.initial_state())
  (s_scalars, s_image), (c_scalars, c_image) = results[True], results[False]
  # float32 per-example PSNRs summed per batch (streaming) vs one float32 mean: same to 1e-6.
  assert s_scalars["psnr"] == pytest.approx(c_scalars["psnr"], rel=1e-6)
  np.testing.assert_array_equal(s_image, c_image)
  # Independent reference: the formula on the 21 examples directly.
  data = toy_data(21, 8)
  ref = np.concatenate(
      [psnr_per_example(b["lq"] + 0.05, b["gt"])[b["valid"]] for b in data.eval_batches()]
  )
  assert len(ref) == 21 and s_scalars["psnr"] == pytest.approx(float(ref.mean()), rel=1e-5)


def test_process_local_rows_follow_the_local_batch():
  """Rows of a batch-sharded array replicated over "model" come back once, in batch order."""
  from jaxmilab import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top

  mesh = sharding_lib.create_mesh(ml_collections.ConfigDict(dict(data=2, fsdp=2, model=2)))
  x = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
  global_x = sharding_lib.put_batch({"x": x}, mesh)["x"]
  np.testing.assert_array_equal(trainer_lib.process_local(global_x), x)


def peak_eval_bytes(num_eval: int, streaming: bool) -> int:
  t = make_trainer(None, num_eval, streaming)
  state = t.initial_state()
  t.evaluate(state)  # Compile outside the measurement.
  tracemalloc.start()
  t.evaluate(state)
  peak = tracemalloc.get_traced_memory()[1]
  tracemalloc.stop()
  return peak


def test_host_memory_does_not_grow_with_the_eval_set():
  original = registry.get_method
  try:
    small, large = peak_eval_bytes(64, True), peak_eval_bytes(640, True)
    concat_large = peak_eval_bytes(640, False)
  finally:
    registry.get_method = original
  assert large < 1.5 * small, (small, large)
  assert concat_large > 5 * large, (large, concat_large)


if __name__ == "__main__":
  for n in (64, 640):
    for streaming in (False, True):
      print(
          f"eval set {n:4d} x {SIZE}x{SIZE}x3, {'streaming' if streaming else 'concatenating'}: "
          f"peak host memory {peak_eval_bytes(n, streaming) / 2**20:.2f} MiB"
      )


def test_merge_across_processes_adds_float64_sums_exactly(monkeypatch):
  """Two simulated processes holding the same statistics: the merged sums are exactly doubled
  (float64 shipped as its bits), and differing statistic names are refused."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  calls = []

  def fake_allgather(x, tiled=False):
    del tiled
    calls.append(np.asarray(x).dtype)
    return np.stack([np.asarray(x)] * 2)

  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(multihost_utils, "process_allgather", fake_allgather)
  ev = ToyEvaluator()
  ev.add("count", 3.0)
  ev.add("hist", np.array([0.1, 1e-300, 2.0**60 + 1.0]))
  ev.merge_across_processes()
  assert ev.sums["count"] == 6.0
  np.testing.assert_array_equal(ev.sums["hist"], 2 * np.array([0.1, 1e-300, 2.0**60 + 1.0]))
  assert all(d != np.float64 for d in calls)  # nothing float64 goes through a device

  digests = iter([np.array([[1], [2]])])
  monkeypatch.setattr(multihost_utils, "process_allgather", lambda x, tiled=False: next(digests))
  with pytest.raises(ValueError, match="different evaluator statistics"):
    ev.merge_across_processes()
