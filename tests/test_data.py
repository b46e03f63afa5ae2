"""Image loading, embedded photos, and the degraded_photos / paired_folders grain pipelines."""

from __future__ import annotations

import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

from jaxmilab import registry
from jaxmilab.data import degraded_photos
from jaxmilab.data import embedded
from jaxmilab.data import images
from jaxmilab.data import paired_folders
from jaxmilab.data.base import DataError

TYPES = ("gaussian_noise", "gaussian_blur", "jpeg", "haze", "low_light")


def _config(**kw) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(kw)


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


def _save(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path)


# --------------------------------------------------------------------------- images


def test_load_image_modes_and_errors(tmp_path):
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
  _save(str(tmp_path / "rgb.png"), rgb)
  loaded = images.load_image(str(tmp_path / "rgb.png"))
  assert loaded.dtype == np.float32 and loaded.shape == (20, 24, 3)
  np.testing.assert_allclose(loaded, rgb / 255.0, atol=1e-7)
  grey = rng.integers(0, 256, (10, 12), dtype=np.uint8)
  _save(str(tmp_path / "grey.png"), grey)
  np.testing.assert_array_equal(
      images.read_image(str(tmp_path / "grey.png")), np.stack([grey] * 3, -1)
  )
  rgba = rng.integers(0, 256, (10, 12, 4), dtype=np.uint8)
  _save(str(tmp_path / "rgba.png"), rgba)
  np.testing.assert_array_equal(images.read_image(str(tmp_path / "rgba.png")), rgba[..., :3])

  missing = str(tmp_path / "nope.png")
  with pytest.raises(DataError, match="nope.png"):
    images.read_image(missing)
  garbage = tmp_path / "garbage.png"
  garbage.write_bytes(b"not an image at all" * 10)
  with pytest.raises(DataError, match="garbage.png"):
    images.read_image(str(garbage))
  truncated = tmp_path / "truncated.png"
  truncated.write_bytes((tmp_path / "rgb.png").read_bytes()[:200])
  with pytest.raises(DataError, match="truncated.png"):
    images.read_image(str(truncated))
  with pytest.raises(DataError, match=r"rgb.png.*20x24.*32x32"):
    images.read_image(str(tmp_path / "rgb.png"), min_size=32)


def test_split_held_out_is_fixed_and_disjoint():
  names = [f"{i:03d}.png" for i in range(30)]
  train, held = images.split_held_out(names, 0.1, where="x")
  assert len(held) == 3 and not set(train) & set(held) and set(train) | set(held) == set(names)
  # Independent of listing order, and a file keeps its side when others are added.
  assert images.split_held_out(names[::-1], 0.1, where="x") == (train, held)
  _, held_more = images.split_held_out(names + ["zzz.png"], 0.1, where="x")
  assert set(held) <= set(held_more)


# ------------------------------------------------------------------------- embedded


def test_embedded_photos_match_skimage_loaders():
  import skimage.data  # pylint: disable=g-import-not-at-top

  loaders = {
      "astronaut": skimage.data.astronaut,
      "chelsea": skimage.data.chelsea,
      "coffee": skimage.data.coffee,
      "rocket": skimage.data.rocket,
      "immunohistochemistry": skimage.data.immunohistochemistry,
      "motorcycle": lambda: skimage.data.stereo_motorcycle()[0],
  }
  for name, loader in loaders.items():
    np.testing.assert_array_equal(embedded.read(name), loader())
  for name in embedded.PHOTOS:  # every listed photo is shipped in the wheel, colour, photo-sized
    assert os.path.isfile(embedded.path(name))
    h, w = images.image_size(embedded.path(name))
    assert min(h, w) >= 256
  assert set(embedded.EVAL_PHOTOS) <= set(embedded.PHOTOS)
  assert not set(embedded.EVAL_PHOTOS) & set(embedded.TRAIN_PHOTOS)


# ----------------------------------------------------------------- degraded_photos

PHOTO_CONFIG = dict(
    name="degraded_photos", degradations="5syn", patch_size=16, eval_size=32, eval_batch_size=4
)


def _photos(seed=0, process_index=0, process_count=1, batch_size=4, **kw):
  return degraded_photos.create(
      _config(**{**PHOTO_CONFIG, **kw}),
      batch_size=batch_size,
      seed=seed,
      process_index=process_index,
      process_count=process_count,
  )


@pytest.fixture(scope="module")
def photos_stream():
  ds = _photos(seed=0)
  return ds, _take(ds.train, 4)


def test_photo_batches_shapes_and_labels(photos_stream):
  ds, batches = photos_stream
  assert registry.get_data("degraded_photos") is degraded_photos.create
  assert ds.info.num_classes == 5 and ds.info.class_names == TYPES
  labels = []
  for b in batches:
    assert set(b) == {"lq", "gt", "label"}
    for k in ("lq", "gt"):
      assert b[k].shape == (4, 16, 16, 3) and b[k].dtype == np.float32
      assert 0.0 <= b[k].min() and b[k].max() <= 1.0
    assert b["label"].shape == (4,) and b["label"].dtype == np.int32
    labels += b["label"].tolist()
    assert not np.array_equal(b["lq"], b["gt"])
  assert set(labels) <= set(range(5)) and len(set(labels)) > 1


def test_photo_stream_is_seeded(photos_stream):
  _, batches = photos_stream
  _assert_same(batches, _take(_photos(seed=0).train, 4))
  other = _take(_photos(seed=1).train, 4)
  assert any(not np.array_equal(a["gt"], b["gt"]) for a, b in zip(batches, other))


def test_photo_iterator_state_restores_stream(photos_stream):
  _, batches = photos_stream
  it = _photos(seed=0).train
  _take(it, 2)
  state = it.get_state()
  follow = _take(it, 2)
  _assert_same(follow, batches[2:])
  fresh = _photos(seed=0).train
  fresh.set_state(state)
  _assert_same(_take(fresh, 2), follow)


def test_photo_eval_batches_deterministic_and_padded():
  ds = _photos(seed=0)
  first, second = list(ds.eval_batches()), list(ds.eval_batches())
  _assert_same(first, second)
  _assert_same(first, list(_photos(seed=5).eval_batches()))  # independent of the training seed
  # 2 eval photos x 5 types = 10 examples in batches of 4: 4 + 4 + 2 valid.
  assert [b["valid"].tolist() for b in first] == [
      [True] * 4,
      [True] * 4,
      [True, True, False, False],
  ]
  assert first[-1]["gt"][2:].max() == 0.0
  labels = np.concatenate([b["label"][b["valid"]] for b in first])
  np.testing.assert_array_equal(labels, np.tile(np.arange(5), 2))
  # gt is the central 32x32 crop of chelsea, then rocket (read by skimage here).
  import skimage.data  # pylint: disable=g-import-not-at-top

  for photo, row in ((skimage.data.chelsea(), 0), (skimage.data.rocket(), 5)):
    h, w = photo.shape[:2]
    crop = photo[(h - 32) // 2 : (h - 32) // 2 + 32, (w - 32) // 2 : (w - 32) // 2 + 32] / 255.0
    np.testing.assert_allclose(first[row // 4]["gt"][row % 4], crop, atol=1e-6)
  # The jpeg row is a real JPEG of gt, the others differ from gt too.
  for b in first:
    assert all(not np.array_equal(b["lq"][i], b["gt"][i]) for i in np.flatnonzero(b["valid"]))


def test_photo_config_errors():
  with pytest.raises(ValueError, match="patch_sise"):
    _photos(patch_sise=8)
  with pytest.raises(ValueError, match="config.batch_size"):
    _photos(batch_size=3, process_count=2)
  with pytest.raises(ValueError, match="eval_batch_size"):
    _photos(eval_batch_size=5, process_count=2)
  with pytest.raises(ValueError, match="moon"):
    _photos(photos=("astronaut", "moon"))
  with pytest.raises(DataError, match=r"chelsea.*config.data.eval_size"):
    _photos(eval_size=320)


def _colour_folder(folder, count, size=24):
  """Images whose red channel identifies the file (constant 10 * (i + 1)), texture elsewhere."""
  rng = np.random.default_rng(1)
  for i in range(count):
    image = rng.integers(0, 256, (size, size + 4, 3), dtype=np.uint8)
    image[..., 0] = 10 * (i + 1)
    _save(os.path.join(folder, f"img{i:02d}.png"), image)


def test_photo_process_slices_make_the_single_process_batch(tmp_path):
  """Two processes' slices are disjoint and together are exactly the 1-process global batch."""
  _colour_folder(str(tmp_path / "clean"), 7)
  kw = dict(
      root=str(tmp_path / "clean"),
      degradations=("gaussian_blur", "jpeg"),
      eval_fraction=0.2,
      patch_size=8,
      eval_size=16,
  )
  # 7 files, 2 held out: 5 photos x 2 types = 10 records; global batch 4 -> 2 per process.
  single = _take(_photos(process_index=0, process_count=1, batch_size=4, **kw).train, 5)
  slices = [
      _take(_photos(process_index=p, process_count=2, batch_size=4, **kw).train, 5)
      for p in range(2)
  ]
  for step, whole in enumerate(single):
    for key in whole:
      np.testing.assert_array_equal(
          np.concatenate([slices[0][step][key], slices[1][step][key]]), whole[key]
      )
  # Two epochs (20 examples) visit each of the 10 records twice: reshuffled, nothing lost.
  seen = [
      (int(round(b["gt"][i, 0, 0, 0] * 255)), int(b["label"][i])) for b in single for i in range(4)
  ]
  assert len(set(seen)) == 10 and all(seen.count(r) == 2 for r in set(seen))
  assert seen[:10] != seen[10:]
  seen = [set(seen)]
  held_out = {10 * (i + 1) for i in range(7)} - {red for red, _ in seen[0]}
  assert len(held_out) == 2
  # The eval examples are exactly the held-out files, split over the two processes.
  eval_red = set()
  for p in range(2):
    for b in _photos(process_index=p, process_count=2, batch_size=2, **kw).eval_batches():
      eval_red |= {int(round(r * 255)) for r in b["gt"][b["valid"], 0, 0, 0]}
  assert eval_red == held_out


def test_photo_root_errors(tmp_path):
  with pytest.raises(DataError, match="no_such_folder"):
    _photos(root=str(tmp_path / "no_such_folder"))
  _colour_folder(str(tmp_path / "small"), 3, size=12)
  with pytest.raises(DataError, match=r"img0\d.png.*config.data.patch_size"):
    _photos(root=str(tmp_path / "small"), patch_size=16, eval_size=8)


# ------------------------------------------------------------------- paired_folders


def _paired_tree(root, tasks=("a", "b"), count=4, size=20):
  """gt random; lq = 255 - gt (so a test can check the crops line up); task b is brighter."""
  rng = np.random.default_rng(2)
  for t, task in enumerate(tasks):
    for i in range(count):
      gt = rng.integers(0, 128, (size, size + 6, 3), dtype=np.uint8) + 128 * t
      _save(os.path.join(root, task, "gt", f"{i}.png"), gt.astype(np.uint8))
      _save(os.path.join(root, task, "lq", f"{i}.png"), (255 - gt).astype(np.uint8))


def _paired(root, seed=0, process_index=0, process_count=1, batch_size=4, **kw):
  config = _config(
      **{
          **dict(
              name="paired_folders",
              root=root,
              tasks=("a", "b"),
              patch_size=8,
              eval_size=16,
              eval_fraction=0.25,
              eval_batch_size=4,
          ),
          **kw,
      }
  )
  return paired_folders.create(
      config,
      batch_size=batch_size,
      seed=seed,
      process_index=process_index,
      process_count=process_count,
  )


def test_paired_folders_pipeline(tmp_path):
  root = str(tmp_path / "data")
  _paired_tree(root)
  ds = _paired(root)
  assert ds.info.class_names == ("a", "b")
  batches = _take(ds.train, 6)
  for b in batches:
    assert b["lq"].shape == b["gt"].shape == (4, 8, 8, 3) and b["label"].dtype == np.int32
    np.testing.assert_allclose(b["lq"], 1.0 - b["gt"], atol=1e-6)  # same crop and flip
    for gt, label in zip(b["gt"], b["label"]):  # task a in [0, 127], task b in [128, 255]
      assert (gt.min() >= 128 / 255 - 1e-6) if label == 1 else (gt.max() <= 127 / 255 + 1e-6)
  _assert_same(batches, _take(_paired(root).train, 6))
  other = _take(_paired(root, seed=3).train, 6)
  assert any(not np.array_equal(a["gt"], b["gt"]) for a, b in zip(batches, other))
  it = _paired(root).train
  _take(it, 3)
  state = it.get_state()
  fresh = _paired(root).train
  fresh.set_state(state)
  _assert_same(_take(fresh, 3), batches[3:])

  # Eval: one held-out file per task (25% of 4), central crops, padded to a batch of 4.
  evals = list(ds.eval_batches())
  _assert_same(evals, list(_paired(root, seed=9).eval_batches()))
  assert len(evals) == 1 and evals[0]["valid"].tolist() == [True, True, False, False]
  assert evals[0]["label"][:2].tolist() == [0, 1]
  np.testing.assert_allclose(evals[0]["lq"][:2], 1.0 - evals[0]["gt"][:2], atol=1e-6)
  assert evals[0]["gt"].shape == (4, 16, 16, 3)
  # Process shards: 2 processes, global batch 2 -> 1 each; records (task, file) never shared.
  seen = []
  for p in range(2):
    it = _paired(root, process_index=p, process_count=2, batch_size=2).train
    seen.append({b["gt"][0].tobytes() for b in _take(it, 6)})
  assert not seen[0] & seen[1]


def test_paired_folders_bad_inputs(tmp_path):
  missing = str(tmp_path / "missing_root")
  with pytest.raises(DataError, match="missing_root"):
    _paired(missing)

  root = str(tmp_path / "no_gt")
  _paired_tree(root)
  for name in os.listdir(os.path.join(root, "b", "gt")):
    os.remove(os.path.join(root, "b", "gt", name))
  os.rmdir(os.path.join(root, "b", "gt"))
  with pytest.raises(DataError, match=r"no_gt/b.*gt/"):
    _paired(root)

  root = str(tmp_path / "mismatch")
  _paired_tree(root)
  os.rename(os.path.join(root, "a", "lq", "2.png"), os.path.join(root, "a", "lq", "2b.png"))
  with pytest.raises(DataError, match=r"mismatch/a/lq.*2b\.png"):
    _paired(root)

  root = str(tmp_path / "small")
  _paired_tree(root, size=6)
  with pytest.raises(DataError, match=r"small/a/gt/\d\.png.*6x12.*8x8"):
    _paired(root, eval_size=4)

  root = str(tmp_path / "corrupt")
  _paired_tree(root)
  with open(os.path.join(root, "b", "lq", "1.png"), "wb") as f:
    f.write(b"\x89PNG broken")
  with pytest.raises(DataError, match=r"corrupt/b/lq/1\.png"):
    _paired(root)

  root = str(tmp_path / "unknown_task")
  _paired_tree(root)
  with pytest.raises(DataError, match=r"unknown_task/c"):
    _paired(root, tasks=("a", "c"))


@pytest.mark.slow
def test_photo_stream_with_worker_processes():
  """grain worker processes: the stream is fixed by (seed, worker_count) and restores from a
  state."""
  from absl import flags  # pylint: disable=g-import-not-at-top

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # grain reads absl flags in its worker pool (main.py parses them)
  it = _photos(seed=0, worker_count=2).train
  first = _take(it, 3)
  state = it.get_state()
  follow = _take(it, 3)
  _assert_same(first + follow, _take(_photos(seed=0, worker_count=2).train, 6))
  fresh = _photos(seed=0, worker_count=2).train
  fresh.set_state(state)
  _assert_same(_take(fresh, 3), follow)


def test_fixed_levels_give_the_requested_noise_sigma():
  """levels=(sigma,) fixes the noise strength in training and eval (0-255 scale)."""
  ds = _photos(degradations=("gaussian_noise",), levels=(25,), patch_size=64, eval_size=64)
  for batch in (next(ds.train), next(iter(ds.eval_batches()))):
    residual = (batch["lq"] - batch["gt"]) * 255
    mid = (batch["gt"] > 0.2) & (batch["gt"] < 0.8)  # away from clipping
    assert abs(residual[mid].std() - 25) < 1.5
  with pytest.raises(ValueError, match="config.data.levels has 2 entries"):
    _photos(degradations=("gaussian_noise",), levels=(15, 25))
