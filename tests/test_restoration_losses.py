"""The restoration pixel losses: NAFNet's PSNRLoss against its PyTorch form and a hand formula,
value and gradient; the restoration method's `pixel_loss` switch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmilab import config_lib
from jaxmilab import config_options
from jaxmilab.methods import restoration_common


def _pair(seed=0, shape=(3, 8, 8, 3)):
  rng = np.random.default_rng(seed)
  target = rng.uniform(0, 1, shape).astype(np.float32)
  # Image 0 mildly wrong (~36 dB), image 1 badly (~12 dB), image 2 in between.
  scales = np.array([0.01, 0.3, 0.05], np.float32)[: shape[0], None, None, None]
  restored = target + scales * rng.standard_normal(shape).astype(np.float32)
  return restored, target


def test_psnr_loss_is_mean_of_per_image_log_mse_in_db():
  restored, target = _pair()
  mse = ((restored - target) ** 2).reshape(3, -1).mean(1)
  want = np.mean(10 * np.log10(mse + 1e-8))
  np.testing.assert_allclose(restoration_common.psnr_loss(restored, target), want, rtol=1e-5)
  # Perfect restoration: 10 log10(1e-8) = -80 dB.
  np.testing.assert_allclose(restoration_common.psnr_loss(target, target), -80.0, rtol=1e-6)


def test_psnr_loss_gradient_weighs_each_image_by_its_inverse_mse():
  restored, target = _pair()
  grad = np.asarray(
      jax.grad(restoration_common.psnr_loss)(jnp.asarray(restored), jnp.asarray(target))
  )
  mse = ((restored - target) ** 2).reshape(3, -1).mean(1)
  n = restored[0].size
  want = (10 / np.log(10)) * 2 * (restored - target) / (n * (mse + 1e-8))[:, None, None, None] / 3
  np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-7)
  # L1 would give every pixel the same |gradient|; here the mild image's pixels get far more.
  assert np.abs(grad[0]).mean() > 10 * np.abs(grad[1]).mean()


@pytest.mark.torch
def test_psnr_loss_matches_nafnet_pytorch_form():
  torch = pytest.importorskip("torch")
  restored, target = _pair(seed=1)
  # NAFNet basicsr/models/losses/losses.py PSNRLoss (loss_weight 1, toY False), NCHW.
  p = torch.tensor(restored.transpose(0, 3, 1, 2), requires_grad=True)
  t = torch.tensor(target.transpose(0, 3, 1, 2))
  loss = 10 / np.log(10) * torch.log(((p - t) ** 2).mean(dim=(1, 2, 3)) + 1e-8).mean()
  loss.backward()
  value, grad = jax.value_and_grad(restoration_common.psnr_loss)(
      jnp.asarray(restored), jnp.asarray(target)
  )
  np.testing.assert_allclose(value, loss.item(), rtol=1e-5)
  np.testing.assert_allclose(
      np.asarray(grad), p.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-7
  )


def test_restoration_method_pixel_loss_switch():
  from jaxmilab.methods import restoration  # pylint: disable=g-import-not-at-top
  from jaxmilab.data import base as data_base  # pylint: disable=g-import-not-at-top

  info = data_base.DataInfo(num_classes=5)
  config = config_lib.load("configs/restoration.py:smoke", {"method.pixel_loss": "psnr"})
  method = restoration.Method(config, info)
  restored, target = _pair(shape=(2, 32, 32, 3))
  variables = method.init_variables(jax.random.key(0), {"lq": jnp.asarray(restored)})
  loss, (metrics, _) = method.loss(
      variables["params"], {}, {"lq": jnp.asarray(restored), "gt": jnp.asarray(target)}, None
  )
  # zero_init_output: the untrained network is the identity, so the loss is the input's.
  np.testing.assert_allclose(loss, restoration_common.psnr_loss(restored, target), rtol=1e-5)
  assert set(metrics) == {"psnr_loss"}
  with pytest.raises(config_options.ConfigError, match="pixel_loss='l2'"):
    restoration.Method(
        config_lib.load("configs/restoration.py:smoke", {"method.pixel_loss": "l2"}), info
    )
