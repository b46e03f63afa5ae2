r"""OPD in the small-data regime it is built for: N2C, N2N, OPD-RC, OPD-AL (both signs).

  python -m jaxmilab.benchmarks.opd_effects --frames=2,4,8 --seeds=0,1,2 --steps=600 \
      --output=/tmp/opd_effects.json

A fixed set of `--scenes` clean 64 px scenes (crops of the six training photos shipped with
scikit-image), each with m fixed noisy frames (AWGN sigma 25, `data.fixed_noise`), so the
pairs of one scene are all the data there is; a small U-Net (width 8, depth 3) trained with
Adam for `--steps` steps, evaluated every `--eval_every` steps on the held-out photos
(chelsea, rocket, 128 px centre crops) with fresh noise. Reported per (m, recipe): the best
eval PSNR over the run (early stopping at the peak, as "trained until N2N's held-out PSNR
peaks" asks) and the final one, mean and spread (min..max) over seeds.

Recipes: n2c, n2n, opd_rc, opd_al (released sign, L_E + L_A) and opd_al_minus (the paper's
printed sign with w = 0.5, the largest round weight below the bound w < 1).
"""

from __future__ import annotations

import json
import os
import tempfile

from absl import app
from absl import flags
import numpy as np

flags.DEFINE_list("frames", ["2", "4", "8"], "Frames per scene (m).")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds.")
flags.DEFINE_list("recipes", ["n2c", "n2n", "opd_rc", "opd_al", "opd_al_minus"], "Recipes.")
flags.DEFINE_integer("scenes", 16, "Number of fixed clean scenes.")
flags.DEFINE_integer("steps", 600, "Training steps per run.")
flags.DEFINE_integer("eval_every", 100, "Eval period (steps).")
flags.DEFINE_string("output", "", "JSON file for the per-run numbers and the summary table.")
FLAGS = flags.FLAGS

RECIPES = {"n2c": {"method.recipe": "n2c"}, "n2n": {"method.recipe": "n2n"},
           "opd_rc": {"method.recipe": "opd_rc"}, "opd_al": {"method.recipe": "opd_al"},
           "opd_al_minus": {"method.recipe": "opd_al", "method.alienation_sign": "minus",
                            "method.alienation_weight": 0.5}}


def write_scenes(folder: str, count: int, size: int = 64) -> None:
  """`count` fixed crops of the training photos, as PNG files (the clean scenes)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from jaxmilab.data import embedded  # pylint: disable=g-import-not-at-top
  photos = [embedded.read(p) for p in embedded.PHOTOS if p not in embedded.EVAL_PHOTOS]
  rng = np.random.default_rng(1234)
  for i in range(count):
    photo = photos[i % len(photos)]
    top = int(rng.integers(0, photo.shape[0] - size))
    left = int(rng.integers(0, photo.shape[1] - size))
    Image.fromarray(photo[top:top + size, left:left + size]).save(os.path.join(folder, f"scene_{i:03d}.png"))


def run_one(root: str, m: int, recipe: str, seed: int, steps: int, eval_every: int) -> dict:
  from jaxmilab import config_lib  # pylint: disable=g-import-not-at-top
  from jaxmilab import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  from jaxmilab import trainer  # pylint: disable=g-import-not-at-top
  overrides = {"mesh.num_devices": 1, "seed": seed, "total_steps": steps, "eval_every_steps": eval_every,
               "checkpoint_every_steps": steps, "log_every_steps": eval_every,
               "data.root": root, "data.num_frames": m, "data.crop": "top_left", "data.patch_size": 64,
               "data.fixed_noise": True, "data.eval_size": 128, "data.eval_frames": 1,
               "data.eval_batch_size": 2, "data.eval_sets": {"embedded": "embedded"}, "batch_size": 8, **RECIPES[recipe]}
  config = config_lib.load("configs/opd.py:quickstart", overrides)
  config.model.width, config.model.depth = 8, 3
  workdir = tempfile.mkdtemp(prefix="opd_effects_")
  trainer.train_to_end(config, workdir)
  evals = metrics_lib.read_split(workdir, "eval")
  psnr = [r["psnr"] for r in evals]
  return {"m": m, "recipe": recipe, "seed": seed, "best_psnr": float(max(psnr)),
          "best_step": int(evals[int(np.argmax(psnr))]["step"]), "final_psnr": float(psnr[-1]),
          "final_ssim": float(evals[-1]["ssim"]), "input_psnr": float(evals[-1]["psnr_input"])}


def summarize(rows: list[dict]) -> str:
  groups: dict[tuple[int, str], list[dict]] = {}
  for r in rows:
    groups.setdefault((r["m"], r["recipe"]), []).append(r)
  lines = ["| m | recipe | seeds | best PSNR | final PSNR | final SSIM |", "|---|---|---|---|---|---|"]
  for (m, recipe), rs in sorted(groups.items()):
    cells = []
    for k in ("best_psnr", "final_psnr", "final_ssim"):
      v = np.array([r[k] for r in rs])
      cells.append(f"{v.mean():.2f} ({v.min():.2f}..{v.max():.2f})" if k != "final_ssim"
                   else f"{v.mean():.3f}")
    lines.append(f"| {m} | {recipe} | {len(rs)} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv):
  del argv
  root = tempfile.mkdtemp(prefix="opd_scenes_")
  write_scenes(root, FLAGS.scenes)
  rows = []
  for m in (int(f) for f in FLAGS.frames):
    for seed in (int(s) for s in FLAGS.seeds):
      for recipe in FLAGS.recipes:
        rows.append(run_one(root, m, recipe, seed, FLAGS.steps, FLAGS.eval_every))
        if FLAGS.output:  # partial results survive a time limit
          with open(FLAGS.output, "w", encoding="utf-8") as f:
            json.dump({"rows": rows, "table": summarize(rows)}, f, indent=1)
  print(summarize(rows))


if __name__ == "__main__":
  app.run(main)
