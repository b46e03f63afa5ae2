r"""Input-pipeline throughput: crops/s per CPU core against what the train step consumes.

  python -m jaxmilab.benchmarks.data_pipeline [--patch_size=128] [--batch_size=8] \
      [--config=configs/dcpt.py:quickstart] [--types=uir19_syn] [--seconds=1] [--steps=20] \
      [--time_step=false] [--build_images=0] [--output=F]

Per degradation type: one thread degrades random `patch_size` crops of a real photo
(skimage astronaut) at random levels: crops/s = the per-core rate. "mixture": the whole
on-the-fly training pipeline (`degraded_photos`: grain, one read thread; crop, flip, to float,
one degradation of a random type of the set). "records": training from built UIR-2.5M shards
(`array_records` over a build_uir build of the same types: PNG decode, crop, flip, to float).
The train step of `--config` (batch and patch overridden) is timed with
`jaxmilab.benchmarks.train_step.time_jax_step` on one device; the table gives each rate divided
by the step's consumption (crops/s) and the number of cores that keep the step fed.

`--build_images=N` (e.g. 2000) also times `python -m jaxmilab.data.build_uir` on N small
source images (64 px crops of the embedded photos, --workers=2, two types, one record per type)
and reports source images/s, records/s and the peak resident memory of the build's largest
process (main or worker), for N/4 and for N images: equal peaks mean memory does not grow with
the input size. Times include starting the CLI and its workers (a few seconds).
"""

from __future__ import annotations

import os

# "Per core": keep numpy / scipy single-threaded (set before they are imported).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
  os.environ.setdefault(_var, "1")

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Callable, Iterator, Mapping  # noqa: E402

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from jaxmilab import config_lib  # noqa: E402
from jaxmilab.data import degradations  # noqa: E402
from jaxmilab.data import embedded  # noqa: E402
from jaxmilab.data import images  # noqa: E402

# Shares --config, --steps, --batch_size (0: the config's) and --output with train_step.
from jaxmilab.benchmarks import train_step as train_step_lib  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("patch_size", 128, "Crop size (pixels) of the pipeline and the train step.")
flags.DEFINE_string("types", "uir19_syn", "Task set or comma-separated degradation names.")
flags.DEFINE_float("seconds", 1.0, "Minimum time per measurement.")
flags.DEFINE_bool("time_step", True, "Also time the train step (False: data rates only).")
flags.DEFINE_integer("build_images", 0, "Also time build_uir on this many source images (0: no).")


def rate(fn: Callable[[], object], seconds: float, min_calls: int = 3,
         clock: Callable[[], float] = time.perf_counter) -> float:
  """Calls per second of fn() over at least `seconds` and `min_calls` (after one warm-up call)."""
  fn()
  calls, t0 = 0, clock()
  while calls < min_calls or clock() - t0 < seconds:
    fn()
    calls += 1
  return calls / (clock() - t0)


def degradation_rates(types, patch: int, seconds: float) -> dict[str, float]:
  """Crops/s of each degradation type alone, one thread, random crops and levels."""
  photo = images.to_float(embedded.read("astronaut", min_size=patch))  # [H, W, 3]
  rates = {}
  for name in types:
    rng = np.random.default_rng(0)

    def one():
      top = int(rng.integers(0, photo.shape[0] - patch + 1))
      left = int(rng.integers(0, photo.shape[1] - patch + 1))
      degradations.apply(name, photo[top:top + patch, left:left + patch], rng)

    rates[name] = rate(one, seconds)
  return rates


def mixture_pipeline(types, patch: int, batch: int) -> Iterator[Mapping[str, np.ndarray]]:
  """The on-the-fly training iterator (degraded_photos, one read thread)."""
  from jaxmilab.data import degraded_photos  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict(dict(
      name="degraded_photos", degradations=tuple(types), patch_size=patch, eval_size=patch,
      worker_count=0, read_threads=1, read_buffer=1))
  return degraded_photos.create(config, batch_size=batch, seed=0, process_index=0,
                                process_count=1).train


def write_sources(folder: str, n: int, size: int) -> None:
  """n source images: `size` px crops of the embedded photos at varied positions."""
  os.makedirs(folder, exist_ok=True)
  photos = [embedded.read(name, min_size=size) for name in embedded.PHOTOS]
  rng = np.random.default_rng(0)
  for i in range(n):
    photo = photos[i % len(photos)]
    top = int(rng.integers(0, photo.shape[0] - size + 1))
    left = int(rng.integers(0, photo.shape[1] - size + 1))
    Image.fromarray(photo[top:top + size, left:left + size]).save(
        os.path.join(folder, f"{i:06d}.png"), compress_level=1)


def records_pipeline(types, patch: int, batch: int, tmp: str) -> Iterator[Mapping[str, np.ndarray]]:
  """Training iterator over a build_uir build of `types` made in `tmp` (not timed)."""
  from jaxmilab.data import array_records  # pylint: disable=g-import-not-at-top
  from jaxmilab.data import build_uir  # pylint: disable=g-import-not-at-top
  clean = os.path.join(tmp, "clean")
  write_sources(clean, 4, patch)
  plan = build_uir.make_plan(clean, types=tuple(types), patches_per_image=2, patch_size=patch,
                             levels_per_type=1, shard_size=64)
  build_uir.build(plan, os.path.join(tmp, "out"), workers=0, progress=False)
  config = ml_collections.ConfigDict(dict(
      name="array_records", path=os.path.join(tmp, "out"), patch_size=patch, eval_size=patch,
      eval_records=1, worker_count=0, read_threads=1, read_buffer=1))
  return array_records.create(config, batch_size=batch, seed=0, process_index=0,
                              process_count=1).train


def train_step_rate(config, steps: int) -> dict[str, float]:
  """Crops/s the jitted train step of the config consumes (one device)."""
  result = train_step_lib.time_jax_step(config, steps)
  return {"seconds": result["seconds"], "crops_per_s": config.batch_size / result["seconds"],
          "flops": result["flops"]}


def table_rows(rates: Mapping[str, float], consumption: float | None):
  """(name, crops/s per core, ratio to the step's consumption, cores to feed the step)."""
  return [(name, r, r / consumption if consumption else None,
           consumption / r if consumption else None) for name, r in rates.items()]


def time_build(n_images: int, out_root: str, workers: int = 2) -> dict[str, float]:
  """Runs the build_uir CLI on n_images 64 px sources; images/s, records/s and peak RSS (MiB)."""
  src = os.path.join(out_root, f"src{n_images}")
  write_sources(src, n_images, 64)
  out = os.path.join(out_root, f"build{n_images}")
  # A child python runs the CLI and reports the peak RSS of the largest process below it (the
  # build's main process or one of its workers, which it waits for).
  probe = ("import resource, subprocess, sys\n"
           "subprocess.run([sys.executable, '-m', 'jaxmilab.data.build_uir'] + sys.argv[1:], check=True)\n"
           "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
  t0 = time.perf_counter()
  result = subprocess.run(
      [sys.executable, "-c", probe, f"--clean_dir={src}", f"--output={out}", "--types=jpeg,noise",
       "--patches_per_image=1", "--patch_size=64", "--levels_per_type=1", "--shard_size=256",
       f"--workers={workers}", "--noprogress"], capture_output=True, text=True, check=False)
  seconds = time.perf_counter() - t0
  if result.returncode:
    raise RuntimeError(f"build_uir failed:\n{result.stderr[-3000:]}")
  peak_kb = int(result.stdout.split("PEAK_RSS_KB")[1].split()[0])
  with open(os.path.join(out, "manifest.json"), encoding="utf-8") as f:
    records = json.load(f)["num_records"]
  return {"images": n_images, "records": records, "seconds": seconds,
          "images_per_s": n_images / seconds, "records_per_s": records / seconds,
          "peak_rss_mib": peak_kb / 1024}


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
  mixture = mixture_pipeline(types, patch, batch)
  rates["mixture (on the fly, degraded_photos)"] = batch * rate(lambda: next(mixture), FLAGS.seconds)
  with tempfile.TemporaryDirectory() as tmp:
    records = records_pipeline(types, patch, batch, tmp)
    rates["records (build_uir shards, array_records)"] = batch * rate(lambda: next(records),
                                                                      FLAGS.seconds)
    builds = ([time_build(FLAGS.build_images // 4, tmp), time_build(FLAGS.build_images, tmp)]
              if FLAGS.build_images else [])
  step = train_step_rate(config, FLAGS.steps) if FLAGS.time_step else None
  results = {"device": jax.devices()[0].device_kind, "config": FLAGS.config, "patch_size": patch,
             "batch_size": batch, "types": list(types), "crops_per_s_per_core": rates,
             "train_step": step, "build_uir": builds}
  print(f"\npatch {patch}px, batch {batch}, device {results['device']}, config {FLAGS.config}")
  if step:
    print(f"train step: {step['seconds'] * 1e3:.1f} ms, {step['flops'] / 1e9:.1f} GFLOP = "
          f"{step['crops_per_s']:.3g} crops/s consumed")
  print("| pipeline | crops/s per core | ratio to step consumption | cores to feed the step |")
  print("|---|---|---|---|")
  for name, r, ratio, cores in table_rows(rates, step["crops_per_s"] if step else None):
    extra = f" {ratio:.3g} | {cores:.3g} |" if ratio is not None else " | |"
    print(f"| {name} | {r:.1f} |{extra}")
  for b in builds:
    print(f"build_uir: {b['images']} images -> {b['records']} records in {b['seconds']:.1f} s = "
          f"{b['images_per_s']:.1f} images/s, {b['records_per_s']:.1f} records/s; peak RSS of "
          f"its largest process {b['peak_rss_mib']:.0f} MiB")
  if FLAGS.output:
    with open(FLAGS.output, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  app.run(main)
