r"""OPD's small-data effect, with a positive control first and selection on noisy data only.

  python -m jaxmilab.benchmarks.opd_effects --output=/tmp/opd_effects.json

The defaults (2 training scenes of 32 px, width-16 depth-2 U-Net, 400 steps at peak lr 3e-3,
batch 8, 10 seeds, m in {4, 8}, OPD-AL at m = 4) are the cheapest set-up found where the
positive control shows by several times its spread: N2N on one fixed pair per scene overfits
(its test PSNR peaks at step 50-150 and falls after, 10 of 10 seeds) and fresh noise beats it
on every seed, +2.92 dB at the final step with a paired sd of 0.57 dB (5.1x; +1.58 dB, sd 0.96,
at the validation-selected step). At lr 1e-2 / batch 4 (the previous defaults) the gain was
1x-1.5x its spread. docs/opd.md, the small-data section, records the search and the runs.
Recipes can run in separate processes with the same flags and `--recipes=...`, then `--merge`
their `--output` files (files of different set-ups are refused).

The set (all sizes are flags): `--scenes` training scenes and `--val_scenes` validation
scenes, fixed `--size` px crops of the six training photos shipped with scikit-image, each
with m fixed noisy frames (AWGN sigma 25, clipped and rounded to 8 bits as
`data.multiframe` makes them, frame k of scene s seeded by (seed, s, k)); so the pairs of
those scenes are all the data there is. The held-out test set is every non-overlapping
`--size` px tile of the two held-out photos (chelsea, rocket; 386 tiles at 32 px, every
`--test_stride`-th kept: 129 by default) with one fixed noisy frame each (noise seed
independent of the training seed).

Recipes (jaxmilab.methods.opd, its `loss` and `eval_step`; the network and optimizer of
configs/opd.py:quickstart at `--width` / `--depth`, `--steps` steps, batch `--batch`):

  positive control  n2n_fresh: N2N with fresh noise in every step (an unlimited number of
                    frames per scene, the limit OPD's extra pairs approach) against n2n (one
                    fixed pair per scene). If n2n_fresh does not beat n2n by well over the
                    seed spread, the set cannot show what extra frames buy, and the OPD
                    comparison below means nothing.
  reference         n2c (clean targets).
  compared          opd_rc at each m of `--frames` and opd_al (released loss L_E + L_A) at
                    each m of `--al_frames`, each against n2n, paired by seed.

Selection never reads a clean image: every `--eval_every` steps each run is scored on the
validation scenes' noisy frames (`opd.validation_terms`) and the step with the lowest
`opd.validation_loss` (the recipe's own loss, as the released trainRC.py / trainAL.py select)
is the reported one ("selected"); "final" is the last step of the fixed cosine schedule. The
test-set PSNR is computed at every eval only to report it at those two steps and to show
where its peak lies (whether N2N overfits in this set: its oracle peak before the end); the
peak value is never reported as a result.

Seeds: seed s fixes the initial weights, the noisy frames and the batch order, the same for
every recipe (paired). The seeds of one (recipe, m) train one after another with one
compiled step chunk (`--eval_every` steps in one lax.scan; vmapped convolutions are slow on
CPU), and each finished seed is written to `--output` at once.
"""

from __future__ import annotations

import functools
import json
import time

from absl import app
from absl import flags
import numpy as np

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines this benchmark's flags; on demand, as benchmarks share flag names."""
  flags.DEFINE_list(
      "frames", ["4", "8"], "Frames per scene (m) for the OPD recipes.", flag_values=flag_values
  )
  flags.DEFINE_list(
      "al_frames",
      ["4"],
      "Frames per scene for OPD-AL (it runs the net on all m frames per step: about m / 1.3 "
      "times N2N's step time).",
      flag_values=flag_values,
  )
  flags.DEFINE_list(
      "seeds", [str(s) for s in range(10)], "Paired training seeds.", flag_values=flag_values
  )
  flags.DEFINE_list(
      "recipes",
      ["n2c", "n2n", "n2n_fresh", "opd_rc", "opd_al"],
      "Recipes.",
      flag_values=flag_values,
  )
  flags.DEFINE_integer("scenes", 2, "Training scenes.", flag_values=flag_values)
  flags.DEFINE_integer(
      "val_scenes", 2, "Validation scenes (noisy frames only; selection).", flag_values=flag_values
  )
  flags.DEFINE_integer("size", 32, "Scene / tile size (px).", flag_values=flag_values)
  flags.DEFINE_integer(
      "steps", 400, "Training steps per run (cosine schedule to 0).", flag_values=flag_values
  )
  flags.DEFINE_integer(
      "test_stride",
      3,
      "Keep every n-th held-out tile (1: all; 3 at 32 px: 129 of 386 tiles).",
      flag_values=flag_values,
  )
  flags.DEFINE_integer("eval_every", 50, "Eval period (steps).", flag_values=flag_values)
  flags.DEFINE_integer(
      "batch", 8, "Scenes per step (drawn with replacement).", flag_values=flag_values
  )
  flags.DEFINE_integer("width", 16, "U-Net width.", flag_values=flag_values)
  flags.DEFINE_integer("depth", 2, "U-Net depth.", flag_values=flag_values)
  flags.DEFINE_float("learning_rate", 3e-3, "Peak Adam learning rate.", flag_values=flag_values)
  flags.DEFINE_string(
      "output", "", "JSON file for the per-run numbers and the tables.", flag_values=flag_values
  )
  flags.DEFINE_list(
      "merge",
      [],
      "Only print the tables of the runs in these --output files "
      "(e.g. recipes run in separate processes), training nothing.",
      flag_values=flag_values,
  )


SIGMA = 25.0
SINGLE_PAIR = ("n2c", "n2n", "n2n_fresh")  # read frames 1 and 2 only: the same runs for every m
LABELS = {
    "n2c": "N2C (clean targets)",
    "n2n": "N2N (one fixed pair)",
    "n2n_fresh": "N2N, fresh noise each step (control)",
    "opd_rc": "OPD-RC",
    "opd_al": "OPD-AL (released, L_E + L_A)",
}


# ------------------------------------------------------------------------------------ data


def scene_crops(count: int, size: int, seed: int = 1234) -> np.ndarray:
  """`count` fixed crops of the training photos, uint8 [count, size, size, 3]."""
  from jaxmilab.data import embedded  # pylint: disable=g-import-not-at-top

  photos = [embedded.read(p) for p in embedded.PHOTOS if p not in embedded.EVAL_PHOTOS]
  rng = np.random.default_rng(seed)
  out = []
  for i in range(count):
    photo = photos[i % len(photos)]
    top = int(rng.integers(0, photo.shape[0] - size))
    left = int(rng.integers(0, photo.shape[1] - size))
    out.append(photo[top : top + size, left : left + size])
  return np.stack(out)


def test_tiles(size: int, stride: int = 1) -> np.ndarray:
  """Every `stride`-th non-overlapping size x size tile of the held-out photos (row-major,
  photo after photo), uint8 [N, size, size, 3]."""
  from jaxmilab.data import embedded  # pylint: disable=g-import-not-at-top

  tiles = []
  for name in embedded.EVAL_PHOTOS:
    photo = embedded.read(name)
    for top in range(0, photo.shape[0] - size + 1, size):
      for left in range(0, photo.shape[1] - size + 1, size):
        tiles.append(photo[top : top + size, left : left + size])
  return np.stack(tiles[::stride])


def fixed_frames(scenes: np.ndarray, m: int, seed: int, first_scene: int = 0) -> np.ndarray:
  """m fixed noisy frames per scene as data.multiframe makes them: f32 [N, m, H, W, 3]."""
  from jaxmilab.data import multiframe  # pylint: disable=g-import-not-at-top

  size = scenes.shape[1]
  synth = multiframe.FrameSynthesizer(
      "awgn", {"sigma": SIGMA}, seed=seed, tile=size, clip=True, quantize=True
  )
  return np.stack(
      [
          np.stack([synth.fixed(s, first_scene + i, k, 0, 0, size, size) for k in range(m)])
          for i, s in enumerate(scenes)
      ]
  )


def build_set(seeds, m_max: int) -> dict:
  from jaxmilab.data import images  # pylint: disable=g-import-not-at-top
  from jaxmilab.data import multiframe  # pylint: disable=g-import-not-at-top

  size = FLAGS.size
  crops = scene_crops(FLAGS.scenes + FLAGS.val_scenes, size)
  train, val = crops[: FLAGS.scenes], crops[FLAGS.scenes :]
  tiles = images.to_float(test_tiles(size, FLAGS.test_stride))
  synth = multiframe.FrameSynthesizer(
      "awgn", {"sigma": SIGMA}, seed=0, tile=size, clip=True, quantize=True
  )
  rng = np.random.default_rng([0, 0x0D2])
  test_noisy = np.stack([synth.fresh(t, rng, 1)[0] for t in tiles])
  return {
      "clean": images.to_float(train),  # [S, H, W, 3]
      "frames": np.stack([fixed_frames(train, m_max, s) for s in seeds]),  # [seeds, S, m, ...]
      "val": np.stack(
          [fixed_frames(val, m_max, s, FLAGS.scenes) for s in seeds]
      ),  # [seeds, V, m, ...]
      "test_clean": tiles,
      "test_noisy": test_noisy,
  }


# ------------------------------------------------------------------------------- training


def make_config(recipe: str):
  from jaxmilab import config_lib  # pylint: disable=g-import-not-at-top

  overrides = {
      "mesh.num_devices": 1,
      "total_steps": FLAGS.steps,
      "batch_size": FLAGS.batch,
      "method.recipe": "n2n" if recipe == "n2n_fresh" else recipe,
      "optimizer.learning_rate": FLAGS.learning_rate,
  }
  config = config_lib.load("configs/opd.py:quickstart", overrides)
  config.model.width, config.model.depth = FLAGS.width, FLAGS.depth
  return config


def train_recipe(recipe: str, m: int, data: dict, seeds, on_seed=None) -> list[dict]:
  """Each seed of one (recipe, m) in turn (one compile); per seed the eval rows over the run.

  `on_seed(seed, rows)` is called as each seed finishes (partial results survive a time limit).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from jaxmilab import optimizers  # pylint: disable=g-import-not-at-top
  from jaxmilab.data.base import DataInfo  # pylint: disable=g-import-not-at-top
  from jaxmilab.evaluation import restoration  # pylint: disable=g-import-not-at-top
  from jaxmilab.methods import opd  # pylint: disable=g-import-not-at-top

  config = make_config(recipe)
  method = opd.Method(config, DataInfo(extra={"has_clean": True}))
  tx = optimizers.create(config.optimizer, FLAGS.steps)
  fresh = recipe == "n2n_fresh"
  frames = jnp.asarray(data["frames"][:, :, :m])  # [seeds, S, m, H, W, 3]
  clean = jnp.asarray(data["clean"])
  num_scenes, batch = clean.shape[0], FLAGS.batch

  def init(key, frames_s):
    variables = method.init_variables(key, {"noisy": frames_s[:batch], "clean": clean[:batch]})
    params = variables.pop("params")
    return params, variables, tx.init(params)

  def step(frames_s, carry, _):
    params, model_state, opt_state, key = carry
    key, k_idx, k_noise, k_loss = jax.random.split(key, 4)
    idx = jax.random.randint(k_idx, (batch,), 0, num_scenes)
    target_clean = clean[idx]
    if fresh:  # new noise every step, made as FrameSynthesizer makes frames (clip, 8 bits)
      noise = jax.random.normal(k_noise, (batch, 2) + clean.shape[1:]) * (SIGMA / 255.0)
      noisy = jnp.round(jnp.clip(target_clean[:, None] + noise, 0.0, 1.0) * 255.0) / 255.0
    else:
      noisy = frames_s[idx]
    (loss, (_, model_state)), grads = jax.value_and_grad(method.loss, has_aux=True)(
        params, model_state, {"noisy": noisy, "clean": target_clean}, k_loss
    )
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), model_state, opt_state, key), loss

  def run_chunk(carry, frames_s):
    return jax.lax.scan(functools.partial(step, frames_s), carry, None, length=FLAGS.eval_every)

  chunk = jax.jit(run_chunk)  # one seed at a time: vmapped convolutions are slow on CPU

  def outputs(params, model_state, noisy):  # noisy [N, H, W, 3] -> f(noisy)
    return method.eval_step(params, model_state, {"noisy": noisy[:, None]})["restored"]

  apply = jax.jit(outputs)
  val = data["val"][:, :, :m]  # [seeds, V, m, H, W, 3]
  test_clean = restoration.to_uint8(data["test_clean"])
  test_noisy = jnp.asarray(data["test_noisy"])
  rows = [[] for _ in seeds]
  for s, seed in enumerate(seeds):
    key = jax.random.PRNGKey(int(seed))
    params, model_state, opt_state = jax.jit(init)(key, frames[s])
    carry = (params, model_state, opt_state, jax.random.fold_in(key, 1))
    val_in = jnp.asarray(val[s].reshape((-1,) + val.shape[3:]))
    for done in range(FLAGS.eval_every, FLAGS.steps + 1, FLAGS.eval_every):
      carry, losses = chunk(carry, frames[s])
      params, model_state = carry[0], carry[1]
      val_out = np.asarray(apply(params, model_state, val_in)).reshape(val[s].shape)
      test_out = restoration.to_uint8(np.asarray(apply(params, model_state, test_noisy)))
      terms = opd.validation_terms(method.pixel_loss, val_out, val[s])
      terms = {k: float(np.mean(v)) for k, v in terms.items()}
      psnr = float(
          np.mean(
              10.0
              * np.log10(
                  255.0**2
                  / np.mean(np.square(test_out.astype(np.float64) - test_clean), axis=(1, 2, 3))
              )
          )
      )
      rows[s].append(
          {
              "step": done,
              "psnr": psnr,
              "train_loss": float(np.mean(losses)),
              "val_loss": opd.validation_loss(method.recipe, terms, m),
              **terms,
          }
      )
    if on_seed is not None:
      on_seed(seed, rows[s])
  return rows


def summarize_run(recipe: str, m: int, seed: int, rows: list[dict]) -> dict:
  from jaxmilab.methods import opd  # pylint: disable=g-import-not-at-top

  chosen = opd.select_step(rows)
  peak = max(rows, key=lambda r: r["psnr"])
  return {
      "recipe": recipe,
      "m": m,
      "seed": seed,
      "selected_psnr": chosen["psnr"],
      "selected_step": chosen["step"],
      "final_psnr": rows[-1]["psnr"],
      "oracle_peak_step": peak["step"],
      "evals": rows,
  }


# -------------------------------------------------------------------------------- tables


def _stats(values) -> str:
  v = np.asarray(values, np.float64)
  return (
      f"{v.mean():+.2f} (sd {v.std(ddof=1) if v.size > 1 else 0.0:.2f}; "
      f"{v.min():+.2f}..{v.max():+.2f})"
  )


def summarize(runs: list[dict]) -> str:
  """The positive control first, then each OPD recipe against N2N, paired by seed."""
  by = {(r["recipe"], r["m"], r["seed"]): r for r in runs}
  lines = []
  for key in ("selected_psnr", "final_psnr"):
    name = "selected by noisy validation loss" if key == "selected_psnr" else "final step"
    lines += [
        f"PSNR at the {name} (dB). Paired differences are per seed: mean (sd; min..max).",
        "",
        "| comparison | m | seeds | A mean | B mean | A - B | A ahead | A - B, seeds in order |",
        "|---|---|---|---|---|---|---|---|",
    ]
    pairs = [("n2n_fresh", 2, "n2n", 2, "control"), ("n2c", 2, "n2n", 2, "reference")]
    ms = sorted({r["m"] for r in runs if r["recipe"] not in SINGLE_PAIR})
    pairs += [(rec, m, "n2n", 2, "") for m in ms for rec in ("opd_rc", "opd_al")]
    for a, ma, b, mb, tag in pairs:
      seeds = sorted(s for (r, m, s) in by if r == a and m == ma and (b, mb, s) in by)
      if not seeds:
        continue
      va = np.array([by[(a, ma, s)][key] for s in seeds])
      vb = np.array([by[(b, mb, s)][key] for s in seeds])
      label = f"{LABELS[a]} vs {LABELS[b]}" + (f" [{tag}]" if tag else "")
      lines.append(
          f"| {label} | {ma if a not in SINGLE_PAIR else '-'} | {len(seeds)} | "
          f"{va.mean():.2f} | {vb.mean():.2f} | {_stats(va - vb)} | "
          f"{int(np.sum(va > vb))}/{len(seeds)} | {' '.join(f'{d:+.2f}' for d in va - vb)} |"
      )
    lines.append("")
  n2n = [r for r in runs if r["recipe"] == "n2n"]
  if n2n:
    spread = np.array([r["final_psnr"] for r in n2n])
    lines.append(
        f"N2N seed spread (final PSNR): sd {spread.std(ddof=1) if spread.size > 1 else 0:.2f}, "
        f"range {spread.min():.2f}..{spread.max():.2f} dB over {spread.size} seeds."
    )
    last = max(r["evals"][-1]["step"] for r in n2n)
    early = [r for r in n2n if r["oracle_peak_step"] < last]
    lines.append(
        f"N2N overfitting: its test PSNR peaks before the last step in {len(early)}/{len(n2n)} "
        f"seeds (peak steps {sorted(r['oracle_peak_step'] for r in n2n)}; last {last}); "
        f"validation-selected steps {sorted(r['selected_step'] for r in n2n)}."
    )
  return "\n".join(lines)


# The flags that define the set and the training; runs merged into one table must share them
# (which recipes, frames and seeds a file holds may differ).
SETUP_FLAGS = (
    "scenes",
    "val_scenes",
    "size",
    "test_stride",
    "steps",
    "eval_every",
    "batch",
    "width",
    "depth",
    "learning_rate",
)


def merge_runs(paths) -> list[dict]:
  """The runs of several `--output` files; refuses files trained under different set-ups."""
  runs, seen, setup = [], set(), None
  for path in paths:
    try:
      with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    except (OSError, ValueError) as e:
      raise ValueError(f"--merge: cannot read {path} ({e}); pass --output files of this benchmark.")
    this = {k: saved.get("flags", {}).get(k) for k in SETUP_FLAGS}
    if setup is None:
      setup, first = this, path
    elif this != setup:
      diff = ", ".join(f"{k}={this[k]} vs {setup[k]}" for k in SETUP_FLAGS if this[k] != setup[k])
      raise ValueError(
          f"--merge: {path} was trained with other settings than {first} ({diff}); merge only "
          "runs of one set-up."
      )
    for r in saved["runs"]:  # a run found in two files counts once
      if (r["recipe"], r["m"], r["seed"]) not in seen:
        seen.add((r["recipe"], r["m"], r["seed"]))
        runs.append(r)
  return runs


def main(argv):
  del argv
  if FLAGS.merge:
    print(summarize(merge_runs(FLAGS.merge)))
    return
  seeds = [int(s) for s in FLAGS.seeds]
  frames = sorted(int(f) for f in FLAGS.frames)
  al_frames = sorted(int(f) for f in FLAGS.al_frames)
  m_max = max(frames + al_frames + [2])
  start = time.time()
  data = build_set(seeds, m_max)
  runs = []
  unknown = [r for r in FLAGS.recipes if r not in LABELS]
  if unknown:
    raise ValueError(f"--recipes: unknown {unknown}; use {', '.join(LABELS)}.")
  jobs = [(r, 2) for r in FLAGS.recipes if r in SINGLE_PAIR]
  jobs += [(r, m) for m in frames for r in FLAGS.recipes if r not in SINGLE_PAIR + ("opd_al",)]
  jobs += [("opd_al", m) for m in al_frames if "opd_al" in FLAGS.recipes]
  # The control first: it says whether this set can show the effect at all.
  jobs.sort(key=lambda j: (("n2n", "n2n_fresh", "opd_rc", "n2c", "opd_al").index(j[0]), j[1]))

  def save():
    if FLAGS.output:
      with open(FLAGS.output, "w", encoding="utf-8") as f:
        json.dump(
            {
                "flags": {
                    k: getattr(FLAGS, k)
                    for k in ("frames", "al_frames", "seeds", "recipes") + SETUP_FLAGS
                },
                "runs": runs,
                "table": summarize(runs),
                "seconds": time.time() - start,
            },
            f,
            indent=1,
        )

  for recipe, m in jobs:
    t0 = time.time()

    def on_seed(seed, rows, recipe=recipe, m=m):
      runs.append(summarize_run(recipe, m, int(seed), rows))
      save()

    train_recipe(recipe, m, data, seeds, on_seed)
    print(f"{recipe} m={m}: {len(seeds)} seeds in {time.time() - t0:.0f} s", flush=True)
  print(summarize(runs))


def run() -> None:
  """Entry point (python -m jaxmilab.benchmarks.opd_effects)."""
  define_flags()
  app.run(main)


if __name__ == "__main__":
  run()
