r"""Data-pipeline throughput: synthesized patches/s per CPU core vs what the train step consumes.

  python -m jaxmilab.benchmarks.data_pipeline [--patch_size=128] [--batch_size=8] \
      [--config=configs/dcpt.py:quickstart] [--types=uir19_syn] [--seconds=1] [--steps=20] \
      [--time_step=false] [--json_out=F]

Per degradation type: one thread degrades random `patch_size` crops of a real photo
(skimage astronaut) at random levels, patches/s = per-core rate. "mixture": the whole
on-the-fly training pipeline (grain, one read thread: crop, flip, to float, a degradation
of a random type of the set), and "arrayrecord": reading pre-built build_uir shards of the
same set (PNG decode, crop, flip). The train step of `--config` (batch and patch overridden)
is timed with `jaxmilab.benchmarks.train_step.time_jax_step`; the table gives each rate
divided by the step's consumption (patches/s) and the number of cores it takes to keep the
step fed (consumption / per-core rate).
"""

from __future__ import annotations

import os

# "Per core": keep numpy / scipy single-threaded (set before they are imported).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
  os.environ.setdefault(_var, "1")

import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from jaxmilab import config_lib  # noqa: E402
from jaxmilab.data import degradations  # noqa: E402
from jaxmilab.data import embedded  # noqa: E402
from jaxmilab.data import images  # noqa: E402

# Shares --config, --steps, --batch_size (0: the config's) and --json_out with train_step.
from jaxmilab.benchmarks import train_step as train_step_lib  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("patch_size", 128, "Patch size (pixels) of the pipeline and the train step.")
flags.DEFINE_string("types", "uir19_syn", "Task set or comma-separated degradation names.")
flags.DEFINE_float("seconds", 1.0, "Minimum time per measurement.")
flags.DEFINE_bool("time_step", True, "Also time the train step (False: data rates only).")


def _rate(fn, seconds: float, min_calls: int = 3) -> float:
  """Calls per second of fn() over at least `seconds` and `min_calls` (after one warm-up call)."""
  fn()
  calls, t0 = 0, time.perf_counter()
  while calls < min_calls or time.perf_counter() - t0 < seconds:
    fn()
    calls += 1
  return calls / (time.perf_counter() - t0)


def degradation_rates(types, patch: int, seconds: float) -> dict[str, float]:
  """Patches/s of each degradation type alone, one thread, random crops and levels."""
  photo = images.to_float(embedded.read("astronaut", min_size=patch))  # [H, W, 3]
  rates = {}
  for name in types:
    rng = np.random.default_rng(0)

    def one():
      top = int(rng.integers(0, photo.shape[0] - patch + 1))
      left = int(rng.integers(0, photo.shape[1] - patch + 1))
      degradations.apply(name, photo[top:top + patch, left:left + patch], rng)

    rates[name] = _rate(one, seconds)
  return rates


def mixture_rate(types, patch: int, batch: int, seconds: float) -> float:
  """Patches/s of the on-the-fly training pipeline (degraded_photos, one read thread)."""
  from jaxmilab.data import degraded_photos  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict(dict(
      name="degraded_photos", degradations=tuple(types), patch_size=patch, eval_size=patch,
      worker_count=0, read_threads=1, read_buffer=1))
  ds = degraded_photos.create(config, batch_size=batch, seed=0, process_index=0, process_count=1)
  return batch * _rate(lambda: next(ds.train), seconds)


def arrayrecord_rate(types, patch: int, batch: int, seconds: float) -> float:
  """Patches/s of training from pre-built build_uir shards (one read thread)."""
  from jaxmilab.data import array_records  # pylint: disable=g-import-not-at-top
  from jaxmilab.data import build_uir  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as tmp:
    clean = os.path.join(tmp, "clean")
    os.makedirs(clean)
    for name in embedded.PHOTOS[:4]:
      pixels = embedded.read(name, min_size=patch)
      from PIL import Image  # pylint: disable=g-import-not-at-top
      Image.fromarray(pixels).save(os.path.join(clean, f"{name}.png"))
    plan = build_uir.make_plan(clean, types=tuple(types), patches_per_image=2, patch_size=patch,
                               levels_per_type=1, shard_size=64)
    build_uir.build(plan, os.path.join(tmp, "out"), workers=0, progress=False)
    config = ml_collections.ConfigDict(dict(
        name="array_records", path=os.path.join(tmp, "out"), patch_size=patch, eval_size=patch,
        eval_records=1, worker_count=0, read_threads=1, read_buffer=1))
    ds = array_records.create(config, batch_size=batch, seed=0, process_index=0, process_count=1)
    return batch * _rate(lambda: next(ds.train), seconds)


def train_step_rate(config, steps: int) -> dict[str, float]:
  """Patches/s the jitted train step of the config consumes (one device)."""
  result = train_step_lib.time_jax_step(config, steps)
  return {"seconds": result["seconds"], "patches_per_s": config.batch_size / result["seconds"],
          "flops": result["flops"]}


def main(argv):
  del argv
  spec = FLAGS.types
  types = degradations.resolve(spec if spec in degradations.TASK_SETS else spec.split(","), key="--types")
  patch = FLAGS.patch_size
  overrides = {"mesh.num_devices": 1, "data.patch_size": patch}
  if FLAGS.batch_size:
    overrides["batch_size"] = FLAGS.batch_size
  config = config_lib.load(FLAGS.config, overrides)
  batch = config.batch_size
  rates = degradation_rates(types, patch, FLAGS.seconds)
  rates["mixture (grain, on the fly)"] = mixture_rate(types, patch, batch, FLAGS.seconds)
  rates["arrayrecord (build_uir shards)"] = arrayrecord_rate(types, patch, batch, FLAGS.seconds)
  step = train_step_rate(config, FLAGS.steps) if FLAGS.time_step else None
  results = {"device": jax.devices()[0].device_kind, "config": FLAGS.config, "patch_size": patch,
             "batch_size": batch, "types": list(types), "patches_per_s_per_core": rates,
             "train_step": step}
  print(f"\npatch {patch}px, batch {batch}, device {results['device']}, config {FLAGS.config}")
  if step:
    print(f"train step: {step['seconds'] * 1e3:.1f} ms, {step['flops'] / 1e9:.1f} GFLOP = "
          f"{step['patches_per_s']:.3g} patches/s consumed")
  print("| pipeline | patches/s per core | ratio to step consumption | cores to feed the step |")
  print("|---|---|---|---|")
  for name, r in rates.items():
    if step:
      need = step["patches_per_s"] / r
      print(f"| {name} | {r:.1f} | {r / step['patches_per_s']:.3g} | {need:.3g} |")
    else:
      print(f"| {name} | {r:.1f} | | |")
  if FLAGS.json_out:
    with open(FLAGS.json_out, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  app.run(main)
