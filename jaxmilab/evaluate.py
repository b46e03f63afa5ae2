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

import argparse
import json
import os
import sys
import time
from typing import Any, Sequence

import numpy as np

from jaxmilab import restore

# Folder names of the task sets, in the paper's column order, with their column titles.
TASKS_5D = ("dehaze", "derain", "denoise", "deblur", "lowlight")
TASKS_10D = ("denoise", "motion_blur", "defocus_blur", "jpeg", "dehaze", "desnow", "derain",
             "demosaic", "lowlight", "inpaint")
TITLES = {
    "dehaze": "Dehazing (SOTS)", "derain": "Deraining (Rain100L)",
    "denoise": "Denoising (CBSD68 s25)", "deblur": "Deblurring (GoPro)",
    "lowlight": "Low-Light (LOL)", "motion_blur": "Motion-blur", "defocus_blur": "Defocus-blur",
    "jpeg": "JPEG", "desnow": "Desnow", "demosaic": "Demosaic", "inpaint": "Inpainting",
}
# Paper numbers (PSNR, SSIM) per task, by model name. 5D: DCPT Table 1 (README assets/5d.png).
PAPER_5D: dict[str, dict[str, tuple[float, float]]] = {
    "swinir_dcpt": dict(dehaze=(28.67, .973), derain=(35.70, .974), denoise=(31.16, .882),
                        deblur=(26.42, .807), lowlight=(20.38, .836), average=(28.47, .894)),
    "nafnet_dcpt": dict(dehaze=(29.47, .971), derain=(35.68, .973), denoise=(31.31, .886),
                        deblur=(29.22, .883), lowlight=(23.52, .855), average=(29.84, .914)),
    "restormer_dcpt": dict(dehaze=(29.86, .973), derain=(36.68, .975), denoise=(31.46, .888),
                           deblur=(28.95, .879), lowlight=(23.26, .842), average=(30.04, .911)),
    "promptir_dcpt": dict(dehaze=(30.72, .977), derain=(37.32, .978), denoise=(31.32, .885),
                          deblur=(28.84, .877), lowlight=(23.35, .840), average=(30.31, .911)),
}
# 10D: DCPT Tables 16 (PSNR) and 17 (SSIM), DCPT-NAFNet.
PAPER_10D: dict[str, dict[str, tuple[float, float]]] = {
    "nafnet_dcpt": dict(denoise=(28.16, .799), motion_blur=(30.29, .900),
                        defocus_blur=(25.68, .810), jpeg=(27.56, .800), dehaze=(30.45, .972),
                        desnow=(29.30, .912), derain=(29.17, .878), demosaic=(40.53, .990),
                        lowlight=(22.87, .858), inpaint=(33.24, .965), average=(29.72, .888)),
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


def evaluate_task(restorer: restore.Restorer, root: str, task: str,
                  max_images: int | None = None, *, denoise_sigma: float = 0.0,
                  float_metrics: bool = False) -> dict[str, Any]:
  """Mean PSNR / SSIM of one task folder (+ per-image scores); see the module docstring for
  denoise_sigma (released on-the-fly denoising inputs) and float_metrics."""
  from jaxmilab.data import basic_degradations  # pylint: disable=g-import-not-at-top
  from jaxmilab.data import images  # pylint: disable=g-import-not-at-top
  from jaxmilab.data import paired_folders  # pylint: disable=g-import-not-at-top
  from jaxmilab.data.base import DataError  # pylint: disable=g-import-not-at-top
  from jaxmilab.evaluation import restoration  # pylint: disable=g-import-not-at-top
  released_denoise = bool(denoise_sigma) and task == "denoise"
  if released_denoise:                # only gt/ is needed: the inputs are made from it
    names = images.list_images(os.path.join(root, task, "gt"), what=f"{task}/gt folder")[:max_images]
  else:
    names = paired_folders.scan_task(root, task)[:max_images]
  per_image = {}
  for name in names:
    gt = images.read_image(os.path.join(root, task, "gt", name))
    if released_denoise:
      lq = basic_degradations.gaussian_noise_released(gt.astype(np.float32) / 255.0, denoise_sigma)
    else:
      lq = images.read_image(os.path.join(root, task, "lq", name)).astype(np.float32) / 255.0
    if lq.shape != gt.shape:
      raise DataError(f"{root}/{task}/lq/{name} is {lq.shape[:2]} but gt is {gt.shape[:2]}: "
                      f"a pair must have the same size.")
    y = restorer(lq)
    if float_metrics:
      out, ref, rng = np.clip(np.asarray(y, np.float64), 0.0, 1.0), gt / 255.0, 1.0
    else:
      out, ref, rng = restoration.to_uint8(y), gt, 255.0
    per_image[name] = (restoration.psnr(out, ref, data_range=rng),
                       restoration.ssim(out, ref, data_range=rng))
  scores = np.array(list(per_image.values()), np.float64)
  return {"psnr": float(scores[:, 0].mean()), "ssim": float(scores[:, 1].mean()),
          "images": len(names), "per_image": per_image}


def format_table(model: str, results: dict[str, dict[str, Any]], tasks: Sequence[str],
                 paper: dict[str, tuple[float, float]] | None) -> str:
  """Markdown table: one column per task (PSNR / SSIM) and the average, paper row if known."""
  cols = [TITLES.get(t, t) for t in tasks] + ["Average"]
  lines = ["| Method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
  cell = lambda p, s: f"{p:.2f} / {s:.3f}"
  avg_p = float(np.mean([results[t]["psnr"] for t in tasks]))
  avg_s = float(np.mean([results[t]["ssim"] for t in tasks]))
  lines.append(f"| {model} | " + " | ".join(
      cell(results[t]["psnr"], results[t]["ssim"]) for t in tasks) + f" | {cell(avg_p, avg_s)} |")
  if paper:
    lines.append(f"| {model} (paper) | " + " | ".join(
        cell(*paper[t]) if t in paper else "-" for t in list(tasks) + ["average"]) + " |")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m jaxmilab.evaluate", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  restore.add_model_flags(parser)
  parser.add_argument("--data_root", required=True, help="<root>/<task>/{lq,gt}/")
  parser.add_argument("--tasks", default="5d", help="5d, 10d or a comma list of task folders")
  parser.add_argument("--output", help="write the table: .json (with per-image scores) or .md")
  parser.add_argument("--max_images", type=int, default=None, help="first N images per task")
  parser.add_argument("--denoise_sigma", type=float, default=None,
                      help="make the denoise inputs from gt as the released test code (float, "
                           "unclipped, seed 0); default 25 for 5d / 10d, else 0 (read lq files)")
  parser.add_argument("--float_metrics", action="store_true",
                      help="PSNR / SSIM on float images (MaskDCPT image_range 1.0)")
  args = parser.parse_args(argv)
  if args.denoise_sigma is None:
    args.denoise_sigma = 25.0 if args.tasks.lower() in ("5d", "10d") else 0.0
  if not args.model or not args.weights:
    parser.error("--model and --weights are required.")
  tasks, paper_sets = parse_tasks(args.tasks)
  from jaxmilab.data import images  # pylint: disable=g-import-not-at-top
  from jaxmilab.data import paired_folders  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(args.data_root):
    raise FileNotFoundError(f"--data_root={args.data_root!r} is not a folder; expected "
                            f"<data_root>/<task>/lq and gt for tasks {list(tasks)}.")
  for task in tasks:                    # layout errors before loading weights / compiling
    if args.denoise_sigma and task == "denoise":
      images.list_images(os.path.join(args.data_root, task, "gt"), what="denoise/gt folder")
    else:
      paired_folders.scan_task(args.data_root, task)
  restorer = restore.Restorer(args.model, restore.load_params(args.model, args.weights),
                              tile=args.tile or None, tile_overlap=args.tile_overlap)
  results = {}
  for task in tasks:
    start = time.time()
    results[task] = evaluate_task(restorer, args.data_root, task, args.max_images,
                                  denoise_sigma=args.denoise_sigma,
                                  float_metrics=args.float_metrics)
    r = results[task]
    print(f"{task}: {r['images']} images, PSNR {r['psnr']:.2f} SSIM {r['ssim']:.4f} "
          f"({time.time() - start:.1f} s)", flush=True)
  paper = paper_sets.get(args.model)
  table = format_table(args.model, results, tasks, paper)
  print(table)
  if args.output:
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as f:
      if args.output.endswith(".json"):
        average = {k: float(np.mean([results[t][k] for t in tasks])) for k in ("psnr", "ssim")}
        json.dump({"model": args.model, "weights": args.weights, "data_root": args.data_root,
                   "tasks": results, "average": average, "paper": paper}, f, indent=1)
      else:
        f.write(table + "\n")
  return 0


if __name__ == "__main__":
  try:
    sys.exit(main())
  except (ValueError, FileNotFoundError) as e:   # bad input: the message says what to do
    sys.exit(f"error: {e}")
