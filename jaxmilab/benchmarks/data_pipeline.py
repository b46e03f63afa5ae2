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

`--source_size=2040x1356` (realistic mode; DIV2K-like, UIR-2.5M's sources run to 2K) instead
measures the records pipeline on 2K-class images: `--source_images` photos synthesized at that
size (the embedded photos resized, plus mild pixel noise so the PNGs are not smoother than
photographs; their mean PNG size is reported), packed as noisy/clean pairs the way the released
UIR-2.5M is (`build_uir --paired_dir`: every crop decodes the two whole images), and packed as
sub-images (`--subimage_size=480 --subimage_step=240`: a crop decodes two 480 px images). For
each it reports crops/s per core and, for a v5e host (`--host_chips` chips of 197 TFLOP/s,
`--host_cores` vCPUs), the crops/s the step consumes at 25 % and 50 % MFU
(`--flops_per_crop`: the train step's FLOPs per 128 px crop, default the v5e-64 compile of
configs/maskdcpt.py:pod, 1.863 TFLOP per chip per step at 8 crops per chip, docs/running.md), the
cores that takes, and the multiple of the 25 % consumption that a quarter of the host's cores
delivers (the target is >= 3). Timings are per core: scale by cores on an idle machine only.

  python -m jaxmilab.benchmarks.data_pipeline --source_size=2040x1356 --time_step=false

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


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines this benchmark's flags; on demand, as benchmarks share flag names."""
  train_step_lib.define_flags(flag_values)  # --config, --steps, --batch_size, --output
  flags.DEFINE_integer(
      "patch_size",
      128,
      "Crop size (pixels) of the pipeline and the train step.",
      flag_values=flag_values,
  )
  flags.DEFINE_string(
      "types",
      "uir19_syn",
      "Task set or comma-separated degradation names.",
      flag_values=flag_values,
  )
  flags.DEFINE_float("seconds", 1.0, "Minimum time per measurement.", flag_values=flag_values)
  flags.DEFINE_bool(
      "time_step",
      True,
      "Also time the train step (False: data rates only).",
      flag_values=flag_values,
  )
  flags.DEFINE_integer(
      "build_images",
      0,
      "Also time build_uir on this many source images (0: no).",
      flag_values=flag_values,
  )
  flags.DEFINE_string(
      "source_size",
      "",
      "WxH (e.g. 2040x1356): realistic mode on images this size.",
      flag_values=flag_values,
  )
  flags.DEFINE_integer(
      "source_images",
      4,
      "Realistic mode: number of synthesized source images.",
      flag_values=flag_values,
  )
  flags.DEFINE_integer(
      "subimage_size",
      480,
      "Realistic mode: sub-image size of the second build.",
      flag_values=flag_values,
  )
  flags.DEFINE_integer(
      "subimage_step", 240, "Realistic mode: sub-image stride.", flag_values=flag_values
  )
  flags.DEFINE_float(
      "flops_per_crop",
      1.863e12 / 8,
      "Train-step FLOPs per crop (fwd + bwd).",
      flag_values=flag_values,
  )
  flags.DEFINE_integer(
      "host_chips", 4, "Chips per TPU host (v5e multi-host slices: 4).", flag_values=flag_values
  )
  flags.DEFINE_float(
      "chip_peak_flops", 197e12, "Peak bf16 FLOP/s per chip (v5e: 197e12).", flag_values=flag_values
  )
  flags.DEFINE_integer(
      "host_cores", 112, "vCPUs per TPU host (v5e ct5lp-hightpu-4t: 112).", flag_values=flag_values
  )


def rate(
    fn: Callable[[], object],
    seconds: float,
    min_calls: int = 3,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
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
      degradations.apply(name, photo[top : top + patch, left : left + patch], rng)

    rates[name] = rate(one, seconds)
  return rates


def mixture_pipeline(types, patch: int, batch: int) -> Iterator[Mapping[str, np.ndarray]]:
  """The on-the-fly training iterator (degraded_photos, one read thread)."""
  from jaxmilab.data import degraded_photos  # pylint: disable=g-import-not-at-top

  config = ml_collections.ConfigDict(
      dict(
          name="degraded_photos",
          degradations=tuple(types),
          patch_size=patch,
          eval_size=patch,
          worker_count=0,
          read_threads=1,
          read_buffer=1,
      )
  )
  return degraded_photos.create(
      config, batch_size=batch, seed=0, process_index=0, process_count=1
  ).train


def write_sources(folder: str, n: int, size: int) -> None:
  """n source images: `size` px crops of the embedded photos at varied positions."""
  os.makedirs(folder, exist_ok=True)
  photos = [embedded.read(name, min_size=size) for name in embedded.PHOTOS]
  rng = np.random.default_rng(0)
  for i in range(n):
    photo = photos[i % len(photos)]
    top = int(rng.integers(0, photo.shape[0] - size + 1))
    left = int(rng.integers(0, photo.shape[1] - size + 1))
    Image.fromarray(photo[top : top + size, left : left + size]).save(
        os.path.join(folder, f"{i:06d}.png"), compress_level=1
    )


def records_pipeline(types, patch: int, batch: int, tmp: str) -> Iterator[Mapping[str, np.ndarray]]:
  """Training iterator over a build_uir build of `types` made in `tmp` (not timed)."""
  from jaxmilab.data import array_records  # pylint: disable=g-import-not-at-top
  from jaxmilab.data import build_uir  # pylint: disable=g-import-not-at-top

  clean = os.path.join(tmp, "clean")
  write_sources(clean, 4, patch)
  plan = build_uir.make_plan(
      clean,
      types=tuple(types),
      patches_per_image=2,
      patch_size=patch,
      levels_per_type=1,
      shard_size=64,
  )
  build_uir.build(plan, os.path.join(tmp, "out"), workers=0, progress=False)
  config = ml_collections.ConfigDict(
      dict(
          name="array_records",
          path=os.path.join(tmp, "out"),
          patch_size=patch,
          eval_size=patch,
          eval_records=1,
          worker_count=0,
          read_threads=1,
          read_buffer=1,
      )
  )
  return array_records.create(
      config, batch_size=batch, seed=0, process_index=0, process_count=1
  ).train


def train_step_rate(config, steps: int) -> dict[str, float]:
  """Crops/s the jitted train step of the config consumes (one device)."""
  result = train_step_lib.time_jax_step(config, steps)
  return {
      "seconds": result["seconds"],
      "crops_per_s": config.batch_size / result["seconds"],
      "flops": result["flops"],
  }


def table_rows(rates: Mapping[str, float], consumption: float | None):
  """(name, crops/s per core, ratio to the step's consumption, cores to feed the step)."""
  return [
      (name, r, r / consumption if consumption else None, consumption / r if consumption else None)
      for name, r in rates.items()
  ]


def time_build(n_images: int, out_root: str, workers: int = 2) -> dict[str, float]:
  """Runs the build_uir CLI on n_images 64 px sources; images/s, records/s and peak RSS (MiB)."""
  src = os.path.join(out_root, f"src{n_images}")
  write_sources(src, n_images, 64)
  out = os.path.join(out_root, f"build{n_images}")
  # A child python runs the CLI and reports the peak RSS of the largest process below it (the
  # build's main process or one of its workers, which it waits for).
  probe = (
      "import resource, subprocess, sys\n"
      "subprocess.run([sys.executable, '-m', 'jaxmilab.data.build_uir'] + sys.argv[1:], "
      "check=True)\n"
      "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
  )
  t0 = time.perf_counter()
  result = subprocess.run(
      [
          sys.executable,
          "-c",
          probe,
          f"--clean_dir={src}",
          f"--output={out}",
          "--types=jpeg,noise",
          "--patches_per_image=1",
          "--patch_size=64",
          "--levels_per_type=1",
          "--shard_size=256",
          f"--workers={workers}",
          "--noprogress",
      ],
      capture_output=True,
      text=True,
      check=False,
  )
  seconds = time.perf_counter() - t0
  if result.returncode:
    raise RuntimeError(f"build_uir failed:\n{result.stderr[-3000:]}")
  peak_kb = int(result.stdout.split("PEAK_RSS_KB")[1].split()[0])
  with open(os.path.join(out, "manifest.json"), encoding="utf-8") as f:
    records = json.load(f)["num_records"]
  return {
      "images": n_images,
      "records": records,
      "seconds": seconds,
      "images_per_s": n_images / seconds,
      "records_per_s": records / seconds,
      "peak_rss_mib": peak_kb / 1024,
  }


def write_large_sources(folder: str, n: int, width: int, height: int) -> list[int]:
  """n noisy/clean pairs at width x height in <folder>/noise/{lq,gt}/ (the --paired_dir layout);
  returns the gt PNG sizes in bytes. gt: an embedded photo resized (bicubic), plus Gaussian
  pixel noise of sigma 2 (photographic texture; a resized 512 px photo alone is smoother than a
  2K photograph and would compress and decode unrealistically fast); lq: gt + sigma 15 noise."""
  rng = np.random.default_rng(0)
  sizes = []
  for side in ("lq", "gt"):
    os.makedirs(os.path.join(folder, "noise", side), exist_ok=True)
  for i in range(n):
    photo = Image.fromarray(embedded.read(embedded.PHOTOS[i % len(embedded.PHOTOS)]))
    big = np.asarray(photo.convert("RGB").resize((width, height), Image.BICUBIC), np.float32)
    gt = np.clip(big + rng.normal(0, 2, big.shape), 0, 255).astype(np.uint8)
    lq = np.clip(gt + rng.normal(0, 15, gt.shape), 0, 255).astype(np.uint8)
    for side, image in (("lq", lq), ("gt", gt)):
      path = os.path.join(folder, "noise", side, f"{i:04d}.png")
      Image.fromarray(image).save(path)  # PIL's default zlib level, as photo PNGs are saved
      if side == "gt":
        sizes.append(os.path.getsize(path))
  return sizes


def realistic_rates(
    width: int,
    height: int,
    n: int,
    patch: int,
    batch: int,
    seconds: float,
    subimage: int,
    step: int,
    tmp: str,
) -> tuple[dict[str, float], dict]:
  """Crops per CPU-second over full-image records and sub-image records of n synthesized pairs,
  and over the `patch` px records of the default mode as a reference (rates per wall-second are
  in the returned info). CPU time (time.process_time, all threads of this process) is what a
  core spends: on a shared machine it is far less inflated by other jobs than wall time."""
  from jaxmilab.data import array_records  # pylint: disable=g-import-not-at-top
  from jaxmilab.data import build_uir  # pylint: disable=g-import-not-at-top

  pairs = os.path.join(tmp, "pairs")
  png_sizes = write_large_sources(pairs, n, width, height)
  rates, info = {}, {
      "source_size": [width, height],
      "source_images": n,
      "mean_png_bytes": float(np.mean(png_sizes)),
      "wall_rates": {},
  }
  small = records_pipeline(("noise",), patch, batch, os.path.join(tmp, "small"))
  name = f"records, {patch} px crops of the embedded photos (default mode's build)"
  rates[name] = batch * rate(lambda: next(small), seconds, clock=time.process_time)
  info["wall_rates"][name] = batch * rate(lambda: next(small), seconds)
  for name, kw in (
      (f"records, whole {width}x{height} pairs", {}),
      (
          f"records, {subimage} px sub-images (step {step})",
          {"subimage_size": subimage, "subimage_step": step},
      ),
  ):
    out = os.path.join(tmp, "sub" if kw else "full")
    t0 = time.perf_counter()
    plan = build_uir.make_plan(paired_dir=pairs, shard_size=64, **kw)
    manifest = build_uir.build(plan, out, workers=0, progress=False)
    info[name] = {"records": manifest["num_records"], "build_seconds": time.perf_counter() - t0}
    config = ml_collections.ConfigDict(
        dict(
            name="array_records",
            path=out,
            patch_size=patch,
            eval_size=patch,
            eval_records=1,
            eval_selection="first",
            worker_count=0,
            read_threads=1,
            read_buffer=1,
        )
    )
    it = array_records.create(
        config, batch_size=batch, seed=0, process_index=0, process_count=1
    ).train
    rates[name] = batch * rate(lambda: next(it), seconds, clock=time.process_time)
    info["wall_rates"][name] = batch * rate(lambda: next(it), seconds)
  return rates, info


def host_table(
    rates: Mapping[str, float], flops_per_crop: float, chips: int, peak: float, cores: int
) -> list[dict[str, float]]:
  """Per pipeline: cores a v5e host needs at 25 % / 50 % MFU and the multiple of the 25 %
  consumption that a quarter of its cores gives."""
  need = {m: m * peak * chips / flops_per_crop for m in (0.25, 0.5)}
  return [
      {
          "pipeline": name,
          "crops_per_s_per_core": r,
          "consumed_25": need[0.25],
          "consumed_50": need[0.5],
          "cores_25": need[0.25] / r,
          "cores_50": need[0.5] / r,
          "quarter_host_multiple_25": r * cores / 4 / need[0.25],
      }
      for name, r in rates.items()
  ]


def main_realistic():
  width, height = (int(v) for v in FLAGS.source_size.lower().split("x"))
  patch, batch = FLAGS.patch_size, FLAGS.batch_size or 8
  with tempfile.TemporaryDirectory() as tmp:
    rates, info = realistic_rates(
        width,
        height,
        FLAGS.source_images,
        patch,
        batch,
        FLAGS.seconds,
        FLAGS.subimage_size,
        FLAGS.subimage_step,
        tmp,
    )
  rows = host_table(
      rates, FLAGS.flops_per_crop, FLAGS.host_chips, FLAGS.chip_peak_flops, FLAGS.host_cores
  )
  print(
      f"\n{info['source_images']} synthesized {width}x{height} pairs (gt PNG "
      f"{info['mean_png_bytes'] / 2**20:.2f} MiB on average), {patch} px crops, batch {batch}; "
      f"v5e host: {FLAGS.host_chips} chips, {FLAGS.host_cores} vCPUs; step consumes "
      f"{rows[0]['consumed_25']:.0f} crops/s at 25 % MFU, {rows[0]['consumed_50']:.0f} at 50 %"
  )
  print(
      "| pipeline | crops per CPU-second | (per wall-second) | cores at 25 % MFU | "
      "cores at 50 % MFU | quarter host / 25 % need |"
  )
  print("|---|---|---|---|---|---|")
  for r in rows:
    print(
        f"| {r['pipeline']} | {r['crops_per_s_per_core']:.1f} | "
        f"{info['wall_rates'][r['pipeline']]:.1f} | {r['cores_25']:.1f} | "
        f"{r['cores_50']:.1f} | {r['quarter_host_multiple_25']:.2f}x |"
    )
  if FLAGS.output:
    with open(FLAGS.output, "w", encoding="utf-8") as f:
      json.dump({"info": info, "rows": rows, "patch_size": patch, "batch_size": batch}, f, indent=2)


def main(argv):
  del argv
  if FLAGS.source_size:
    main_realistic()
    return
  spec = FLAGS.types
  types = degradations.resolve(
      spec if spec in degradations.TASK_SETS else spec.split(","), key="--types"
  )
  patch = FLAGS.patch_size
  overrides = {"mesh.num_devices": 1, "data.patch_size": patch}
  if FLAGS.batch_size:
    overrides["batch_size"] = FLAGS.batch_size
  config = config_lib.load(FLAGS.config, overrides)
  batch = config.batch_size
  rates = degradation_rates(types, patch, FLAGS.seconds)
  mixture = mixture_pipeline(types, patch, batch)
  rates["mixture (on the fly, degraded_photos)"] = batch * rate(
      lambda: next(mixture), FLAGS.seconds
  )
  with tempfile.TemporaryDirectory() as tmp:
    records = records_pipeline(types, patch, batch, tmp)
    rates["records (build_uir shards, array_records)"] = batch * rate(
        lambda: next(records), FLAGS.seconds
    )
    builds = (
        [time_build(FLAGS.build_images // 4, tmp), time_build(FLAGS.build_images, tmp)]
        if FLAGS.build_images
        else []
    )
  step = train_step_rate(config, FLAGS.steps) if FLAGS.time_step else None
  results = {
      "device": jax.devices()[0].device_kind,
      "config": FLAGS.config,
      "patch_size": patch,
      "batch_size": batch,
      "types": list(types),
      "crops_per_s_per_core": rates,
      "train_step": step,
      "build_uir": builds,
  }
  print(f"\npatch {patch}px, batch {batch}, device {results['device']}, config {FLAGS.config}")
  if step:
    print(
        f"train step: {step['seconds'] * 1e3:.1f} ms, {step['flops'] / 1e9:.1f} GFLOP = "
        f"{step['crops_per_s']:.3g} crops/s consumed"
    )
  print("| pipeline | crops/s per core | ratio to step consumption | cores to feed the step |")
  print("|---|---|---|---|")
  for name, r, ratio, cores in table_rows(rates, step["crops_per_s"] if step else None):
    extra = f" {ratio:.3g} | {cores:.3g} |" if ratio is not None else " | |"
    print(f"| {name} | {r:.1f} |{extra}")
  for b in builds:
    print(
        f"build_uir: {b['images']} images -> {b['records']} records in {b['seconds']:.1f} s = "
        f"{b['images_per_s']:.1f} images/s, {b['records_per_s']:.1f} records/s; peak RSS of "
        f"its largest process {b['peak_rss_mib']:.0f} MiB"
    )
  if FLAGS.output:
    with open(FLAGS.output, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=2)


def run() -> None:
  """Entry point (python -m jaxmilab.benchmarks.data_pipeline)."""
  define_flags()
  app.run(main)


if __name__ == "__main__":
  run()
