"""DCPT classifier against a PyTorch transcription of the official `PromptIR_NoImg_DC`
(tests/torch_reference/dcpt_classifier.py, with `torch_reference.randomize`d weights), and the
focal loss against numpy. The official training code calls the classifier on
`hook_outputs[::-1]`, i.e. the decoder maps finest first.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmilab.convert import mapping
from jaxmilab.models import dcpt_classifier
from tests import torch_reference


def _torch_to_flax(state_dict) -> dict:
  """torch key -> flax path as documented in jaxmilab/models/dcpt_classifier.py: the backbones'
  rule (jaxmilab.convert.mapping) with downsample_layers.{i}.0 (the conv inside nn.Sequential)
  -> downsample_layers_{i}."""
  params, _ = mapping.convert_state_dict({k: v.detach().numpy() for k, v in state_dict.items()})
  for name in [n for n in params if re.fullmatch(r"downsample_layers_\d+_0", n)]:
    params[name[:-2]] = params.pop(name)
  return jax.tree.map(jnp.asarray, params)


@pytest.mark.torch
def test_logits_match_torch():
  torch = pytest.importorskip("torch")
  dims, sizes, num_classes = [8, 16, 32], [16, 8, 4], 5  # fine to coarse (official order)
  net = torch_reference.random_net("dcpt_classifier", feature_dims=dims, num_classes=num_classes)
  rng = np.random.default_rng(0)
  fine_first = [rng.normal(0, 1, (2, c, s, s)).astype(np.float32) for c, s in zip(dims, sizes)]
  with torch.no_grad():
    logits_t = net([torch.from_numpy(f) for f in fine_first]).numpy()
  # Our module takes the backbone's forward order (coarse first), NHWC.
  forward_order = [jnp.asarray(f.transpose(0, 2, 3, 1)) for f in fine_first[::-1]]
  model = dcpt_classifier.DegradationClassifier(num_classes=num_classes)
  fresh = jax.eval_shape(model.init, jax.random.PRNGKey(0), forward_order)["params"]
  params = _torch_to_flax(net.state_dict())
  shapes = lambda t: {
      jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(t)
  }
  assert shapes(fresh) == shapes(params)
  logits = np.asarray(jax.jit(lambda p, f: model.apply({"params": p}, f))(params, forward_order))
  assert logits.shape == (2, num_classes)
  assert np.abs(logits_t[0] - logits_t[1]).max() > 1e-2  # inputs really reach the logits
  np.testing.assert_allclose(logits, logits_t, atol=1e-4, rtol=0)


def test_rejects_features_that_are_not_a_pyramid():
  model = dcpt_classifier.DegradationClassifier(num_classes=3)
  fine_first = [jnp.zeros((1, 16, 16, 8)), jnp.zeros((1, 8, 8, 16))]
  with pytest.raises(ValueError, match="pyramid"):  # given fine-first instead of forward order
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
  expected = np.mean(-((1 - p) ** 2) * log_p)
  got = dcpt_classifier.focal_loss(jnp.asarray(logits), jnp.asarray(labels), gamma=2.0)
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)
  expected_alpha = np.mean(
      -alpha[labels] * (1 - p) ** 2 * log_p
  )  # torch NLLLoss weight, plain mean
  got = dcpt_classifier.focal_loss(
      jnp.asarray(logits), jnp.asarray(labels), gamma=2.0, alpha=jnp.asarray(alpha)
  )
  np.testing.assert_allclose(float(got), expected_alpha, rtol=1e-5)


def test_focal_gradient_is_finite_for_confident_predictions():
  logits = jnp.array([[60.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
  labels = jnp.array([0, 2])
  for gamma in (0.0, 2.0):
    grad = jax.grad(lambda l: dcpt_classifier.focal_loss(l, labels, gamma=gamma))(logits)
    assert np.all(np.isfinite(np.asarray(grad)))
  with pytest.raises(ValueError, match="labels"):
    dcpt_classifier.focal_loss(logits, jnp.array([0]))
