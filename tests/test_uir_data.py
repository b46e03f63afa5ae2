"""UIR-2.5M as data: a tiny folder in the released layout -> build_uir -> train (uir2p5m) ->
resume."""

from __future__ import annotations

import os
import shutil

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from jaxmilab import checkpoint as ckpt_lib
from jaxmilab import metrics as metrics_lib
from jaxmilab import trainer
from jaxmilab.configs import dcpt as dcpt_config
from jaxmilab.data import build_uir
from jaxmilab.data import uir2p5m
from jaxmilab.data import uir_degradations
from jaxmilab.data.base import DataError
from tests import fake_trees

# <type folder>/<source>: 3 pairs each; GN's are JPEG files (stored as released, not re-encoded).
RELEASE = (
    ("GN", "LSDIR", ".jpg"),
    ("rs", "RealRain-1k", ".png"),
    ("low_light", "LOL", ".png"),
    ("RN", "SIDD", ".png"),
)


@pytest.fixture(scope="module")
def released_build(tmp_path_factory):
  root = tmp_path_factory.mktemp("uir_release")
  release = fake_trees.uir_release(
      root / "UIR-2.5M",
      [(t, s, [f"{i}{e}" for i in range(3)]) for t, s, e in RELEASE],
      height=36,
      width=40,
  )
  plan = build_uir.make_plan(released_dir=str(release), shard_size=5)
  manifest = build_uir.build(plan, str(root / "build"), workers=0, progress=False)
  return release, root / "build", manifest


def test_released_layout_packs_file_bytes(released_build):
  release, out, manifest = released_build
  assert manifest["types"] == ["noise", "real_noise", "rain_streak", "low_light"]  # table order
  assert manifest["counts"] == {
      "noise": {"LSDIR": 3},
      "real_noise": {"SIDD": 3},
      "rain_streak": {"RealRain-1k": 3},
      "low_light": {"LOL": 3},
  }
  assert len(manifest["shards"]) == 3
  _, records = fake_trees.read_build(out)
  assert sorted(r["source"] for r in records) == sorted(
      f"{t}/{s}/{i}{e}" for t, s, e in RELEASE for i in range(3)
  )
  for r in records:
    for side in ("lq", "gt"):  # the released file's own bytes: no decode / re-encode
      path = release / os.path.dirname(r["source"]) / side / os.path.basename(r["source"])
      assert r[f"{side}_png"] == path.read_bytes()
      np.testing.assert_array_equal(
          build_uir.decode_png(r[f"{side}_png"]), np.asarray(Image.open(path))
      )


def test_released_layout_errors(tmp_path):
  bad = tmp_path / "bad" / "GN" / "x"
  for side in ("lq", "gt"):
    (bad / side).mkdir(parents=True)
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(bad / "lq" / "a.png")
  Image.fromarray(np.zeros((8, 9, 3), np.uint8)).save(bad / "gt" / "a.png")
  plan = build_uir.make_plan(released_dir=str(tmp_path / "bad"))
  with pytest.raises(DataError, match="a pair must have the same size"):
    build_uir.build(plan, str(tmp_path / "out"), progress=False)
  with pytest.raises(ValueError, match="Give one of --clean_dir"):
    build_uir.make_plan(str(tmp_path), released_dir=str(tmp_path / "bad"))
  with pytest.raises(DataError, match="not UIR-2.5M types"):
    build_uir.make_plan(released_dir=str(tmp_path))


def _config(build, workdir_steps):
  c = dcpt_config.get_config("smoke")
  c.data = ml_collections.ConfigDict(
      dict(
          name="uir2p5m",
          path=str(build),
          patch_size=32,
          eval_size=32,
          eval_records=4,
          eval_batch_size=8,
          read_threads=1,
      )
  )
  c.total_steps = workdir_steps
  c.checkpoint_every_steps = 1
  c.eval_every_steps = workdir_steps
  c.mesh.num_devices = 1  # one CPU device: the cheapest compile
  return c


def test_uir2p5m_dataset_labels_and_errors(released_build):
  _, build, _ = released_build
  ds = uir2p5m.create(
      _config(build, 1).data, batch_size=4, seed=0, process_index=0, process_count=1
  )
  assert ds.info.class_names == uir_degradations.UIR_TYPE_NAMES and ds.info.num_classes == 19
  labels = np.concatenate([next(ds.train)["label"] for _ in range(4)])
  names = {uir_degradations.UIR_TYPE_NAMES[i] for i in labels}
  assert names <= {"noise", "real_noise", "rain_streak", "low_light"} and len(names) >= 3
  with pytest.raises(ValueError, match="not UIR-2.5M types"):
    bad = _config(build, 1).data
    bad.types = ("noise", "fog")
    uir2p5m.create(bad, batch_size=4, seed=0, process_index=0, process_count=1)


def test_train_on_released_build_then_resume(released_build, tmp_path):
  _, build, _ = released_build
  workdir = str(tmp_path / "run")
  trainer.train_and_evaluate(_config(build, 3), workdir)
  final = ckpt_lib.load_variables(workdir)
  records = metrics_lib.read_jsonl(workdir)
  evals = [r for r in records if r["split"] == "eval"]
  assert evals and np.isfinite(evals[-1]["psnr"]) and "psnr/noise" in evals[-1]
  # The held-out records are stratified over (type, source): every packed type is evaluated
  # (the first 4 records, the old selection, were all noise/LSDIR).
  for t in ("noise", "real_noise", "rain_streak", "low_light"):
    assert np.isfinite(evals[-1][f"psnr/{t}"]), t
  # As if killed after step 2's checkpoint: resuming recomputes step 3 bit for bit.
  shutil.rmtree(os.path.join(workdir, "checkpoints", "3"))
  trainer.train_and_evaluate(_config(build, 3), workdir)
  resumed = ckpt_lib.load_variables(workdir)
  for a, b in zip(jax.tree.leaves(final["params"]), jax.tree.leaves(resumed["params"])):
    np.testing.assert_array_equal(a, b)
  losses = lambda rs: [(r["step"], r["loss"]) for r in rs if r["split"] == "train" and "loss" in r]  # noqa: E731
  assert losses(metrics_lib.read_jsonl(workdir)) == losses(records)
  assert [s for s, _ in losses(records)] == [1, 2, 3]
