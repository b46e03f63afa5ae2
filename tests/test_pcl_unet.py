"""The PCL / MACL 2-D U-Net against a PyTorch transcription of the official UNet2D.

The reference below is written here from dewenzeng/positional_cl network/unet2d.py
(`encoder`, `decoder`, `UNet2D`; MACL's encoder_MACL / decoder_MACL are the same layers).
Weights are copied torch -> flax; outputs and input gradients must agree within 1e-4, in
eval mode (running statistics) and in train mode (batch statistics, updated running stats).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxmilab import registry
from jaxmilab.models import pcl_unet


def _torch_unet(in_channels: int, width: int, classes: int):
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top

  def contract(cin, cout):
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.LeakyReLU(inplace=True)
    )

  class Encoder(nn.Module):

    def __init__(self):
      super().__init__()
      f = width
      self.contr_1_1, self.contr_1_2 = contract(in_channels, f), contract(f, f)
      self.contr_2_1, self.contr_2_2 = contract(f, 2 * f), contract(2 * f, 2 * f)
      self.contr_3_1, self.contr_3_2 = contract(2 * f, 4 * f), contract(4 * f, 4 * f)
      self.contr_4_1, self.contr_4_2 = contract(4 * f, 8 * f), contract(8 * f, 8 * f)
      self.pool = nn.MaxPool2d(2, stride=2)
      self.center = nn.Sequential(
          nn.Conv2d(8 * f, 16 * f, 3, padding=1),
          nn.ReLU(inplace=True),
          nn.Conv2d(16 * f, 16 * f, 3, padding=1),
          nn.ReLU(inplace=True),
      )

    def forward(self, x):
      c1 = self.contr_1_2(self.contr_1_1(x))
      c2 = self.contr_2_2(self.contr_2_1(self.pool(c1)))
      c3 = self.contr_3_2(self.contr_3_1(self.pool(c2)))
      c4 = self.contr_4_2(self.contr_4_1(self.pool(c3)))
      return self.center(self.pool(c4)), c4, c3, c2, c1

  def crop(layer, h, w):
    _, _, lh, lw = layer.size()
    y, x = (lh - h) // 2, (lw - w) // 2
    return layer[:, :, y : y + h, x : x + w]

  class Decoder(nn.Module):

    def __init__(self):
      super().__init__()
      f = width
      self.upscale5 = nn.ConvTranspose2d(16 * f, 8 * f, kernel_size=2, stride=2)
      self.expand_4_1, self.expand_4_2 = contract(16 * f, 8 * f), contract(8 * f, 8 * f)
      self.upscale4 = nn.ConvTranspose2d(8 * f, 4 * f, kernel_size=2, stride=2)
      self.expand_3_1, self.expand_3_2 = contract(8 * f, 4 * f), contract(4 * f, 4 * f)
      self.upscale3 = nn.ConvTranspose2d(4 * f, 2 * f, 2, stride=2)
      self.expand_2_1, self.expand_2_2 = contract(4 * f, 2 * f), contract(2 * f, 2 * f)
      self.upscale2 = nn.ConvTranspose2d(2 * f, f, 2, stride=2)
      self.expand_1_1, self.expand_1_2 = contract(2 * f, f), contract(f, f)
      self.head = nn.Sequential(nn.Conv2d(f, classes, kernel_size=1, stride=1, bias=False))

    def forward(self, x, c4, c3, c2, c1):
      for up, e1, e2, skip in (
          (self.upscale5, self.expand_4_1, self.expand_4_2, c4),
          (self.upscale4, self.expand_3_1, self.expand_3_2, c3),
          (self.upscale3, self.expand_2_1, self.expand_2_2, c2),
          (self.upscale2, self.expand_1_1, self.expand_1_2, c1),
      ):
        u = up(x)
        x = e2(e1(torch.cat([u, crop(skip, u.size(2), u.size(3))], 1)))
      return self.head(x)

  class UNet2D(nn.Module):

    def __init__(self):
      super().__init__()
      self.encoder, self.decoder = Encoder(), Decoder()
      for m in self.modules():  # InitWeights_He(1e-2)
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
          nn.init.kaiming_normal_(m.weight, a=1e-2)
          if m.bias is not None:
            nn.init.constant_(m.bias, 0)

    def forward(self, x):
      return self.decoder(*self.encoder(x))

  return UNet2D()


def _randomize_bn(model, rng):
  """Non-trivial BatchNorm affine parameters and running statistics (else they are 1 / 0)."""
  import torch  # pylint: disable=g-import-not-at-top

  for m in model.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      n = m.num_features
      m.weight.data = torch.tensor(rng.uniform(0.5, 1.5, n), dtype=torch.float32)
      m.bias.data = torch.tensor(rng.normal(0, 0.1, n), dtype=torch.float32)
      m.running_mean.data = torch.tensor(rng.normal(0, 0.1, n), dtype=torch.float32)
      m.running_var.data = torch.tensor(rng.uniform(0.5, 1.5, n), dtype=torch.float32)
    if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) and m.bias is not None:
      m.bias.data = torch.tensor(rng.normal(0, 0.05, m.bias.shape), dtype=torch.float32)


def _to_flax(model):
  """torch UNet2D state -> {"params", "batch_stats"} of pcl_unet.PCLUNet."""
  sd = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
  params, stats = {"encoder": {}, "decoder": {}}, {"encoder": {}, "decoder": {}}

  def conv_bn(prefix):
    p = {
        "conv": {
            "kernel": sd[f"{prefix}.0.weight"].transpose(2, 3, 1, 0),
            "bias": sd[f"{prefix}.0.bias"],
        },
        "bn": {"scale": sd[f"{prefix}.1.weight"], "bias": sd[f"{prefix}.1.bias"]},
    }
    s = {"bn": {"mean": sd[f"{prefix}.1.running_mean"], "var": sd[f"{prefix}.1.running_var"]}}
    return p, s

  for level in range(1, 5):
    for i in (1, 2):
      p, s = conv_bn(f"encoder.contr_{level}_{i}")
      params["encoder"][f"level_{level}_conv_{i}"] = p
      stats["encoder"][f"level_{level}_conv_{i}"] = s
  for i, idx in ((1, 0), (2, 2)):
    params["encoder"][f"center_conv_{i}"] = {
        "kernel": sd[f"encoder.center.{idx}.weight"].transpose(2, 3, 1, 0),
        "bias": sd[f"encoder.center.{idx}.bias"],
    }
  for block, (up, level) in enumerate(((5, 4), (4, 3), (3, 2), (2, 1)), start=1):
    # ConvTranspose2d weight [in, out, kh, kw] -> flax [kh, kw, in, out]; flax's transposed conv
    # is a fractionally-strided conv without kernel flip, PyTorch's flips: flip both spatial axes.
    w = sd[f"decoder.upscale{up}.weight"].transpose(2, 3, 0, 1)[::-1, ::-1]
    p = {"upconv": {"kernel": np.ascontiguousarray(w), "bias": sd[f"decoder.upscale{up}.bias"]}}
    s = {}
    for i in (1, 2):
      cp, cs = conv_bn(f"decoder.expand_{level}_{i}")
      p[f"conv_{i}"], s[f"conv_{i}"] = cp, cs
    params["decoder"][f"block_{block}"], stats["decoder"][f"block_{block}"] = p, s
  params["head"] = {"kernel": sd["decoder.head.0.weight"].transpose(2, 3, 1, 0)}
  return {"params": params, "batch_stats": stats}


@pytest.mark.torch
@pytest.mark.parametrize("in_channels,height,width", [(4, 36, 40)])
def test_matches_pytorch_unet2d(in_channels, height, width):
  import torch  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  rng = np.random.default_rng(0)
  f, classes = 4, 3
  ref = _torch_unet(in_channels, f, classes)
  _randomize_bn(ref, rng)
  net = pcl_unet.PCLUNet(width=f, num_classes=classes)
  x = rng.standard_normal((2, height, width, in_channels)).astype(np.float32)
  variables = _to_flax(ref)
  fresh = net.init(jax.random.key(0), jnp.asarray(x))
  assert jax.tree_util.tree_structure(fresh) == jax.tree_util.tree_structure(
      jax.tree_util.tree_map(jnp.asarray, variables)
  )
  for a, b in zip(jax.tree_util.tree_leaves(fresh), jax.tree_util.tree_leaves(variables)):
    assert a.shape == b.shape

  xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
  # Eval mode: running statistics.
  ref.eval()
  out_t = ref(xt)
  out_t.square().sum().backward()
  out, vjp = jax.vjp(lambda v: net.apply(variables, v, train=False), jnp.asarray(x))
  np.testing.assert_allclose(
      np.asarray(out), out_t.detach().numpy().transpose(0, 2, 3, 1), atol=1e-4, rtol=1e-4
  )
  (gx,) = vjp(2 * out)
  np.testing.assert_allclose(
      np.asarray(gx), xt.grad.numpy().transpose(0, 2, 3, 1), atol=1e-4, rtol=1e-3
  )

  # Train mode: batch statistics; running means updated with momentum 0.1.
  ref.train()
  out_t = ref(torch.tensor(x.transpose(0, 3, 1, 2)))
  out, updates = net.apply(variables, jnp.asarray(x), train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(
      np.asarray(out), out_t.detach().numpy().transpose(0, 2, 3, 1), atol=1e-4, rtol=1e-4
  )
  got = np.asarray(updates["batch_stats"]["encoder"]["level_2_conv_1"]["bn"]["mean"])
  np.testing.assert_allclose(got, ref.encoder.contr_2_1[1].running_mean.numpy(), atol=1e-5)


def test_parts_and_initialisation():
  net = pcl_unet.PCLUNet(width=4, num_classes=5)
  x = jnp.ones((2, 32, 32, 1))
  variables = net.init(jax.random.key(1), x)
  params = variables["params"]
  assert sorted(params) == ["decoder", "encoder", "head"]
  assert "bias" not in params["head"]
  bottleneck, skips = net.apply(variables, x, method="encode")
  assert bottleneck.shape == (2, 2, 2, 64) and [s.shape[-1] for s in skips] == [4, 8, 16, 32]
  two = net.apply(variables, bottleneck, skips, False, 2, method="decode")
  assert two.shape == (2, 8, 8, 16)
  # Only the blocks that run get parameters.
  partial = net.init(jax.random.key(1), bottleneck, skips, False, 2, method="decode")
  assert sorted(partial["params"]["decoder"]) == ["block_1", "block_2"]
  # kaiming_normal(a=0.01), fan_in (transposed conv: fan counted on its output channels).
  k = np.asarray(params["encoder"]["level_4_conv_2"]["conv"]["kernel"])  # [3, 3, 32, 32]
  np.testing.assert_allclose(k.std(), np.sqrt(2 / (1 + 1e-4) / (9 * 32)), rtol=0.05)
  assert abs(k.mean()) < 0.01
  up = np.asarray(params["decoder"]["block_1"]["upconv"]["kernel"])  # [2, 2, 64, 32]
  np.testing.assert_allclose(up.std(), np.sqrt(2 / (1 + 1e-4) / (4 * 32)), rtol=0.05)
  assert not np.any(np.asarray(params["encoder"]["center_conv_1"]["bias"]))


def test_create_and_errors():
  config = ml_collections.ConfigDict({"name": "pcl_unet", "width": 4, "num_classes": 2})
  net = registry.get_model("pcl_unet")(config)
  assert isinstance(net, pcl_unet.PCLUNet) and net.num_classes == 2
  with pytest.raises(ValueError, match="unknown key"):
    pcl_unet.create(ml_collections.ConfigDict({"name": "pcl_unet", "widht": 4}))
  with pytest.raises(ValueError, match="at least 16"):
    net.init(jax.random.key(0), jnp.ones((1, 8, 8, 1)))
