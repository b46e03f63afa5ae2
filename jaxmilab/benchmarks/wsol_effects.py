r"""Experiments that can show the WSOL papers' effects, on synthetic sets built for them.

  python -m jaxmilab.benchmarks.wsol_effects --experiment=bagcams --seeds=0,1,2 --steps=300 \
      --output=/tmp/wsol_bagcams.json
  python -m jaxmilab.benchmarks.wsol_effects --experiment=bcam --seeds=0,1,2 --steps=300 \
      --output=/tmp/wsol_bcam.json

* bagcams: CAM vs BagCAMs of the same network (the `bagcams` method trains as `cam` and
  evaluates both maps) on the part-discriminative set (`data.layout="part"`: a class-agnostic
  body, a class-coded patch over 5-10 % of it, boxes / masks over the whole body), and on the
  default "shapes" set as a control. CAM should light the patch; BagCAMs should spread over
  the body: MaxBoxAcc@50 / @70 and PxAP.
* bcam: CAM vs B-CAM on the co-occurring-context set (`data.layout="context"`: a class-coloured
  band beside the object in 80 % of the images, masks on the object only): PxAP, the mean
  min-max map value on the band ("context activation", lower is better) and on the object,
  and the IoU with the object mask of the map thresholded at 0.5 (B-CAM also in its "mask"
  mode, which needs no threshold).

Tiny ResNet50 (`preset="tiny"`), 64 px, 4 classes, trained from scratch; each setting over
`--seeds` (training seed; the eval set is fixed), reported as mean and spread (min..max).
Numbers are for the ordering, not for comparison with the papers' values.
"""

from __future__ import annotations

import json
import os
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

flags.DEFINE_enum("experiment", "bagcams", ["bagcams", "bcam"], "Which effect to measure.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds.")
flags.DEFINE_integer("steps", 300, "Training steps per run.")
flags.DEFINE_integer("num_eval", 512, "Eval images (fixed set).")
flags.DEFINE_list("layouts", ["part", "shapes"], "bagcams: synthetic layouts (part = the effect, shapes = control).")
flags.DEFINE_string("output", "", "JSON file for the per-run numbers and the summary table.")
FLAGS = flags.FLAGS


def _overrides(seed: int, steps: int, num_eval: int, layout: str) -> dict:
  return {"mesh.num_devices": 1, "seed": seed, "total_steps": steps, "eval_every_steps": steps,
          "checkpoint_every_steps": steps, "data.layout": layout, "data.num_eval": num_eval,
          "data.eval_batch_size": 64}


def _train(config_path: str, overrides: dict):
  from jaxmilab import config_lib  # pylint: disable=g-import-not-at-top
  from jaxmilab import trainer  # pylint: disable=g-import-not-at-top
  config = config_lib.load(config_path, overrides)
  workdir = tempfile.mkdtemp(prefix="wsol_effects_")
  t = trainer.Trainer(config, workdir)
  state = t.run()
  trainer.check_finished(state, config, workdir)   # no partial run in the table after a SIGTERM
  return t, state, workdir


def _last_eval(workdir: str) -> dict:
  from jaxmilab import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  return metrics_lib.read_split(workdir, "eval")[-1]


def _save_partial(rows: list[dict]) -> None:
  """Writes the rows so far to --output (results survive a time limit)."""
  if FLAGS.output:
    with open(FLAGS.output + ".partial", "w", encoding="utf-8") as f:
      json.dump({"experiment": FLAGS.experiment, "rows": rows}, f, indent=1)


def run_bagcams(seeds, steps, num_eval, layouts) -> list[dict]:
  rows = []
  for layout in layouts:
    for seed in seeds:
      start = time.time()
      _, _, workdir = _train("configs/bagcams.py:quickstart", _overrides(seed, steps, num_eval, layout))
      record = _last_eval(workdir)
      for maps, prefix in (("CAM", "cam/"), ("BagCAMs", "")):
        rows.append({"layout": layout, "seed": seed, "maps": maps,
                     **{k: record[prefix + k] for k in ("MaxBoxAcc@50", "MaxBoxAcc@70", "MaxBoxAccV2", "PxAP")},
                     "accuracy": record["accuracy"], "seconds": time.time() - start})
      _save_partial(rows)
  return rows


def _map_stats(t, state, keys) -> dict[str, dict[str, float]]:
  """Per scoremap key: context activation, object activation, IoU at 0.5 (mean over images)."""
  import jax  # pylint: disable=g-import-not-at-top
  step = jax.jit(t.method.eval_step)
  sums = {k: {"context": [], "object": [], "iou@0.5": []} for k in keys}
  for batch in t.data.eval_batches():
    out = jax.device_get(step(state.params, state.model_state,
                              {"image": batch["image"], "label": batch["label"]}))
    for i in np.flatnonzero(batch["valid"]):
      mask, context = batch["mask"][i], batch["context"][i]
      for k in keys:
        s = np.asarray(out[k][i])
        if context.any():
          sums[k]["context"].append(float(s[context].mean()))
        sums[k]["object"].append(float(s[mask].mean()))
        pred = s >= 0.5
        sums[k]["iou@0.5"].append(float((pred & mask).sum() / max((pred | mask).sum(), 1)))
  return {k: {m: float(np.mean(v)) for m, v in d.items()} for k, d in sums.items()}


def run_bcam(seeds, steps, num_eval) -> list[dict]:
  rows = []
  for seed in seeds:
    for name in ("cam", "bcam"):
      start = time.time()
      t, state, workdir = _train(f"configs/{name}.py:quickstart", _overrides(seed, steps, num_eval, "context"))
      record = _last_eval(workdir)
      keys = ("scoremap",) if name == "cam" else ("scoremap", "scoremap_mask")
      stats = _map_stats(t, state, keys)
      for key in keys:
        prefix = "" if key == "scoremap" else "mask/"
        label = {"scoremap": "CAM" if name == "cam" else "B-CAM prob", "scoremap_mask": "B-CAM mask"}[key]
        rows.append({"layout": "context", "seed": seed, "maps": label, "PxAP": record[prefix + "PxAP"],
                     "MaxBoxAccV2": record[prefix + "MaxBoxAccV2"], **stats[key],
                     "accuracy": record["accuracy"], "seconds": time.time() - start})
      _save_partial(rows)
  return rows


def summarize(rows: list[dict], metrics: tuple[str, ...]) -> str:
  """Markdown table: mean and (min..max) over seeds per (layout, maps)."""
  groups: dict[tuple[str, str], list[dict]] = {}
  for r in rows:
    groups.setdefault((r["layout"], r["maps"]), []).append(r)
  lines = ["| set | maps | seeds | " + " | ".join(metrics) + " |",
           "|---|---|---|" + "---|" * len(metrics)]
  for (layout, maps), rs in groups.items():
    cells = []
    for m in metrics:
      v = np.array([r[m] for r in rs], np.float64)
      cells.append(f"{v.mean():.2f} ({v.min():.2f}..{v.max():.2f})")
    lines.append(f"| {layout} | {maps} | {len(rs)} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv):
  del argv
  seeds = [int(s) for s in FLAGS.seeds]
  if FLAGS.experiment == "bagcams":
    rows = run_bagcams(seeds, FLAGS.steps, FLAGS.num_eval, tuple(FLAGS.layouts))
    table = summarize(rows, ("MaxBoxAcc@50", "MaxBoxAcc@70", "PxAP", "accuracy"))
  else:
    rows = run_bcam(seeds, FLAGS.steps, FLAGS.num_eval)
    table = summarize(rows, ("PxAP", "context", "object", "iou@0.5", "accuracy"))
  print(table)
  if FLAGS.output:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
    with open(FLAGS.output, "w", encoding="utf-8") as f:
      json.dump({"experiment": FLAGS.experiment, "steps": FLAGS.steps, "num_eval": FLAGS.num_eval,
                 "rows": rows, "table": table}, f, indent=1)


if __name__ == "__main__":
  app.run(main)
