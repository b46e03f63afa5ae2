"""TEAFormer: translation equivariance (and a part that breaks it), shapes, errors, training.

Equivariance set-up. TEA attention's pooled keys see the whole image, so a shifted input can
only give a shifted output if the image content next to the borders is the same before and
after the shift. The inputs are therefore a background that is periodic along x with period 8
(random rows, repeated every 8 columns) and a random 32-column "blob" in the middle, moved by
the shift; with a background period that divides the shift, B is exactly A shifted by s.
The blob's influence spreads at most R pixels (the network's local receptive radius, computed
below from the architecture), and so do the border effects (zero-padded convs, NATTEN-clamped
windows): if the two zones never meet, the pooled keys of A and B are the same multiset, and
the outputs agree exactly on every column at least R (the margin, 95 px here) from the
left/right borders. Measured: max error ~3e-7 from 60 px in, 0.3 with no margin. Shifts are
along x only; the top/bottom borders are shift-invariant along x.
"""

from __future__ import annotations

import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmilab import config_lib
from jaxmilab import metrics as metrics_lib
from jaxmilab import trainer
from jaxmilab.models import teaformer

# Test network: tiny, no refinement, window 3 everywhere, pools of 32 px at every level (a
# small number of global keys on the wide canvas): equivariance_step = lcm(8, 32) = 32.
EQ_MODEL = dict(preset="teaformer_tiny", num_refinement_blocks=0, pool=(32, 16, 8, 4))
HEIGHT = 64
SHIFT = 32  # a multiple of equivariance_step: equivariant
BAD_SHIFT = 8  # a multiple of the 8x downsampling, not of the 32-px pool grid: not
BLOB = 32
PERIOD = 8  # background period along x: divides both shifts


def local_radius(m: teaformer.TEAFormer) -> int:
  """Upper bound (pixels) on how far any output moves when one input pixel changes, ignoring
  the pooled global keys: per block at level l, (window // 2 + 1 for the GDFN's depthwise 3x3)
  tokens of 2^l px; every 3x3 conv at level l, 2^l px; each pixel-(un)shuffle between levels l
  and l + 1, one coarse token (2^(l+1) px) of grid misalignment."""
  blk = lambda level: (m.window[level] // 2 + 1) * 2**level
  r = 1  # patch_embed conv 3x3
  for level in range(3):  # encoder + downsample
    r += m.num_blocks[level] * blk(level) + 2**level + 2 ** (level + 1)
  r += m.num_blocks[3] * blk(3)  # latent
  for level in (2, 1, 0):  # upsample + decoder
    r += 2 ** (level + 1) + 2 ** (level + 1) + m.num_blocks[level] * blk(level)
  r += m.num_refinement_blocks * blk(0) + 1  # refinement, output conv 3x3
  return r


@pytest.fixture(scope="module")
def equivariance_outputs():
  """Outputs on [A, A shifted by SHIFT, A shifted by BAD_SHIFT], without and with an absolute
  positional embedding added after the patch embedding (one compile: alpha is an argument)."""
  model = teaformer.create(EQ_MODEL)
  assert model.equivariance_step == 32
  radius = local_radius(model)
  width = 4 * radius + BLOB + SHIFT  # blob zone and border bands apart
  width += (-width) % model.equivariance_step
  rng = np.random.default_rng(0)
  tile = rng.uniform(0.2, 0.8, (HEIGHT, PERIOD, 3))
  background = np.tile(tile, (1, width // PERIOD, 1))  # [H, W, 3], period 8 along x
  blob = rng.uniform(0.0, 1.0, (HEIGHT, BLOB, 3))
  start = (width - BLOB - SHIFT) // 2

  def image(offset):
    x = background.copy()
    x[:, start + offset : start + offset + BLOB] = blob
    return x

  batch = jnp.asarray(np.stack([image(0), image(SHIFT), image(BAD_SHIFT)]), jnp.float32)
  variables = model.init(jax.random.key(0), batch[:1])

  @jax.jit
  def run(variables, x, alpha):
    def add_position(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if context.module.name == "proj" and isinstance(context.module, nn.Conv):
        col = jnp.arange(out.shape[2], dtype=out.dtype)
        out = out + alpha * 0.1 * jnp.sin(col / 5.0)[None, None, :, None]  # [1, 1, W, 1]
      return out

    with nn.intercept_methods(add_position):
      return model.apply(variables, x)

  plain = np.asarray(run(variables, batch, 0.0))
  positional = np.asarray(run(variables, batch, 1.0))
  return radius, width, plain, positional


def shift_error(out: np.ndarray, shift: int, margin: int) -> float:
  """max |f(shift(A)) - shift(f(A))| on the columns at least `margin` from the x borders."""
  a, b = out[0], out[1 if shift == SHIFT else 2]
  width = a.shape[1]
  return float(
      np.abs(b[:, margin + shift : width - margin] - a[:, margin : width - margin - shift]).max()
  )


def test_shift_by_equivariance_step_shifts_the_output(equivariance_outputs):
  radius, width, plain, _ = equivariance_outputs
  assert radius == 95 and width == 448  # the documented margin and canvas
  assert shift_error(plain, SHIFT, radius) < 1e-4
  # Near the borders it is not equivariant (clamped windows, zero padding): the margin matters.
  assert shift_error(plain, SHIFT, 0) > 1e-3


def test_shift_off_the_pool_grid_is_not_equivariant(equivariance_outputs):
  """A shift by 8 moves the content against the 32-px pooling grid: the global keys change."""
  radius, _, plain, _ = equivariance_outputs
  assert shift_error(plain, BAD_SHIFT, radius) > 1e-3


def test_absolute_position_embedding_breaks_the_check(equivariance_outputs):
  """The same check fails once a non-equivariant part (an absolute sinusoid) is added."""
  radius, _, _, positional = equivariance_outputs
  assert shift_error(positional, SHIFT, radius) > 1e-3


# ------------------------------------------------------------------------------ shapes, errors


def test_decoder_features_coarse_to_fine_and_module_names():
  model = teaformer.create({"preset": "teaformer_tiny"})
  x = jax.ShapeDtypeStruct((2, 37, 21, 3), jnp.float32)  # padded to 40 x 24
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  y, feats = jax.eval_shape(
      lambda v, x: model.apply(v, x, return_decoder_features=True), variables, x
  )
  assert y.shape == (2, 37, 21, 3)
  assert [f.shape for f in feats] == [(2, 10, 6, 32), (2, 20, 12, 16), (2, 40, 24, 16)]
  block = variables["params"]["encoder_level1_0"]
  assert block["attn"]["qkv"]["kernel"].shape == (1, 1, 8, 24)  # the nn.Conv MaskDCPT hooks
  assert set(block) == {"norm1", "attn", "norm2", "ffn"}


def test_pool_that_does_not_divide_a_level_is_a_clear_error():
  model = teaformer.create({"preset": "teaformer_tiny", "pool": (8, 4, 2, 3)})
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)  # latent map 4 x 4
  with pytest.raises(ValueError, match=r"level 4 \(latent\).*4x4.*config\.model\.pool\[3\]=3"):
    jax.eval_shape(model.init, jax.random.key(0), x)


def test_window_larger_than_a_level_is_a_clear_error():
  model = teaformer.create({"preset": "teaformer_tiny"})
  x = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)  # latent map 2 x 2 < window 3
  with pytest.raises(ValueError, match=r"level 4 \(latent\).*2x2.*config\.model\.window\[3\]=3"):
    jax.eval_shape(model.init, jax.random.key(0), x)


def test_config_errors_name_the_key():
  with pytest.raises(ValueError, match=r"config\.model\.top_k\[0\]=10 must be <= window\*\*2 = 9"):
    teaformer.create({"preset": "teaformer_tiny", "top_k": (10, 4, 4, 4)})
  with pytest.raises(ValueError, match=r"config\.model\.window\[1\]=4 must be odd"):
    teaformer.create({"preset": "teaformer_tiny", "window": (3, 4, 3, 3)})
  with pytest.raises(ValueError, match="implementation"):
    teaformer.create({"preset": "teaformer_tiny", "implementation": "cuda"})
  expected = "pallas" if jax.default_backend() in ("gpu", "tpu") else "xla"
  assert teaformer.resolve_implementation("auto") == expected


def test_every_config_variant_builds_its_model():
  for task in ("denoise15", "denoise25", "denoise50", "derain", "allinone"):
    for size in ("smoke", "quickstart", "paper"):
      config = config_lib.load(f"configs/teaformer.py:{task}_{size}")
      model = teaformer.create(config.model)
      model.check_token_maps(config.data.patch_size, config.data.patch_size)
      model.check_token_maps(config.data.eval_size, config.data.eval_size)
      assert config.method.name == "restoration"


# ------------------------------------------------------------------------------ training


def _eval_records(workdir):
  return metrics_lib.read_split(workdir, "eval")


def test_smoke_config_trains_and_writes_eval_psnr(tmp_path):
  config = config_lib.load(
      "configs/teaformer.py:smoke", {"mesh.num_devices": 1, "total_steps": 2, "eval_every_steps": 2}
  )
  trainer.train_and_evaluate(config, str(tmp_path))
  evals = _eval_records(str(tmp_path))
  assert [r["step"] for r in evals] == [2]
  for key in ("psnr", "psnr_input", "ssim", "psnr/gaussian_noise", "psnr/haze"):
    assert math.isfinite(evals[0][key]), key
  assert os.path.isdir(os.path.join(str(tmp_path), "checkpoints"))


@pytest.mark.slow
def test_dcpt_with_teaformer_backbone(tmp_path):
  config = config_lib.load(
      "configs/dcpt.py:smoke",
      {
          "mesh.num_devices": 1,
          "model.name": "teaformer",
          "model.preset": "teaformer_tiny",
          "total_steps": 2,
          "eval_every_steps": 2,
          "checkpoint_every_steps": 2,
      },
  )
  trainer.train_and_evaluate(config, str(tmp_path))
  evals = _eval_records(str(tmp_path))
  assert [r["step"] for r in evals] == [2]
  assert math.isfinite(evals[0]["psnr"]) and 0.0 <= evals[0]["accuracy"] <= 1.0
