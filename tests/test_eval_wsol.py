"""WSOL metrics against wsolevaluation's own unit-test cases and hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from jaxmilab.evaluation import wsol

# The two maps of clovaai/wsolevaluation evaluation_test.py (array[y][x]).
_UNIMODAL = np.array(
    [
        [0.0, 0.0, 0.0, 0.0, 0.0],
        [0.0, 0.4, 0.4, 0.4, 0.6],
        [0.0, 0.4, 1.0, 0.8, 0.6],
        [0.0, 0.4, 0.4, 0.4, 0.6],
    ]
)
_MULTIMODAL = np.array(
    [
        [0.4, 0.0, 0.2, 0.2, 0.2],
        [0.4, 0.4, 0.0, 0.4, 0.0],
        [0.0, 0.0, 0.0, 0.4, 0.0],
        [1.0, 0.6, 0.8, 0.2, 0.2],
    ]
)


def _first_boxes(scoremap, multi_contour=False):
  boxes = wsol.boxes_from_scoremap(scoremap, np.arange(0, 1, 0.2), multi_contour=multi_contour)
  return [b[0].tolist() for b in boxes]


# --- IoU (evaluation_test.py EvalUtilTest) -----------------------------------------------


def test_iou_degenerate_zero_boxes_are_one():
  ious = wsol.iou_matrix(np.zeros((3, 4), int), np.zeros((5, 4), int))
  assert ious.shape == (3, 5)
  np.testing.assert_array_equal(ious, np.ones((3, 5)))  # one pixel each, inclusive convention


def test_iou_eye_and_realistic_values():
  boxes = np.array([[1, 1, 3, 3], [4, 4, 5, 5]])
  np.testing.assert_array_equal(wsol.iou_matrix(boxes, boxes), np.eye(2))
  # Official case: 8 / 27.
  assert wsol.iou_matrix([[1, 2, 5, 6]], [[3, 1, 4, 5]])[0, 0] == pytest.approx(8 / 27, abs=1e-12)


def test_iou_plus_one_convention_by_hand():
  # [0,0,3,1]: 4x2 = 8 pixels; [2,0,5,1]: 4x2 = 8 pixels; overlap columns 2..3 -> 2x2 = 4.
  assert wsol.iou_matrix([[0, 0, 3, 1]], [[2, 0, 5, 1]])[0, 0] == pytest.approx(4 / (8 + 8 - 4))
  # Touching at one column still overlaps with inclusive pixels: 1x1 / (2 + 2 - 1).
  assert wsol.iou_matrix([[0, 0, 1, 0]], [[1, 0, 2, 0]])[0, 0] == pytest.approx(1 / 3)
  assert wsol.iou_matrix([[0, 0, 1, 0]], [[2, 0, 3, 0]])[0, 0] == 0.0


def test_iou_rejects_bad_boxes():
  with pytest.raises(ValueError, match="x0y0x1y1"):
    wsol.iou_matrix([[1, 1, 0, 0]], [[1, 1, 2, 2]])
  with pytest.raises(ValueError, match=r"\[N, 4\]"):
    wsol.iou_matrix(np.zeros((2, 3), int), [[1, 1, 2, 2]])
  with pytest.raises(ValueError, match="non-negative"):
    wsol.iou_matrix([[-1, 0, 2, 2]], [[1, 1, 2, 2]])


# --- Boxes from scoremaps (official expected lists) ----------------------------------------


def test_boxes_degenerate_zero_map():
  assert _first_boxes(np.zeros((3, 3))) == [[0, 0, 0, 0]] * 5


def test_boxes_unimodal_official():
  assert _first_boxes(_UNIMODAL) == [
      [1, 1, 4, 3],
      [1, 1, 4, 3],
      [2, 1, 4, 3],
      [2, 2, 4, 3],
      [2, 2, 3, 3],
  ]


def test_boxes_multimodal_official():
  assert _first_boxes(_MULTIMODAL) == [
      [0, 0, 4, 3],
      [0, 0, 2, 2],
      [0, 3, 3, 3],
      [2, 3, 3, 3],
      [0, 3, 1, 3],
  ]


def test_boxes_constant_map_cover_the_image():
  # Every threshold int(t * 127) < 127 keeps all pixels; the box is clipped to (W - 1, H - 1).
  assert _first_boxes(np.full((4, 5), 0.5)) == [[0, 0, 4, 3]] * 5


def test_boxes_float32_map_like_official_float64():
  # float32 0.6 * 255 = 153.0000061 -> 153 as in the official float64 path
  # (t2n(...).astype(np.float)).
  m = _UNIMODAL.astype(np.float32)
  assert _first_boxes(m) == _first_boxes(_UNIMODAL)


def test_scoremap_validation():
  with pytest.raises(ValueError, match="NaN"):
    _first_boxes(np.full((3, 3), np.nan))
  with pytest.raises(ValueError, match="2-D"):
    _first_boxes(np.zeros((3, 3, 1)))
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    _first_boxes(np.full((3, 3), 1.5))
  ev = wsol.BoxEvaluator()
  with pytest.raises(ValueError, match=r"\[N, 4\]"):
    ev.accumulate(np.zeros((4, 4)), np.zeros((4,), int)[:3])


# --- BoxEvaluator ---------------------------------------------------------------------------


def test_box_evaluator_official_box_convention_by_hand():
  # One rectangle of ones at rows 2..5, cols 3..7. Its box is [3, 2, 3+5, 2+4] = [3, 2, 8, 6]
  # (the official x + w convention), 6x5 = 30 pixels; the GT [3, 2, 7, 5] is 5x4 = 20 pixels,
  # all inside: IoU = 20 / 30 at every threshold.
  m = np.zeros((10, 10))
  m[2:6, 3:8] = 1.0
  ev = wsol.BoxEvaluator()
  ev.accumulate(m, [[3, 2, 7, 5]])
  out = ev.compute()
  assert (
      out["MaxBoxAcc@30"] == 100.0 and out["MaxBoxAcc@50"] == 100.0 and out["MaxBoxAcc@70"] == 0.0
  )
  assert out["MaxBoxAccV2"] == pytest.approx(200 / 3)
  assert out["GT-known"] == out["gt_known_loc"] == 100.0
  assert "top1_loc" not in out


def test_box_evaluator_threshold_is_chosen_dataset_wide():
  # Unimodal boxes per threshold (0, .2, .4, .6, .8):
  # [1,1,4,3] [1,1,4,3] [2,1,4,3] [2,2,4,3] [2,2,3,3].
  # Image A, GT [2,2,3,3] (4 px): IoU 4/12, 4/12, 4/9, 4/6, 1.
  # Image B, GT [1,1,4,3] (12 px): IoU 1, 1, 9/12, 6/12, 4/12.
  # @70: A only at .8, B only at 0..0.4 -> best threshold counts 1 of 2 = 50 (not 100).
  ev = wsol.BoxEvaluator(cam_curve_interval=0.2, multi_contour=False, keep_per_image=True)
  ev.accumulate(_UNIMODAL, [[2, 2, 3, 3]], correct_class=True)
  ev.accumulate(_UNIMODAL, np.array([[1, 1, 4, 3]]), correct_class=False)
  out = ev.compute()
  assert out["MaxBoxAcc@30"] == 100.0
  assert out["MaxBoxAcc@50"] == 100.0  # threshold .6: A 4/6, B 6/12
  assert out["MaxBoxAcc@70"] == 50.0
  assert out["MaxBoxAccV2"] == pytest.approx(250 / 3)
  assert out["gt_known_loc"] == 100.0
  assert out["top1_loc"] == 50.0  # only A has the right class; it is localized at .6 and .8
  assert ev.best_threshold(50) == pytest.approx(0.6)
  rec = ev.per_image(50)
  np.testing.assert_array_equal(rec["box"], [[2, 2, 4, 3], [2, 2, 4, 3]])
  np.testing.assert_allclose(rec["iou"], [4 / 6, 6 / 12])
  np.testing.assert_array_equal(rec["correct_top1_loc"], [True, False])


def test_box_evaluator_multi_gt_takes_best():
  ev = wsol.BoxEvaluator(cam_curve_interval=0.2)
  ev.accumulate(_UNIMODAL, [[0, 0, 0, 0], [2, 2, 3, 3]])  # the second GT matches at .8
  assert ev.compute()["MaxBoxAcc@70"] == 100.0


def test_multi_contour_versus_largest_contour():
  # A big 8x8 blob and a small 4x4 blob; the GT is the small one's box [12,12,16,16].
  m = np.zeros((20, 20))
  m[1:9, 1:9] = 1.0
  m[12:16, 12:16] = 1.0
  gt = [[12, 12, 16, 16]]
  multi, largest = wsol.BoxEvaluator(multi_contour=True), wsol.BoxEvaluator(multi_contour=False)
  multi.accumulate(m, gt)
  largest.accumulate(m, gt)
  assert multi.compute()["MaxBoxAccV2"] == 100.0
  assert largest.compute()["MaxBoxAccV2"] == 0.0  # largest box [1,1,9,9] misses the GT


def test_box_evaluator_errors():
  ev = wsol.BoxEvaluator()
  with pytest.raises(RuntimeError, match="accumulate"):
    ev.compute()
  ev.accumulate(np.zeros((4, 4)), [[0, 0, 1, 1]], correct_class=True)
  ev.accumulate(np.zeros((4, 4)), [[0, 0, 1, 1]])
  with pytest.raises(RuntimeError, match="1 of 2"):
    ev.compute()


# --- MaskEvaluator --------------------------------------------------------------------------


def test_pxap_piou_hand_example():
  # Positives score .9, .3; negatives .6, .1 (+ an ignored .95 pixel that must not count).
  # Thresholds descending: (P, R) = (1, .5), (.5, .5), (2/3, 1), (.5, 1)
  # -> AP = 1 * .5 + 2/3 * .5 = 5/6. IoU = 1/2, 1/3, 2/3, 2/4 -> pIoU = 2/3.
  scores = np.array([[0.9, 0.6, 0.3, 0.1, 0.95]])
  gt = np.array([[True, False, True, False, False]])
  ignore = np.array(
      [[True, False, False, False, True]]
  )  # ignore minus foreground = last pixel only
  ev = wsol.MaskEvaluator()
  ev.accumulate(scores, gt, ignore)
  out = ev.compute()
  assert out["PxAP"] == pytest.approx(100 * 5 / 6)
  assert out["pIoU"] == pytest.approx(100 * 2 / 3)


def test_pxap_is_dataset_wide_not_per_image_mean():
  # The same four pixels split over two images give the pooled AP 5/6; the mean of the
  # per-image APs would be (1 + .5) / 2 = .75 (image 2 alone: its negative .6 ranks above .3).
  ev = wsol.MaskEvaluator()
  ev.accumulate(np.array([[0.9, 0.1]]), np.array([[True, False]]))
  ev.accumulate(np.array([[0.6, 0.3]]), np.array([[False, True]]))
  assert ev.compute()["PxAP"] == pytest.approx(100 * 5 / 6)


def test_pxap_official_perfect_and_constant_maps():
  gt = np.zeros((8, 8), bool)
  gt[2:5, 1:4] = True  # 9 positives, 55 negatives
  ignore = np.zeros((8, 8), bool)
  ignore[6:, 6:] = True  # 4 ignored negatives -> 51 negatives
  for ignore_score in (0.0, 1.0):  # official test_mask_evaluator_masks_perfect_scoremap
    m = gt.astype(float)
    m[ignore] = ignore_score
    ev = wsol.MaskEvaluator()
    ev.accumulate(m, gt, ignore)
    assert ev.compute()["PxAP"] == 100.0
  for value in (0.0, 0.5, 1.0):  # constant maps: AP = positive fraction (official mask0..2 cases)
    ev = wsol.MaskEvaluator()
    ev.accumulate(np.full((8, 8), value), gt, ignore)
    out = ev.compute()
    assert out["PxAP"] == pytest.approx(100 * 9 / (9 + 51))
    assert out["pIoU"] == pytest.approx(100 * 9 / (9 + 51))


def test_mask_evaluator_errors():
  ev = wsol.MaskEvaluator()
  ev.accumulate(np.zeros((4, 4)), np.zeros((4, 4), bool))
  with pytest.raises(RuntimeError, match="no positive"):  # official *_zero_gt cases
    ev.compute()
  with pytest.raises(ValueError, match=r"\(4, 5\).*\(4, 4\)"):
    ev.accumulate(np.zeros((4, 4)), np.zeros((4, 5), bool))
  with pytest.raises(ValueError, match="ignore_mask"):
    ev.accumulate(np.zeros((4, 4)), np.zeros((4, 4), bool), np.zeros((3, 4), bool))
  with pytest.raises(ValueError, match="NaN"):
    ev.accumulate(np.full((4, 4), np.nan), np.ones((4, 4), bool))


# --- WSOLEvaluator: maps scored with some metrics only (B-CAM as released) ----------------


def _bcam_like_batch():
  """Two 8x8 images, object = rows 2..5, cols 2..5; a perfect map and its complement."""
  mask = np.zeros((2, 8, 8), bool)
  mask[:, 2:6, 2:6] = True
  perfect, wrong = mask.astype(np.float64), 1.0 - mask.astype(np.float64)
  batch = {
      "label": np.array([0, 1]),
      "valid": np.array([True, True]),
      "mask": mask,
      "boxes": np.array([[[2, 2, 5, 5]], [[2, 2, 5, 5]]]),
      "num_boxes": np.array([1, 1]),
  }
  return batch, perfect, wrong


def test_wsol_evaluator_takes_box_and_mask_metrics_from_the_named_maps():
  batch, perfect, wrong = _bcam_like_batch()
  entries = [("", "box_map", ("boxes",)), ("", "px_map", ("masks",))]
  results = {}
  for name, (box_map, px_map) in {
      "box good": (perfect, wrong),
      "px good": (wrong, perfect),
  }.items():
    ev = wsol.WSOLEvaluator(entries, cam_curve_interval=0.1, example_means={"share": "share"})
    ev.update(
        batch,
        {
            "box_map": box_map,
            "px_map": px_map,
            "pred": np.array([0, 0]),
            "share": np.array([10.0, 30.0]),
        },
    )
    results[name] = ev.compute()
  # (the official box of a 4x4 blob spans 5 pixels: IoU 16 / 25, so @50 is the exact one)
  assert results["box good"]["MaxBoxAcc@50"] == 100.0 and results["px good"]["MaxBoxAcc@50"] < 100.0
  assert results["px good"]["PxAP"] == pytest.approx(100.0) and results["box good"]["PxAP"] < 60.0
  assert results["box good"]["accuracy"] == 50.0 and results["box good"]["share"] == 20.0
  with pytest.raises(ValueError, match="two scoremaps"):
    wsol.WSOLEvaluator([("", "a", ("boxes",)), ("", "b", ("boxes", "masks"))])
  with pytest.raises(ValueError, match="kinds"):
    wsol.WSOLEvaluator([("", "a", ("pixels",))])
