"""DeepLab / dilated ResNet: PyTorch parity (1e-4) against transcriptions of torchvision's ResNet
(replace_stride_with_dilation) and of the released CDSP modules (models/deeplabV3_lorm.py,
models/deeplabV2.py), weights moved through `.pth` files and the weights-only reader; forward,
LoRM loss and input gradients; layer plans; torchvision `.pth` import through init_from.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmilab.convert import mapping
from jaxmilab.convert import torch_checkpoint
from jaxmilab.models import deeplab
from jaxmilab.models import resnet
from tests.torch_reference import convnets

D = 16  # width divisor of the tiny networks (64 -> 4 channels)
BLOCKS = (1, 2, 2, 3)


def test_layer_plans():
  b = (3, 4, 6, 3)
  assert resnet.layer_plan("torchvision", 8, b) == [
      (1, (1, 1, 1)),
      (2, (1, 1, 1, 1)),
      (1, (1, 2, 2, 2, 2, 2)),
      (1, (2, 4, 4)),
  ]
  assert resnet.layer_plan("torchvision", 16, b) == [
      (1, (1, 1, 1)),
      (2, (1, 1, 1, 1)),
      (2, (1,) * 6),
      (1, (1, 2, 2)),
  ]
  assert resnet.layer_plan("torchvision", 32, b)[3] == (2, (1, 1, 1))
  assert resnet.layer_plan("cdsp", 8, b) == [
      (1, (1, 1, 1)),
      (2, (1, 1, 1, 1)),
      (1, (2,) * 6),
      (1, (4, 8, 16)),
  ]
  with pytest.raises(ValueError, match="output stride 8 only"):
    resnet.layer_plan("cdsp", 16, b)


def test_resize_matrix_matches_formula():
  # align_corners=True: out i samples i (in - 1) / (out - 1); rows sum to 1.
  m = deeplab.resize_matrix(5, 3, True)
  np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-6)
  np.testing.assert_allclose(m @ np.array([0.0, 1.0, 2.0]), [0, 0.5, 1, 1.5, 2], atol=1e-6)
  m = deeplab.resize_matrix(4, 2, False)
  np.testing.assert_allclose(m @ np.array([0.0, 1.0]), [0, 0.25, 0.75, 1], atol=1e-6)


# --------------------------------------------------------------------- PyTorch transcriptions


def _torch_modules(torch):
  """Own transcriptions: torchvision ResNet (v0.2x resnet.py) and the released CDSP networks
  (their bottleneck blocks: tests/torch_reference/convnets.py)."""
  nn, F = torch.nn, torch.nn.functional

  class TVResNet(nn.Module):  # torchvision ResNet with replace_stride_with_dilation

    def __init__(self, layers, replace_stride_with_dilation, d):
      super().__init__()
      self.inplanes, self.dilation = 64 // d, 1
      self.conv1 = nn.Conv2d(3, self.inplanes, 7, 2, 3, bias=False)
      self.bn1 = nn.BatchNorm2d(self.inplanes)
      self.relu = nn.ReLU()
      self.maxpool = nn.MaxPool2d(3, 2, 1)
      self.layer1 = self._make_layer(64 // d, layers[0])
      self.layer2 = self._make_layer(128 // d, layers[1], 2, replace_stride_with_dilation[0])
      self.layer3 = self._make_layer(256 // d, layers[2], 2, replace_stride_with_dilation[1])
      self.layer4 = self._make_layer(512 // d, layers[3], 2, replace_stride_with_dilation[2])
      self.fc = nn.Linear(2048 // d, 10)

    def _make_layer(self, planes, blocks, stride=1, dilate=False):
      previous_dilation = self.dilation
      if dilate:
        self.dilation *= stride
        stride = 1
      downsample = convnets.downsample(self.inplanes, planes, stride)
      layers = [
          convnets.bottleneck(
              self.inplanes, planes, stride, dilation=previous_dilation, downsample=downsample
          )
      ]
      self.inplanes = planes * 4
      layers += [
          convnets.bottleneck(self.inplanes, planes, dilation=self.dilation)
          for _ in range(1, blocks)
      ]
      return nn.Sequential(*layers)

    def forward(self, x):
      x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
      x1 = self.layer1(x)
      return x1, self.layer4(self.layer3(self.layer2(x1)))

  class ASPPModule(nn.Module):

    def __init__(self, inplanes, planes, kernel_size, padding, dilation):
      super().__init__()
      self.atrous_conv = nn.Conv2d(inplanes, planes, kernel_size, 1, padding, dilation, bias=False)
      self.bn = nn.BatchNorm2d(planes)

    def forward(self, x):
      return torch.relu(self.bn(self.atrous_conv(x)))

  class ASPP(nn.Module):

    def __init__(self, inplanes, dilations, planes, v3plus):
      super().__init__()
      self.v3plus = v3plus
      self.aspp1 = ASPPModule(inplanes, planes, 1, 0, dilations[0])
      self.aspp2 = ASPPModule(inplanes, planes, 3, dilations[1], dilations[1])
      self.aspp3 = ASPPModule(inplanes, planes, 3, dilations[2], dilations[2])
      self.aspp4 = ASPPModule(inplanes, planes, 3, dilations[3], dilations[3])
      self.global_avg_pool = nn.Sequential(
          nn.AdaptiveAvgPool2d((1, 1)),
          nn.Conv2d(inplanes, planes, 1, bias=False),
          nn.BatchNorm2d(planes),
          nn.ReLU(),
      )
      if v3plus:
        self.prject = nn.Sequential(
            nn.Conv2d(5 * planes, planes, 1, bias=False),
            nn.BatchNorm2d(planes),
            nn.ReLU(),
            nn.Dropout(0.5),
        )
      else:
        self.conv1 = nn.Conv2d(5 * planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)

    def forward(self, x):
      x4 = self.aspp4(x)
      x5 = F.interpolate(
          self.global_avg_pool(x), size=x4.shape[2:], mode="bilinear", align_corners=True
      )
      y = torch.cat((self.aspp1(x), self.aspp2(x), self.aspp3(x), x4, x5), 1)
      return self.prject(y) if self.v3plus else self.bn1(self.conv1(y))

  class ClassifierV2(nn.Module):  # Classifier_Module_V2: summed atrous convs

    def __init__(self, dilations, num_classes, inplane):
      super().__init__()
      self.conv2d_list = nn.ModuleList(
          [nn.Conv2d(inplane, num_classes, 3, 1, d, d, bias=True) for d in dilations]
      )

    def forward(self, x):
      out = self.conv2d_list[0](x)
      for conv in self.conv2d_list[1:]:
        out = out + conv(x)
      return out

  class LoRM(nn.Module):

    def __init__(self, dims):
      super().__init__()
      self.query_conv = nn.Conv2d(dims, dims, 1)
      self.key_conv = nn.Conv2d(dims, dims, 1)
      self.gamma = nn.Parameter(torch.ones(1))

    def forward(self, x, cam):
      cam = cam.clone()
      cam[cam == 255] = 0
      b, c, h, w = x.shape
      cam = F.interpolate(
          cam.unsqueeze(1).float(), size=(h, w), mode="bilinear", align_corners=True
      )
      mask = torch.zeros_like(cam)
      mask[cam > 0] = 1
      mask = mask.view(b, -1, h * w).permute(0, 2, 1)
      q = self.query_conv(x).view(b, -1, h * w).permute(0, 2, 1)
      k = self.key_conv(x).view(b, -1, h * w)
      energy = torch.bmm(q, k)
      norm = torch.bmm(q.pow(2).sum(-1, keepdim=True).sqrt(), k.pow(2).sum(1, keepdim=True).sqrt())
      atten = mask * torch.softmax(energy / norm, dim=-1)
      new_x = self.gamma * torch.bmm(atten, x.view(b, -1, h * w).permute(0, 2, 1)).permute(
          0, 2, 1
      ).view(b, c, h, w)
      result = (x - new_x) ** 2
      return torch.sum(result) / torch.count_nonzero(result)

  class CDSPNet(nn.Module):  # ResNet_lorm (v3plus) / deeplabV2 ResNet, widths / d

    def __init__(self, arch, layers, num_classes, d, head="concat"):
      super().__init__()
      self.arch, self.inplanes = arch, 64 // d
      self.conv1 = nn.Conv2d(3, self.inplanes, 7, 2, 3, bias=False)
      self.bn1 = nn.BatchNorm2d(self.inplanes)
      self.maxpool = nn.MaxPool2d(3, 2, 1, ceil_mode=True)
      self.layer1 = self._make_layer(64 // d, layers[0])
      self.layer2 = self._make_layer(128 // d, layers[1], stride=2)
      self.layer3 = self._make_layer(256 // d, layers[2], dilation=2)
      self.layer4 = self._make_layer(512 // d, layers[3], dilation=4, dilations=[4, 8, 16])
      high = 2048 // d
      if arch == "deeplabv3plus":
        self.layer_pred0 = ASPP(high, [1, 6, 12, 18], high // 8, True)
        self.layer_lorm = LoRM(high)
        self.reduce = nn.Sequential(
            nn.Conv2d(256 // d, 48 // d, 1, bias=False), nn.BatchNorm2d(48 // d), nn.ReLU()
        )
        self.fuse = nn.Sequential(
            nn.Conv2d(high // 8 + 48 // d, high // 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(high // 8),
            nn.ReLU(),
            nn.Conv2d(high // 8, high // 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(high // 8),
            nn.ReLU(),
        )
        self.classifier = nn.Conv2d(high // 8, num_classes, 1, bias=True)
      elif head == "concat":
        self.layer5 = ASPP(high, [6, 12, 18, 24], num_classes, False)
      else:
        self.layer5 = ClassifierV2([6, 12, 18, 24], num_classes, high)

    def _make_layer(self, planes, blocks, stride=1, dilation=1, dilations=None):
      # Released CDSP trunk: stride on conv1, a projection shortcut also on the dilated stages.
      downsample = convnets.downsample(self.inplanes, planes, stride, force=dilation in (2, 4))
      ds = dilations or [dilation] * blocks
      layers = [
          convnets.bottleneck(
              self.inplanes,
              planes,
              stride,
              dilation=ds[0],
              downsample=downsample,
              stride_on="conv1",
          )
      ]
      self.inplanes = planes * 4
      layers += [
          convnets.bottleneck(self.inplanes, planes, dilation=ds[i], stride_on="conv1")
          for i in range(1, blocks)
      ]
      return nn.Sequential(*layers)

    def forward(self, x, cam=None):
      x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
      x1 = self.layer1(x)
      x4 = self.layer4(self.layer3(self.layer2(x1)))
      if self.arch != "deeplabv3plus":
        return self.layer5(x4), None
      out4 = F.interpolate(
          self.layer_pred0(x4), size=x1.shape[-2:], mode="bilinear", align_corners=True
      )
      pred = self.classifier(self.fuse(torch.cat([self.reduce(x1), out4], 1)))
      return pred, (self.layer_lorm(x4, cam) if cam is not None else None)

  return TVResNet, CDSPNet


def _randomize_bn(torch, net):
  convnets.randomize_batchnorm(net, torch.Generator().manual_seed(1))
  net.eval()


def _through_pth(torch, net, tmp_path) -> dict[str, np.ndarray]:
  path = str(tmp_path / "net.pth")
  torch.save({"state_dict": net.state_dict()}, path)
  return torch_checkpoint.load_state_dict(path)  # weights-only reader, no torch unpickling


@pytest.mark.torch
@pytest.mark.parametrize("output_stride", [8, pytest.param(16, marks=pytest.mark.slow)])
def test_torchvision_dilated_resnet_parity(output_stride, tmp_path):
  torch = pytest.importorskip("torch")
  tv_resnet, _ = _torch_modules(torch)
  torch.manual_seed(0)
  replace = {8: (False, True, True), 16: (False, False, True)}[output_stride]
  net = tv_resnet(BLOCKS, replace, D)
  _randomize_bn(torch, net)
  variables = resnet.variables_from_torchvision(_through_pth(torch, net, tmp_path))
  model = resnet.ResNet(BLOCKS, "torchvision", output_stride, width_divisor=D)
  x = np.random.default_rng(0).normal(size=(2, 35, 29, 3)).astype(np.float32)
  out = model.apply(variables, jnp.asarray(x))
  with torch.no_grad():
    x1, x4 = net(torch.tensor(x).permute(0, 3, 1, 2))
  np.testing.assert_allclose(out["layer1"], x1.permute(0, 2, 3, 1).numpy(), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(out["layer4"], x4.permute(0, 2, 3, 1).numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.torch
@pytest.mark.parametrize(
    "arch,head",
    [
        pytest.param("deeplabv3plus", "concat", marks=pytest.mark.slow),
        pytest.param("deeplabv2", "concat", marks=pytest.mark.slow),
        pytest.param("deeplabv2", "sum", marks=pytest.mark.slow),
    ],
)
def test_released_cdsp_network_parity(arch, head, tmp_path):
  """Logits, LoRM loss and the input gradient of their weighted sum, eval-mode BatchNorm."""
  torch = pytest.importorskip("torch")
  _, cdsp_net = _torch_modules(torch)
  torch.manual_seed(0)
  net = cdsp_net(arch, BLOCKS, 5, D, head)
  _randomize_bn(torch, net)
  if arch == "deeplabv3plus":
    with torch.no_grad():
      net.layer_lorm.gamma.fill_(0.7)
  sd = _through_pth(torch, net, tmp_path)
  variables = deeplab.variables_from_torch_params(mapping.convert_state_dict(sd)[0])
  model = deeplab.create(
      dict(
          arch=arch,
          head=head,
          preset="tiny",
          blocks=BLOCKS,
          num_classes=5,
          aspp_channels=2048 // D // 8,
          low_channels=48 // D,
          decoder_channels=2048 // D // 8,
          lorm=arch == "deeplabv3plus",
      )
  )
  fresh = model.init(jax.random.key(0), jnp.zeros((1, 33, 33, 3)))
  assert jax.tree.structure(fresh) == jax.tree.structure(
      variables
  )  # every weight mapped, nothing extra
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 37, 33, 3)).astype(np.float32)
  pseudo = rng.choice([0, 0, 2, 255], size=(2, 37, 33)).astype(np.int64)
  xt = torch.tensor(x).permute(0, 3, 1, 2).requires_grad_(True)
  pred, lorm = net(xt, torch.tensor(pseudo) if arch == "deeplabv3plus" else None)
  weights = rng.normal(size=tuple(pred.shape)).astype(np.float32)
  objective = (pred * torch.tensor(weights)).sum() + (lorm if lorm is not None else 0.0)
  objective.backward()

  def f(xj):
    out = model.apply(
        variables, xj, lorm_fg=jnp.asarray(pseudo) if arch == "deeplabv3plus" else None
    )
    total = jnp.sum(out["logits"] * jnp.asarray(weights).transpose(0, 2, 3, 1)) + out.get(
        "lorm_loss", 0.0
    )
    return total, out

  (total, out), grad = jax.value_and_grad(f, has_aux=True)(jnp.asarray(x))
  np.testing.assert_allclose(
      out["logits"], pred.detach().permute(0, 2, 3, 1).numpy(), rtol=1e-4, atol=1e-4
  )
  if lorm is not None:
    np.testing.assert_allclose(out["lorm_loss"], lorm.item(), rtol=1e-4)
  np.testing.assert_allclose(total, objective.item(), rtol=1e-4)
  g_ref = xt.grad.permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(grad, g_ref, rtol=1e-3, atol=1e-4 * np.abs(g_ref).max())


@pytest.mark.torch
def test_torchvision_pth_through_init_from(tmp_path):
  """A torchvision .pth goes through checkpoint.load_variables + cdsp init_from into the trunk."""
  torch = pytest.importorskip("torch")
  from jaxmilab import checkpoint  # pylint: disable=g-import-not-at-top
  from jaxmilab.data.base import DataInfo  # pylint: disable=g-import-not-at-top
  from jaxmilab.methods import cdsp  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top

  tv_resnet, _ = _torch_modules(torch)
  torch.manual_seed(0)
  net = tv_resnet(BLOCKS, (False, True, True), D)
  _randomize_bn(torch, net)
  path = str(tmp_path / "resnet.pth")
  torch.save(net.state_dict(), path)
  config = ml_collections.ConfigDict(
      dict(
          model=dict(
              name="deeplab", arch="deeplabv2", preset="tiny", blocks=BLOCKS, style="torchvision"
          ),
          method=dict(name="cdsp", lorm_weight=0.0),
          data=dict(name="scribble_synthetic"),
      )
  )
  method = cdsp.Method(config, DataInfo(num_classes=3))
  batch = {"image": np.zeros((1, 32, 32, 3), np.uint8)}
  variables = method.init_variables(jax.random.key(0), batch)
  merged = method.init_from(variables, checkpoint.load_variables(path))
  x = np.random.default_rng(0).normal(size=(1, 32, 32, 3)).astype(np.float32)
  trunk = resnet.ResNet(BLOCKS, "torchvision", 8, width_divisor=D)
  feats = trunk.apply(
      {"params": merged["params"]["backbone"], "batch_stats": merged["batch_stats"]["backbone"]},
      jnp.asarray(x),
  )
  with torch.no_grad():
    _, x4 = net(torch.tensor(x).permute(0, 3, 1, 2))
  np.testing.assert_allclose(feats["layer4"], x4.permute(0, 2, 3, 1).numpy(), rtol=1e-4, atol=1e-4)
  # A ResNet with other depths does not fit: one line naming the first differences.
  config.model.blocks = (1, 1, 1, 1)
  small = cdsp.Method(config, DataInfo(num_classes=3))
  with pytest.raises(mapping.CheckpointMismatchError) as err:
    small.init_from(small.init_variables(jax.random.key(0), batch), checkpoint.load_variables(path))
  msg = str(err.value)
  assert "\n" not in msg and len(msg) < 1500, msg
  assert "0 missing, 60 unexpected, 0 mis-shaped" in msg and "(56 more)" in msg, msg
  assert "batch_stats/backbone/layer2_1/bn1/mean (" in msg and "arch / depth / preset" in msg


def test_lorm_matches_numpy_and_zeroes_background_rows():
  """LoRM on hand-made features against a numpy transcription of the formula."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 3, 4, 6)).astype(np.float32)
  fg = rng.random((2, 3, 4)) > 0.5
  layer = deeplab.LoRM()
  variables = layer.init(jax.random.key(0), jnp.asarray(x), jnp.asarray(fg))
  p = jax.tree.map(np.asarray, variables["params"])
  loss = float(layer.apply(variables, jnp.asarray(x), jnp.asarray(fg)))
  xf = x.reshape(2, 12, 6)
  q = xf @ p["query_conv"]["kernel"][0, 0] + p["query_conv"]["bias"]
  k = xf @ p["key_conv"]["kernel"][0, 0] + p["key_conv"]["bias"]
  cos = np.einsum("bic,bjc->bij", q, k) / (
      np.linalg.norm(q, axis=-1)[:, :, None] * np.linalg.norm(k, axis=-1)[:, None]
  )
  a = np.exp(cos - cos.max(-1, keepdims=True))
  a = a / a.sum(-1, keepdims=True) * fg.reshape(2, 12, 1)
  sq = (xf - p["gamma"][0] * a @ xf) ** 2
  assert p["gamma"][0] == 1.0
  np.testing.assert_allclose(loss, sq.sum() / np.count_nonzero(sq), rtol=1e-5)
  # Background queries reconstruct nothing: with no foreground the loss is the mean of x^2.
  none = float(layer.apply(variables, jnp.asarray(x), jnp.zeros((2, 3, 4), bool)))
  np.testing.assert_allclose(none, np.mean(x**2), rtol=1e-5)


def test_lorm_mask_bilinear_align_corners():
  pseudo = np.zeros((1, 9, 9), np.int32)
  pseudo[0, 8, 8] = 3  # one corner pixel: only the corner of a 3x3 grid sees it
  pseudo[0, 0, 0] = 255  # ignored = background
  m = np.asarray(deeplab.lorm_mask(jnp.asarray(pseudo), (3, 3)))
  assert m.sum() == 1 and m[0, 2, 2]
  assert math.isclose(float(deeplab.resize_bilinear(jnp.ones((1, 2, 2)), (5, 5)).mean()), 1.0)
