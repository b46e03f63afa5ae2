"""scribblesup tfds builder on a tiny fake ScribbleSup tree: records equal the files, and `create`
gives the folder reader's eval batches and train examples."""

from __future__ import annotations

import ml_collections
import numpy as np
from PIL import Image
import pytest

from jaxmilab.data import scribble_folders

tfds = pytest.importorskip("tensorflow_datasets")
scribble_tfds = pytest.importorskip("jaxmilab.data.scribble_tfds")

IDS = ["2007_000032", "2007_000033", "2007_000039"]


def _tree(root):
  rng = np.random.default_rng(0)
  for d in (
      "JPEGImages",
      "pascal_2012_scribble",
      "bmp_pseudolabel",
      "SegmentationClassAug",
      "ImageSets/SegmentationAug",
  ):
    (root / d).mkdir(parents=True)
  for i, name in enumerate(IDS):
    h, w = 18 + i, 25 - i
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
        root / "JPEGImages" / f"{name}.jpg"
    )
    for d in ("pascal_2012_scribble", "bmp_pseudolabel", "SegmentationClassAug"):
      Image.fromarray(rng.choice([0, 5, 20, 255], size=(h, w)).astype(np.uint8)).save(
          root / d / f"{name}.png"
      )
  (root / "ImageSets/SegmentationAug/train.txt").write_text("\n".join(IDS) + "\n")
  (root / "ImageSets/SegmentationAug/val.txt").write_text("\n".join(IDS[1:]) + "\n")


def test_builder_records_and_create_match_the_folder_reader(tmp_path):
  root = tmp_path / "VOC2012"
  _tree(root)
  builder = scribble_tfds.Scribblesup(
      config="full", data_dir=str(tmp_path / "tfds"), file_format="array_record"
  )
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(root)))
  folder = scribble_folders.ScribbleFolder(
      str(root),
      IDS,
      image_dir="JPEGImages",
      label_dirs={"scribble": "pascal_2012_scribble", "pseudo": "bmp_pseudolabel"},
  )
  source = scribble_tfds.TfdsSource(
      builder.as_data_source(
          "train",
          decoders={k: tfds.decode.SkipDecoding() for k in ("image", "scribble", "pseudo", "gt")},
      ),
      True,
  )
  by_id = {folder.ids[i]: folder[i] for i in range(3)}
  seen = set()
  for i in range(len(source)):
    got = source[i]
    match = [
        k
        for k, ex in by_id.items()
        if ex["scribble"].shape == got["scribble"].shape
        and (ex["scribble"] == got["scribble"]).all()
    ]
    assert len(match) == 1
    ex = by_id[match[0]]
    np.testing.assert_array_equal(got["pseudo"], ex["pseudo"])
    np.testing.assert_array_equal(got["image"], ex["image"])  # same JPEG bytes, same decoder output
    seen.add(match[0])
  assert seen == set(IDS)
  common = dict(crop_size=16, eval_pad_size=32, eval_batch_size=2)
  ds = scribble_tfds.create(
      ml_collections.ConfigDict(
          dict(name="scribble_tfds", data_dir=str(tmp_path / "tfds"), **common)
      ),
      batch_size=2,
      seed=0,
      process_index=0,
      process_count=1,
  )
  (ev,) = list(ds.eval_batches())
  assert ev["gt"].shape == (2, 32, 32) and ev["valid"].all()
  for row in range(2):  # the val split's order is tfds'; each row equals one folder-read example
    candidates = [
        scribble_folders.read_label(str(root / "SegmentationClassAug" / f"{i}.png"))
        for i in IDS[1:]
    ]
    assert any(
        c.shape[0] <= 32 and (ev["gt"][row, : c.shape[0], : c.shape[1]] == c).all()
        for c in candidates
    )
  batch = next(ds.train)
  assert batch["scribble"].shape == (2, 16, 16) and batch["dist_contour"].dtype == np.float32
