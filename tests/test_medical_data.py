"""Medical volumes for MACL: phantoms, NIfTI / DICOM readers (on the files nibabel and pydicom
ship), normalisation, label maps, dataset layouts and splits, the views, the two datasets."""

from __future__ import annotations

import os

import ml_collections
import numpy as np
import pytest

from jaxmilab.data import medical
from jaxmilab.data import medical_pretrain
from jaxmilab.data import medical_seg
from jaxmilab.data import medical_views

nibabel = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")


# ---------------------------------------------------------------------------------- phantoms


@pytest.mark.parametrize("classes", [3, 7])
def test_phantoms_are_nested_varying_and_deterministic(classes):
  image, labels = medical.phantom_volume(5, classes, size=48, num_slices=20)
  again, labels_again = medical.phantom_volume(5, classes, size=48, num_slices=20)
  np.testing.assert_array_equal(image, again)
  np.testing.assert_array_equal(labels, labels_again)
  assert image.dtype == np.float32 and image.shape == labels.shape + (1,)
  assert 15 <= labels.shape[0] <= 25 and labels.max() <= classes - 1
  # Shapes change with the slice: class areas differ between slices, and the end slices are
  # (nearly) empty while the middle one holds the body.
  area = np.array([(labels[i] > 0).sum() for i in range(labels.shape[0])])
  assert area[0] < area[len(area) // 2] / 10 and len(np.unique(area)) > 3
  # Nested: every voxel of class k > 1 has a neighbour of class >= k - 1 (no islands in bg).
  inner = labels >= 2
  assert not np.any(inner & (np.roll(labels, 1, axis=1) == 0) & (np.roll(labels, -1, axis=1) == 0))
  # Different seeds give different volumes; channels > 1 have different contrasts.
  other, _ = medical.phantom_volume(6, classes, size=48, num_slices=20)
  assert other.shape != image.shape or not np.allclose(other, image)
  four, _ = medical.phantom_volume(5, classes, size=48, num_slices=20, channels=4)
  assert four.shape[-1] == 4 and not np.allclose(four[..., 0], four[..., 1])


def test_slice_positions():
  reader = medical.VolumeReader("phantoms", "zscore", phantom_size=32, phantom_slices=8)
  refs = medical.discover("phantoms", None, phantom_volumes=2)
  source = medical_views.SliceSource(reader, refs, "test")
  depth0 = reader(refs[0])[0].shape[0]
  positions = [source[i]["position"] for i in range(depth0)]
  np.testing.assert_allclose(positions, (np.arange(depth0) + 1) / depth0, rtol=1e-6)
  assert source[depth0]["position"] == pytest.approx(1 / reader(refs[1])[0].shape[0])
  assert "volumes=2" in repr(source)


# ----------------------------------------------------------------------------------- readers


def test_read_nifti_matches_nibabel_in_slice_first_order():
  from nibabel.testing import data_path  # pylint: disable=g-import-not-at-top

  path = os.path.join(data_path, "anatomical.nii")
  volume = medical.read_nifti(path)
  raw = np.asarray(nibabel.load(path).dataobj, np.float32)
  assert volume.shape == raw.shape[::-1]
  np.testing.assert_array_equal(volume[3], raw[:, :, 3].T)  # slice z=3 as [Y, X]
  four = medical.read_nifti(os.path.join(data_path, "example4d.nii.gz"))
  raw4 = np.asarray(nibabel.load(os.path.join(data_path, "example4d.nii.gz")).dataobj, np.float32)
  assert four.shape == (raw4.shape[2], raw4.shape[1], raw4.shape[0], raw4.shape[3])
  np.testing.assert_array_equal(four[1, :, :, -1], raw4[:, :, 1, -1].T)


def test_read_nifti_bad_file(tmp_path):
  bad = tmp_path / "broken.nii.gz"
  bad.write_bytes(b"not a nifti")
  with pytest.raises(medical.DataError, match="broken.nii.gz"):
    medical.read_nifti(str(bad))


def _dicom_series(folder, positions):
  """Copies pydicom's CT_small.dcm as slices at the given z positions (shuffled file names)."""
  from pydicom.data import get_testdata_file  # pylint: disable=g-import-not-at-top

  src = get_testdata_file("CT_small.dcm")
  os.makedirs(folder, exist_ok=True)
  for n, z in enumerate(positions):
    ds = pydicom.dcmread(src)
    ds.ImagePositionPatient = [0.0, 0.0, float(z)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.InstanceNumber = n
    pixels = ds.pixel_array.copy()
    pixels.flat[0] = 1000 + int(z)  # mark each slice
    ds.PixelData = pixels.tobytes()
    ds.save_as(os.path.join(folder, f"file_{(7 * n) % 5}_{n}.dcm"))
  with open(os.path.join(folder, "notes.txt"), "w", encoding="utf-8") as f:
    f.write("not dicom")
  return pydicom.dcmread(src)


def test_read_dicom_series_orders_by_position_and_rescales(tmp_path):
  folder = str(tmp_path / "case")
  ref = _dicom_series(folder, [30.0, 10.0, 20.0])
  volume = medical.read_dicom_series(folder)
  assert volume.shape == (3,) + ref.pixel_array.shape
  slope, intercept = float(ref.RescaleSlope), float(ref.RescaleIntercept)
  np.testing.assert_allclose(volume[:, 0, 0], np.array([1010, 1020, 1030]) * slope + intercept)
  np.testing.assert_allclose(
      volume[1, 5], ref.pixel_array[5].astype(np.float32) * slope + intercept
  )
  with pytest.raises(medical.DataError, match="no DICOM image"):
    os.makedirs(tmp_path / "empty")
    medical.read_dicom_series(str(tmp_path / "empty"))


def test_nibabel_shipped_dicom_files_read():
  from nibabel.testing import data_path  # pylint: disable=g-import-not-at-top

  folder = os.path.join(data_path)
  files = [f for f in ("0.dcm", "1.dcm") if os.path.exists(os.path.join(folder, f))]
  if not files:
    pytest.skip("nibabel ships no DICOM test files in this version")
  ds = pydicom.dcmread(os.path.join(folder, files[0]))
  assert "PixelData" in ds


# ----------------------------------------------------------------------- normalisation, labels


def test_normalizations():
  rng = np.random.default_rng(0)
  x = rng.normal(5, 3, (4, 8, 8, 1)).astype(np.float32)
  z = medical.normalize(x, "zscore")
  assert abs(z.mean()) < 1e-5 and z.std() == pytest.approx(1.0, rel=1e-4)
  x[0, 0, 0, 0] = 1e4  # an outlier is clipped at the 99th percentile first
  c = medical.normalize(x, "clip_zscore")
  clipped = np.clip(x, np.percentile(x, 1), np.percentile(x, 99))
  np.testing.assert_allclose(c, (clipped - clipped.mean()) / clipped.std(), rtol=1e-4, atol=1e-5)
  m = medical.normalize(x, "minmax_slice")
  np.testing.assert_allclose(m.min(axis=(1, 2, 3)), 0.0)
  np.testing.assert_allclose(m.max(axis=(1, 2, 3)), 1.0)
  with pytest.raises(ValueError, match="normalization"):
    medical.normalize(x, "histogram")


def test_label_maps():
  raw = np.array([0, 205, 420, 500, 550, 600, 820, 850, 421, 3])
  np.testing.assert_array_equal(medical.map_labels(raw, "mmwhs"), [0, 1, 2, 3, 4, 5, 6, 7, 0, 3])
  np.testing.assert_array_equal(medical.map_labels(np.array([0, 1, 2, 4]), "brats"), [0, 1, 2, 3])
  np.testing.assert_array_equal(medical.map_labels(np.array([0, 7, 8, 12]), "chd"), [0, 7, 0, 0])


# ------------------------------------------------------------------------------ layouts, splits


def _write_nifti(path, array):
  nibabel.save(nibabel.Nifti1Image(np.asarray(array), np.eye(4)), path)


def test_acdc_layout_splits_and_reader(tmp_path):
  root = tmp_path / "acdc"
  rng = np.random.default_rng(1)
  for pid in (1, 5, 73):
    folder = root / f"patient{pid:03d}"
    folder.mkdir(parents=True)
    for frame in (1, 12):
      image = rng.normal(100, 20, (20, 18, 3)).astype(np.float32)  # [X, Y, Z]
      labels = rng.integers(0, 4, (20, 18, 3)).astype(np.uint8)
      _write_nifti(str(folder / f"patient{pid:03d}_frame{frame:02d}.nii.gz"), image)
      _write_nifti(str(folder / f"patient{pid:03d}_frame{frame:02d}_gt.nii.gz"), labels)
    _write_nifti(str(folder / f"patient{pid:03d}_4d.nii.gz"), np.zeros((20, 18, 3, 2), np.float32))
  refs = medical.discover("acdc", str(root))
  assert [r.key for r in refs] == [
      f"patient{p:03d}_frame{f:02d}" for p in (1, 5, 73) for f in (1, 12)
  ]
  assert all(r.label_path.endswith("_gt.nii.gz") for r in refs)
  picked = medical.select(refs, [73, 1], "test")
  assert [r.key for r in picked] == [
      "patient073_frame01",
      "patient073_frame12",
      "patient001_frame01",
      "patient001_frame12",
  ]
  with pytest.raises(medical.DataError, match=r"\[99\]"):
    medical.select(refs, [99], "config.data.train_volumes")
  reader = medical.VolumeReader("acdc", "zscore")
  image, labels = reader(refs[0])
  assert image.shape == (3, 18, 20, 1) and labels.shape == (3, 18, 20)
  assert abs(image.mean()) < 1e-4
  config = ml_collections.ConfigDict(
      dict(
          medical_seg.CONFIG_DEFAULTS,
          name="medical_seg",
          source="acdc",
          root=str(root),
          train_volumes=(73,),
          test_volumes=(5,),
          patch_size=16,
      )
  )
  train, test = medical_seg.split_volumes(config)
  assert [r.key for r in train] == ["patient073_frame01", "patient073_frame12"]
  assert [r.key for r in test] == ["patient005_frame01", "patient005_frame12"]
  data = medical_seg.create(config, batch_size=2, seed=0, process_index=0, process_count=1)
  assert data.info.num_classes == 4
  batch = next(data.train)
  assert batch["image"].shape == (2, 16, 16, 1) and batch["labels"].dtype == np.int32
  eval_batches = list(data.eval_batches())
  assert sum(int(b["valid"].sum()) for b in eval_batches) == 6  # 2 frames x 3 slices


def test_brats_and_missing_layouts(tmp_path):
  case = tmp_path / "brats" / "BraTS_001"
  case.mkdir(parents=True)
  for m in medical.BRATS_MODALITIES:
    _write_nifti(str(case / f"BraTS_001_{m}.nii.gz"), np.full((8, 8, 2), ord(m[-1]), np.float32))
  _write_nifti(str(case / "BraTS_001_seg.nii.gz"), np.full((8, 8, 2), 4, np.uint8))
  refs = medical.discover("brats", str(tmp_path / "brats"))
  image, labels = medical.VolumeReader("brats", "none")(refs[0])
  assert image.shape == (2, 8, 8, 4) and np.all(labels == 3)
  np.testing.assert_array_equal(image[0, 0, 0], [ord(m[-1]) for m in medical.BRATS_MODALITIES])
  os.remove(case / "BraTS_001_t2.nii.gz")
  with pytest.raises(medical.DataError, match="t2"):
    medical.discover("brats", str(tmp_path / "brats"))
  with pytest.raises(medical.DataError, match="holds no chd volumes"):
    medical.discover("chd", str(tmp_path))
  with pytest.raises(ValueError, match="root is required"):
    medical.discover("mmwhs", "")


def test_dicom_source_for_pretraining(tmp_path):
  _dicom_series(str(tmp_path / "dcm" / "case_a"), [0.0, 1.0, 2.0, 3.0])
  config = ml_collections.ConfigDict(
      dict(
          medical_pretrain.CONFIG_DEFAULTS,
          name="medical_pretrain",
          source="dicom",
          root=str(tmp_path / "dcm"),
          patch_size=64,
          eval_slices=2,
      )
  )
  data = medical_pretrain.create(config, batch_size=2, seed=0, process_index=0, process_count=1)
  batch = next(data.train)
  assert batch["view_i1"].shape == (2, 64, 64, 1)
  assert set(np.round(batch["position"], 4)) <= {0.25, 0.5, 0.75, 1.0}


def test_fixed_fraction_is_fixed():
  refs = medical.discover("phantoms", None, phantom_volumes=20)
  a = medical.fixed_fraction(refs, 0.1)
  assert len(a) == 2 and a == medical.fixed_fraction(refs, 0.1)
  assert len(medical.fixed_fraction(refs, 0.25)) == 5


# ------------------------------------------------------------------------------------- views


def test_jitter_keeps_geometry_and_range():
  rng = np.random.default_rng(2)
  image, _ = medical.phantom_volume(1, 4, size=32, num_slices=8)
  x = medical.normalize(image, "zscore")[4]
  a, b = medical_views.jitter(x, rng), medical_views.jitter(x, rng)
  assert (
      a.shape == x.shape
      and a.min() == pytest.approx(0.0)
      and a.max() == pytest.approx(1.0, abs=1e-6)
  )
  assert not np.allclose(a, b)
  # Intensity only: strongly correlated with the input (the same geometry).
  for v in (a, b):
    assert np.corrcoef(v.ravel(), x.ravel())[0, 1] > 0.8


def test_spatial_moves_image_and_labels_together():
  rng = np.random.default_rng(3)
  image, labels = medical.phantom_volume(2, 4, size=48, num_slices=12)
  x, y = image[6], labels[6]
  moved_any = False
  for _ in range(6):
    xi, yi = medical_views.spatial(x, rng, y.copy(), p_spatial=1.0)
    assert xi.shape == x.shape and yi.shape == y.shape and yi.dtype == y.dtype
    # Each label region keeps the intensity of its class (image and labels stay aligned).
    for c in (1, 2):
      if (yi == c).sum() > 20 and (y == c).sum() > 20:
        assert abs(np.median(xi[..., 0][yi == c]) - np.median(x[..., 0][y == c])) < 0.5
    moved_any |= not np.array_equal(yi, y)
  assert moved_any

  # p_spatial 0 and no flips drawn -> identity.
  class NoFlip:

    def uniform(self, *a, **k):
      return 0.99

  same, same_labels = medical_views.spatial(x, NoFlip(), y, p_spatial=0.0)
  np.testing.assert_array_equal(same, x)
  np.testing.assert_array_equal(same_labels, y)


def test_pretrain_dataset_views_and_determinism():
  config = ml_collections.ConfigDict(
      dict(
          medical_pretrain.CONFIG_DEFAULTS,
          name="medical_pretrain",
          phantom_volumes=3,
          phantom_slices=8,
          patch_size=32,
          phantom_size=40,
          eval_slices=5,
      )
  )
  make = lambda: medical_pretrain.create(
      config, batch_size=4, seed=3, process_index=0, process_count=1
  )
  a, b = make(), make()
  ba, bb = next(a.train), next(b.train)
  for k in ba:
    np.testing.assert_array_equal(ba[k], bb[k])
  assert ba["view_v2"].shape == (4, 32, 32, 1) and ba["position"].shape == (4,)
  assert np.all((ba["position"] > 0) & (ba["position"] <= 1))
  evals = list(a.eval_batches())
  assert sum(int(e["valid"].sum()) for e in evals) == 5
  np.testing.assert_array_equal(evals[0]["view_i1"], list(b.eval_batches())[0]["view_i1"])
  # Two processes split each global batch.
  halves = [
      medical_pretrain.create(config, batch_size=4, seed=3, process_index=p, process_count=2)
      for p in (0, 1)
  ]
  joined = np.concatenate([next(h.train)["view_i1"] for h in halves])
  np.testing.assert_array_equal(joined, ba["view_i1"])


def test_seg_dataset_phantom_split():
  config = ml_collections.ConfigDict(
      dict(
          medical_seg.CONFIG_DEFAULTS,
          name="medical_seg",
          phantom_volumes=10,
          phantom_test_volumes=2,
          labeled_fraction=0.2,
          phantom_slices=6,
          patch_size=32,
          phantom_size=32,
      )
  )
  data = medical_seg.create(config, batch_size=4, seed=0, process_index=0, process_count=1)
  assert len(data.info.extra["train_volumes"]) == 2 and len(data.info.extra["test_volumes"]) == 2
  assert not set(data.info.extra["train_volumes"]) & set(data.info.extra["test_volumes"])
  batch = next(data.train)
  assert batch["labels"].max() < 4
  with pytest.raises(ValueError, match="exclusive"):
    medical_seg.split_volumes(ml_collections.ConfigDict(dict(config.to_dict(), train_volumes=(1,))))


def test_pcl_views_are_spatial_only():
  """views="pcl": V1, V2 only, drawn from the normalised crop itself (no intensity jitter, no
  min-max): with the elastic transform off they are mirror images of the crop."""
  rng = np.random.default_rng(0)
  image = rng.standard_normal((32, 32, 1)).astype(np.float32) * 3 + 1
  views = medical_views.ContrastiveViews(32, p_spatial=0.0, kind="pcl")
  out = views.random_map({"image": image, "position": np.float32(0.5)}, np.random.default_rng(1))
  assert sorted(out) == ["position", "view_v1", "view_v2"]
  for key in ("view_v1", "view_v2"):
    assert any(
        np.array_equal(out[key], f) for f in (image, image[::-1], image[:, ::-1], image[::-1, ::-1])
    )
  macl_out = medical_views.ContrastiveViews(32, p_spatial=0.0).random_map(
      {"image": image, "position": np.float32(0.5)}, np.random.default_rng(1)
  )
  assert macl_out["view_v1"].min() >= 0 and macl_out["view_v1"].max() <= 1  # jittered, min-max
  with pytest.raises(ValueError, match="config.data.views"):
    medical_views.ContrastiveViews(32, kind="simclr")
