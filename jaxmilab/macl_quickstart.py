r"""MACL quickstart: scratch vs PCL-only (L_g) vs full MACL at 10% labels on synthetic phantoms.

  python -m jaxmilab.macl_quickstart --workdir=/tmp/macl_quickstart

Per seed s (default 0, 1, 2):
  1. pre-train PCL as released (configs/macl.py:quickstart with macl.PCL_OVERRIDES: L_g only,
     512-d embeddings, spatial-only views, lr 0.1) and MACL (L_g + 0.5 L_d + L_ER) on
     unlabelled phantom volumes (seed s); --extra_arms adds macl_no_er / macl_symmetric;
  2. fine-tune configs/macl_finetune.py:quickstart (2 of 20 labelled phantom volumes = 10%,
     the same 2 in every run; 10 test volumes) from scratch, from the PCL run and from the
     MACL run (init_from: encoder + decoder blocks 1-2), seed s.
Then prints pooled test Dice of the last evaluation (mean +- sample standard deviation over
the seeds, min-max, per seed and minus scratch per seed), the best of the fine-tuning's test
evaluations (every 20 steps; labelled: that is the released train_supervised.py protocol,
which selects on the test set) and HD95 / ASD, beside the paper's 10%-label numbers. Runs resume if
interrupted; re-running prints the table from the finished runs. Everything is CPU-sized (width-4,
depth-3 U-Net, 64 px slices): compare the ordering, not the values, with the paper's (width 32,
352-512 px, 100 epochs on CT / MR).
"""

from __future__ import annotations

import os
import time

from absl import flags
from absl import logging
import numpy as np

from jaxmilab import console

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "/tmp/macl_quickstart", "Folder for all runs.")
flags.DEFINE_list(
    "seeds",
    ["0", "1", "2"],
    "Seeds of the pre-training and fine-tuning runs; one "
    "process per seed (--seeds=1) can share the workdir, and a last call with all "
    "seeds prints the table from the finished runs.",
)
flags.DEFINE_integer("pretrain_steps", 0, "Override pre-training total_steps (0 = the config's).")
flags.DEFINE_integer("finetune_steps", 0, "Override fine-tuning total_steps (0 = the config's).")
flags.DEFINE_string("variant", "quickstart", "Config variant of every run (smoke for a dry run).")
flags.DEFINE_list(
    "extra_arms",
    [],
    "Also pre-train and fine-tune these arms: macl_no_er, " "macl_symmetric (EXTRA_ARMS).",
)
flags.DEFINE_string(
    "compilation_cache",
    "",
    "Persistent XLA compilation cache folder (default "
    "<workdir>/xla_cache, so a fresh workdir starts cold; runs after the first "
    "reuse the compiled steps: seeds and scratch vs pre-trained compile the same).",
)

ARMS = ("scratch", "pcl", "macl")
# Further pre-training arms (--extra_arms): MACL without L_ER, and MACL without downsampling.
EXTRA_ARMS = {"macl_no_er": {"method.er_weight": 0.0}, "macl_symmetric": {"method.symmetric": True}}
LABELS = {
    "scratch": "scratch",
    "pcl": "PCL as released (L_g, 512-d, spatial views, lr 0.1)",
    "macl": "MACL (L_g + 0.5 L_d + L_ER)",
    "macl_no_er": "MACL, er_weight = 0",
    "macl_symmetric": "MACL, symmetric (no downsampling)",
}
# Fine-tuning evaluates the test set every FINETUNE_EVAL_EVERY steps: the table reports the
# last evaluation (ours) and, labelled, the best of them (what the released
# train_supervised.py reports: best test Dice over evaluations every 10 epochs, i.e. selected
# on the test set).
FINETUNE_EVAL_EVERY = 20
# MACL paper, 10% labelled volumes, Dice %: (MACL, best other method) per dataset.
PAPER_10 = {
    "ACDC": (86.63, 84.91),
    "MMWHS": (79.28, 71.41),
    "HVSMR": (78.77, 76.28),
    "CHAOS": (65.09, 63.61),
}
# MACL paper ablation, ACDC 25%: PCL 88.97 -> +decoder 89.19 -> +L_ER 89.29 -> +L_d 89.64.
PAPER_ABLATION = (("PCL", 88.97), ("+ decoder", 89.19), ("+ L_ER", 89.29), ("+ L_d (MACL)", 89.64))


def _steps(steps: int) -> dict[str, int]:
  return (
      {
          "total_steps": steps,
          "eval_every_steps": steps,
          "checkpoint_every_steps": steps,
          "log_every_steps": max(1, min(steps, 25)),
      }
      if steps
      else {}
  )


def _final_eval(run_dir: str) -> dict[str, float]:
  """The last eval record, with "best_dice": the best Dice over all of the run's evals (the
  released protocol; selected on the test set) and "best_dice_step"."""
  from jaxmilab import metrics as metrics_lib  # pylint: disable=g-import-not-at-top

  evals = metrics_lib.read_split(run_dir, "eval")
  record = dict(evals[-1])
  if "dice" in record:
    best = max(evals, key=lambda r: r["dice"])
    record.update(best_dice=best["dice"], best_dice_step=best["step"])
  return record


def run_all(
    workdir: str,
    seeds=(0, 1, 2),
    variant: str = "quickstart",
    pretrain_steps: int = 0,
    finetune_steps: int = 0,
    extra_arms=(),
) -> dict[str, list[dict[str, float]]]:
  """Trains everything; returns {arm: [final fine-tuning eval record per seed]}."""
  from jaxmilab import config_lib  # pylint: disable=g-import-not-at-top
  from jaxmilab import trainer  # pylint: disable=g-import-not-at-top
  from jaxmilab.configs import macl as macl_configs  # pylint: disable=g-import-not-at-top

  unknown = sorted(set(extra_arms) - set(EXTRA_ARMS))
  if unknown:
    raise ValueError(f"--extra_arms: unknown arm(s) {unknown}; use some of {sorted(EXTRA_ARMS)}.")
  pretrain_arms = {
      "pcl": dict(macl_configs.PCL_OVERRIDES),
      "macl": {},
      **{arm: EXTRA_ARMS[arm] for arm in extra_arms},
  }
  arms = ARMS + tuple(extra_arms)
  results: dict[str, list[dict[str, float]]] = {arm: [] for arm in arms}
  for seed in seeds:
    pretrained = {}
    for arm, arm_overrides in pretrain_arms.items():
      run_dir = os.path.join(workdir, f"pretrain_{arm}_seed{seed}")
      overrides = {"seed": seed, **arm_overrides, **_steps(pretrain_steps)}
      config = config_lib.load(f"configs/macl.py:{variant}", overrides)
      logging.info("MACL quickstart: pre-training %s (seed %d) in %s", arm, seed, run_dir)
      start = time.time()
      trainer.train_to_end(config, run_dir)
      logging.info(
          "pre-training %s seed %d: %.0f s, %s",
          arm,
          seed,
          time.time() - start,
          _final_eval(run_dir),
      )
      pretrained[arm] = run_dir
    for arm in arms:
      run_dir = os.path.join(workdir, f"finetune_{arm}_seed{seed}")
      overrides = {
          "seed": seed,
          "method.init_from": pretrained.get(arm, ""),
          **_steps(finetune_steps),
      }
      if variant == "quickstart":
        overrides["eval_every_steps"] = FINETUNE_EVAL_EVERY
      config = config_lib.load(f"configs/macl_finetune.py:{variant}", overrides)
      logging.info("MACL quickstart: fine-tuning %s (seed %d) in %s", arm, seed, run_dir)
      start = time.time()
      trainer.train_to_end(config, run_dir)
      record = dict(_final_eval(run_dir), seconds=time.time() - start)
      logging.info("fine-tuning %s seed %d: dice %.2f", arm, seed, record["dice"])
      results[arm].append(record)
  return results


def format_table(results: dict[str, list[dict[str, float]]]) -> str:
  """Markdown: our pooled Dice per arm (mean +- std, min-max, per seed) and the paper's."""
  lines = [
      "| pre-training | Dice % at 10% labels, last eval: mean +- std (min - max) | per seed "
      "| minus scratch, per seed | best test eval (released protocol, selected on test) "
      "| HD95 / ASD px, last eval |",
      "|---|---|---|---|---|---|",
  ]
  scratch = np.array([r["dice"] for r in results.get("scratch", [])])
  for arm, records in results.items():
    dice = np.array([r["dice"] for r in records])
    if not dice.size:
      continue
    std = dice.std(ddof=1) if dice.size > 1 else 0.0
    paired = (
        ", ".join(f"{d:+.2f}" for d in dice - scratch)
        if arm != "scratch" and scratch.size == dice.size
        else ""
    )
    best = [r.get("best_dice", float("nan")) for r in records]
    surface = (
        f"{np.mean([r.get('hd95', np.nan) for r in records]):.2f} / "
        f"{np.mean([r.get('asd', np.nan) for r in records]):.2f}"
    )
    lines.append(
        f"| {LABELS[arm]} | {dice.mean():.2f} +- {std:.2f} ({dice.min():.2f} - "
        f"{dice.max():.2f}) | {', '.join(f'{d:.2f}' for d in dice)} | {paired} | "
        f"{', '.join(f'{d:.2f}' for d in best)} | {surface} |"
    )
  lines += [
      "",
      "Paper (MACL, JBHI), Dice % at 10% labels, MACL / best other method: "
      + "; ".join(f"{k} {a:.2f} / {b:.2f}" for k, (a, b) in PAPER_10.items())
      + ".",
      "Paper ablation, ACDC 25%: " + " -> ".join(f"{k} {v:.2f}" for k, v in PAPER_ABLATION) + ".",
  ]
  return "\n".join(lines)


def main(argv):
  del argv
  console.setup()  # libraries' INFO logs only with --verbosity=1
  import jax  # pylint: disable=g-import-not-at-top

  jax.config.update(
      "jax_compilation_cache_dir",
      FLAGS.compilation_cache or os.path.join(FLAGS.workdir, "xla_cache"),
  )
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  start = time.time()
  cpu_start = os.times()
  results = run_all(
      FLAGS.workdir,
      [int(s) for s in FLAGS.seeds],
      FLAGS.variant,
      FLAGS.pretrain_steps,
      FLAGS.finetune_steps,
      FLAGS.extra_arms,
  )
  console.report_results(
      FLAGS.workdir,
      "Phantom volumes (4 classes, 64 px), width-4 depth-3 PCL U-Net; pooled test Dice over "
      "the foreground classes of 10 test volumes after fine-tuning on 2 labelled volumes (10%).",
      format_table(results),
      start,
      cpu_start,
  )


def run():
  """Console-script entry point (jaxmilab-macl-quickstart)."""
  console.run_app(main)  # one-line errors (exit 2), --help exits 0


if __name__ == "__main__":
  run()
