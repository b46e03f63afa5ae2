r"""OPD quickstart: N2C, N2N, OPD-RC and OPD-AL at equal steps on the embedded photos.

  python -m jaxmilab.opd_quickstart --workdir=/tmp/opd_quickstart

Four runs of configs/opd.py:quickstart (method.recipe = n2c, n2n, opd_rc, opd_al) through
`jaxmilab.trainer.train_and_evaluate`: a small U-Net, m = 4 frames of AWGN sigma 25 per
embedded training photo (fixed per photo, as in a multi-frame capture), scored on the
held-out photos (chelsea, rocket; whole images, fixed noise seeds). The table puts the
paper's AWGN sigma 25 numbers (OPD, BMVC 2022 / IJCV 2023; full U-Net, ImageNet, 300 epochs,
BSD300 / KODAK / SET14) beside ours: compare the ordering of the recipes, not the dB values.
Each run resumes if interrupted; re-running prints the table from the finished runs.
"""

from __future__ import annotations

import os
import time

from absl import flags
from absl import logging

from jaxmilab import console

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "/tmp/opd_quickstart", "Folder for the four runs.")
flags.DEFINE_string("variant", "quickstart", "Config variant of every run (smoke for a dry run).")
flags.DEFINE_integer("steps", 0, "Override total_steps of every run (0 = the config's).")
flags.DEFINE_list("methods", ["n2c", "n2n", "opd_rc", "opd_al"], "Recipes to train.")

# The OPD paper's AWGN sigma 25 results: (PSNR dB, SSIM or None) on BSD300, KODAK, SET14.
PAPER = {
    "n2c": ((28.04, None), (27.92, None), (28.09, None)),
    "n2n": ((27.48, None), (27.28, None), (27.83, None)),
    "opd_rc": ((28.28, 0.807), (28.30, 0.790), (28.08, 0.798)),
    "opd_al": ((28.36, 0.807), (28.16, 0.790), (28.09, 0.799)),
}
LABELS = {"n2c": "N2C", "n2n": "N2N", "opd_rc": "OPD-RC", "opd_al": "OPD-AL"}


def run_methods(
    workdir: str, methods=tuple(PAPER), variant: str = "quickstart", steps: int = 0
) -> dict[str, dict[str, float]]:
  """Trains each recipe in workdir/<name>; returns its final eval scalars (+ "seconds")."""
  from jaxmilab import config_lib  # pylint: disable=g-import-not-at-top
  from jaxmilab import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  from jaxmilab import trainer  # pylint: disable=g-import-not-at-top

  results = {}
  for name in methods:
    if name not in PAPER:
      raise ValueError(f"--methods: unknown recipe {name!r}; use {', '.join(PAPER)}.")
    overrides = {"method.recipe": name}
    if steps:
      overrides.update(
          {
              "total_steps": steps,
              "eval_every_steps": steps,
              "checkpoint_every_steps": steps,
              "log_every_steps": max(1, min(steps, 25)),
          }
      )
    config = config_lib.load(f"configs/opd.py:{variant}", overrides)
    run_dir = os.path.join(workdir, name)
    logging.info("OPD quickstart: training %s in %s", name, run_dir)
    start = time.time()
    trainer.train_to_end(config, run_dir)
    evals = metrics_lib.read_split(run_dir, "eval")
    results[name] = dict(evals[-1], seconds=time.time() - start)
  return results


def format_table(results: dict[str, dict[str, float]]) -> str:
  """Markdown table: our PSNR / SSIM on the held-out photos beside the paper's numbers."""

  def paper_cell(psnr, ssim):
    return f"{psnr:.2f}" + (f" / {ssim:.3f}" if ssim is not None else "")

  head = (
      "| method | ours PSNR (dB) | ours SSIM | paper BSD300 | paper KODAK | paper SET14 | "
      "train time (s) |"
  )
  lines = [head, "|---|---|---|---|---|---|---|"]
  first = next(iter(results.values()))
  lines.append(f"| noisy input | {first['psnr_input']:.2f} | {first['ssim_input']:.3f} | | | | |")
  for name, r in results.items():
    cells = " | ".join(paper_cell(*v) for v in PAPER[name])
    lines.append(
        f"| {LABELS[name]} | {r['psnr']:.2f} | {r['ssim']:.3f} | {cells} | "
        f"{r.get('seconds', float('nan')):.0f} |"
    )
  return "\n".join(lines)


def main(argv):
  del argv
  console.setup()  # libraries' INFO logs only with --verbosity=1
  start = time.time()
  results = run_methods(FLAGS.workdir, tuple(FLAGS.methods), FLAGS.variant, FLAGS.steps)
  console.report_results(
      FLAGS.workdir,
      "AWGN sigma 25. Ours: held-out embedded photos (chelsea, rocket), RGB uint8, "
      "BasicSR PSNR / SSIM, equal steps per recipe. Paper (OPD): PSNR / SSIM on BSD300 / KODAK / "
      "SET14 after 300 ImageNet epochs with the full U-Net.",
      format_table(results),
      start,
  )


def run():
  """Console-script entry point (jaxmilab-opd-quickstart)."""
  console.run_app(main)  # one-line errors (exit 2), --help exits 0


if __name__ == "__main__":
  run()
