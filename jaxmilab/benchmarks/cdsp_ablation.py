r"""CDSP ablation at CPU scale: scribble-only -> + pseudo-label CE -> + distance entropy -> + LoRM.

  python -m jaxmilab.benchmarks.cdsp_ablation --output=/tmp/cdsp_ablation.json
  python -m jaxmilab.benchmarks.cdsp_ablation --steps=20 --seeds=0 --quick   # seconds-scale check

Each row trains the `configs/cdsp.py:quickstart` network on the synthetic scribble set
(jaxmilab/data/scribble_synthetic.py: training sees scribbles and imperfect pseudo-labels,
never the masks) for `--steps` steps per seed and reports the single-scale mIoU (%) on the
held-out eval set, as mean ± sample standard deviation and the range over the seeds. Rows
(cumulative, as the paper's ablation table):

  scribble only        CE(P, S)
  + pseudo CE          + CE_ls(P, Y^, eps 0.1)
  + distance entropy   + DE(P, D_s) + DE(P, D_c)
  + LoRM               + L_LoRM (the full CDSP loss; as released, LoRM also turns the
                       pseudo-label's 255 pixels into background for CE_ls,
                       method.lorm_zeroes_pseudo_ignore)
  CDSP, 255 ignored    the full loss with lorm_zeroes_pseudo_ignore=False (not cumulative: it
                       separates the LoRM loss from the released in-place quirk)

The distance maps are the configs' (released: lambda e / e^6, nearest resizing, padding
weight 1.0); `--set data.scribble_lambda=7.389 ...` (repeatable) overrides any config key for
every row, e.g. to rerun with the earlier maps.

The loop is the trainer's step (same method.loss, optimizer from config.optimizer, BatchNorm
state) compiled once per row and reused for every seed; the mIoU comes from the method's
streaming evaluator. The eval set has no pseudo-labels, so the training set's pseudo-label
mIoU against its synthetic masks is printed as a reference for their quality.
"""

from __future__ import annotations

import json
import os
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmilab import config_lib
from jaxmilab import console
from jaxmilab import optimizers
from jaxmilab import registry

ROWS = (
    (
        "scribble only",
        dict(
            pseudo_weight=0.0,
            scribble_entropy_weight=0.0,
            contour_entropy_weight=0.0,
            lorm_weight=0.0,
        ),
    ),
    (
        "+ pseudo CE",
        dict(
            pseudo_weight=1.0,
            scribble_entropy_weight=0.0,
            contour_entropy_weight=0.0,
            lorm_weight=0.0,
        ),
    ),
    (
        "+ distance entropy",
        dict(
            pseudo_weight=1.0,
            scribble_entropy_weight=1.0,
            contour_entropy_weight=1.0,
            lorm_weight=0.0,
        ),
    ),
    (
        "+ LoRM (CDSP)",
        dict(
            pseudo_weight=1.0,
            scribble_entropy_weight=1.0,
            contour_entropy_weight=1.0,
            lorm_weight=1.0,
        ),
    ),
    (
        "CDSP, pseudo 255 ignored",
        dict(
            pseudo_weight=1.0,
            scribble_entropy_weight=1.0,
            contour_entropy_weight=1.0,
            lorm_weight=1.0,
            lorm_zeroes_pseudo_ignore=False,
        ),
    ),
)


def _parse_set(items) -> dict:
  """["data.contour_lambda=7.389", ...] -> {"data.contour_lambda": 7.389, ...} (Python literals)."""
  import ast  # pylint: disable=g-import-not-at-top

  out = {}
  for item in items or ():
    key, sep, value = item.partition("=")
    if not sep:
      raise app.UsageError(f"--set {item!r}: use KEY=VALUE, e.g. data.contour_lambda=7.389.")
    try:
      out[key.strip()] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      out[key.strip()] = value
  return out


def _config(steps: int, overrides: dict, quick: bool, extra: dict | None = None):
  flat = {"total_steps": steps, **{f"method.{k}": v for k, v in overrides.items()}, **(extra or {})}
  return config_lib.load("jaxmilab:cdsp:" + ("smoke" if quick else "quickstart"), flat)


def run_row(config, seeds) -> list[float]:
  """mIoU (%) per seed for one loss configuration; one compile for all seeds."""
  datasets = {
      s: registry.get_data(config.data.name)(
          config.data, batch_size=config.batch_size, seed=s, process_index=0, process_count=1
      )
      for s in seeds
  }
  method = registry.get_method(config.method.name)(config, datasets[seeds[0]].info)
  tx = optimizers.create(config.optimizer, config.total_steps)

  @jax.jit
  def step(params, opt_state, model_state, batch, rng):
    (loss, (metrics, model_state)), grads = jax.value_and_grad(method.loss, has_aux=True)(
        params, model_state, batch, rng
    )
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, model_state, loss

  eval_step = jax.jit(method.eval_step)
  results = []
  for seed in seeds:
    data = datasets[seed]
    first = next(data.train)
    variables = dict(method.init_variables(jax.random.key(seed), first))
    params = variables.pop("params")
    model_state, opt_state = variables, tx.init(params)
    batch = first
    for i in range(config.total_steps):
      if i:
        batch = next(data.train)
      params, opt_state, model_state, loss = step(
          params, opt_state, model_state, batch, jax.random.fold_in(jax.random.key(seed), i)
      )
    if not np.isfinite(float(loss)):
      raise FloatingPointError(f"seed {seed}: non-finite loss {float(loss)}")
    ev = method.evaluator()
    for eval_batch in data.eval_batches():
      out = eval_step(params, model_state, {k: jnp.asarray(v) for k, v in eval_batch.items()})
      ev.update(eval_batch, jax.device_get(out))
    results.append(ev.compute()["mIoU"])
  return results


def pseudo_label_miou(config, n: int = 256) -> float:
  """mIoU (%) of the synthetic train set's pseudo-labels against its masks (reference only)."""
  from jaxmilab.data import scribble_synthetic  # pylint: disable=g-import-not-at-top
  from jaxmilab.evaluation import segmentation  # pylint: disable=g-import-not-at-top

  c = config.data
  kw = dict(
      size=c.image_size,
      num_classes=c.num_classes,
      max_objects=c.max_objects,
      num_examples=n,
      seed=0,
      tag=scribble_synthetic._TRAIN_TAG,
  )  # pylint: disable=protected-access
  with_labels = scribble_synthetic.SyntheticScribbles((), train=True, **kw)
  masks = scribble_synthetic.SyntheticScribbles((), train=False, **kw)
  ev = segmentation.SegmentationEvaluator(c.num_classes)
  for i in range(n):
    ev.accumulate(with_labels[i]["pseudo"], masks[i]["gt"])
  return ev.compute()["mIoU"]


FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines this benchmark's flags; on demand, as benchmarks share flag names."""
  flags.DEFINE_integer("steps", 300, "Training steps per row and seed.", flag_values=flag_values)
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds.", flag_values=flag_values)
  flags.DEFINE_bool(
      "quick", False, "Smoke network and data (a test of the script).", flag_values=flag_values
  )
  flags.DEFINE_string(
      "output",
      "",
      "JSON file for the per-row numbers (rewritten after every row).",
      flag_values=flag_values,
  )
  flags.DEFINE_multi_string(
      "set",
      [],
      "KEY=VALUE config override for every row (e.g. data.contour_lambda=7.389).",
      flag_values=flag_values,
  )
  flags.DEFINE_list("rows", [], "Row indices to run (default: all).", flag_values=flag_values)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  console.setup()  # libraries' INFO logs only with --verbosity=1
  args = FLAGS
  seeds = [int(s) for s in args.seeds]
  extra = _parse_set(args.set)
  rows = [ROWS[int(i)] for i in args.rows] if args.rows else list(ROWS)
  table = []
  t0 = time.perf_counter()

  def write(reference=None):
    if not args.output:
      return
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as f:
      json.dump(
          dict(
              steps=args.steps,
              seeds=seeds,
              overrides=extra,
              rows=table,
              pseudo_label_miou=reference,
              seconds=time.perf_counter() - t0,
          ),
          f,
          indent=2,
      )

  for name, overrides in rows:
    config = _config(args.steps, overrides, args.quick, extra)
    values = run_row(config, seeds)
    row = dict(
        row=name,
        mIoU=values,
        mean=float(np.mean(values)),
        std=float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
        min=float(np.min(values)),
        max=float(np.max(values)),
    )
    table.append(row)
    print(
        f"{name:26s} mIoU {row['mean']:6.2f} ± {row['std']:5.2f}  "
        f"(range {row['min']:.2f}-{row['max']:.2f}; "
        f"seeds {seeds}: {', '.join(f'{v:.2f}' for v in values)})  "
        f"[{time.perf_counter() - t0:.0f} s]",
        flush=True,
    )
    write()
  reference = pseudo_label_miou(_config(args.steps, {}, args.quick, extra))
  print(f"pseudo-labels vs masks (train set, reference): mIoU {reference:.2f}")
  write(reference)


def run() -> None:
  """Entry point (python -m jaxmilab.benchmarks.cdsp_ablation)."""
  define_flags()
  app.run(main)


if __name__ == "__main__":
  run()
