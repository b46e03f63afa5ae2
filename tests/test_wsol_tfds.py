"""wsol_tfds builders on tiny fake wsolevaluation trees: records read back equal the files
(image bytes / pixels, labels, boxes, masks as cv2 reads them), missing-layout errors, and
`create`'s eval batches equal wsol_folders' on the same tree."""

from __future__ import annotations

import io
import os

import ml_collections
import numpy as np
from PIL import Image
import pytest

from jaxmilab.data import wsol_folders
from jaxmilab.data.base import DataError

tfds = pytest.importorskip("tensorflow_datasets")
wsol_tfds = pytest.importorskip("jaxmilab.data.wsol_tfds")

# image id -> (width, height, label, boxes); "g/..." is a grayscale JPEG (stored as PNG).
_CUB = {
    "train": {
        "a/1.jpg": (20, 16, 0, [(1, 2, 10, 12)]),
        "b/2.jpg": (12, 18, 1, []),
        "g/3.jpg": (14, 10, 2, [(0, 0, 13, 9)]),
    },
    "val": {
        "a/4.jpg": (16, 16, 0, [(3, 3, 9, 9), (0, 1, 5, 6)]),
        "b/5.jpg": (10, 14, 1, [(2, 2, 7, 8)]),
        "a/6.jpg": (18, 12, 2, [(4, 1, 15, 10)]),
    },
    "test": {
        "a/7.jpg": (20, 16, 1, [(1, 1, 17, 14)]),
        "g/8.jpg": (15, 11, 0, [(2, 3, 12, 10), (0, 0, 4, 4)]),
        "b/9.jpg": (11, 19, 2, [(0, 5, 10, 18)]),
    },
}


def _pixels(name: str, w: int, h: int, gray: bool = False) -> np.ndarray:
  rng = np.random.default_rng(sum(map(ord, name)))
  return (rng.random((h, w) if gray else (h, w, 3)) * 255).astype(np.uint8)


def _write_lines(path, lines):
  path.write_text("".join(line + "\n" for line in lines))


def _fake_cub(root, dataset="CUB"):
  """wsolevaluation layout: dataset/<D>/<image_id>, metadata/<D>/<split>/*.txt."""
  for split, entries in _CUB.items():
    folder = root / "metadata" / dataset / split
    folder.mkdir(parents=True)
    for image_id, (w, h, _, _) in entries.items():
      path = root / "dataset" / dataset / image_id
      path.parent.mkdir(parents=True, exist_ok=True)
      Image.fromarray(_pixels(image_id, w, h, image_id.startswith("g/"))).save(path, quality=90)
    _write_lines(folder / "image_ids.txt", entries)
    _write_lines(folder / "class_labels.txt", [f"{i},{e[2]}" for i, e in entries.items()])
    _write_lines(folder / "image_sizes.txt", [f"{i},{e[0]},{e[1]}" for i, e in entries.items()])
    _write_lines(
        folder / "localization.txt",
        [f"{i}," + ",".join(map(str, b)) for i, e in entries.items() for b in e[3]],
    )
  return root


def _fake_openimages(root):
  """OpenImages layout (wsolevaluation README): masks next to the images, one ignore per image."""
  data, meta = root / "dataset" / "OpenImages", root / "metadata" / "OpenImages"
  truth = {}
  for split in ("train", "val", "test"):
    (meta / split).mkdir(parents=True)
    ids, labels, loc = [], [], []
    for k in range(3):
      image_id = f"{split}/c{k}/x{k}.jpg"
      (data / split / f"c{k}").mkdir(parents=True, exist_ok=True)
      Image.fromarray(_pixels(image_id, 12 + k, 10)).save(data / image_id, quality=90)
      ids.append(image_id)
      labels.append(f"{image_id},{k}")
      if split == "train":
        continue
      rng = np.random.default_rng(k)
      masks = [(rng.random((10, 12 + k)) > 0.6).astype(np.uint8) * 255 for _ in range(k + 1)]
      ignore = (rng.random((10, 12 + k)) > 0.7).astype(np.uint8) * 255
      names = [image_id.replace(".jpg", f"_m{j}.png") for j in range(k + 1)]
      # Mode "1" and RGB files, as in wsolevaluation's test_data masks.
      Image.fromarray(masks[0] > 0).save(data / names[0])
      for name, m in zip(names[1:], masks[1:]):
        Image.fromarray(np.repeat(m[..., None], 3, -1)).save(data / name)
      ign_name = image_id.replace(".jpg", "_ignore.png")
      Image.fromarray(ignore).save(data / ign_name)
      loc += [f"{image_id},{names[0]},{ign_name}"] + [f"{image_id},{n}," for n in names[1:]]
      truth[image_id] = (masks, ignore)
    _write_lines(meta / split / "image_ids.txt", ids)
    _write_lines(meta / split / "class_labels.txt", labels)
    _write_lines(meta / split / "image_sizes.txt", [])  # empty, as wsolevaluation's
    _write_lines(meta / split / "localization.txt", loc)
  return root, truth


def _prepare(builder_cls, manual, data_dir):
  builder = builder_cls(data_dir=str(data_dir), file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
  return builder


@pytest.fixture(scope="module")
def cub(tmp_path_factory):
  root = tmp_path_factory.mktemp("cub")
  manual = _fake_cub(root / "manual")
  return manual, root / "data", _prepare(wsol_tfds.WsolCub, manual, root / "data")


@pytest.fixture(scope="module")
def openimages(tmp_path_factory):
  root = tmp_path_factory.mktemp("oi")
  manual, truth = _fake_openimages(root / "manual")
  return manual, root / "data", truth, _prepare(wsol_tfds.WsolOpenimages, manual, root / "data")


def test_cub_records_equal_the_files(cub):
  manual, _, builder = cub
  raw = builder.as_data_source(decoders={"image": tfds.decode.SkipDecoding()})
  decoded = builder.as_data_source()
  assert set(raw) == {"train", "val", "test"}
  for split, entries in _CUB.items():
    assert len(raw[split]) == len(entries)
    seen = set()
    for i in range(len(raw[split])):
      ex, dec = raw[split][i], decoded[split][i]
      image_id = ex["image_id"].decode()
      w, h, label, boxes = entries[image_id]
      path = manual / "dataset" / "CUB" / image_id
      if image_id.startswith("g/"):  # grayscale JPEG -> exact RGB pixels (PNG)
        ref = np.asarray(Image.open(path).convert("RGB"))
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(ex["image"]))), ref)
      else:  # RGB JPEG -> the file's bytes
        assert ex["image"] == path.read_bytes()
      assert dec["image"].shape == (h, w, 3)
      assert ex["label"] == label
      np.testing.assert_array_equal(ex["bboxes"], np.asarray(boxes, np.int32).reshape(-1, 4))
      np.testing.assert_array_equal(ex["image_size"], [w, h])
      seen.add(image_id)
    assert seen == set(entries)


def test_openimages_masks_equal_cv2_reads(openimages):
  manual, _, truth, builder = openimages
  src = builder.as_data_source()
  assert len(src["train"]) == 3
  ex = src["train"][0]
  assert len(ex["masks"]) == 0 and len(ex["ignore_mask"]) == 0
  for split in ("val", "test"):
    for i in range(3):
      ex = src[split][i]
      image_id = ex["image_id"].decode()
      masks, ignore = truth[image_id]
      assert ex["label"] == int(image_id[-5])
      assert np.shape(ex["masks"]) == (len(masks), 10, masks[0].shape[1], 1)
      for got, want in zip(ex["masks"], masks):
        np.testing.assert_array_equal(got[..., 0], want)  # mode "1" and RGB files read as 0/255
      np.testing.assert_array_equal(np.asarray(ex["ignore_mask"])[0, ..., 0], ignore)
      path = manual / "dataset" / "OpenImages" / image_id
      np.testing.assert_array_equal(ex["image"], np.asarray(Image.open(path)))


def test_missing_layout_names_the_folder_or_file(tmp_path):
  with pytest.raises(DataError, match="does not exist"):
    _prepare(wsol_tfds.WsolCub, tmp_path / "nowhere", tmp_path / "d0")
  manual = _fake_cub(tmp_path / "m", dataset="ILSVRC")  # an ILSVRC tree is not a CUB one
  with pytest.raises(DataError, match=r"metadata/CUB' is missing"):
    _prepare(wsol_tfds.WsolCub, manual, tmp_path / "d1")
  os.remove(manual / "metadata" / "ILSVRC" / "val" / "class_labels.txt")
  with pytest.raises(DataError, match=r"ILSVRC/val/class_labels.txt' is missing"):
    _prepare(wsol_tfds.WsolIlsvrc, manual, tmp_path / "d2")
  (manual / "metadata" / "ILSVRC" / "val" / "class_labels.txt").write_text(
      "a/4.jpg,0\nb/5.jpg,1000\na/6.jpg,2\n"
  )
  with pytest.raises(DataError, match=r"'b/5.jpg' has class 1000; ILSVRC has classes 0..999"):
    _prepare(wsol_tfds.WsolIlsvrc, manual, tmp_path / "d3")
  (manual / "metadata" / "ILSVRC" / "val" / "class_labels.txt").write_text(
      "a/4.jpg,0\nb/5.jpg,1\na/6.jpg,2\n"
  )
  (manual / "metadata" / "ILSVRC" / "test" / "localization.txt").write_text("a/7.jpg,1,1,17,14\n")
  with pytest.raises(DataError, match=r"test/localization.txt lists no box for 'g/8.jpg'"):
    _prepare(wsol_tfds.WsolIlsvrc, manual, tmp_path / "d4")
  with pytest.raises(DataError, match="not prepared"):
    wsol_tfds.create(
        ml_collections.ConfigDict(dict(dataset="CUB", data_dir=str(tmp_path / "d5"))),
        batch_size=2,
        seed=0,
        process_index=0,
        process_count=1,
    )


@pytest.mark.parametrize("which", ["cub", "openimages"])
def test_create_matches_the_folder_reader(which, request):
  """Same tree, same protocol: wsol_tfds.create's eval batches == wsol_folders.create's."""
  fixture = request.getfixturevalue(which)
  manual, data_dir = fixture[0], fixture[1]
  dataset = {"cub": "CUB", "openimages": "OpenImages"}[which]
  common = dict(dataset=dataset, resize_size=12, crop_size=8, max_boxes=3)
  ours = wsol_tfds.create(
      ml_collections.ConfigDict(dict(common, data_dir=str(data_dir))),
      batch_size=2,
      seed=0,
      process_index=0,
      process_count=1,
  )
  ref = wsol_folders.create(
      ml_collections.ConfigDict(
          dict(common, data_root=str(manual / "dataset"), metadata_root=str(manual / "metadata"))
      ),
      batch_size=2,
      seed=0,
      process_index=0,
      process_count=1,
  )
  a, b = list(ours.eval_batches()), list(ref.eval_batches())
  assert len(a) == len(b) == 2
  ids = (manual / "metadata" / dataset / "test" / "image_ids.txt").read_text().split()
  builder = fixture[-1]
  stored = [builder.as_data_source("test")[i]["image_id"].decode() for i in range(len(ids))]
  order = [ids.index(i) for i in stored]  # tfds keeps its own example order
  for key in b[0]:
    got = np.concatenate([x[key] for x in a])
    want = np.concatenate([x[key] for x in b])
    np.testing.assert_array_equal(got[:3], want[order], err_msg=key)
    np.testing.assert_array_equal(got[3:], want[3:], err_msg=key)  # padding row
  assert next(ours.train)["image"].shape == (2, 8, 8, 3)
