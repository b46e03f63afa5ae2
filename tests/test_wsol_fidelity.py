"""WSOL fidelity (issue 18): B-CAM as released on VGG16 / InceptionV3 (PyTorch parity through
the weights-only reader), streaming evaluation equal to the concatenated computation, the
`paper` initialisation guard, converted-checkpoint model info, protocol learning rates.

The PyTorch modules below are transcriptions (widths / d) of zh460045050/BCAM
SingleObjectLocalization/wsol/vgg.py `VggBCAM`, wsol/inception.py `InceptionBCAM` and
wsol/resnet.py `ResNetBCAM` (one block per stage); the
gradient maps follow its inference.py `Generator` ("CUB": sum_c G_c mean(G_c), G the gradient
of logits - logits_rev at Train.sh's `--target_layer`: conv6 for VGG, SPG_A3_1b for Inception,
layer4 for ResNet). Their bottleneck blocks and VGG features are tests/torch_reference/convnets.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxmilab import config_lib
from jaxmilab.data.base import DataInfo
from jaxmilab.evaluation import wsol as wsol_metrics
from jaxmilab.methods import bcam
from jaxmilab.methods import cam
from jaxmilab.methods import wsol
from tests import fake_trees
from tests.torch_reference import convnets

# ------------------------------------------------------------------------- streaming evaluation


def _fake_eval_set(seed=0, n=10, size=24):
  rng = np.random.default_rng(seed)
  scoremaps = rng.random((n, size, size)).astype(np.float32)
  boxes = np.zeros((n, 2, 4), np.int64)
  num_boxes = rng.integers(1, 3, n)
  mask = np.zeros((n, size, size), bool)
  for i in range(n):
    for j in range(num_boxes[i]):
      x0, y0 = rng.integers(0, size // 2, 2)
      x1, y1 = x0 + rng.integers(3, size // 2), y0 + rng.integers(3, size // 2)
      boxes[i, j] = (x0, y0, x1, y1)
      mask[i, y0 : y1 + 1, x0 : x1 + 1] = True
      scoremaps[i, y0 : y1 + 1, x0 : x1 + 1] += 0.5 * rng.random()
  scoremaps /= scoremaps.max(axis=(1, 2), keepdims=True)
  valid = np.ones(n, bool)
  valid[-2:] = False  # padding rows
  return {
      "scoremap": scoremaps,
      "scoremap_cam": scoremaps**2,
      "boxes": boxes,
      "num_boxes": num_boxes,
      "mask": mask,
      "ignore": rng.random((n, size, size)) > 0.9,
      "label": rng.integers(0, 3, n),
      "pred": rng.integers(0, 3, n),
      "valid": valid,
      "image": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
  }


def _concatenated_reference(host, key):
  """The former `wsol_summary`: per-image accumulation over the concatenated valid examples."""
  boxes = wsol_metrics.BoxEvaluator(0.05, (30, 50, 70), True)
  masks = wsol_metrics.MaskEvaluator(0.05)
  correct = host["pred"] == host["label"]
  for i in np.flatnonzero(host["valid"]):
    boxes.accumulate(
        host[key][i], host["boxes"][i][: host["num_boxes"][i]], correct_class=bool(correct[i])
    )
    masks.accumulate(host[key][i], host["mask"][i], host["ignore"][i])
  out = boxes.compute()
  out.pop("GT-known")
  out.update(masks.compute())
  out["accuracy"] = float(correct[host["valid"]].mean() * 100)
  return out


def test_streamed_wsol_evaluator_equals_concatenated_computation():
  host = _fake_eval_set()
  scoremaps = {"": "scoremap", "cam/": "scoremap_cam"}
  outputs_keys = ("scoremap", "scoremap_cam", "pred")
  # Two "hosts", each streaming its own batches of 3; merged by addition.
  halves = []
  for part in (slice(0, 5), slice(5, None)):
    ev = wsol_metrics.WSOLEvaluator(scoremaps, cam_curve_interval=0.05)
    idx = np.arange(len(host["label"]))[part]
    for start in range(0, len(idx), 3):
      rows = idx[start : start + 3]
      ev.update(
          {k: v[rows] for k, v in host.items() if k not in outputs_keys},
          {k: host[k][rows] for k in outputs_keys},
      )
    halves.append(ev)
  merged = halves[0].merge(halves[1]).merge_across_processes().compute()
  ref = _concatenated_reference(host, "scoremap")
  ref_cam = _concatenated_reference(host, "scoremap_cam")
  assert set(merged) == set(ref) | {f"cam/{k}" for k in ref if k != "accuracy"}
  for k, v in ref.items():
    assert merged[k] == pytest.approx(v, abs=1e-9), k
  for k, v in ref_cam.items():
    if k != "accuracy":
      assert merged[f"cam/{k}"] == pytest.approx(v, abs=1e-9), k
  assert ref["MaxBoxAccV2"] != ref_cam["MaxBoxAccV2"] or ref["PxAP"] != ref_cam["PxAP"]
  # Fixed-size statistics: the same names and shapes whatever the number of examples seen.
  empty = wsol_metrics.WSOLEvaluator(scoremaps, cam_curve_interval=0.05)
  for a, b in zip(empty._parts(), halves[0]._parts()):  # pylint: disable=protected-access
    assert {k: v.shape for k, v in a.sums.items()} == {k: v.shape for k, v in b.sums.items()}
  image = halves[0].images()
  assert image.ndim == 3 and image.shape[-1] == 3 and 0 <= image.min() and image.max() <= 1


# -------------------------------------------------------------------- B-CAM as released (torch)


def _torch_bcam_nets(torch, d):
  nn, F = torch.nn, torch.nn.functional

  def heads(self, c_att, c, k, num_classes, bias):
    self.aggregator_A = nn.Conv2d(c_att, k, 1, bias=bias)
    self.aggregator_B = nn.Conv2d(c_att, k, 1, bias=bias)
    self.classifier_A = nn.Conv2d(c, num_classes, 1)
    self.classifier_B = nn.Conv2d(c, num_classes, 1)

  def bcam_logits(self, att_in, feature):
    b, _, h, w = feature.shape
    att_a = torch.softmax(self.aggregator_A(att_in).view(b, -1, h * w), -1)
    att_b = torch.softmax(self.aggregator_B(att_in).view(b, -1, h * w), -1)
    f = feature.view(b, -1, h * w)
    pool = lambda att, x: torch.bmm(att, x.permute(0, 2, 1)).mean(1).view(b, -1, 1, 1)
    fl = lambda conv, x: conv(x).view(b, -1)
    return {
        "logits": fl(self.classifier_A, pool(att_a, f)),
        "logits_back": fl(self.classifier_B, pool(att_b, f.detach())),
        "logits_rev": fl(self.classifier_B, pool(att_a, f.detach())),
        "logits_back_rev": fl(self.classifier_A, pool(att_b, f)),
    }

  class VggBCAM(nn.Module):

    def __init__(self, num_classes, k):
      super().__init__()
      self.features, c = convnets.vgg16_features(d)
      self.conv6 = nn.Conv2d(c, 1024 // d, 3, padding=1)
      heads(self, c, 1024 // d, k, num_classes, True)

    def forward(self, x):
      x = self.features(x)
      target = self.conv6(x)  # Train.sh --target_layer conv6: before self.relu
      target.retain_grad()
      return bcam_logits(self, x, torch.relu(target)), target

  class BasicConv2d(nn.Module):

    def __init__(self, cin, cout, kernel, **kw):
      super().__init__()
      self.conv = nn.Conv2d(cin, cout, kernel, bias=False, **kw)
      self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
      return F.relu(self.bn(self.conv(x)))

  class InceptionA(nn.Module):

    def __init__(self, cin, pool):
      super().__init__()
      self.branch1x1 = BasicConv2d(cin, 64 // d, 1)
      self.branch5x5_1 = BasicConv2d(cin, 48 // d, 1)
      self.branch5x5_2 = BasicConv2d(48 // d, 64 // d, 5, padding=2)
      self.branch3x3dbl_1 = BasicConv2d(cin, 64 // d, 1)
      self.branch3x3dbl_2 = BasicConv2d(64 // d, 96 // d, 3, padding=1)
      self.branch3x3dbl_3 = BasicConv2d(96 // d, 96 // d, 3, padding=1)
      self.branch_pool = BasicConv2d(cin, pool // d, 1)

    def forward(self, x):
      b5 = self.branch5x5_2(self.branch5x5_1(x))
      b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
      bp = self.branch_pool(F.avg_pool2d(x, 3, 1, 1))
      return torch.cat([self.branch1x1(x), b5, b3, bp], 1)

  class InceptionB(nn.Module):

    def __init__(self, cin):
      super().__init__()
      self.branch3x3 = BasicConv2d(cin, 384 // d, 3, stride=1, padding=1)
      self.branch3x3dbl_1 = BasicConv2d(cin, 64 // d, 1)
      self.branch3x3dbl_2 = BasicConv2d(64 // d, 96 // d, 3, padding=1)
      self.branch3x3dbl_3 = BasicConv2d(96 // d, 96 // d, 3, stride=1, padding=1)

    def forward(self, x):
      bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
      return torch.cat([self.branch3x3(x), bd, F.max_pool2d(x, 3, 1, 1)], 1)

  class InceptionC(nn.Module):

    def __init__(self, cin, c7):
      super().__init__()
      c7 //= d
      self.branch1x1 = BasicConv2d(cin, 192 // d, 1)
      self.branch7x7_1 = BasicConv2d(cin, c7, 1)
      self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
      self.branch7x7_3 = BasicConv2d(c7, 192 // d, (7, 1), padding=(3, 0))
      self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
      self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
      self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
      self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
      self.branch7x7dbl_5 = BasicConv2d(c7, 192 // d, (1, 7), padding=(0, 3))
      self.branch_pool = BasicConv2d(cin, 192 // d, 1)

    def forward(self, x):
      b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
      bd = x
      for i in range(1, 6):
        bd = getattr(self, f"branch7x7dbl_{i}")(bd)
      return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(F.avg_pool2d(x, 3, 1, 1))], 1)

  class InceptionBCAM(nn.Module):

    def __init__(self, num_classes, k):
      super().__init__()
      self.Conv2d_1a_3x3 = BasicConv2d(3, 32 // d, 3, stride=2, padding=1)
      self.Conv2d_2a_3x3 = BasicConv2d(32 // d, 32 // d, 3)
      self.Conv2d_2b_3x3 = BasicConv2d(32 // d, 64 // d, 3, padding=1)
      self.Conv2d_3b_1x1 = BasicConv2d(64 // d, 80 // d, 1)
      self.Conv2d_4a_3x3 = BasicConv2d(80 // d, 192 // d, 3)
      self.Mixed_5b = InceptionA(192 // d, 32)
      c5 = (64 + 64 + 96 + 32) // d
      self.Mixed_5c = InceptionA(c5, 64)
      c5 = (64 + 64 + 96 + 64) // d
      self.Mixed_5d = InceptionA(c5, 64)
      self.Mixed_6a = InceptionB(c5)
      c6 = 384 // d + 96 // d + c5
      self.Mixed_6b = InceptionC(c6, 128)
      c6 = 4 * (192 // d)
      self.Mixed_6c = InceptionC(c6, 160)
      self.Mixed_6d = InceptionC(c6, 160)
      self.Mixed_6e = InceptionC(c6, 192)
      self.SPG_A3_1b = nn.Sequential(nn.Conv2d(c6, 1024 // d, 3, padding=1), nn.ReLU())
      self.SPG_A3_2b = nn.Sequential(nn.Conv2d(1024 // d, 1024 // d, 3, padding=1), nn.ReLU())
      heads(self, 1024 // d, 1024 // d, k, num_classes, False)

    def forward(self, x):  # eval mode: the three F.dropout(0.5) are identities
      x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
      x = F.max_pool2d(x, 3, 2, 1, ceil_mode=True)
      x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, 2, 1, ceil_mode=True)
      x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))  # large_feature_map: no extra pool
      x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(self.Mixed_6a(x)))))
      target = self.SPG_A3_1b(x)  # Train.sh --target_layer SPG_A3_1b
      target.retain_grad()
      feature = self.SPG_A3_2b(target)
      return bcam_logits(self, feature, feature), target

  class ResNetBCAM(nn.Module):  # one block per stage (the tiny preset), large_feature_map

    def __init__(self, num_classes, k):
      super().__init__()
      self.conv1 = nn.Conv2d(3, 64 // d, 7, 2, 3, bias=False)
      self.bn1 = nn.BatchNorm2d(64 // d)
      c = 64 // d
      for i, (planes, stride) in enumerate(((64, 1), (128, 2), (256, 1), (512, 1)), 1):
        down = convnets.downsample(c, planes // d, stride)
        block = convnets.bottleneck(c, planes // d, stride, downsample=down)
        setattr(self, f"layer{i}", nn.Sequential(block))
        c = planes // d * 4
      heads(self, c, c, k, num_classes, False)

    def forward(self, x):
      x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
      target = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # --target_layer layer4
      target.retain_grad()
      return bcam_logits(self, target, target), target

  return {"vgg16": VggBCAM, "inceptionv3": InceptionBCAM, "resnet50": ResNetBCAM}


def _bcam_method(arch, large, init_from="", **method):
  config = ml_collections.ConfigDict(
      {
          "method": {
              "name": "bcam",
              "num_heads": 4,
              "map_mode": "cub",
              "init_from": init_from,
              **method,
          },
          "model": {"name": f"{arch}_wsol", "preset": "tiny", "large_feature_map": large},
      }
  )
  return bcam.Method(config, DataInfo(num_classes=3))


@pytest.mark.torch
@pytest.mark.parametrize(
    "arch,size",
    [
        ("vgg16", 32),
        pytest.param("resnet50", 32, marks=pytest.mark.slow),
        pytest.param("inceptionv3", 48, marks=pytest.mark.slow),
    ],
)
def test_released_bcam_checkpoint_gives_the_released_maps(arch, size, tmp_path):
  torch = pytest.importorskip("torch")
  from jaxmilab.convert import torchvision_wsol  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  net = _torch_bcam_nets(torch, 8)[arch](num_classes=3, k=4)
  convnets.randomize_batchnorm(net)  # non-trivial BatchNorm statistics
  for m in net.modules():  # and non-uniform attention
    if isinstance(m, torch.nn.Conv2d) and m.out_channels == 4:
      m.weight.data.normal_(0.0, 0.3)
  net.eval()
  path = str(tmp_path / "bcam.pth.tar")
  torch.save(
      {"architecture": arch, "epoch": 20, "state_dict": net.state_dict()}, path
  )  # main.py layout
  large = arch != "vgg16"
  variables, skipped = torchvision_wsol.convert(
      path,
      arch=arch,
      num_classes=3,
      large_feature_map=large,
      preset="tiny",
      bcam=True,
      num_heads=4,
      image_size=size,
  )
  assert not skipped
  x = np.random.default_rng(1).normal(size=(2, size, size, 3)).astype(np.float32)
  labels = np.array([2, 0])
  logits, target = net(torch.tensor(x).permute(0, 3, 1, 2))
  maps = []
  one_hot = torch.nn.functional.one_hot(torch.tensor(labels), 3).float()
  for pos, neg in (("logits", "logits_rev"), ("logits_back", "logits_back_rev")):
    net.zero_grad()
    target.grad = None
    score = logits[pos] - logits[neg]
    score.backward(gradient=one_hot, retain_graph=True)
    g = target.grad
    maps.append((g * g.mean((2, 3), keepdim=True)).sum(1).numpy())  # Generator, dataset "CUB"
  for pos in ("logits", "logits_back"):  # Generator, dataset "OpenImages": s_oo / s_bb alone
    net.zero_grad()
    target.grad = None
    logits[pos].backward(gradient=one_hot, retain_graph=True)
    # VGG's s_bb reads conv6 only through stopgrad F (its aggregators read the features before
    # conv6): no gradient reaches the map layer (the release's hook would keep a stale one).
    g = torch.zeros_like(target) if target.grad is None else target.grad
    maps.append((target.detach() * g.mean((2, 3), keepdim=True)).sum(1).numpy())
  method = _bcam_method(arch, large)
  params = variables["params"]
  state = {k: v for k, v in variables.items() if k != "params"}
  # The converted arrays are image-independent, so feed already-normalised pixels through the
  # method's own path (preprocess is an affine map: undo it on the input).
  images = jnp.asarray(x * wsol.IMAGENET_STD + wsol.IMAGENET_MEAN)
  ours_maps, head = method.maps(params, state, images, jnp.asarray(labels), ("cub", "openimages"))
  np.testing.assert_allclose(head["s_oo"], logits["logits"].detach().numpy(), rtol=1e-4, atol=1e-4)
  # Each mode's (M_o, M_b) pair on the pair's joint scale: on ResNet the map layer is F itself,
  # which the aggregators read without bias, so the "openimages" M_b is zero in exact arithmetic
  # (s_bb reaches F only through the softmax over positions, whose spatial sum vanishes, so
  # w = 0), and on its own scale both sides would be rounding noise.
  for mode, refs in (("cub", maps[:2]), ("openimages", maps[2:])):
    scale = max(np.abs(r).max() for r in refs)
    for ours, ref in zip(ours_maps[mode], refs):
      np.testing.assert_allclose(np.asarray(ours) / scale, ref / scale, atol=1e-4)
  if arch == "resnet50":
    assert np.abs(maps[3]).max() < 1e-5 * np.abs(maps[2]).max()  # the degenerate map, as released
  # The four scores of the loss as released.
  out = method.backbone.apply({"params": params["backbone"], **state}, wsol.preprocess(images))
  scores = method._head(params, out)  # pylint: disable=protected-access
  for ours, theirs in (
      ("s_oo", "logits"),
      ("s_bb", "logits_back"),
      ("s_bo", "logits_rev"),
      ("s_ob", "logits_back_rev"),
  ):
    np.testing.assert_allclose(scores[ours], logits[theirs].detach().numpy(), rtol=1e-4, atol=1e-4)


def test_bcam_layout_and_dropout_as_released():
  vgg = _bcam_method("vgg16", False)
  batch = {"image": jnp.zeros((1, 32, 32, 3), jnp.uint8), "label": jnp.zeros((1,), jnp.int32)}
  params = vgg.init_variables(jax.random.key(0), batch)["params"]["bcam_head"]
  assert params["aggregator_A"]["kernel"].shape == (64, 4) and "bias" in params["aggregator_A"]
  assert params["classifier_A"]["kernel"].shape == (128, 3)  # pooled from conv6 (1024 / 8)
  inc = _bcam_method("inceptionv3", True)
  assert inc.head.dropout == 0.5 and not inc.head.attention_bias
  f = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 3, 8)), jnp.float32)
  head_params = inc.head.init(jax.random.key(0), f)["params"]
  run = lambda train, seed: inc.head.apply(
      {"params": head_params}, f, train=train, rngs={"dropout": jax.random.key(seed)}
  )["s_oo"]
  assert not np.allclose(run(True, 1), run(True, 2))  # dropout on F in training (released)
  np.testing.assert_array_equal(run(False, 1), run(False, 2))
  assert _bcam_method("resnet50", True).head.dropout == 0.0


# ------------------------------------------------------------------------ guards and configs


def test_paper_network_refuses_random_init_unless_allowed():
  config = config_lib.load("configs/cam.py:resnet50_cub")
  assert config.method.allow_random_init is False
  method = cam.Method(
      ml_collections.ConfigDict(
          {
              "method": {"name": "cam", "init_from": "", "allow_random_init": False},
              "model": {"name": "vgg16_wsol", "preset": "paper", "large_feature_map": False},
          }
      ),
      DataInfo(num_classes=3),
  )
  with pytest.raises(ValueError, match="allow_random_init"):
    method.check_initialisation()
  method.config.method.allow_random_init = True
  method.check_initialisation()
  method.config.method.allow_random_init = False
  method.config.model.preset = "tiny"  # the CPU presets are trained from scratch on purpose
  method.check_initialisation()


def test_converted_checkpoint_remembers_its_feature_map_size(tmp_path):
  from jaxmilab.convert import torchvision_wsol  # pylint: disable=g-import-not-at-top

  (tmp_path / torchvision_wsol.MODEL_INFO).write_text(
      '{"arch": "resnet50", "large_feature_map": false, "num_classes": 3}'
  )
  config = ml_collections.ConfigDict(
      {
          "method": {"name": "cam", "init_from": str(tmp_path)},
          "model": {"name": "resnet50_wsol", "preset": "tiny", "large_feature_map": True},
      }
  )
  with pytest.raises(ValueError, match="large_feature_map=False"):
    cam.Method(config, DataInfo(num_classes=3))
  config.model.large_feature_map = False
  cam.Method(config, DataInfo(num_classes=3))
  assert torchvision_wsol.LARGE_FEATURE_MAP[("resnet50", "openimages")] is False
  assert torchvision_wsol.LARGE_FEATURE_MAP[("resnet50", "cub")] is True


def test_cub_masks_from_cubmask_metadata_give_pxap(tmp_path):
  """CUB boxes plus the CUBMask metadata (BagCAMs' metadata/CUBMask/test): masks for CUB PxAP."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from jaxmilab.data import wsol_folders  # pylint: disable=g-import-not-at-top

  data, meta = tmp_path / "dataset", tmp_path / "metadata"
  (data / "CUB" / "a").mkdir(parents=True)
  Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(data / "CUB" / "a" / "1.jpg")
  (data / "CUBMask" / "masks" / "a").mkdir(parents=True)
  m = np.zeros((16, 16), np.uint8)
  m[4:12, 2:9] = 255
  Image.fromarray(m).save(data / "CUBMask" / "masks" / "a" / "1.png")
  fake_trees.wsol_metadata(meta, "CUB", labels={"a/1.jpg": 1}, localization=["a/1.jpg,2,4,8,11"])
  cfg = ml_collections.ConfigDict(
      dict(
          dataset="CUB", data_root=str(data), metadata_root=str(meta), resize_size=16, crop_size=16
      )
  )
  batch = next(
      iter(
          wsol_folders.create(
              cfg, batch_size=1, seed=0, process_index=0, process_count=1
          ).eval_batches()
      )
  )
  assert "mask" not in batch  # no CUBMask metadata: boxes only
  (meta / "CUBMask" / "test").mkdir(parents=True)
  (meta / "CUBMask" / "test" / "localization.txt").write_text("imgs/a/1.jpg,masks/a/1.png,\n")
  ds = wsol_folders.create(cfg, batch_size=1, seed=0, process_index=0, process_count=1)
  batch = next(iter(ds.eval_batches()))
  np.testing.assert_array_equal(batch["mask"][0], m > 0)
  assert ds.info.extra["has_masks"] and "boxes" in batch
  ev = wsol_metrics.WSOLEvaluator({"": "scoremap"})
  ev.update(batch, {"scoremap": batch["mask"].astype(np.float32), "pred": batch["label"]})
  out = ev.compute()
  assert out["PxAP"] == pytest.approx(100.0) and out["MaxBoxAccV2"] == 100.0


def test_part_and_context_layouts_of_the_synthetic_set():
  from jaxmilab.data import wsol_synthetic  # pylint: disable=g-import-not-at-top

  common = dict(
      size=64,
      num_classes=4,
      num_examples=40,
      seed=0,
      tag=2,
      with_boxes=True,
      max_boxes=4,
      description="test",
  )
  part = wsol_synthetic.SyntheticWSOL((), layout="part", **common)
  bodies = []
  for i in range(40):
    ex = part[i]
    img, mask = ex["image"].astype(int), ex["mask"]
    grey = (np.abs(img[..., 0] - img[..., 1]) < 5) & (np.abs(img[..., 1] - img[..., 2]) < 5)
    patch = mask & ~grey  # the class-coloured pixels inside the body
    assert 0.03 <= patch.sum() / mask.sum() <= 0.12, i
    ys, xs = np.nonzero(mask)
    np.testing.assert_array_equal(
        ex["boxes"][0], (xs.min(), ys.min(), xs.max(), ys.max())
    )  # whole body
    bodies.append(np.where(mask & grey)[0].size)
  # The body is class-agnostic: its texture is the same for every class.
  ex0, ex1 = part[0], next(part[i] for i in range(1, 40) if part[i]["label"] != part[0]["label"])
  both = ex0["mask"] & ex1["mask"]
  grey0 = np.abs(ex0["image"].astype(int) - ex1["image"].astype(int)).sum(-1) == 0
  assert (grey0 & both).sum() > 0.5 * both.sum()
  for i in range(40):  # eval examples carry the patch: class-coloured pixels inside the body
    ex = part[i]
    grey = np.ptp(ex["image"].astype(int), axis=-1) < 5
    np.testing.assert_array_equal(ex["part"], ex["mask"] & ~grey)


def test_context_layout_needs_the_band_and_keeps_it_two_cells_away():
  from jaxmilab.data import wsol_synthetic  # pylint: disable=g-import-not-at-top

  common = dict(
      size=112,
      num_classes=4,
      num_examples=60,
      seed=0,
      tag=2,
      with_boxes=True,
      max_boxes=4,
      description="test",
      layout="context",
  )
  context = wsol_synthetic.SyntheticWSOL((), context_prob=0.8, **common)
  bare = wsol_synthetic.SyntheticWSOL((), context_prob=0.0, **common)
  with_band, objects = 0, {}
  for i in range(60):
    ex, ex0 = context[i], bare[i]
    band, mask = ex["context"], ex["mask"]
    # The same image without its band: same object, the band's pixels differ, nothing else.
    np.testing.assert_array_equal(ex["mask"], ex0["mask"])
    assert not ex0["context"].any()
    changed = (ex["image"] != ex0["image"]).any(-1)
    assert not (changed & ~band).any()
    if band.any():
      with_band += 1
      ys, xs = np.nonzero(mask)
      bys, bxs = np.nonzero(band)
      gap = max(bxs.min() - xs.max(), xs.min() - bxs.max()) - 1  # background columns between them
      assert gap >= 16, (i, gap)  # two stride-8 feature cells
      # No band has the colour of an object.
      band_colour = ex["image"][band].astype(int).mean(0)
      for colour in wsol_synthetic.COLORS[:2]:
        assert np.abs(band_colour - colour).max() > 30
    # Classes 2j and 2j+1 draw the same object (shape, colour, stripes): keyed by pair.
    pixels = ex["image"][mask]
    objects.setdefault(int(ex["label"]) // 2, set()).add(
        tuple(np.round(pixels.mean(0) / 25).astype(int))
    )
  assert 40 <= with_band <= 58  # context_prob 0.8
  assert len(objects) == 2
