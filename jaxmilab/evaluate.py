r"""Paper-protocol evaluation of a restoration checkpoint on paired test folders.

  python -m jaxmilab.evaluate --model=nafnet_dcpt --weights=dcpt_nafnet_5d.pth \
      --data_root=/data/5d --tasks=5d [--output=table.md | table.json] [--tile=512]

Layout: <data_root>/<task>/lq/<name> and <data_root>/<task>/gt/<name> (the paired_folders
layout, jaxmilab/data/paired_folders.py). --tasks: `5d`, `10d` or a comma list of folder names.
  5d  (DCPT Table 1):  dehaze SOTS-outdoor, derain Rain100L, denoise CBSD68 sigma 25,
                       deblur GoPro, lowlight LOL-v1
  10d (DCPT Tables 16-17): denoise, motion_blur, defocus_blur, jpeg, dehaze, desnow, derain,
                       demosaic, lowlight, inpaint
The DCPT test option (test_*_5d.yml, test_2) makes the CBSD68 inputs on the fly
(`PairedImageDenoiseDataset`, sigma_type constant, sigma_range 25): with --denoise_sigma (default
25 for --tasks=5d and 10d, else 0) the `denoise` task does the same from its gt/ images: float
noise from np.random.seed(0), not clipped, added to the RGB image in [0, 1]
(jaxmilab/data/basic_degradations.py gaussian_noise_released), and its lq/ folder is not read;
--denoise_sigma=0 reads denoise/lq files like every other task.

Protocol (BasicSR, as DCPT's options set it, `image_range: 255.0`): the network's output is
rounded to uint8 (round(clip(y, 0, 1) * 255)), then RGB PSNR and SSIM against the uint8 ground
truth, no border crop, not on Y (jaxmilab/evaluation/restoration.py); per task the mean over its
images, and the average row is the mean of the task means. --float_metrics scores the clipped
float output against gt / 255 with data range 1 instead, as MaskDCPT's options
(`image_range: 1.0`). Where the paper reports the same model, its numbers
are printed below (DCPT README assets/5d.png = paper Table 1; Tables 16-17 for 10D).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Sequence

from absl import app
from absl import flags
import numpy as np

from jaxmilab import console
from jaxmilab import restore

# Folder names of the task sets, in the paper's column order, with their column titles.
TASKS_5D = ("dehaze", "derain", "denoise", "deblur", "lowlight")
TASKS_10D = (
    "denoise",
    "motion_blur",
    "defocus_blur",
    "jpeg",
    "dehaze",
    "desnow",
    "derain",
    "demosaic",
    "lowlight",
    "inpaint",
)
TITLES = {
    "dehaze": "Dehazing (SOTS)",
    "derain": "Deraining (Rain100L)",
    "denoise": "Denoising (CBSD68 s25)",
    "deblur": "Deblurring (GoPro)",
    "lowlight": "Low-Light (LOL)",
    "motion_blur": "Motion-blur",
    "defocus_blur": "Defocus-blur",
    "jpeg": "JPEG",
    "desnow": "Desnow",
    "demosaic": "Demosaic",
    "inpaint": "Inpainting",
}
# Paper numbers (PSNR, SSIM) per task, by model name. 5D: DCPT Table 1 (README assets/5d.png).
PAPER_5D: dict[str, dict[str, tuple[float, float]]] = {
    "swinir_dcpt": dict(
        dehaze=(28.67, 0.973),
        derain=(35.70, 0.974),
        denoise=(31.16, 0.882),
        deblur=(26.42, 0.807),
        lowlight=(20.38, 0.836),
        average=(28.47, 0.894),
    ),
    "nafnet_dcpt": dict(
        dehaze=(29.47, 0.971),
        derain=(35.68, 0.973),
        denoise=(31.31, 0.886),
        deblur=(29.22, 0.883),
        lowlight=(23.52, 0.855),
        average=(29.84, 0.914),
    ),
    "restormer_dcpt": dict(
        dehaze=(29.86, 0.973),
        derain=(36.68, 0.975),
        denoise=(31.46, 0.888),
        deblur=(28.95, 0.879),
        lowlight=(23.26, 0.842),
        average=(30.04, 0.911),
    ),
    "promptir_dcpt": dict(
        dehaze=(30.72, 0.977),
        derain=(37.32, 0.978),
        denoise=(31.32, 0.885),
        deblur=(28.84, 0.877),
        lowlight=(23.35, 0.840),
        average=(30.31, 0.911),
    ),
}
# 10D: DCPT Tables 16 (PSNR) and 17 (SSIM), DCPT-NAFNet.
PAPER_10D: dict[str, dict[str, tuple[float, float]]] = {
    "nafnet_dcpt": dict(
        denoise=(28.16, 0.799),
        motion_blur=(30.29, 0.900),
        defocus_blur=(25.68, 0.810),
        jpeg=(27.56, 0.800),
        dehaze=(30.45, 0.972),
        desnow=(29.30, 0.912),
        derain=(29.17, 0.878),
        demosaic=(40.53, 0.990),
        lowlight=(22.87, 0.858),
        inpaint=(33.24, 0.965),
        average=(29.72, 0.888),
    ),
}


def parse_tasks(spec: str) -> tuple[tuple[str, ...], dict[str, dict[str, tuple[float, float]]]]:
  """--tasks value -> (task folder names, paper numbers of that set or {})."""
  if spec.lower() == "5d":
    return TASKS_5D, PAPER_5D
  if spec.lower() == "10d":
    return TASKS_10D, PAPER_10D
  tasks = tuple(t.strip() for t in spec.split(",") if t.strip())
  if not tasks:
    raise ValueError(f"--tasks={spec!r}: use 5d, 10d or a comma list of task folder names.")
  return tasks, {}


def evaluate_task(
    restorer: restore.Restorer,
    root: str,
    task: str,
    max_images: int | None = None,
    *,
    denoise_sigma: float = 0.0,
    float_metrics: bool = False,
    progress: bool = False,
    save_dir: str | None = None,
) -> dict[str, Any]:
  """Mean PSNR / SSIM of one task folder (+ per-image scores); see the module docstring for
  denoise_sigma (released on-the-fly denoising inputs) and float_metrics. progress: a tqdm bar
  over the images; save_dir: also write each restored uint8 image there as <name stem>.png."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  from jaxmilab.data import basic_degradations  # pylint: disable=g-import-not-at-top
  from jaxmilab.data import images  # pylint: disable=g-import-not-at-top
  from jaxmilab.data import paired_folders  # pylint: disable=g-import-not-at-top
  from jaxmilab.data.base import DataError  # pylint: disable=g-import-not-at-top
  from jaxmilab.evaluation import restoration  # pylint: disable=g-import-not-at-top

  released_denoise = bool(denoise_sigma) and task == "denoise"
  if released_denoise:  # only gt/ is needed: the inputs are made from it
    names = images.list_images(os.path.join(root, task, "gt"), what=f"{task}/gt folder")[
        :max_images
    ]
  else:
    names = paired_folders.scan_task(root, task)[:max_images]
  per_image = {}
  if save_dir:
    os.makedirs(save_dir, exist_ok=True)
  for name in tqdm(names, desc=task, unit="image", disable=not progress, dynamic_ncols=True):
    gt = images.read_image(os.path.join(root, task, "gt", name))
    if released_denoise:
      lq = basic_degradations.gaussian_noise_released(gt.astype(np.float32) / 255.0, denoise_sigma)
    else:
      lq = images.read_image(os.path.join(root, task, "lq", name)).astype(np.float32) / 255.0
    if lq.shape != gt.shape:
      raise DataError(
          f"{root}/{task}/lq/{name} is {lq.shape[:2]} but gt is {gt.shape[:2]}: "
          f"a pair must have the same size."
      )
    y = restorer(lq)
    if save_dir:
      Image.fromarray(restoration.to_uint8(y)).save(
          os.path.join(save_dir, os.path.splitext(name)[0] + ".png"), format="PNG"
      )
    if float_metrics:
      out, ref, rng = np.clip(np.asarray(y, np.float64), 0.0, 1.0), gt / 255.0, 1.0
    else:
      out, ref, rng = restoration.to_uint8(y), gt, 255.0
    per_image[name] = (
        restoration.psnr(out, ref, data_range=rng),
        restoration.ssim(out, ref, data_range=rng),
    )
  scores = np.array(list(per_image.values()), np.float64)
  return {
      "psnr": float(scores[:, 0].mean()),
      "ssim": float(scores[:, 1].mean()),
      "images": len(names),
      "per_image": per_image,
  }


def format_table(
    model: str,
    results: dict[str, dict[str, Any]],
    tasks: Sequence[str],
    paper: dict[str, tuple[float, float]] | None,
) -> str:
  """Markdown table: one column per task (PSNR / SSIM) and the average, paper row if known."""
  cols = [TITLES.get(t, t) for t in tasks] + ["Average"]
  lines = ["| Method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
  cell = lambda p, s: f"{p:.2f} / {s:.3f}"
  avg_p = float(np.mean([results[t]["psnr"] for t in tasks]))
  avg_s = float(np.mean([results[t]["ssim"] for t in tasks]))
  lines.append(
      f"| {model} | "
      + " | ".join(cell(results[t]["psnr"], results[t]["ssim"]) for t in tasks)
      + f" | {cell(avg_p, avg_s)} |"
  )
  if paper:
    lines.append(
        f"| {model} (paper) | "
        + " | ".join(cell(*paper[t]) if t in paper else "-" for t in list(tasks) + ["average"])
        + " |"
    )
  return "\n".join(lines)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """evaluate's flags on `flag_values` (defined only when run as a program or by main())."""
  restore.define_flags(flag_values, io=False)
  fv = {"flag_values": flag_values}
  flags.DEFINE_string("data_root", None, "Test folders: <data_root>/<task>/{lq,gt}/.", **fv)
  flags.DEFINE_string("tasks", "5d", "5d, 10d or a comma list of task folders.", **fv)
  flags.DEFINE_string(
      "output", None, "Write the table: .json (with per-image scores) or .md.", **fv
  )
  flags.DEFINE_string(
      "save_images",
      None,
      "Also write the restored images (uint8 PNG) to " "<save_images>/<task>/<name>.png.",
      **fv,
  )
  flags.DEFINE_integer("max_images", None, "Only the first N images of each task.", **fv)
  flags.DEFINE_float(
      "denoise_sigma",
      None,
      "Make the denoise inputs from gt as the released "
      "test code (float, unclipped, seed 0); default 25 for 5d / 10d, else 0 "
      "(read the lq files).",
      **fv,
  )
  flags.DEFINE_bool(
      "float_metrics", False, "PSNR / SSIM on float images (MaskDCPT " "image_range 1.0).", **fv
  )
  flags.DEFINE_bool("progress", True, "Show a progress bar over the images of each task.", **fv)


def evaluate_main(fv: flags.FlagValues) -> int:
  """The CLI on parsed flags (module docstring)."""
  denoise_sigma = fv.denoise_sigma
  if denoise_sigma is None:
    denoise_sigma = 25.0 if fv.tasks.lower() in ("5d", "10d") else 0.0
  for flag in ("weights", "data_root"):
    if not fv[flag].value:
      raise ValueError(f"--{flag} is required; see --help.")
  tasks, paper_sets = parse_tasks(fv.tasks)
  from jaxmilab.data import images  # pylint: disable=g-import-not-at-top
  from jaxmilab.data import paired_folders  # pylint: disable=g-import-not-at-top

  if not os.path.isdir(fv.data_root):
    raise FileNotFoundError(
        f"--data_root={fv.data_root!r} is not a folder; expected "
        f"<data_root>/<task>/lq and gt for tasks {list(tasks)}."
    )
  for task in tasks:  # layout errors before loading weights / compiling
    if denoise_sigma and task == "denoise":
      images.list_images(os.path.join(fv.data_root, task, "gt"), what="denoise/gt folder")
    else:
      paired_folders.scan_task(fv.data_root, task)
  name, spec = restore.resolve_model(fv.model, fv.weights)  # --model, or the workdir's network
  restorer = restore.Restorer(
      name,
      restore.load_params(name, fv.weights, spec),
      tile=fv.tile or None,
      tile_overlap=fv.tile_overlap,
      spec=spec,
  )
  results = {}
  for task in tasks:
    start = time.time()
    results[task] = evaluate_task(
        restorer,
        fv.data_root,
        task,
        fv.max_images,
        denoise_sigma=denoise_sigma,
        float_metrics=fv.float_metrics,
        progress=fv.progress,
        save_dir=os.path.join(fv.save_images, task) if fv.save_images else None,
    )
    r = results[task]
    print(
        f"{task}: {r['images']} images, PSNR {r['psnr']:.2f} SSIM {r['ssim']:.4f} "
        f"({time.time() - start:.1f} s)",
        flush=True,
    )
  paper = paper_sets.get(name)
  table = format_table(name, results, tasks, paper)
  print(table)
  if fv.output:
    os.makedirs(os.path.dirname(os.path.abspath(fv.output)), exist_ok=True)
    with open(fv.output, "w", encoding="utf-8") as f:
      if fv.output.endswith(".json"):
        average = {k: float(np.mean([results[t][k] for t in tasks])) for k in ("psnr", "ssim")}
        json.dump(
            {
                "model": name,
                "weights": fv.weights,
                "data_root": fv.data_root,
                "tasks": results,
                "average": average,
                "paper": paper,
            },
            f,
            indent=1,
        )
      else:
        f.write(table + "\n")
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  """In-process entry (tests): main(["--model=...", ...]) parses `argv` on a fresh flag set."""
  return evaluate_main(console.parse_flags(define_flags, argv or [], prog="jaxmilab-evaluate"))


def _app_main(argv: Sequence[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  console.setup()
  return evaluate_main(flags.FLAGS)


def run() -> None:
  """Console-script entry point (jaxmilab-evaluate): one-line errors with exit code 2."""
  define_flags()
  console.run_app(_app_main)


if __name__ == "__main__":
  run()
