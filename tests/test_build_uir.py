"""build_uir (ArrayRecord shards, resumable), the array_records dataset, the UIR-2.5M released
layout."""

from __future__ import annotations

import functools
import io
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from PIL import Image

from jaxmilab.data import array_records
from jaxmilab.data import build_uir
from jaxmilab.data.base import DataError
from tests import fake_trees

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = ((40, 48), (36, 30), (44, 44))


def _clean_dir(root):
  folder = root / "clean"
  folder.mkdir()
  for i, (h, w) in enumerate(SIZES):
    pixels = (np.random.default_rng(i).random((h, w, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(folder / f"img{i}.png")
  return folder


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """A small build: 3 images x 2 crops of 24 px x (jpeg at 10 and 20, one noise level, one mosaic
  level)."""
  root = tmp_path_factory.mktemp("uir")
  clean = _clean_dir(root)
  plan = build_uir.make_plan(
      str(clean),
      types=("jpeg", "noise", "mosaic"),
      levels=("jpeg:10,20", "noise:gaussian_noise/25,salt_pepper_noise/0.1", "mosaic:0"),
      levels_per_type=0,
      patches_per_image=2,
      patch_size=24,
      shard_size=9,
      seed=3,
  )
  manifest = build_uir.build(plan, str(root / "out"), workers=0, progress=False)
  return root, clean, plan, manifest


def test_record_format_round_trip_and_errors():
  data = build_uir.encode_record("jpeg", "10", "a.png#0", b"LQ", b"GTGT")
  assert data[:4] == b"UIR1"
  assert build_uir.decode_record(data) == {
      "type": "jpeg",
      "level": "10",
      "source": "a.png#0",
      "lq_png": b"LQ",
      "gt_png": b"GTGT",
  }
  with pytest.raises(DataError, match="Not a uir-record-v1"):
    build_uir.decode_record(b"\x80\x04pickle")
  with pytest.raises(DataError, match="Truncated"):
    build_uir.decode_record(data[:-1])


def test_build_then_read_is_lossless(built):
  root, clean, plan, manifest = built
  out = root / "out"
  manifest, records = fake_trees.read_build(out)
  assert manifest["num_records"] == len(records) == 3 * 2 * (2 + 2 + 1) == plan.num_records
  assert (
      len(manifest["shards"]) == plan.num_shards == 6
  )  # 5 records a crop, 9 a shard: 1 crop a shard
  assert manifest["counts"] == {
      "jpeg": {"10": 6, "20": 6},
      "noise": {"gaussian_noise/25": 6, "salt_pepper_noise/0.1": 6},
      "mosaic": {"0": 6},
  }
  keys = [(r["source"], r["type"], r["level"]) for r in records]
  assert len(set(keys)) == len(keys)
  originals = {f"img{i}.png": np.asarray(Image.open(clean / f"img{i}.png")) for i in range(3)}
  for r in records:
    lq, gt = build_uir.decode_png(r["lq_png"]), build_uir.decode_png(r["gt_png"])
    assert lq.shape == gt.shape == (24, 24, 3)
    # gt is a 24 px window of its clean image, bit for bit.
    image = originals[r["source"].split("#")[0]]
    windows = np.lib.stride_tricks.sliding_window_view(image, (24, 24, 3))[..., 0, :, :, :]
    assert np.any(np.all(windows == gt, axis=(-3, -2, -1)))
    if r["type"] == "jpeg":  # lq is exactly Pillow's JPEG of gt at that quality
      buffer = io.BytesIO()
      Image.fromarray(gt).save(buffer, format="JPEG", quality=int(r["level"]))
      np.testing.assert_array_equal(lq, np.asarray(Image.open(io.BytesIO(buffer.getvalue()))))
  # The stored PNGs decode to exactly what the builder computed.
  jobs = {}
  for job in range(plan.num_jobs):
    for t, key, source, lq, gt in build_uir.job_records(plan, job):
      jobs[(source, t, key)] = (lq, gt)
  for r in records:
    lq, gt = jobs[(r["source"], r["type"], r["level"])]
    np.testing.assert_array_equal(build_uir.decode_png(r["lq_png"]), lq)
    np.testing.assert_array_equal(build_uir.decode_png(r["gt_png"]), gt)


def test_builder_errors_are_clear(tmp_path, built):
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(DataError, match="holds no images"):
    build_uir.make_plan(str(empty))
  clean = built[1]
  with pytest.raises(ValueError, match="unknown or empty degradation names \\['fog'\\]"):
    build_uir.make_plan(str(clean), types=("jpeg", "fog"))
  with pytest.raises(ValueError, match="real_noise"):
    build_uir.make_plan(str(clean), types=("uir19",))
  with pytest.raises(ValueError, match="no level '11'"):
    build_uir.make_plan(str(clean), types=("jpeg",), levels=("jpeg:11",))
  with pytest.raises(ValueError, match="not in --types"):
    build_uir.make_plan(str(clean), types=("jpeg",), levels=("haze:1",))
  with pytest.raises(DataError, match="smaller than the 64x64 crop set by --patch_size"):
    build_uir.build(
        build_uir.make_plan(str(clean), types=("jpeg",), patch_size=64),
        str(tmp_path / "small"),
        progress=False,
    )
  other = build_uir.make_plan(str(clean), types=("jpeg",), patch_size=24, shard_size=9)
  with pytest.raises(ValueError, match="different arguments"):
    build_uir.build(other, str(built[0] / "out"), progress=False)


def _cli(*args, env=None):
  return subprocess.run(
      [sys.executable, "-m", "jaxmilab.data.build_uir", *args],
      cwd=REPO,
      capture_output=True,
      text=True,
      env={**os.environ, **(env or {})},
      timeout=300,
      check=False,
  )


def test_cli_unknown_type_message(tmp_path, built):
  result = _cli(f"--clean_dir={built[1]}", f"--output={tmp_path / 'o'}", "--types=jpeg,fog")
  assert result.returncode != 0
  assert "build_uir: error:" in result.stderr and "'fog'" in result.stderr
  assert "Traceback" not in result.stderr


def test_killed_build_resumes_without_duplicates(tmp_path, built):
  clean = built[1]
  out = tmp_path / "out"
  args = (
      f"--clean_dir={clean}",
      f"--output={out}",
      "--types=jpeg,haze",
      "--patch_size=16",
      "--patches_per_image=2",
      "--levels_per_type=1",
      "--shard_size=4",
      "--seed=5",
  )
  # 6 crops x 2 records, 2 crops a shard -> 3 shards. Kill the build inside shard 1.
  crashed = _cli(*args, "--workers=0", env={build_uir.CRASH_ENV: "1:3"})
  assert crashed.returncode != 0
  names = sorted(os.listdir(out))
  assert "shard-00000-of-00003.json" in names and "manifest.json" not in names
  assert "shard-00001-of-00003.array_record" not in names
  assert any(".tmp-" in n for n in names)  # the half-written shard
  first = (out / "shard-00000-of-00003.array_record").stat().st_mtime_ns
  resumed = _cli(*args, "--workers=1")
  assert resumed.returncode == 0, resumed.stderr
  assert "12 records in 3 shards" in resumed.stdout
  assert (
      out / "shard-00000-of-00003.array_record"
  ).stat().st_mtime_ns == first  # kept, not rebuilt
  assert not any(".tmp-" in n for n in os.listdir(out))
  manifest, records = fake_trees.read_build(out)
  keys = sorted((r["source"], r["type"]) for r in records)
  expected = sorted(
      (f"img{i}.png#{c}", t) for i in range(3) for c in range(2) for t in ("jpeg", "haze")
  )
  assert keys == expected  # no duplicate, none missing
  assert (
      manifest["num_records"] == 12
      and sum(sum(v.values()) for v in manifest["counts"].values()) == 12
  )
  assert manifest["args"]["types"] == ["jpeg", "haze"]
  # The same plan built in one go gives byte-identical records.
  plan = build_uir.make_plan(
      str(clean),
      types=("jpeg", "haze"),
      patch_size=16,
      patches_per_image=2,
      levels_per_type=1,
      shard_size=4,
      seed=5,
  )
  build_uir.build(plan, str(tmp_path / "once"), progress=False)
  _, once = fake_trees.read_build(tmp_path / "once")
  assert once == records


# ------------------------------------------------------------------------ array_records


def _config(data_path, **kw):
  base = dict(
      name="array_records",
      path=str(data_path),
      patch_size=16,
      eval_size=24,
      eval_records=6,
      read_threads=1,
  )
  return ml_collections.ConfigDict({**base, **kw})


_config_kw = _config


def test_stratified_holdout_of_a_synthetic_build_takes_whole_images(built):
  """Synthesized builds: the held-out unit is a clean image (all its crops and types), spread
  evenly over the images; training never sees a held-out image; every type is evaluated."""
  out = built[0] / "out"
  manifest = array_records.read_manifest(str(out))
  assert manifest["records_per_image"] == 10  # 2 crops x 5 records
  held = array_records.holdout_indices([manifest], 6)
  np.testing.assert_array_equal(held, np.arange(10, 20))  # image 1 of 0..2 (the middle one)
  ds = array_records.create(_config(out), batch_size=4, seed=1, process_index=0, process_count=1)
  assert ds.info.extra["num_eval"] == 10 and ds.info.extra["num_train"] == 20
  _, records = fake_trees.read_build(out)
  source = array_records.RecordSource(
      manifest["shard_paths"], ("jpeg", "noise", "mosaic"), skip=held
  )
  train_sources = {source.record(k)["source"].split("#")[0] for k in range(len(source))}
  assert train_sources == {"img0.png", "img2.png"}
  assert [source.record(k)["source"] for k in range(len(source))] == [
      r["source"] for i, r in enumerate(records) if not 10 <= i < 20
  ]
  labels = np.concatenate([b["label"][b["valid"]] for b in ds.eval_batches()])
  assert sorted(set(labels.tolist())) == [0, 1, 2]


def test_stratified_holdout_of_packed_pairs_covers_every_type_and_source(tmp_path):
  """Packed pairs sorted by type and source: one stratum per (type, source); each gets an
  equal share, spread over it; "first" would see only the first stratum."""
  manifest = {
      "num_records": 3 * 8 + 2 + 1,
      "strata": [
          ["noise", "LSDIR", 0, 8],
          ["noise", "DIV2K", 8, 8],
          ["haze", "RESIDE", 16, 8],
          ["snow", "Snow100K", 24, 2],
          ["moire", "tiny", 26, 1],
      ],
  }
  held = array_records.holdout_indices([manifest], 10)
  # 10 over 5 strata: 2 each, at most half of a stratum (snow 1, moire's single record 0).
  assert held.tolist() == [2, 6, 10, 14, 18, 22, 25]
  assert array_records.holdout_indices([manifest], 0).tolist() == [4, 12, 20, 25]  # >= 1 each
  assert array_records.holdout_indices([manifest], 4, "first").tolist() == [0, 1, 2, 3]
  # Two builds: the second's records come after the first's.
  both = array_records.holdout_indices([manifest, {"num_records": 4, "records_per_image": 2}], 12)
  assert set(both.tolist()) >= {27 + 2, 27 + 3}  # the second build's 2nd image (of 2)
  with pytest.raises(ValueError, match="eval_selection='random'"):
    array_records.holdout_indices([manifest], 4, "random")


def test_record_source_skip_maps_keys_past_the_held_out_records(built):
  manifest = array_records.read_manifest(str(built[0] / "out"))
  skip = np.array([0, 3, 4, 29])
  src = array_records.RecordSource(manifest["shard_paths"], ("jpeg", "noise", "mosaic"), skip=skip)
  full = array_records.RecordSource(manifest["shard_paths"], ("jpeg", "noise", "mosaic"))
  kept = [i for i in range(30) if i not in set(skip.tolist())]
  assert len(src) == 26
  for k in (0, 1, 2, 25):
    assert src.record(k)["source"] == full.record(kept[k])["source"]
    assert src.record(k)["lq_png"] == full.record(kept[k])["lq_png"]
  assert "skip=4:" in repr(src)


def test_array_records_training_stream_and_resume(built):
  out = built[0] / "out"
  _config = functools.partial(_config_kw, eval_selection="first")  # the first 6 records held out
  ds = array_records.create(_config(out), batch_size=4, seed=1, process_index=0, process_count=1)
  assert ds.info.class_names == ("jpeg", "noise", "mosaic") and ds.info.num_classes == 3
  assert ds.info.extra["num_train"] == 24 and ds.info.extra["num_eval"] == 6
  batches = [next(ds.train) for _ in range(5)]
  assert batches[0]["lq"].shape == (4, 16, 16, 3) and batches[0]["lq"].dtype == np.float32
  assert batches[0]["label"].dtype == np.int32
  # One epoch (6 batches = the 24 training records, i.e. all but the first 6) sees each once.
  epoch = np.concatenate([b["label"] for b in batches] + [next(ds.train)["label"]])
  _, records = fake_trees.read_build(out)
  train_labels = [("jpeg", "noise", "mosaic").index(r["type"]) for r in records[6:]]
  assert np.bincount(epoch, minlength=3).tolist() == np.bincount(train_labels, minlength=3).tolist()
  # Restored mid-epoch, the iterator yields the same sequence as one never interrupted.
  ref = array_records.create(_config(out), batch_size=4, seed=1, process_index=0, process_count=1)
  for _ in range(3):
    next(ref.train)
  state = ref.train.get_state()
  expected = [next(ref.train) for _ in range(4)]
  fresh = array_records.create(_config(out), batch_size=4, seed=1, process_index=0, process_count=1)
  fresh.train.set_state(state)
  for a, b in zip(expected, [next(fresh.train) for _ in range(4)]):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  # Two processes split the same global batches.
  halves = [
      array_records.create(_config(out), batch_size=4, seed=1, process_index=p, process_count=2)
      for p in (0, 1)
  ]
  for b in batches[:2]:
    parts = [next(h.train) for h in halves]
    np.testing.assert_array_equal(np.concatenate([p["lq"] for p in parts]), b["lq"])
  evals = list(ds.eval_batches())
  assert sum(int(b["valid"].sum()) for b in evals) == 6 and evals[0]["gt"].shape == (4, 24, 24, 3)


def test_array_records_errors(tmp_path, built):
  with pytest.raises(DataError, match="no manifest.json"):
    array_records.create(_config(tmp_path), batch_size=4, seed=0, process_index=0, process_count=1)
  with pytest.raises(DataError, match="larger than the 24px crops"):
    array_records.create(
        _config(built[0] / "out", patch_size=32),
        batch_size=4,
        seed=0,
        process_index=0,
        process_count=1,
    )
  with pytest.raises(ValueError, match="misses types \\['mosaic'\\]"):
    array_records.create(
        _config(built[0] / "out", types=("jpeg", "noise")),
        batch_size=4,
        seed=0,
        process_index=0,
        process_count=1,
    )
  unknown = r"config.data: unknown key\(s\) \['patchsize'\] for 'array_records'"
  with pytest.raises(ValueError, match=unknown):
    array_records.create(
        _config(built[0] / "out", patchsize=3),
        batch_size=4,
        seed=0,
        process_index=0,
        process_count=1,
    )


def _create(config, batch_size=4, seed=1):
  return array_records.create(
      config, batch_size=batch_size, seed=seed, process_index=0, process_count=1
  )


def test_record_labels_from_manifests_match_the_records(tmp_path, built):
  """Every record's type, read from the manifests alone (synthesized builds: records_per_crop;
  packed pairs: strata), equals the type stored in the record itself."""
  out = built[0] / "out"
  manifest = array_records.read_manifest(str(out))
  assert manifest["records_per_crop"] == [["jpeg", 2], ["noise", 2], ["mosaic", 1]]
  types = ("mosaic", "jpeg", "noise")  # label order need not be the build's
  labels = array_records.record_labels([manifest], types, [str(out)])
  _, records = fake_trees.read_build(out)
  assert labels.tolist() == [types.index(r["type"]) for r in records]
  packed = {"num_records": 5, "strata": [["haze", "a", 0, 3], ["snow", "b", 3, 2]]}
  both = array_records.record_labels([packed, manifest], ("haze", "snow") + types, ["p", str(out)])
  assert both[:5].tolist() == [0, 0, 0, 1, 1] and both.size == 35
  old = {k: v for k, v in manifest.items() if k != "records_per_crop"}
  with pytest.raises(DataError, match="old_build/manifest.json .*type_weights=records"):
    array_records.record_labels([old], types, ["old_build"])


def test_type_weights_set_the_mix_of_the_training_stream(built, monkeypatch):
  """type_weights: one epoch of the stream holds each type in proportion to its weight, every
  training record at least once and each type's records within one read of each other;
  "records" (default) keeps the build's own mix. Fails if the weights are ignored."""
  out = built[0] / "out"
  first = functools.partial(_config, out, eval_selection="first")  # records 0-5 held out
  # Training records: jpeg 9, noise 10, mosaic 5 (the build's 12 / 12 / 6 minus records 0-5).
  plain = _create(first())
  assert plain.info.extra["num_train"] == 24
  ds = _create(first(type_weights=(1.0, 1.0, 2.0)))  # mosaic twice as often as jpeg
  # Epoch L = ceil(max(9 / 0.25, 10 / 0.25, 5 / 0.5)) = 40 keys: 10 jpeg, 10 noise, 20 mosaic.
  assert ds.info.extra["num_train"] == 40
  labels = np.concatenate([next(ds.train)["label"] for _ in range(10)])  # one epoch
  assert np.bincount(labels, minlength=3).tolist() == [10, 10, 20]
  manifest = array_records.read_manifest(str(out))
  source = array_records.WeightedSource(
      array_records.RecordSource(manifest["shard_paths"], ("jpeg", "noise", "mosaic")),
      [np.arange(6, 30)[np.arange(6, 30) % 5 == 4]],  # the mosaic records only
      np.array([1.0]),
      "k",
  )
  reads = np.bincount([source.record_index(k) for k in range(len(source))], minlength=30)
  assert len(source) == 5 and reads.tolist() == [int(i >= 6 and i % 5 == 4) for i in range(30)]
  # Two thirds of the jpeg keys: 9 records over 10 keys, one read twice, none left out.
  jpeg = array_records.WeightedSource(
      source.base, [np.array([6] + [i for i in range(10, 30) if i % 5 in (0, 1)])], np.ones(1), "k"
  )
  jpeg.keys[0] = 10  # as in the 40-key epoch above
  jpeg.ends = np.array([10])
  jpeg_reads = np.bincount([jpeg.record_index(k) for k in range(10)], minlength=30)
  assert sorted(jpeg_reads[jpeg_reads > 0].tolist()) == [1] * 8 + [2]
  # uniform: equal thirds although the build holds 2.5x more jpeg than mosaic records.
  uniform = _create(first(type_weights="uniform"))
  n = uniform.info.extra["num_train"]
  assert n == 30  # ceil(max(9, 10, 5) * 3)
  counts = np.bincount(
      np.concatenate([next(uniform.train)["label"] for _ in range(n // 2)]), minlength=3
  )
  assert counts.tolist() == [20, 20, 20]  # two epochs of 10 / 10 / 10
  # Held-out records are never read for training (stratified hold-out: image 1 = records 10-19).
  seen = []

  class Recording(array_records.WeightedSource):

    def __init__(self, base, records, p, key):
      super().__init__(base, records, p, key)
      seen.extend(self.record_index(k) for k in range(len(self)))

  monkeypatch.setattr(array_records, "WeightedSource", Recording)
  strat = _create(_config(out, type_weights="uniform"))
  assert strat.info.extra["num_eval"] == 10
  assert set(seen) == set(range(30)) - set(range(10, 20))
  # uir_counts: the table's pairs per type (uir_pair_counts: noise 531,816, ...).
  from jaxmilab.data import uir_degradations  # pylint: disable=g-import-not-at-top

  table = uir_degradations.uir_pair_counts()
  counted = _create(first(type_weights="uir_counts"))
  keys = counted.info.extra["num_train"]
  p = np.array([table["jpeg"], table["noise"], table["mosaic"]], float)
  p /= p.sum()
  assert keys == int(np.ceil(max(9 / p[0], 10 / p[1], 5 / p[2]) - 1e-9))
  weighted_reads = array_records.WeightedSource(
      array_records.RecordSource(manifest["shard_paths"], ("jpeg", "noise", "mosaic")),
      [np.arange(6, 30)[np.isin(np.arange(6, 30) % 5, lab)] for lab in ((0, 1), (2, 3), (4,))],
      p,
      "k",
  ).keys
  np.testing.assert_allclose(weighted_reads / weighted_reads.sum(), p, atol=1 / keys)


def test_type_weights_errors(built):
  out = built[0] / "out"
  with pytest.raises(ValueError, match="type_weights='often': use 'records', 'uniform'"):
    _create(_config(out, type_weights="often"))
  with pytest.raises(DataError, match=r"gives weight to \['haze'\].*holds no training record"):
    _create(_config(out, types=("jpeg", "noise", "mosaic", "haze"), type_weights=(1, 1, 1, 1)))
  with pytest.raises(ValueError, match="4 non-negative weights"):
    _create(_config(out, types=("jpeg", "noise", "mosaic", "haze"), type_weights=(1, 1)))


def test_real_pairs_pack_into_records_and_train_with_synthetic(tmp_path, built):
  real = tmp_path / "real"
  for t in ("real_noise", "rain_streak"):
    for side in ("lq", "gt"):
      (real / t / side).mkdir(parents=True)
    for i in range(2):
      for side in ("lq", "gt"):
        seed = ("real_noise", "rain_streak").index(t) * 10 + i * 2 + ("lq", "gt").index(side)
        pixels = np.random.default_rng(seed).random((30, 32, 3)) * 255
        Image.fromarray(pixels.astype(np.uint8)).save(real / t / side / f"{i}.png")
  plan = build_uir.make_plan(paired_dir=str(real), shard_size=3)
  manifest = build_uir.build(plan, str(tmp_path / "real_out"), progress=False)
  assert manifest["counts"] == {"rain_streak": {"real": 2}, "real_noise": {"real": 2}}
  _, records = fake_trees.read_build(tmp_path / "real_out")
  for r in records:
    t, name = r["source"].split("/")
    for side in ("lq", "gt"):
      np.testing.assert_array_equal(
          build_uir.decode_png(r[f"{side}_png"]), np.asarray(Image.open(real / t / side / name))
      )
  config = _config(
      "",
      path=(str(built[0] / "out"), str(tmp_path / "real_out")),
      eval_records=None,
      eval_path=str(tmp_path / "real_out"),
  )
  ds = array_records.create(config, batch_size=6, seed=0, process_index=0, process_count=1)
  assert ds.info.class_names == ("jpeg", "noise", "mosaic", "rain_streak", "real_noise")
  labels = np.concatenate([next(ds.train)["label"] for _ in range(6)])  # one epoch: 30 + 4 records
  assert set(labels) >= {3, 4}
  assert sum(int(b["valid"].sum()) for b in ds.eval_batches()) == 4


def test_subimage_mode_cuts_pairs_at_basicsr_windows(tmp_path):
  """--subimage_size / --subimage_step: BasicSR extract_subimages' windows (0, step, ... and one
  flush with the border), the same window of lq and gt, one record each, strata per type."""
  assert build_uir.subimage_positions(1356, 480, 240) == [0, 240, 480, 720, 876]  # DIV2K height
  assert build_uir.subimage_positions(2040, 480, 240) == [0, 240, 480, 720, 960, 1200, 1440, 1560]
  assert build_uir.subimage_positions(480, 480, 240) == [0]
  assert build_uir.subimage_positions(100, 480, 240) == [0]  # smaller than a sub-image: whole
  real = tmp_path / "real"
  images_by = {}
  for t, (h, w) in (("rain_streak", (50, 70)), ("real_noise", (40, 32))):
    for side in ("lq", "gt"):
      (real / t / side).mkdir(parents=True)
      pixels = (np.random.default_rng(len(t) + len(side)).random((h, w, 3)) * 255).astype(np.uint8)
      Image.fromarray(pixels).save(real / t / side / "0.png")
      images_by[t, side] = pixels
  with pytest.raises(ValueError, match="--subimage_size cuts packed pairs"):
    build_uir.make_plan(str(real), subimage_size=32, subimage_step=16)
  plan = build_uir.make_plan(paired_dir=str(real), subimage_size=32, subimage_step=16, shard_size=5)
  manifest = build_uir.build(plan, str(tmp_path / "out"), progress=False)
  # rain_streak 50 x 70: rows [0, 16, 18] x cols [0, 16, 32, 38]; real_noise 40 x 32: [0, 8] x [0]
  assert manifest["counts"] == {"rain_streak": {"real": 12}, "real_noise": {"real": 2}}
  assert manifest["num_records"] == 14 and manifest["patch_size"] == 32
  assert manifest["strata"] == [["rain_streak", "real", 0, 12], ["real_noise", "real", 12, 2]]
  _, records = fake_trees.read_build(tmp_path / "out")
  by_source = {r["source"]: r for r in records}
  r = by_source["rain_streak/0.png@18,38"]
  for side in ("lq", "gt"):
    np.testing.assert_array_equal(
        build_uir.decode_png(r[f"{side}_png"]), images_by["rain_streak", side][18:50, 38:70]
    )
  assert sorted(by_source) == sorted(
      [f"rain_streak/0.png@{a},{b}" for a in (0, 16, 18) for b in (0, 16, 32, 38)]
      + [f"real_noise/0.png@{a},0" for a in (0, 8)]
  )


# ------------------------------------------------------------------ uir2p5m released layout


def test_uir2p5m_layout_errors(tmp_path):
  from jaxmilab.data import uir2p5m  # pylint: disable=g-import-not-at-top

  with pytest.raises(DataError, match="does not exist"):
    uir2p5m.scan(str(tmp_path / "missing"))
  bad = fake_trees.uir_release(
      tmp_path / "bad", [("GN", "LSDIR", ["a.png"]), ("fog", "x", ["a.png"])]
  )
  with pytest.raises(DataError, match="\\['fog'\\] are not UIR-2.5M types"):
    uir2p5m.scan(str(bad))
  (tmp_path / "flat" / "GN" / "lq").mkdir(parents=True)
  with pytest.raises(DataError, match="holds lq/ or gt/ directly.*GN/<source>/lq"):
    uir2p5m.scan(str(tmp_path / "flat"))
  dup = fake_trees.uir_release(
      tmp_path / "dup", [("GN", "a", ["a.png"]), ("noise", "b", ["a.png"])]
  )
  with pytest.raises(DataError, match="same type 'noise'"):
    uir2p5m.scan(str(dup))
  good = fake_trees.uir_release(
      tmp_path / "good", [("GN", "LSDIR", ["1.png", "2.png"]), ("real_noise", "SIDD", ["3.png"])]
  )
  assert uir2p5m.scan(str(good)) == [
      ("noise", "GN/LSDIR", "1.png"),
      ("noise", "GN/LSDIR", "2.png"),
      ("real_noise", "real_noise/SIDD", "3.png"),
  ]


# ------------------------------------------------------------------- data_pipeline benchmark


def test_benchmark_rate_counts_calls_over_clock_time():
  from jaxmilab.benchmarks import data_pipeline  # pylint: disable=g-import-not-at-top

  ticks = iter(np.arange(100) * 0.25)
  calls = []
  # Hand count: 1 warm-up call, t0 = 0; 3 calls without reading the clock (min_calls), then
  # the clock reads 0.25, 0.5, 0.75 (< 1 s: 3 more calls) and 1.0 (stop); 6 calls / 1.25 s.
  r = data_pipeline.rate(lambda: calls.append(1), 1.0, min_calls=3, clock=lambda: next(ticks))
  assert len(calls) == 7 and r == pytest.approx(6 / 1.25)
  rows = data_pipeline.table_rows({"a": 100.0, "b": 25.0}, 50.0)
  assert rows == [("a", 100.0, 2.0, 0.5), ("b", 25.0, 0.5, 2.0)]
  assert data_pipeline.table_rows({"a": 100.0}, None) == [("a", 100.0, None, None)]


def test_benchmark_pipelines_yield_degraded_training_crops(tmp_path):
  from jaxmilab.benchmarks import data_pipeline  # pylint: disable=g-import-not-at-top

  for it in (
      data_pipeline.mixture_pipeline(("jpeg", "mosaic"), 16, 2),
      data_pipeline.records_pipeline(("jpeg", "mosaic"), 16, 2, str(tmp_path)),
  ):
    batch = next(it)
    assert batch["lq"].shape == batch["gt"].shape == (2, 16, 16, 3)
    assert batch["lq"].dtype == np.float32 and set(batch["label"].tolist()) <= {0, 1}
    assert np.abs(batch["lq"] - batch["gt"]).mean() > 1e-3  # degraded, not the clean crop


def test_benchmark_host_table_matches_the_issue_figure_and_realistic_sources(tmp_path):
  """25 % MFU on a v5e host (4 chips x 197 TFLOP/s) at the pod step's 1.863 TFLOP per 8 crops per
  chip = 845.9 crops/s (docs/performance.md); cores = need / rate; a quarter of 112 vCPUs at 100
  crops/s per core = 2800 crops/s = 3.31x the need. The realistic sources are noisy/clean pairs
  of the asked size in the --paired_dir layout."""
  from jaxmilab.benchmarks import data_pipeline  # pylint: disable=g-import-not-at-top

  (row,) = data_pipeline.host_table({"p": 100.0}, 1.863e12 / 8, 4, 197e12, 112)
  assert row["consumed_25"] == pytest.approx(845.9, abs=0.1)
  assert row["consumed_50"] == pytest.approx(2 * row["consumed_25"])
  assert row["cores_25"] == pytest.approx(row["consumed_25"] / 100.0)
  assert row["quarter_host_multiple_25"] == pytest.approx(2800 / row["consumed_25"])
  sizes = data_pipeline.write_large_sources(str(tmp_path), 2, 96, 64)
  assert len(sizes) == 2 and min(sizes) > 0
  gt = np.asarray(Image.open(tmp_path / "noise" / "gt" / "0001.png"))
  lq = np.asarray(Image.open(tmp_path / "noise" / "lq" / "0001.png"))
  assert gt.shape == lq.shape == (64, 96, 3)
  assert 8 < np.std(lq.astype(float) - gt) < 20  # sigma 15 noise, clipped


@pytest.mark.slow
def test_kill_9_of_a_multiprocess_build_resumes_without_duplicates_or_losses(tmp_path):
  """SIGKILL to the build's process group (main + 2 workers) mid-build, then the same command."""
  import signal  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  from jaxmilab.benchmarks import data_pipeline  # pylint: disable=g-import-not-at-top

  src = tmp_path / "src"
  data_pipeline.write_sources(str(src), 400, 48)
  out = tmp_path / "out"
  args = [
      sys.executable,
      "-m",
      "jaxmilab.data.build_uir",
      f"--clean_dir={src}",
      f"--output={out}",
      "--types=jpeg,noise",
      "--patch_size=48",
      "--patches_per_image=1",
      "--shard_size=4",
      "--workers=2",
      "--noprogress",
  ]
  proc = subprocess.Popen(
      args, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
  )
  deadline = time.time() + 600
  while not any(
      n.endswith(".json") and n.startswith("shard-")
      for n in (os.listdir(out) if out.exists() else [])
  ):
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    assert time.time() < deadline
    time.sleep(0.01)
  os.killpg(proc.pid, signal.SIGKILL)  # the group this test created: main process + workers
  proc.wait()
  done = [n for n in os.listdir(out) if n.startswith("shard-") and n.endswith(".json")]
  assert "manifest.json" not in os.listdir(out) and 0 < len(done) < 200, "killed too late"
  resumed = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert not any(".tmp-" in n for n in os.listdir(out))
  manifest, records = fake_trees.read_build(out)
  keys = [(r["source"], r["type"]) for r in records]
  assert len(keys) == len(set(keys)) == 800 == manifest["num_records"]
  assert set(keys) == {(f"{i:06d}.png#0", t) for i in range(400) for t in ("jpeg", "noise")}
  plan = build_uir.make_plan(
      str(src), types=("jpeg", "noise"), patch_size=48, patches_per_image=1, shard_size=4
  )
  build_uir.build(plan, str(tmp_path / "once"), progress=False)
  # Byte-identical to an uninterrupted build.
  assert fake_trees.read_build(tmp_path / "once")[1] == records


def test_open_file_limit_is_raised_for_the_shard_readers(monkeypatch):
  import resource  # pylint: disable=g-import-not-at-top

  limits = {"nofile": (1024, 4096)}
  monkeypatch.setattr(resource, "getrlimit", lambda _: limits["nofile"])
  monkeypatch.setattr(resource, "setrlimit", lambda _, v: limits.__setitem__("nofile", v))
  assert array_records.ensure_open_files(100, 0) == 1024  # 356 needed: unchanged
  assert array_records.ensure_open_files(1000, 2) == 3256  # 3 processes x 1000 + 256
  assert limits["nofile"] == (3256, 4096)
  with pytest.raises(DataError, match="hard limit of 4096.*max_open_shards.*worker_count"):
    array_records.ensure_open_files(2500, 8)
  # Bounded readers: 9 processes x min(2500 shards, 300 open) + 256.
  limits["nofile"] = (1024, 4096)
  assert array_records.ensure_open_files(2500, 8, max_open=300) == 2956


def test_bounded_shard_readers_read_every_record_as_the_unbounded_ones(built, monkeypatch):
  """With max_open_shards=2 over the build's shards, every record reads back byte-identical to
  an unbounded reader in a shuffled order, never more than 2 readers are open, and a shard read
  again after being dropped is opened again (so the bound is real, not a cache that only grows)."""
  out = built[0] / "out"
  paths = array_records.read_manifest(str(out))["shard_paths"]
  assert len(paths) >= 3
  opened = []
  real_open = array_records._open_reader  # pylint: disable=protected-access
  monkeypatch.setattr(array_records, "_open_reader", lambda p: opened.append(p) or real_open(p))
  full = array_records.ShardReaders(paths, max_open=0)
  bounded = array_records.ShardReaders(paths, max_open=2)
  assert len(full) == len(bounded) > 0
  order = np.random.default_rng(0).permutation(len(bounded))
  most_open = 0
  for key in order:
    assert bounded[int(key)] == full[int(key)]
    most_open = max(most_open, bounded.num_open())
  assert most_open == 2 and full.num_open() == len(paths)
  assert bounded.opened > len(paths)  # dropped shards were opened again
  with pytest.raises(IndexError, match="outside"):
    bounded[len(bounded)]
  with pytest.raises(ValueError, match="max_open_shards=-1"):
    array_records.ShardReaders(paths, max_open=-1)
  # The config key reaches the readers of a training run.
  ds = array_records.create(
      _config(out, max_open_shards=2), batch_size=4, seed=1, process_index=0, process_count=1
  )
  next(iter(ds.train))
  assert opened  # records were read through _open_reader
