r"""Restoration pre-training quickstart on the embedded photos (the README's main job).

  python -m jaxmilab.quickstart --pretrain=maskdcpt --workdir=/tmp/jaxmilab_quickstart

Stages, per seed, on the skimage.data photos with synthesized degradations:
  scratch          configs/restoration.py:quickstart   random init (zero last conv: the identity),
                   Gaussian denoising sigma 25 + JPEG quality 10, NAFNet's PSNR loss
  <p>/pretrain     configs/<p>.py:quickstart           for each --pretrain method p (dcpt:
                   L_pix on clean + classification, Gaussian noise and JPEG at random levels;
                   maskdcpt: masked encoder, reconstruction + classification, the UIR-2.5M
                   noise and JPEG families at all their levels)
  <p>/ft           configs/restoration.py:quickstart   initialised from <p>/pretrain (init_from)
Every fine-tuning run has the same budget as scratch (100 steps). With several --seeds the table
gives the mean and standard deviation over seeds. Each run resumes if interrupted; re-running
prints the table from the finished runs. Compiled programs are cached on disk
(--compilation_cache), so seeds after the first skip XLA compilation.
"""

from __future__ import annotations

import os
import time
from typing import Sequence

from absl import app
from absl import flags
from absl import logging
import numpy as np

from jaxmilab import console

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "/tmp/jaxmilab_quickstart", "Folder for the runs.")
flags.DEFINE_list(
    "pretrain",
    ["dcpt"],
    "Pre-training methods to compare with scratch: dcpt, " "maskdcpt or both (comma-separated).",
)
flags.DEFINE_string("variant", "quickstart", "Config variant of every stage (smoke for a dry run).")
flags.DEFINE_integer("steps", 0, "Override total_steps of every stage (0 = the config's).")
flags.DEFINE_list("seeds", ["0"], "config.seed of each repetition, e.g. 0,1,2.")
flags.DEFINE_list(
    "set",
    [],
    "Extra overrides for the pre-training stages, key=value (e.g. "
    "method.reconstruction=backbone); values are parsed as Python literals.",
)
flags.DEFINE_list(
    "ft_set",
    [],
    "Extra overrides for the fine-tuning stages (each <p>/ft, not "
    "scratch), key=value, e.g. method.zero_output_after_init_from=True.",
)
flags.DEFINE_string(
    "compilation_cache",
    os.path.join(os.path.expanduser("~"), ".cache", "jaxmilab_xla"),
    "Persistent XLA compilation cache folder ('' = off).",
)

PRETRAIN_METHODS = ("dcpt", "maskdcpt")


def _parse_overrides(items: Sequence[str]) -> dict:
  import ast  # pylint: disable=g-import-not-at-top

  out = {}
  for item in items:
    key, sep, raw = item.partition("=")
    if not sep:
      raise app.UsageError(f"--set / --ft_set {item!r}: use key=value.")
    try:
      out[key] = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      out[key] = raw
  return out


def run_stages(
    workdir: str,
    pretrain: Sequence[str] | str = ("dcpt",),
    variant: str = "quickstart",
    steps: int = 0,
    seed: int = 0,
    pretrain_overrides: dict | None = None,
    finetune_overrides: dict | None = None,
) -> dict[str, dict[str, float]]:
  """Runs scratch and, per pre-training method, pretrain + fine-tune for one seed.

  `pretrain_overrides` apply to the pre-training stages, `finetune_overrides` to the
  fine-tuning stages from them (scratch keeps the config as it is).

  Returns the final eval scalars keyed by stage: "scratch", "<p>/pretrain", "<p>/ft"."""
  from jaxmilab import config_lib  # pylint: disable=g-import-not-at-top
  from jaxmilab import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  from jaxmilab import trainer  # pylint: disable=g-import-not-at-top

  pretrain = (pretrain,) if isinstance(pretrain, str) else tuple(pretrain)
  unknown = [p for p in pretrain if p not in PRETRAIN_METHODS]
  if unknown:
    raise ValueError(f"--pretrain {unknown}: use {PRETRAIN_METHODS}.")

  def overrides(extra=None):
    o = {"seed": int(seed)}
    if steps:
      o.update(
          {
              "total_steps": steps,
              "eval_every_steps": steps,
              "checkpoint_every_steps": steps,
              "log_every_steps": max(1, min(steps, 25)),
          }
      )
    o.update(extra or {})
    return o

  stages = {"scratch": (f"configs/restoration.py:{variant}", overrides())}
  for p in pretrain:
    stages[f"{p}/pretrain"] = (f"configs/{p}.py:{variant}", overrides(pretrain_overrides))
    stages[f"{p}/ft"] = (
        f"configs/restoration.py:{variant}",
        overrides(
            {**(finetune_overrides or {}), "method.init_from": os.path.join(workdir, p, "pretrain")}
        ),
    )
  # Every stage's config first: a mistaken --set key stops here, before any stage trains.
  configs = {name: config_lib.load(spec, over) for name, (spec, over) in stages.items()}
  results = {}
  for name, (spec, over) in stages.items():
    logging.info("Quickstart stage %s: %s %s", name, spec, over)
    stage_dir = os.path.join(workdir, name)
    trainer.train_to_end(configs[name], stage_dir)
    evals = metrics_lib.read_split(stage_dir, "eval")
    results[name] = evals[-1]
  return results


def _types(record: dict[str, float]) -> list[str]:
  return [k.split("/", 1)[1] for k in record if k.startswith("psnr/")]


def _stat(values: Sequence[float]) -> str:
  values = np.asarray(values, np.float64)
  if len(values) == 1:
    return f"{values[0]:.2f}"
  return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}"


def format_table(per_seed: Sequence[dict[str, dict[str, float]]], pretrain: Sequence[str]) -> str:
  """Markdown: per type, input PSNR, scratch and each <p>+FT PSNR (mean ± std over seeds) and
  the mean gain over scratch (with the number of seeds where it is positive)."""
  pretrain = (pretrain,) if isinstance(pretrain, str) else tuple(pretrain)
  first = per_seed[0]["scratch"]
  types = _types(first) + ["all"]
  n = len(per_seed)
  head = "| degradation | input PSNR | scratch |"
  sep = "|---|---|---|"
  for p in pretrain:
    head += f" {p.upper()} + FT | gain vs scratch |"
    sep += "---|---|"
  lines = [head, sep]
  for t in types:
    key = "" if t == "all" else f"/{t}"
    scratch = [r["scratch"][f"psnr{key}"] for r in per_seed]
    row = f"| {t} | {first[f'psnr_input{key}']:.2f} | {_stat(scratch)} |"
    for p in pretrain:
      ft = [r[f"{p}/ft"][f"psnr{key}"] for r in per_seed]
      gains = np.asarray(ft) - np.asarray(scratch)
      wins = f" ({int((gains > 0).sum())}/{n} seeds > 0)" if n > 1 else ""
      row += f" {_stat(ft)} | {gains.mean():+.2f}{wins} |"
    lines.append(row)
  return "\n".join(lines)


def format_pretrain_table(per_seed: Sequence[dict[str, dict[str, float]]], p: str) -> str:
  """Markdown of the pre-training runs' own eval: per type, input PSNR, the pre-trained
  network's restored PSNR (maskdcpt: on the unmasked image) and classifier accuracy."""
  first = per_seed[0][f"{p}/pretrain"]
  lines = [
      f"| degradation | input PSNR | {p} restored PSNR | classifier acc. |",
      "|---|---|---|---|",
  ]
  for t in _types(first) + ["all"]:
    key = "" if t == "all" else f"/{t}"
    restored = [r[f"{p}/pretrain"][f"psnr{key}"] for r in per_seed]
    acc = [100 * r[f"{p}/pretrain"][f"accuracy{key}"] for r in per_seed]
    lines.append(f"| {t} | {first[f'psnr_input{key}']:.2f} | {_stat(restored)} | {_stat(acc)}% |")
  return "\n".join(lines)


def main(argv):
  del argv
  console.setup()  # libraries' INFO logs only with --verbosity=1
  if FLAGS.compilation_cache:
    import jax  # pylint: disable=g-import-not-at-top

    jax.config.update("jax_compilation_cache_dir", FLAGS.compilation_cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  pretrain = [p for p in FLAGS.pretrain if p] or ["dcpt"]
  if pretrain == ["both"]:
    pretrain = list(PRETRAIN_METHODS)
  seeds = [int(s) for s in FLAGS.seeds]
  start = time.time()
  per_seed = []
  for seed in seeds:
    workdir = FLAGS.workdir if len(seeds) == 1 else os.path.join(FLAGS.workdir, f"seed{seed}")
    per_seed.append(
        run_stages(
            workdir,
            pretrain,
            FLAGS.variant,
            FLAGS.steps,
            seed,
            _parse_overrides(FLAGS.set),
            _parse_overrides(FLAGS.ft_set),
        )
    )
  parts = []
  for p in pretrain:
    parts.append(
        f"Pre-training ({p}, its own degradation types):\n\n" + format_pretrain_table(per_seed, p)
    )
  parts.append(
      "Fine-tuning (configs/restoration.py), same budget for every row"
      + (f", mean ± std over seeds {seeds}" if len(seeds) > 1 else "")
      + ":\n\n"
      + format_table(per_seed, pretrain)
  )
  console.report_results(
      FLAGS.workdir,
      "Held-out embedded photos, PSNR (dB, RGB, uint8; BasicSR " "protocol):",
      "\n\n".join(parts),
      start,
  )


def run():
  """Console-script entry point (jaxmilab-quickstart)."""
  console.run_app(main)  # one-line errors (exit 2), --help exits 0


if __name__ == "__main__":
  run()
