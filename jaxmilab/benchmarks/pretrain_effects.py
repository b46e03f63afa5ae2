r"""The quickstart's pre-training effect with controls, paired over seeds (issue #27, item 6).

  python -m jaxmilab.benchmarks.pretrain_effects --workdir=/tmp/pretrain_effects
  python -m jaxmilab.benchmarks.pretrain_effects --budgets=100 --seeds=0   # one seed, one budget
  python -m jaxmilab.benchmarks.pretrain_effects --family=uir18 --budgets=100

Every arm fine-tunes `configs/restoration.py:quickstart` (Gaussian noise sigma 25 + JPEG q 10,
NAFNet's PSNR loss, lr 3e-3, cosine with 20 warm-up steps) for a budget of B steps and is scored
once, at its last step, on the held-out photos (the config's eval set; no arm is selected on
it). Per seed s and budget B:

  scratch               random init (zero last conv: starts as the identity), B steps
  scratch, same steps   random init, P + B steps: the fine-tuning task seen for as many steps
                        as pre-training + fine-tuning (P = the pre-training steps, 300). The
                        positive control: more task training must show up as a gain at this
                        seed spread, else the set-up cannot show a pre-training effect either.
  MaskDCPT + FT         init_from configs/maskdcpt.py:quickstart (whole network masked as
                        released, visible-pixel L1 + classification; UIR noise and JPEG families)
  DCPT + FT             init_from configs/dcpt.py:quickstart
  mask_ratio=0 + FT     init_from MaskDCPT's run with `method.mask_ratio=0` (nothing hidden:
                        supervised restoration + classification on the same data and steps);
                        separates the masking from the rest of the pre-training

Each pre-training runs once per seed and serves every budget. The table gives, per arm and
budget, PSNR (dB, uint8 RGB, BasicSR protocol) per type and overall as mean ± sample std over
seeds, and the paired gain over scratch at the same seed and budget (mean ± std of the per-seed
differences, and in how many seeds it is positive); beside each pre-trained arm, the pre-trained
network's own dense PSNR and classifier accuracy on the held-out photos. Runs resume if
interrupted; re-running prints the table from the finished runs; results.json has every number.

`--family=uir18` runs the same arms with pre-training and fine-tuning on the 18 synthesizable
UIR-2.5M types at random levels (MaskDCPT's task set uir19_syn; DCPT and the fine-tuning task the
same 18 names) instead of the quickstart's noise + JPEG, under <workdir>/uir18.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Sequence

from absl import app
from absl import flags
from absl import logging
import numpy as np

from jaxmilab import console

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines this benchmark's flags; on demand, as benchmarks share flag names."""
  flags.DEFINE_string(
      "workdir", "/tmp/jaxmilab_pretrain_effects", "Folder for the runs.", flag_values=flag_values
  )
  flags.DEFINE_list(
      "seeds", ["0", "1", "2"], "config.seed of each paired repetition.", flag_values=flag_values
  )
  flags.DEFINE_list(
      "budgets", ["100", "200", "400"], "Fine-tuning steps of each arm.", flag_values=flag_values
  )
  flags.DEFINE_list(
      "arms",
      ["scratch", "scratch_same_steps", "maskdcpt", "dcpt", "mask_ratio0"],
      "Arms to run (module docstring).",
      flag_values=flag_values,
  )
  flags.DEFINE_enum(
      "family",
      "noise_jpeg",
      list(FAMILIES),
      "Degradations of pre-training and fine-tuning: noise_jpeg (the quickstart's two families) "
      "or uir18 (the 18 synthesizable UIR-2.5M types at random levels; runs under "
      "<workdir>/uir18).",
      flag_values=flag_values,
  )
  flags.DEFINE_string(
      "variant",
      "quickstart",
      "Config variant of every run (smoke for a dry run).",
      flag_values=flag_values,
  )
  flags.DEFINE_integer(
      "pretrain_steps",
      0,
      "Override the pre-training steps (0 = the configs').",
      flag_values=flag_values,
  )
  flags.DEFINE_string(
      "compilation_cache",
      os.path.join(os.path.expanduser("~"), ".cache", "jaxmilab_xla"),
      "Persistent XLA compilation cache folder ('' = off).",
      flag_values=flag_values,
  )


UIR18 = (
    "noise",
    "motion_blur",
    "defocus_blur",
    "gaussian_sinc_blur",
    "jpeg",
    "haze",
    "rain_streak",
    "raindrop",
    "rain_streak_raindrop",
    "snow",
    "mosaic",
    "low_light",
    "moire",
    "blur_jpeg",
    "blur_rain",
    "blur_low_light_noise",
    "low_light_haze_rain_snow",
    "down_noise_blur_jpeg",
)  # = data.degradations.resolve("uir19_syn") (tests/test_pretrain_effects.py checks)
# family -> config file -> overrides of every run from that file. noise_jpeg = the configs as
# they are (MaskDCPT: task set uir_noise_jpeg; DCPT and fine-tuning: Gaussian noise + JPEG, the
# fine-tuning at sigma 25 / quality 10); uir18 = the 18 types everywhere, random levels.
FAMILIES = {
    "noise_jpeg": {},
    "uir18": {
        "configs/maskdcpt.py": {"data.degradations": "uir19_syn"},
        "configs/dcpt.py": {"data.degradations": UIR18, "data.levels": ()},
        "configs/restoration.py": {"data.degradations": UIR18, "data.levels": ()},
    },
}

# arm -> (pre-training config or None, its extra overrides)
PRETRAINED_ARMS = {
    "maskdcpt": ("configs/maskdcpt.py", {}),
    "dcpt": ("configs/dcpt.py", {}),
    "mask_ratio0": ("configs/maskdcpt.py", {"method.mask_ratio": 0.0}),
}
ARM_NAMES = {
    "scratch": "scratch",
    "scratch_same_steps": "scratch, same steps",
    "maskdcpt": "MaskDCPT + FT",
    "dcpt": "DCPT + FT",
    "mask_ratio0": "mask_ratio=0 + FT",
}


def _cadence(steps: int) -> dict[str, int]:
  """One eval at the last step; checkpoints every 50 steps (or at the end)."""
  every = 50 if steps % 50 == 0 else steps
  return {
      "total_steps": steps,
      "eval_every_steps": steps,
      "checkpoint_every_steps": every,
      "log_every_steps": min(25, steps),
  }


def _run(spec: str, overrides: dict[str, Any], workdir: str) -> dict[str, float]:
  """Trains (or resumes, or reads) one run and returns its last eval record."""
  from jaxmilab import config_lib  # pylint: disable=g-import-not-at-top
  from jaxmilab import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  from jaxmilab import trainer  # pylint: disable=g-import-not-at-top

  logging.info("pretrain_effects: %s %s -> %s", spec, overrides, workdir)
  trainer.train_to_end(config_lib.load(spec, overrides), workdir)
  return metrics_lib.read_split(workdir, "eval")[-1]


def pretrain_steps(variant: str, override: int) -> int:
  """P: the pre-training steps (both pre-training configs use the same number)."""
  if override:
    return override
  from jaxmilab import config_lib  # pylint: disable=g-import-not-at-top

  steps = {
      config_lib.load(f"{spec}:{variant}", {}).total_steps for spec, _ in PRETRAINED_ARMS.values()
  }
  if len(steps) != 1:
    raise ValueError(
        f"pre-training configs disagree on total_steps {sorted(steps)}; pass --pretrain_steps."
    )
  return steps.pop()


def run_seed(
    workdir: str,
    seed: int,
    budgets: Sequence[int],
    arms: Sequence[str],
    variant: str = "quickstart",
    pretrain_override: int = 0,
    family: str = "noise_jpeg",
) -> dict[str, Any]:
  """All runs of one seed. Returns {"pretrain": {arm: eval}, "ft": {arm: {budget: eval}}}."""
  if family not in FAMILIES:
    raise ValueError(f"--family {family!r}: use {', '.join(FAMILIES)}.")
  family_overrides = FAMILIES[family]
  if family != "noise_jpeg":
    workdir = os.path.join(workdir, family)
  p_steps = pretrain_steps(variant, pretrain_override)
  finetune = f"configs/restoration.py:{variant}"
  ft_family = family_overrides.get("configs/restoration.py", {})
  out: dict[str, Any] = {"pretrain": {}, "ft": {arm: {} for arm in arms}, "pretrain_steps": p_steps}
  for arm in arms:
    if arm in PRETRAINED_ARMS:
      spec, extra = PRETRAINED_ARMS[arm]
      pre_dir = os.path.join(workdir, f"seed{seed}", arm, "pretrain")
      out["pretrain"][arm] = _run(
          f"{spec}:{variant}",
          {"seed": seed, **_cadence(p_steps), **family_overrides.get(spec, {}), **extra},
          pre_dir,
      )
    for b in budgets:
      over = {"seed": seed, **_cadence(b), **ft_family}
      if arm == "scratch_same_steps":
        over.update(_cadence(p_steps + b))
      elif arm in PRETRAINED_ARMS:
        over["method.init_from"] = pre_dir
      elif arm != "scratch":
        raise ValueError(f"--arms {arm!r}: use {', '.join(ARM_NAMES)}.")
      out["ft"][arm][b] = _run(finetune, over, os.path.join(workdir, f"seed{seed}", arm, f"ft{b}"))
  return out


def _types(record: dict[str, float]) -> list[str]:
  return [k.split("/", 1)[1] for k in record if k.startswith("psnr/")] + ["all"]


def _key(metric: str, t: str) -> str:
  return metric if t == "all" else f"{metric}/{t}"


def _stat(values) -> str:
  v = np.asarray(values, np.float64)
  return f"{v[0]:.2f}" if len(v) == 1 else f"{v.mean():.2f} ± {v.std(ddof=1):.2f}"


def format_tables(
    per_seed: dict[int, dict[str, Any]], budgets: Sequence[int], arms: Sequence[str]
) -> str:
  """Markdown: the fine-tuning table (per budget and arm) and the pre-trained networks' own."""
  seeds = sorted(per_seed)
  first = per_seed[seeds[0]]["ft"][arms[0]][budgets[0]]
  types = _types(first)
  head = "| budget | arm | " + " | ".join(f"{t} PSNR" for t in types) + " | gain vs scratch (all) |"
  lines = [head, "|" + "---|" * (len(types) + 3)]
  lines.append(
      "| | input | " + " | ".join(f"{first[_key('psnr_input', t)]:.2f}" for t in types) + " | |"
  )
  for b in budgets:
    scratch = (
        [per_seed[s]["ft"]["scratch"][b]["psnr"] for s in seeds] if "scratch" in arms else None
    )
    for arm in arms:
      recs = [per_seed[s]["ft"][arm][b] for s in seeds]
      cells = [_stat([r[_key("psnr", t)] for r in recs]) for t in types]
      gain = ""
      if scratch is not None and arm != "scratch":
        d = np.asarray([r["psnr"] for r in recs]) - np.asarray(scratch)
        spread = f" ± {d.std(ddof=1):.2f}" if len(d) > 1 else ""
        gain = f"{d.mean():+.2f}{spread} ({int((d > 0).sum())}/{len(d)} seeds > 0)"
      lines.append(f"| {b} | {ARM_NAMES[arm]} | " + " | ".join(cells) + f" | {gain} |")
  pre = [a for a in arms if a in PRETRAINED_ARMS]
  if pre:
    lines += [
        "",
        "Pre-trained networks on the held-out photos (dense input; their own types):",
        "",
        "| pre-training | restored PSNR (all) | input PSNR (all) | classifier accuracy |",
        "|---|---|---|---|",
    ]
    for arm in pre:
      recs = [per_seed[s]["pretrain"][arm] for s in seeds]
      acc = _stat([100 * r["accuracy"] for r in recs]) + " %" if "accuracy" in recs[0] else "n/a"
      lines.append(
          f"| {ARM_NAMES[arm][:-5]} | {_stat([r['psnr'] for r in recs])} | "
          f"{recs[0]['psnr_input']:.2f} | {acc} |"
      )
  return "\n".join(lines)


def main(argv):
  del argv
  console.setup()
  if FLAGS.compilation_cache:
    import jax  # pylint: disable=g-import-not-at-top

    jax.config.update("jax_compilation_cache_dir", FLAGS.compilation_cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  seeds = [int(s) for s in FLAGS.seeds]
  budgets = [int(b) for b in FLAGS.budgets]
  arms = [a for a in FLAGS.arms if a]
  unknown = [a for a in arms if a not in ARM_NAMES]
  if unknown:
    raise app.UsageError(f"--arms {unknown}: use {', '.join(ARM_NAMES)}.")
  start = time.time()
  per_seed = {}
  for seed in seeds:
    per_seed[seed] = run_seed(
        FLAGS.workdir, seed, budgets, arms, FLAGS.variant, FLAGS.pretrain_steps, FLAGS.family
    )
    out_dir = (
        FLAGS.workdir if FLAGS.family == "noise_jpeg" else os.path.join(FLAGS.workdir, FLAGS.family)
    )
    with open(os.path.join(out_dir, "results.json"), "w") as f:
      json.dump({str(s): r for s, r in per_seed.items()}, f, indent=1, default=float)
  console.report_results(
      out_dir,
      f"Pre-training effect with controls ({FLAGS.family}), held-out photos, seeds {seeds} "
      f"(mean ± sample std; gains paired by seed):",
      format_tables(per_seed, budgets, arms),
      start,
  )


def run() -> None:
  """Entry point (python -m jaxmilab.benchmarks.pretrain_effects)."""
  define_flags()
  console.run_app(main)


if __name__ == "__main__":
  run()
