r"""Restoration pre-training quickstart on the embedded photos (the README's main job).

  python -m jaxmilab.quickstart --workdir=/tmp/jaxmilab_quickstart

Three runs on the skimage.data photos with five synthesized degradations, then a table:
  1. pretrain  configs/dcpt.py:quickstart          (DCPT: L_pix on clean + classification)
               or, with --pretrain=maskdcpt, configs/maskdcpt.py:quickstart (MaskDCPT: masked
               encoder, reconstruction + classification on the UIR-2.5M types)
  2. dcpt_ft   configs/restoration.py:quickstart   initialised from 1 (init_from)
  3. scratch   configs/restoration.py:quickstart   same steps, random init
Each run resumes if interrupted; re-running prints the table from the finished runs.
"""

from __future__ import annotations

import os

from absl import app
from absl import flags
from absl import logging

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "/tmp/jaxmilab_quickstart", "Folder for the three runs.")
flags.DEFINE_enum("pretrain", "dcpt", ["dcpt", "maskdcpt"],
                  "Pre-training method: configs/<pretrain>.py:<variant> (maskdcpt: masked "
                  "pre-training on the synthesizable UIR-2.5M types).")
flags.DEFINE_string("variant", "quickstart", "Config variant of every stage (smoke for a dry run).")
flags.DEFINE_integer("steps", 0, "Override total_steps of every stage (0 = the config's).")


def run_stages(workdir: str, pretrain: str = "dcpt", variant: str = "quickstart",
               steps: int = 0) -> dict[str, dict[str, float]]:
  """Runs the three stages; returns the final eval scalars of each, keyed by stage."""
  from jaxmilab import config_lib  # pylint: disable=g-import-not-at-top
  from jaxmilab import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  from jaxmilab import trainer  # pylint: disable=g-import-not-at-top

  def overrides(extra=None):
    o = dict(extra or {})
    if steps:
      o.update({"total_steps": steps, "eval_every_steps": steps, "checkpoint_every_steps": steps,
                "log_every_steps": max(1, min(steps, 25))})
    return o

  pretrain_dir = os.path.join(workdir, "pretrain")
  stages = {
      "pretrain": (f"configs/{pretrain}.py:{variant}", overrides()),
      f"{pretrain}_ft": (f"configs/restoration.py:{variant}",
                         overrides({"method.init_from": pretrain_dir})),
      "scratch": (f"configs/restoration.py:{variant}", overrides()),
  }
  results = {}
  for name, (spec, over) in stages.items():
    logging.info("Quickstart stage %s: %s %s", name, spec, over)
    stage_dir = os.path.join(workdir, name)
    config = config_lib.load(spec, over)
    trainer.train_and_evaluate(config, stage_dir)
    evals = [r for r in metrics_lib.read_jsonl(stage_dir) if r["split"] == "eval"]
    results[name] = evals[-1]
  return results


def format_table(results: dict[str, dict[str, float]], pretrain: str = "dcpt") -> str:
  """Markdown table: per-type PSNR of the input, scratch and pre-trained+fine-tuned nets."""
  ft, scratch, pre = results[f"{pretrain}_ft"], results["scratch"], results["pretrain"]
  types = [k.split("/", 1)[1] for k in ft if k.startswith("psnr/")]
  head = f"| degradation | input PSNR | scratch PSNR | {pretrain.upper()}+FT PSNR | gain (dB) | classifier acc. |"
  lines = [head, "|---|---|---|---|---|---|"]
  pre_types = {k.split("/", 1)[1] for k in pre if k.startswith("psnr/")}
  same_types = pre_types == set(types)  # else the pre-training table below has the accuracies
  for t in types + ["all"]:
    key = "" if t == "all" else f"/{t}"
    acc = pre.get(f"accuracy{key}") if same_types else None
    lines.append(f"| {t} | {ft[f'psnr_input{key}']:.2f} | {scratch[f'psnr{key}']:.2f} | "
                 f"{ft[f'psnr{key}']:.2f} | {ft[f'psnr{key}'] - scratch[f'psnr{key}']:+.2f} | "
                 f"{'' if acc is None else f'{100 * acc:.1f}%'} |")
  return "\n".join(lines)


def format_pretrain_table(pre: dict[str, float], pretrain: str = "dcpt") -> str:
  """Markdown table of the pre-training run's own eval: per type, PSNR of the input and of its
  restoration (maskdcpt: the reconstruction head on the unmasked image) and classifier accuracy."""
  types = [k.split("/", 1)[1] for k in pre if k.startswith("psnr/")]
  lines = [f"| degradation | input PSNR | {pretrain} restored PSNR | classifier acc. |",
           "|---|---|---|---|"]
  for t in types + ["all"]:
    key = "" if t == "all" else f"/{t}"
    acc = pre.get(f"accuracy{key}")
    lines.append(f"| {t} | {pre[f'psnr_input{key}']:.2f} | {pre[f'psnr{key}']:.2f} | "
                 f"{'' if acc is None else f'{100 * acc:.1f}%'} |")
  return "\n".join(lines)


def main(argv):
  del argv
  results = run_stages(FLAGS.workdir, FLAGS.pretrain, FLAGS.variant, FLAGS.steps)
  table = format_table(results, FLAGS.pretrain)
  if FLAGS.pretrain == "maskdcpt":
    table = (f"Pre-training ({FLAGS.pretrain}, its own degradation types):\n\n"
             + format_pretrain_table(results["pretrain"], FLAGS.pretrain)
             + "\n\nFine-tuning (configs/restoration.py):\n\n" + table)
  print("\nHeld-out embedded photos, PSNR (dB, RGB, uint8; BasicSR protocol):\n" + table)
  with open(os.path.join(FLAGS.workdir, "results.md"), "w", encoding="utf-8") as f:
    f.write(table + "\n")


if __name__ == "__main__":
  app.run(main)
