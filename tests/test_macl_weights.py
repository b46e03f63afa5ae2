"""Import of released MACL / PCL U-Net weights (jaxmilab.convert.macl_weights).

The reference network below is written here from stevezs315/MACL network/unet2d.py
(`encoder_MACL`, `decoder_MACL`, `UNet2D_classification_MACL`): a random instance is saved
as the released `model_pth/MACL_*.pth` files are (`torch.save({"net": state_dict})`,
train_contrast.py `save_model`), read back through the weights-only reader, and the flax
MACLNet with those weights must give the torch network's six outputs on the same four inputs.
"""

from __future__ import annotations

import pickle

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxmilab import checkpoint
from jaxmilab.convert import macl_weights
from jaxmilab.convert import torch_checkpoint
from jaxmilab.data.base import DataInfo
from jaxmilab.methods import macl
from jaxmilab.methods import macl_finetune
from jaxmilab.models import pcl_unet

WIDTH, CLASSES, SCALE = 2, 64, 0.25  # embedding int(64 * 0.25) = 16


def _torch_macl(in_channels: int, f: int, classes: int, scale: float):
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top

  def contract(cin, cout):
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.LeakyReLU(inplace=True)
    )

  class EncoderMACL(nn.Module):

    def __init__(self):
      super().__init__()
      self.contr_1_1, self.contr_1_2 = contract(in_channels, f), contract(f, f)
      self.pool = nn.MaxPool2d(2, stride=2)
      self.contr_2_1, self.contr_2_2 = contract(f, 2 * f), contract(2 * f, 2 * f)
      self.contr_3_1, self.contr_3_2 = contract(2 * f, 4 * f), contract(4 * f, 4 * f)
      self.contr_4_1, self.contr_4_2 = contract(4 * f, 8 * f), contract(8 * f, 8 * f)
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
    return layer[:, :, (lh - h) // 2 : (lh - h) // 2 + h, (lw - w) // 2 : (lw - w) // 2 + w]

  class DecoderMACL(nn.Module):

    def __init__(self):
      super().__init__()
      self.upscale5 = nn.ConvTranspose2d(16 * f, 8 * f, kernel_size=2, stride=2)
      self.expand_4_1, self.expand_4_2 = contract(16 * f, 8 * f), contract(8 * f, 8 * f)
      self.upscale4 = nn.ConvTranspose2d(8 * f, 4 * f, kernel_size=2, stride=2)
      self.expand_3_1, self.expand_3_2 = contract(8 * f, 4 * f), contract(4 * f, 4 * f)
      self.upscale3 = nn.ConvTranspose2d(4 * f, 2 * f, 2, stride=2)
      self.expand_2_1, self.expand_2_2 = contract(4 * f, 2 * f), contract(2 * f, 2 * f)
      self.upscale2 = nn.ConvTranspose2d(2 * f, f, 2, stride=2)
      self.expand_1_1, self.expand_1_2 = contract(2 * f, f), contract(f, f)

    def forward(self, x, c4, c3, c2, c1):
      outs = []
      for up, e1, e2, skip in (
          (self.upscale5, self.expand_4_1, self.expand_4_2, c4),
          (self.upscale4, self.expand_3_1, self.expand_3_2, c3),
          (self.upscale3, self.expand_2_1, self.expand_2_2, c2),
          (self.upscale2, self.expand_1_1, self.expand_1_2, c1),
      ):
        u = up(x)
        x = e2(e1(torch.cat([u, crop(skip, u.size(2), u.size(3))], 1)))
        outs.append(x)
      return tuple(outs)

  class UNet2DClassificationMACL(nn.Module):

    def __init__(self):
      super().__init__()
      self.share_encoder = EncoderMACL()
      self.online_decoder = DecoderMACL()
      embed = int(classes * scale)
      self.target_instance_projector = nn.Sequential(
          nn.AdaptiveAvgPool2d((1, 1)),
          nn.Flatten(),
          nn.Linear(16 * f, 4 * f),
          nn.ReLU(inplace=True),
          nn.Linear(4 * f, embed),
      )
      self.online_instance_projector = nn.Sequential(
          nn.AdaptiveAvgPool2d((1, 1)),
          nn.Flatten(),
          nn.Linear(4 * f, 4 * f),
          nn.ReLU(inplace=True),
          nn.Linear(4 * f, embed),
      )
      self.target_pixel_projector = nn.Sequential(
          nn.Conv2d(16 * f, 4 * f, 3, padding=1),
          nn.BatchNorm2d(4 * f),
          nn.LeakyReLU(inplace=True),
          nn.Conv2d(4 * f, 4 * f, 3, padding=1),
          nn.BatchNorm2d(4 * f),
          nn.LeakyReLU(inplace=True),
      )

    def forward(self, x1, x2, x3, x4):
      x_1 = self.share_encoder(x1)[0]
      x_2, *skips_2 = self.share_encoder(x2)
      x_3 = self.share_encoder(x3)[0]
      x_4, *skips_4 = self.share_encoder(x4)
      out1 = self.target_instance_projector(x_3)
      pixel_aux = self.target_pixel_projector(x_1)
      pixel_dom = self.online_decoder(x_2, *skips_2)[1]
      out2 = self.online_instance_projector(self.online_decoder(x_4, *skips_4)[1])
      return x_1, pixel_aux, out1, x_2, pixel_dom, out2

  return UNet2DClassificationMACL()


def _randomize(model, seed=0):
  """Non-trivial weights, biases and BatchNorm statistics (kaiming init leaves biases 0)."""
  import torch  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(seed)
  for m in model.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      n = m.num_features
      m.weight.data = torch.tensor(rng.uniform(0.5, 1.5, n), dtype=torch.float32)
      m.bias.data = torch.tensor(rng.normal(0, 0.1, n), dtype=torch.float32)
      m.running_mean.data = torch.tensor(rng.normal(0, 0.1, n), dtype=torch.float32)
      m.running_var.data = torch.tensor(rng.uniform(0.5, 1.5, n), dtype=torch.float32)
    elif isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)):
      m.weight.data = torch.tensor(
          rng.normal(0, 1, m.weight.shape) / np.sqrt(m.weight[0].numel()), dtype=torch.float32
      )
      if m.bias is not None:
        m.bias.data = torch.tensor(rng.normal(0, 0.1, m.bias.shape), dtype=torch.float32)


def _released_file(tmp_path, ddp_prefix=False):
  import torch  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  ref = _torch_macl(1, WIDTH, CLASSES, SCALE)
  _randomize(ref)
  sd = ref.state_dict()
  if ddp_prefix:
    sd = {f"module.{k}": v for k, v in sd.items()}
  path = tmp_path / "MACL_test.pth"
  torch.save({"net": sd}, path)
  return ref, str(path)


def _config(variant="macl"):
  config = ml_collections.ConfigDict(
      {
          "model": {
              "name": "pcl_unet",
              "width": WIDTH,
              "depth": 4,
              "num_classes": 0,
              "dtype": "float32",
          },
          "method": {"name": "macl", "variant": variant, "embed_dim": int(CLASSES * SCALE)},
      }
  )
  return config


@pytest.mark.torch
def test_released_layout_matches_the_pytorch_network(tmp_path):
  import torch  # pylint: disable=g-import-not-at-top

  ref, path = _released_file(tmp_path, ddp_prefix=True)
  loaded = checkpoint.load_variables(path)  # the generic init_from route
  assert set(loaded["params"]) == {
      "backbone",
      "pixel_projector",
      "aux_image_head",
      "dom_image_head",
  }
  assert sorted(loaded["params"]["backbone"]["decoder"]) == [f"block_{b}" for b in range(1, 5)]

  method = macl.Method(_config(), DataInfo())
  rng = np.random.default_rng(1)
  x = {k: rng.standard_normal((2, 64, 64, 1)).astype(np.float32) for k in macl.VIEW_KEYS}
  x["position"] = np.array([0.2, 0.6], np.float32)
  fresh = method.init_variables(jax.random.key(0), x)
  # MACLNet runs decoder blocks 1-2 only: the released file's blocks 3-4 are extra here.
  params = dict(loaded["params"])
  params["backbone"] = {
      "encoder": params["backbone"]["encoder"],
      "decoder": {
          k: v for k, v in params["backbone"]["decoder"].items() if k in ("block_1", "block_2")
      },
  }
  stats = dict(loaded["model_state"]["batch_stats"])
  stats["backbone"] = {
      "encoder": stats["backbone"]["encoder"],
      "decoder": {
          k: v for k, v in stats["backbone"]["decoder"].items() if k in ("block_1", "block_2")
      },
  }
  variables = {"params": params, "batch_stats": stats}
  assert jax.tree_util.tree_structure(fresh) == jax.tree_util.tree_structure(variables)
  for a, b in zip(jax.tree_util.tree_leaves(fresh), jax.tree_util.tree_leaves(variables)):
    assert a.shape == b.shape

  # The released loop feeds x2, x4 downsampled by s = 0.25 (train_contrast.py).
  ref.eval()
  t = lambda a: torch.tensor(a.transpose(0, 3, 1, 2))
  down = lambda a: torch.nn.functional.interpolate(
      t(a), scale_factor=SCALE, mode="bilinear", align_corners=True
  )
  with torch.no_grad():
    y_aux, pixel_aux, g_1, y_dom, pixel_dom, g_2 = ref(
        t(x["view_i1"]), down(x["view_i2"]), t(x["view_v1"]), down(x["view_v2"])
    )
  out = method.net.apply(variables, {k: x[k] for k in macl.VIEW_KEYS}, train=False)
  nhwc = lambda a: a.numpy().transpose(0, 2, 3, 1)
  for name, want in (
      ("y_aux", nhwc(y_aux)),
      ("pixel_aux", nhwc(pixel_aux)),
      ("g_1", g_1.numpy()),
      ("y_dom", nhwc(y_dom)),
      ("pixel_dom", nhwc(pixel_dom)),
      ("g_2", g_2.numpy()),
  ):
    np.testing.assert_allclose(np.asarray(out[name]), want, rtol=1e-4, atol=1e-4, err_msg=name)


@pytest.mark.torch
def test_finetune_init_from_released_file(tmp_path):
  ref, path = _released_file(tmp_path)
  config = ml_collections.ConfigDict(
      {
          "model": {
              "name": "pcl_unet",
              "width": WIDTH,
              "depth": 4,
              "num_classes": 0,
              "dtype": "float32",
          },
          "method": {"name": "macl_finetune", "init_from": path, "init_decoder_blocks": 4},
      }
  )
  method = macl_finetune.Method(config, DataInfo(num_classes=3))
  fresh = method.init_variables(jax.random.key(0), {"image": jnp.zeros((1, 32, 32, 1))})
  loaded = checkpoint.load_variables(path)
  merged = method.init_from(fresh, {"params": loaded["params"], **loaded["model_state"]})
  sd = ref.state_dict()
  got = merged["params"]["encoder"]["level_2_conv_1"]["conv"]["kernel"]
  np.testing.assert_array_equal(
      got, sd["share_encoder.contr_2_1.0.weight"].numpy().transpose(2, 3, 1, 0)
  )
  np.testing.assert_array_equal(
      merged["batch_stats"]["decoder"]["block_4"]["conv_2"]["bn"]["var"],
      sd["online_decoder.expand_1_2.1.running_var"].numpy(),
  )
  # The segmentation head is not in the pre-training file: it keeps its fresh values.
  np.testing.assert_array_equal(
      merged["params"]["head"]["kernel"], fresh["params"]["head"]["kernel"]
  )


def test_unet2d_layout_round_trip_and_errors():
  """A fine-tuned UNet2D state dict (encoder.* / decoder.* with head.0) maps onto PCLUNet's
  own tree; unknown keys and non-U-Net dicts are errors naming them."""
  net = pcl_unet.PCLUNet(width=2, num_classes=3)
  variables = jax.tree_util.tree_map(
      np.asarray, net.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
  )
  sd = {}
  for level in range(1, 5):
    for i in (1, 2):
      p = variables["params"]["encoder"][f"level_{level}_conv_{i}"]
      s = variables["batch_stats"]["encoder"][f"level_{level}_conv_{i}"]
      sd[f"encoder.contr_{level}_{i}.0.weight"] = p["conv"]["kernel"].transpose(3, 2, 0, 1)
      sd[f"encoder.contr_{level}_{i}.0.bias"] = p["conv"]["bias"]
      sd[f"encoder.contr_{level}_{i}.1.weight"] = p["bn"]["scale"]
      sd[f"encoder.contr_{level}_{i}.1.bias"] = p["bn"]["bias"]
      sd[f"encoder.contr_{level}_{i}.1.running_mean"] = s["bn"]["mean"]
      sd[f"encoder.contr_{level}_{i}.1.running_var"] = s["bn"]["var"]
      sd[f"encoder.contr_{level}_{i}.1.num_batches_tracked"] = np.array(3)
  for i, idx in ((1, 0), (2, 2)):
    sd[f"encoder.center.{idx}.weight"] = variables["params"]["encoder"][f"center_conv_{i}"][
        "kernel"
    ].transpose(3, 2, 0, 1)
    sd[f"encoder.center.{idx}.bias"] = variables["params"]["encoder"][f"center_conv_{i}"]["bias"]
  for block, (up, level) in enumerate(((5, 4), (4, 3), (3, 2), (2, 1)), start=1):
    p = variables["params"]["decoder"][f"block_{block}"]
    s = variables["batch_stats"]["decoder"][f"block_{block}"]
    sd[f"decoder.upscale{up}.weight"] = p["upconv"]["kernel"][::-1, ::-1].transpose(2, 3, 0, 1)
    sd[f"decoder.upscale{up}.bias"] = p["upconv"]["bias"]
    for i in (1, 2):
      sd[f"decoder.expand_{level}_{i}.0.weight"] = p[f"conv_{i}"]["conv"]["kernel"].transpose(
          3, 2, 0, 1
      )
      sd[f"decoder.expand_{level}_{i}.0.bias"] = p[f"conv_{i}"]["conv"]["bias"]
      sd[f"decoder.expand_{level}_{i}.1.weight"] = p[f"conv_{i}"]["bn"]["scale"]
      sd[f"decoder.expand_{level}_{i}.1.bias"] = p[f"conv_{i}"]["bn"]["bias"]
      sd[f"decoder.expand_{level}_{i}.1.running_mean"] = s[f"conv_{i}"]["bn"]["mean"]
      sd[f"decoder.expand_{level}_{i}.1.running_var"] = s[f"conv_{i}"]["bn"]["var"]
  sd["decoder.head.0.weight"] = variables["params"]["head"]["kernel"].transpose(3, 2, 0, 1)
  converted = macl_weights.convert(sd)
  want = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
  got = {
      "params": converted["params"]["backbone"],
      "batch_stats": converted["batch_stats"]["backbone"],
  }
  assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
  for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    np.testing.assert_array_equal(a, b)

  with pytest.raises(macl_weights.MACLWeightsError, match="decoder.extra.weight"):
    macl_weights.convert({**sd, "decoder.extra.weight": np.zeros(2)})
  # Many unknown keys (another network's file): one line of bounded length with the count.
  extra = {f"other_net.block_{i}.weight": np.zeros((8, 8, 3, 3), np.float32) for i in range(500)}
  with pytest.raises(macl_weights.MACLWeightsError) as err:
    macl_weights.convert({**sd, **extra})
  msg = str(err.value)
  assert "\n" not in msg and len(msg) < 400, msg
  assert "500 state-dict key(s)" in msg and "(496 more)" in msg, msg
  assert "other_net.block_0.weight (8, 8, 3, 3)" in msg
  with pytest.raises(macl_weights.MACLWeightsError, match="not a PCL / MACL UNet2D"):
    macl_weights.convert({"conv.weight": np.zeros((1, 1, 3, 3))})
  assert not macl_weights.is_unet2d({"conv.weight": np.zeros(1)})


def test_released_file_with_code_is_refused(tmp_path):
  """The reader executes nothing: a .pth whose pickle calls a function is refused."""

  class Evil:

    def __reduce__(self):
      return (print, ("pickled code ran",))

  path = tmp_path / "MACL_evil.pth"
  with open(path, "wb") as f:
    pickle.dump({"net": {"share_encoder.contr_1_1.0.weight": Evil()}}, f, protocol=2)
  with pytest.raises(torch_checkpoint.CheckpointError):
    macl_weights.load(str(path))
