r"""Where a pre-trained DCPT / MaskDCPT degradation classifier works: held-out vs training photos,
dense vs masked input.

  python -m jaxmilab.benchmarks.maskdcpt_probe --workdir=/tmp/jaxmilab_quickstart/maskdcpt/pretrain

Reads the run's config.json and last checkpoint (params_ema if the run kept an EMA) and scores
its classifier on
  held-out   the run's own eval set (config.data eval photos, crops, levels), and
  train      the same number of examples cut from the training photos the same way,
each with the dense input (what the trainer's eval reports) and, for MaskDCPT, with the masked
input of pre-training (random patch masks at the run's mask ratio, fixed seeds). The four
accuracies separate the causes of a classifier at chance on held-out photos: a gap between
masked and dense input (the mask), between train and held-out photos (overfitting to 6 photos),
or low accuracy everywhere (it never learned). For the last case it also prints the logit spread
(per class, the standard deviation over the held-out examples of the dense logits, averaged over
classes): near 0 means the classifier gives every image the same answer whatever its input, the
collapsed state docs/maskdcpt.md describes ("Why the classifier sat at chance"). Prints a table
and, with --output, JSON.
"""

from __future__ import annotations

import json
import os
from typing import Any

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from jaxmilab import checkpoint as ckpt_lib
from jaxmilab import registry
from jaxmilab.models import masking

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines this benchmark's flags; on demand, as benchmarks share flag names."""
  flags.DEFINE_string(
      "workdir", None, "A dcpt or maskdcpt run folder (with config.json).", flag_values=flag_values
  )
  flags.DEFINE_string(
      "output", "", "Write the accuracies as JSON here ('' = print only).", flag_values=flag_values
  )
  flags.DEFINE_integer(
      "mask_seeds", 2, "Masked passes per example (MaskDCPT).", flag_values=flag_values
  )


def _load_config(workdir: str):
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise app.UsageError(
        f"--workdir={workdir}: no config.json; give a dcpt or maskdcpt run folder."
    )
  import ml_collections  # pylint: disable=g-import-not-at-top

  return ml_collections.ConfigDict(json.loads(open(path).read()))


def _examples(config, split: str) -> list[dict[str, np.ndarray]]:
  """The eval set ("held-out") or the same crops of the training photos ("train")."""
  data_config = config.data.copy_and_resolve_references()
  if split == "train":
    from jaxmilab.data import embedded  # pylint: disable=g-import-not-at-top

    eval_photos = tuple(data_config.get("eval_photos") or embedded.EVAL_PHOTOS)
    photos = tuple(
        data_config.get("photos") or [p for p in embedded.PHOTOS if p not in eval_photos]
    )
    with data_config.unlocked():
      data_config.eval_photos = photos
      data_config.photos = eval_photos  # disjointness check only; not read here
  data = registry.get_data(data_config.name)(
      data_config, batch_size=config.batch_size, seed=0, process_index=0, process_count=1
  )
  return list(data.eval_batches()), data.info


def probe(workdir: str, mask_seeds: int = 2) -> dict[str, Any]:
  config = _load_config(workdir)
  loaded = ckpt_lib.load_variables(workdir)
  results: dict[str, Any] = {"source": loaded["source"]}
  for split in ("held_out", "train"):
    batches, info = _examples(config, "train" if split == "train" else "eval")
    method = registry.get_method(config.method.name)(config, info)
    params = loaded["params"]
    masked = hasattr(method, "patch") and config.method.name == "maskdcpt"

    @jax.jit
    def logits_of(lq):
      return method.forward(params, lq)[1]

    @jax.jit
    def predict_masked(lq, key):
      h, w = lq.shape[1:3]
      mask = masking.random_patch_mask(
          key, lq.shape[0], (h // method.patch, w // method.patch), method.mask_ratio
      )
      return jnp.argmax(method.forward(params, lq, mask)[1], -1)

    correct = {"dense": [], "masked": []}
    labels_all = []
    logits_all = []
    for b, batch in enumerate(batches):
      valid = np.asarray(batch.get("valid", np.ones(len(batch["label"]), bool)), bool)
      labels = np.asarray(batch["label"])[valid]
      labels_all.append(labels)
      lq = jnp.asarray(batch["lq"])
      logits = np.asarray(logits_of(lq))[valid]
      logits_all.append(logits)
      correct["dense"].append(np.argmax(logits, -1) == labels)
      if masked:
        hits = [
            np.asarray(predict_masked(lq, jax.random.key(1000 * b + s)))[valid] == labels
            for s in range(mask_seeds)
        ]
        correct["masked"].append(np.mean(hits, axis=0))
    labels_all = np.concatenate(labels_all)
    for mode, parts in correct.items():
      if not parts:
        continue
      hit = np.concatenate(parts)
      results[f"{split}/{mode}"] = float(hit.mean())
      for c, name in enumerate(info.class_names):
        results[f"{split}/{mode}/{name}"] = float(hit[labels_all == c].mean())
    results[f"{split}/count_per_type"] = int(np.bincount(labels_all).min())
    results[f"{split}/logit_spread"] = logit_spread(np.concatenate(logits_all))
  return results


def logit_spread(logits: np.ndarray) -> float:
  """Mean over classes of the standard deviation over examples of [examples, classes] logits:
  0 when the classifier's answer does not depend on its input."""
  return float(np.mean(np.std(np.asarray(logits, np.float64), axis=0)))


def main(argv):
  del argv
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required.")
  r = probe(FLAGS.workdir, FLAGS.mask_seeds)
  print(f"{r['source']}")
  print("| photos | input | accuracy | per type |\n|---|---|---|---|")
  for split in ("held_out", "train"):
    for mode in ("dense", "masked"):
      key = f"{split}/{mode}"
      if key in r:
        per = ", ".join(
            f"{k.rsplit('/', 1)[1]} {100 * v:.1f}%" for k, v in r.items() if k.startswith(key + "/")
        )
        print(
            f"| {split} ({r[split + '/count_per_type']}/type) | {mode} | "
            f"{100 * r[key]:.1f}% | {per} |"
        )
  spreads = ", ".join(
      f"{split} {r[split + '/logit_spread']:.3g}" for split in ("held_out", "train")
  )
  print(f"logit spread (dense; ~0 = the same answer for every image): {spreads}")
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      json.dump(r, f, indent=2)


def run() -> None:
  """Entry point (python -m jaxmilab.benchmarks.maskdcpt_probe)."""
  define_flags()
  app.run(main)


if __name__ == "__main__":
  run()
