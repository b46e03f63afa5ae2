"""DCPT classifier against a PyTorch transcription of the official `PromptIR_NoImg_DC`, and
the focal loss against numpy.

The reference follows MILab-PKU/dcpt basicsr/archs/degrad_classify_arch.py (detectron2
BottleneckBlock with channels-first LayerNorm, mixing weights, conv1x1 + maxpool + ReLU per
level, last stage, mean, fc); the official training code calls it on `hook_outputs[::-1]`,
i.e. the decoder maps finest first.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmilab.models import dcpt_classifier


def _torch_classifier(feature_dims, num_classes, num_res_blocks=2):
  torch = pytest.importorskip("torch")
  nn = torch.nn
  F = torch.nn.functional

  class LayerNorm(nn.Module):  # data_format="channels_first", eps 1e-6

    def __init__(self, c, eps=1e-6):
      super().__init__()
      self.weight = nn.Parameter(torch.ones(c))
      self.bias = nn.Parameter(torch.zeros(c))
      self.eps = eps

    def forward(self, x):
      u = x.mean(1, keepdim=True)
      s = (x - u).pow(2).mean(1, keepdim=True)
      x = (x - u) / torch.sqrt(s + self.eps)
      return self.weight[:, None, None] * x + self.bias[:, None, None]

  class Conv2d(nn.Conv2d):  # detectron2 Conv2d with a norm

    def __init__(self, *args, norm=None, **kwargs):
      super().__init__(*args, **kwargs)
      self.norm = norm

    def forward(self, x):
      return self.norm(super().forward(x))

  class Bottleneck(nn.Module):

    def __init__(self, c):
      super().__init__()
      b = 2 * c
      self.conv1 = Conv2d(c, b, 1, bias=False, norm=LayerNorm(b))
      self.conv2 = Conv2d(b, b, 3, padding=1, bias=False, norm=LayerNorm(b))
      self.conv3 = Conv2d(b, c, 1, bias=False, norm=LayerNorm(c))

    def forward(self, x):
      out = F.relu(self.conv1(x))
      out = F.relu(self.conv2(out))
      return F.relu(self.conv3(out) + x)

  class Classifier(nn.Module):

    def __init__(self):
      super().__init__()
      self.bottleneck_layers = nn.ModuleList()
      self.downsample_layers = nn.ModuleList()
      for l, dim in enumerate(feature_dims):
        self.bottleneck_layers.append(nn.Sequential(*[Bottleneck(dim) for _ in range(num_res_blocks)]))
        out_dim = feature_dims[l + 1] if l < len(feature_dims) - 1 else dim
        self.downsample_layers.append(
            nn.Sequential(nn.Conv2d(dim, out_dim, 1, bias=False), nn.MaxPool2d(2, 2), nn.ReLU()))
      self.last_stage = nn.Sequential(*[Bottleneck(feature_dims[-1]) for _ in range(num_res_blocks)])
      self.mixing_weights = nn.Parameter(torch.ones(len(feature_dims)))
      self.fc = nn.Linear(feature_dims[-1], num_classes)

    def forward(self, features):
      z = 0
      w = F.softmax(self.mixing_weights, dim=0)
      for i, feature in enumerate(features):
        z = self.bottleneck_layers[i](z + w[i] * feature)
        z = self.downsample_layers[i](z)
      return self.fc(self.last_stage(z).mean(dim=[-1, -2]))

  torch.manual_seed(0)
  net = Classifier().eval()
  with torch.no_grad():
    for name, p in net.named_parameters():
      if name == "mixing_weights":
        p.normal_(0.0, 1.0)
      elif re.search(r"norm\.weight$", name):
        p.uniform_(0.5, 1.5)
      elif re.search(r"norm\.bias$", name):
        p.normal_(0.0, 0.3)
  return net


def _torch_to_flax(state_dict) -> dict:
  """torch key -> flax path, as documented in jaxmilab/models/dcpt_classifier.py."""
  params: dict = {}
  for key, value in state_dict.items():
    value = value.detach().numpy()
    parts = key.split(".")
    leaf = parts.pop()
    path = []
    for part in parts:
      if part.isdigit():
        path[-1] += f"_{part}"
      else:
        path.append(part)
    if path and path[0].startswith("downsample_layers_"):   # downsample_layers.{i}.0 -> _{i}
      path[0] = path[0].rsplit("_", 1)[0]
    if key == "mixing_weights":
      path = ["mixing_weights"]
    elif value.ndim == 4:
      path.append("kernel")
      value = value.transpose(2, 3, 1, 0)
    elif path[0] == "fc":
      path.append("kernel" if leaf == "weight" else "bias")
      value = value.T if leaf == "weight" else value
    else:  # LayerNorm
      path.append("scale" if leaf == "weight" else "bias")
    node = params
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = jnp.asarray(value)
  return params


@pytest.mark.torch
def test_logits_match_torch():
  torch = pytest.importorskip("torch")
  dims, sizes, num_classes = [8, 16, 32], [16, 8, 4], 5       # fine to coarse (official order)
  net = _torch_classifier(dims, num_classes)
  rng = np.random.default_rng(0)
  fine_first = [rng.normal(0, 1, (2, c, s, s)).astype(np.float32) for c, s in zip(dims, sizes)]
  with torch.no_grad():
    logits_t = net([torch.from_numpy(f) for f in fine_first]).numpy()
  # Our module takes the backbone's forward order (coarse first), NHWC.
  forward_order = [jnp.asarray(f.transpose(0, 2, 3, 1)) for f in fine_first[::-1]]
  model = dcpt_classifier.DegradationClassifier(num_classes=num_classes)
  fresh = jax.eval_shape(model.init, jax.random.PRNGKey(0), forward_order)["params"]
  params = _torch_to_flax(net.state_dict())
  shapes = lambda t: {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(t)}
  assert shapes(fresh) == shapes(params)
  logits = np.asarray(jax.jit(lambda p, f: model.apply({"params": p}, f))(params, forward_order))
  assert logits.shape == (2, num_classes)
  assert np.abs(logits_t[0] - logits_t[1]).max() > 1e-2     # inputs really reach the logits
  np.testing.assert_allclose(logits, logits_t, atol=1e-4, rtol=0)


def test_rejects_features_that_are_not_a_pyramid():
  model = dcpt_classifier.DegradationClassifier(num_classes=3)
  fine_first = [jnp.zeros((1, 16, 16, 8)), jnp.zeros((1, 8, 8, 16))]
  with pytest.raises(ValueError, match="pyramid"):   # given fine-first instead of forward order
    jax.eval_shape(model.init, jax.random.PRNGKey(0), fine_first)
  with pytest.raises(ValueError, match="no features"):
    jax.eval_shape(model.init, jax.random.PRNGKey(0), [])


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_focal_gamma0_is_cross_entropy():
  rng = np.random.default_rng(1)
  logits = rng.normal(0, 3, (6, 4)).astype(np.float32)
  labels = rng.integers(0, 4, 6)
  ce = -_log_softmax(logits.astype(np.float64))[np.arange(6), labels].mean()
  got = dcpt_classifier.focal_loss(jnp.asarray(logits), jnp.asarray(labels), gamma=0.0)
  np.testing.assert_allclose(float(got), ce, rtol=1e-5)


def test_focal_gamma2_and_alpha_match_numpy():
  rng = np.random.default_rng(2)
  logits = rng.normal(0, 3, (6, 4)).astype(np.float32)
  labels = rng.integers(0, 4, 6)
  alpha = np.array([0.5, 1.0, 2.0, 0.25], np.float32)
  log_p = _log_softmax(logits.astype(np.float64))[np.arange(6), labels]
  p = np.exp(log_p)
  expected = np.mean(-(1 - p) ** 2 * log_p)
  got = dcpt_classifier.focal_loss(jnp.asarray(logits), jnp.asarray(labels), gamma=2.0)
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)
  expected_alpha = np.mean(-alpha[labels] * (1 - p) ** 2 * log_p)   # torch NLLLoss weight, plain mean
  got = dcpt_classifier.focal_loss(jnp.asarray(logits), jnp.asarray(labels), gamma=2.0,
                                   alpha=jnp.asarray(alpha))
  np.testing.assert_allclose(float(got), expected_alpha, rtol=1e-5)


def test_focal_gradient_is_finite_for_confident_predictions():
  logits = jnp.array([[60.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
  labels = jnp.array([0, 2])
  for gamma in (0.0, 2.0):
    grad = jax.grad(lambda l: dcpt_classifier.focal_loss(l, labels, gamma=gamma))(logits)
    assert np.all(np.isfinite(np.asarray(grad)))
  with pytest.raises(ValueError, match="labels"):
    dcpt_classifier.focal_loss(logits, jnp.array([0]))
