"""MaskDCPT: patch masks, masked LayerNorm, no leak through the masked encoders, training,
init_from."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxmilab import checkpoint as ckpt_lib
from jaxmilab import config_lib
from jaxmilab import metrics as metrics_lib
from jaxmilab import trainer as trainer_lib
from jaxmilab.convert import mapping
from jaxmilab.data import base as data_base
from jaxmilab.methods import maskdcpt
from jaxmilab.models import layers
from jaxmilab.models import masking
from jaxmilab.models import nafnet
from jaxmilab.models import swinir


@pytest.mark.parametrize("grid", [(2, 2), (3, 3), (4, 6), (5, 1)])
def test_mask_keeps_round_half_of_patches(grid):
  batch = 16
  mask = np.asarray(masking.random_patch_mask(jax.random.key(0), batch, grid))
  assert mask.shape == (batch,) + grid
  assert set(np.unique(mask)) <= {0.0, 1.0}
  # round(0.5 * h * w), Python's round-half-to-even as in the official mask(): 9 patches -> 4.
  expected = {4: 2, 9: 4, 24: 12, 5: 2}[grid[0] * grid[1]]
  np.testing.assert_array_equal(mask.reshape(batch, -1).sum(1), expected)
  assert len({m.tobytes() for m in mask}) > 1, "every image got the same mask"


def test_expand_is_nearest_neighbour():
  mask = np.asarray(masking.random_patch_mask(jax.random.key(1), 2, (2, 3)))
  got = np.asarray(masking.expand(jnp.asarray(mask), 8, 12))[..., 0]
  np.testing.assert_array_equal(got, np.stack([np.kron(m, np.ones((4, 4))) for m in mask]))
  with pytest.raises(ValueError, match="mask grid"):
    masking.expand(jnp.asarray(mask), 7, 12)


def _numpy_ln_visible(x, mask, scale, bias, eps, centre=True):
  """LayerNorm over channels of the visible vectors only, scattered into zeros (SparK's MaskLN)."""
  out = np.zeros_like(x)
  vis = mask.astype(bool)  # [B, H, W]
  v = x[vis].astype(np.float64)  # [n_visible, C]
  mean = v.mean(-1, keepdims=True)
  var = ((v - mean) ** 2).mean(-1, keepdims=True)
  num = v - mean if centre else v
  out[vis] = num / np.sqrt(var + eps) * scale + bias
  return out


@pytest.mark.parametrize("kind", ["LayerNorm2d", "ChannelLayerNorm_BiasFree", "nn.LayerNorm"])
def test_masked_layernorm_equals_layernorm_over_visible_positions(kind):
  rng = np.random.default_rng(0)
  x = rng.normal(2.0, 3.0, (2, 8, 8, 5)).astype(np.float32)
  grid_mask = masking.random_patch_mask(jax.random.key(3), 2, (4, 4))
  pixel_mask = np.asarray(masking.expand(grid_mask, 8, 8))[..., 0]
  if kind == "LayerNorm2d":
    module, eps, centre = layers.LayerNorm2d(), 1e-6, True
  elif kind == "ChannelLayerNorm_BiasFree":
    module, eps, centre = layers.ChannelLayerNorm(with_bias=False, eps=1e-5), 1e-5, False
  else:
    module, eps, centre = nn.LayerNorm(epsilon=1e-5, use_fast_variance=False), 1e-5, True
  params = module.init(jax.random.key(0), x)["params"]
  params = jax.tree.map(lambda p: jnp.asarray(rng.normal(1.0, 0.5, p.shape), jnp.float32), params)
  with masking.patch_masking(grid_mask, (8, 8)):
    got = np.asarray(module.apply({"params": params}, jnp.asarray(x)))
  scale = np.asarray(params["scale"])
  bias = np.asarray(params.get("bias", np.zeros_like(scale)))
  want = _numpy_ln_visible(x, pixel_mask, scale, bias, eps, centre)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


_BACKBONES = {
    # (model, image size): NAFNet tiny (patch 16, two 2x downsamplings); DCPT's SwinIR tiny
    # (window = patch 4, shifted windows: hidden tokens move between windows).
    "nafnet": (lambda: nafnet.create(ml_collections.ConfigDict({"preset": "nafnet_tiny"})), 32),
    "swinir": (
        lambda: swinir.create(ml_collections.ConfigDict({"preset": "swinir_dcpt_tiny"})),
        16,
    ),
}


@pytest.mark.parametrize("name", sorted(_BACKBONES))
def test_no_leak_from_hidden_patches(name):
  """d(encoder output)/d(pixel) is exactly 0 on hidden patches, even though the RAW image goes in
  (no input masking: the interceptor alone must stop every path), and non-zero on visible ones;
  the encoder's maps are exactly 0 on hidden patches. Without masking the gradient is non-zero
  there (so the check can fail)."""
  make, size = _BACKBONES[name]
  model = make()
  p = masking.mask_patch_size(model)
  x = jax.random.uniform(jax.random.key(0), (2, size, size, 3))
  variables = model.init(jax.random.key(1), x)
  mask = masking.random_patch_mask(jax.random.key(2), 2, (size // p, size // p))

  def encode(img, masked):
    if not masked:
      return model.apply(variables, img, return_decoder_features=True)[1]
    with masking.patch_masking(mask, (size, size)):
      return model.apply(variables, img, return_decoder_features=True)[1]

  def objective(img, masked):
    feats = encode(img, masked)
    return sum(jnp.sum(f * jnp.cos(jnp.arange(f.size).reshape(f.shape))) for f in feats)

  def all_checks(img):  # one compile (unoptimised: these graphs run once)
    return (
        jax.grad(objective)(img, True),
        encode(img, True),
        jax.grad(objective)(img, False) if name == "nafnet" else None,
    )

  grad, feats, unmasked = jax.jit(all_checks, compiler_options=trainer_lib._FAST_COMPILE)(x)
  hidden = 1.0 - np.asarray(masking.expand(mask, size, size))
  grad = np.asarray(grad)
  assert np.all(grad * hidden == 0.0)
  assert np.abs(grad * (1 - hidden)).max() > 1e-3
  for f in feats:
    f_hidden = 1.0 - np.asarray(masking.expand(mask, f.shape[1], f.shape[2]))
    assert np.all(np.asarray(f) * f_hidden == 0.0), f.shape
  if unmasked is not None:
    assert np.abs(np.asarray(unmasked) * hidden).max() > 1e-3


def test_classifier_pyramid_subsamples_single_resolution_maps():
  f = [jnp.full((1, 8, 8, 2), float(i)) for i in range(3)]  # forward order
  out = maskdcpt.classifier_pyramid(f)
  assert [o.shape[1] for o in out] == [2, 4, 8]  # finest keeps its size
  np.testing.assert_array_equal(out[0], f[0][:, ::4, ::4])
  pyramid = [jnp.zeros((1, 4, 4, 2)), jnp.zeros((1, 8, 8, 2))]
  assert [o.shape for o in maskdcpt.classifier_pyramid(pyramid)] == [p.shape for p in pyramid]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("maskdcpt"))
  config = config_lib.load(
      "configs/maskdcpt.py:smoke",
      {"total_steps": 2, "eval_every_steps": 2, "checkpoint_every_steps": 2, "log_every_steps": 1},
  )
  trainer_lib.train_and_evaluate(config, workdir)
  return workdir


def test_smoke_trains_and_writes_eval_metrics(smoke_run):
  rows = metrics_lib.read_jsonl(smoke_run)
  train = [r for r in rows if r["split"] == "train" and "loss" in r]
  evals = [r for r in rows if r["split"] == "eval"]
  assert [r["step"] for r in train] == [1, 2]
  assert all(np.isfinite(r[k]) for r in train for k in ("loss", "l_pix", "l_cls"))
  for r in train:
    np.testing.assert_allclose(r["loss"], r["l_pix"] + r["l_cls"], rtol=1e-5)
  assert evals and evals[-1]["step"] == 2
  last = evals[-1]
  for key in ("psnr", "psnr_input", "accuracy", "psnr/noise", "psnr_input/jpeg"):
    assert key in last and np.isfinite(last[key]), key
  params = ckpt_lib.load_variables(smoke_run)["params"]
  assert set(params) == {"backbone", "classifier"}  # reconstruction="backbone": no extra head


def test_restoration_init_from_maskdcpt_loads_backbone(smoke_run, tmp_path):
  """The pre-trained body is loaded; the output conv, trained by the whole-network masked run
  to output the image WITHOUT the global residual, starts at zero (identity) when fine-tuning
  adds the residual back, with or without zero_output_after_init_from."""
  want = ckpt_lib.load_variables(smoke_run)["params"]["backbone"]
  assert np.abs(want["ending"]["kernel"]).max() > 0
  for flag in (False, True):
    config = config_lib.load(
        "configs/restoration.py:smoke",
        {"method.init_from": smoke_run, "method.zero_output_after_init_from": flag},
    )
    got = jax.device_get(
        trainer_lib.Trainer(config, str(tmp_path / str(flag))).initial_state().params["backbone"]
    )
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for leaf in jax.tree.leaves(got["ending"]):
      np.testing.assert_array_equal(leaf, 0.0)
    body = lambda t: {k: v for k, v in t.items() if k != "ending"}  # noqa: E731
    for a, b in zip(jax.tree.leaves(body(got)), jax.tree.leaves(body(want))):
      np.testing.assert_array_equal(a, b)


def test_restoration_init_from_another_width_names_the_mismatch(smoke_run, tmp_path):
  """Fine-tuning is strict (methods.base.merge_variables): a backbone of another width is
  refused with the mis-shaped paths and both shapes, before anything is written."""
  config = config_lib.load(
      "configs/restoration.py:smoke", {"method.init_from": smoke_run, "model.width": 16}
  )
  with pytest.raises(
      mapping.CheckpointMismatchError,
      match=r"(?s)init_from=.*mis-shaped.*intro/kernel.*\(3, 3, 3, 8\) vs \(3, 3, 3, 16\)",
  ):
    trainer_lib.Trainer(config, str(tmp_path / "ft")).initial_state()
  assert not (tmp_path / "ft" / "checkpoints").exists()


def test_output_conv_kept_only_after_residual_pre_training(tmp_path):
  """restoration.output_conv_is_residual_head reads the source run's config.json: a MaskDCPT
  run with the released (non-residual) or spark head gives False, dense_decoder / dcpt True."""
  import json  # pylint: disable=g-import-not-at-top
  from jaxmilab.methods import restoration  # pylint: disable=g-import-not-at-top

  cases = {"backbone": False, "spark": False, "dense_decoder": True}
  for reconstruction, want in cases.items():
    run = tmp_path / reconstruction
    (run / "checkpoints" / "4").mkdir(parents=True)
    (run / "config.json").write_text(
        json.dumps({"method": {"name": "maskdcpt", "reconstruction": reconstruction}})
    )
    for path in (run, run / "checkpoints", run / "checkpoints" / "4"):
      assert restoration.output_conv_is_residual_head(str(path)) is want, (reconstruction, path)
  dcpt = tmp_path / "dcpt"
  dcpt.mkdir()
  (dcpt / "config.json").write_text(json.dumps({"method": {"name": "dcpt"}}))
  assert restoration.output_conv_is_residual_head(str(dcpt))


# Mechanism of the released whole-network masking, per backbone: (preset, model, image size).
_MECHANISM = {
    "nafnet_tiny": ("nafnet", 32),
    "swinir_dcpt_tiny": ("swinir", 16),
    "restormer_tiny": ("restormer", 16),
    "promptir_tiny": ("promptir", 16),
    "teaformer_tiny": ("teaformer", 32),
}
_TYPES = ("noise", "blur", "haze")


def _method(preset: str, reconstruction: str = "backbone") -> maskdcpt.Method:
  from jaxmilab.data.base import DataInfo  # pylint: disable=g-import-not-at-top

  name, _ = _MECHANISM[preset]
  c = config_lib.load("configs/maskdcpt.py:smoke", {"method.reconstruction": reconstruction})
  # Another backbone: a fresh model config (the smoke config's NAFNet keys do not apply to it).
  c.model = ml_collections.ConfigDict({"name": name, "preset": preset})
  if name == "teaformer":
    c.model.implementation = "xla"
  return maskdcpt.Method(c, DataInfo(num_classes=len(_TYPES), class_names=_TYPES))


def _jiggle(params):
  """Every parameter moved off its init (zero-init gates such as NAFNet's beta / gamma would
  otherwise hide paths)."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(7), len(leaves))
  return jax.tree.unflatten(
      tree, [x + 0.2 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
  )


def _mechanism(preset, reconstruction):
  method = _method(preset, reconstruction)
  _, size = _MECHANISM[preset]
  p = method.patch
  rng = np.random.default_rng(0)
  lq = jnp.asarray(rng.uniform(0, 1, (2, size, size, 3)), jnp.float32)
  params = _jiggle(method.init_variables(jax.random.key(1), {"lq": lq})["params"])
  mask = jnp.asarray(
      np.array([[1, 0], [0, 1]] * ((size // p) ** 2 // 4 or 1), np.float32)
      .reshape(-1)[: (size // p) ** 2]
      .reshape(1, size // p, size // p)
      .repeat(2, axis=0)
  )
  if float(mask.sum()) in (0.0, mask.size):
    mask = mask.at[:, 0, 0].set(1.0).at[:, -1, -1].set(0.0)
  visible = masking.expand(mask, size, size)
  hidden = 1.0 - visible
  other = jnp.asarray(rng.uniform(0, 1, lq.shape), jnp.float32)
  weights = jnp.asarray(rng.normal(size=lq.shape), jnp.float32)

  def fwd(x):
    return method.forward(params, x, mask)

  # The three forwards are calls of ONE compiled program, so that exact equality tests what
  # depends on what, not whether XLA fused three copies of the network alike.
  fwd_jit = jax.jit(fwd, compiler_options=trainer_lib._FAST_COMPILE)
  out, logits = fwd_jit(lq)
  out_any, _ = fwd_jit(other)  # every input pixel changed
  out_hid, logits_hid = fwd_jit(lq * visible + other * hidden)  # only hidden input changed

  def grads(lq):
    g_vis = jax.grad(lambda x: jnp.sum(fwd(x)[0] * weights * visible))(lq)
    g_hid = jax.grad(lambda x: jnp.sum(fwd(x)[0] * weights * hidden))(lq)
    return g_vis, g_hid

  g_vis, g_hid = jax.jit(grads, compiler_options=trainer_lib._FAST_COMPILE)(lq)
  return [np.asarray(a) for a in (out, out_any, out_hid, logits, logits_hid, g_vis, g_hid)] + [
      np.asarray(hidden),
      np.asarray(visible),
  ]


@pytest.mark.parametrize(
    "preset",
    [
        # PromptIR's tiny preset takes ~94 s here on 2 cores: slow suite (CI runs it).
        pytest.param(p, marks=pytest.mark.slow) if p == "promptir_tiny" else p
        for p in sorted(_MECHANISM)
    ],
)
def test_whole_network_masking_mechanism(preset):
  """The released MaskDCPT masking, through Method.forward(params, lq, mask): outputs at hidden
  patches do not move when ANY input pixel changes (they are empty: no global residual, sparse
  decoder and head), and outputs at visible patches (and the logits) do not move when only
  hidden input changes; d(visible output)/d(hidden input) = 0 while d/d(visible input) != 0.
  The earlier default (reconstruction="dense_decoder") fails the first check: its dense decoder
  inpaints hidden patches from visible input."""
  out, out_any, out_hid, logits, logits_hid, g_vis, g_hid, hidden, visible = _mechanism(
      preset, "backbone"
  )
  np.testing.assert_array_equal(out * hidden, out_any * hidden)
  np.testing.assert_array_equal(out * hidden, 0.0)
  np.testing.assert_array_equal(out * visible, out_hid * visible)
  np.testing.assert_array_equal(logits, logits_hid)
  assert np.all(g_vis * hidden == 0.0)
  assert np.abs(g_vis * visible).max() > 1e-4
  np.testing.assert_array_equal(g_hid, 0.0)
  assert np.abs(out * visible).max() > 1e-3


@pytest.mark.parametrize("preset", ["nafnet_tiny", "swinir_dcpt_tiny"])
def test_dense_decoder_ablation_inpaints_hidden_patches(preset):
  """Control for the test above: the dense-decoder reading moves hidden outputs with the visible
  input (the behaviour the release does not have), so the mechanism test can fail."""
  out, out_any, _, _, _, _, g_hid, hidden, _ = _mechanism(preset, "dense_decoder")
  assert np.abs((out - out_any) * hidden).max() > 1e-3
  assert np.abs(g_hid).max() > 1e-4


def test_visible_l1_loss_reads_visible_pixels_only():
  """sum(|r - gt| * m) / (C * sum(m)) on a hand-made case; gt and outputs at hidden pixels
  neither change the loss nor get a gradient."""
  r = jnp.zeros((1, 2, 2, 3))
  gt = jnp.asarray(np.arange(12, dtype=np.float32).reshape(1, 2, 2, 3))
  m = jnp.asarray([[[[1.0], [0.0]], [[0.0], [1.0]]]])
  want = (np.abs(np.arange(0, 3)).sum() + np.abs(np.arange(9, 12)).sum()) / (3 * 2)
  np.testing.assert_allclose(maskdcpt.visible_l1_loss(r, gt, m), want, rtol=1e-6)
  gt2 = gt.at[0, 0, 1].set(100.0)  # a hidden pixel
  np.testing.assert_allclose(maskdcpt.visible_l1_loss(r, gt2, m), want, rtol=1e-6)
  g = jax.grad(lambda r: maskdcpt.visible_l1_loss(r, gt, m))(r + 0.5)
  np.testing.assert_array_equal(np.asarray(g)[0, 0, 1], 0.0)
  assert np.abs(np.asarray(g)[0, 0, 0]).min() > 0


def test_masked_classifier_pools_visible_positions():
  """DegradationClassifier(visible=ones) == the DCPT classifier; with a mask its logits ignore
  the maps' values at hidden positions."""
  from jaxmilab.models import dcpt_classifier  # pylint: disable=g-import-not-at-top

  clf = dcpt_classifier.DegradationClassifier(num_classes=3)
  rng = np.random.default_rng(0)
  feats = [
      jnp.asarray(rng.normal(size=(2, 4, 4, 16)), jnp.float32),
      jnp.asarray(rng.normal(size=(2, 8, 8, 8)), jnp.float32),
  ]
  params = clf.init(jax.random.key(0), feats)
  ones = jnp.ones((2, 2, 2))
  np.testing.assert_allclose(
      clf.apply(params, feats, ones), clf.apply(params, feats), rtol=1e-5, atol=1e-6
  )
  mask = jnp.asarray([[[1.0, 0.0], [0.0, 1.0]]] * 2)
  changed = [f + 5.0 * (1 - masking.expand(mask, f.shape[1], f.shape[2])) for f in feats]
  np.testing.assert_allclose(
      clf.apply(params, feats, mask), clf.apply(params, changed, mask), rtol=1e-5, atol=1e-6
  )
  assert (
      np.abs(np.asarray(clf.apply(params, feats)) - np.asarray(clf.apply(params, changed))).max()
      > 1e-3
  )


def test_backbone_reconstruction_masks_the_encoder_only():
  """reconstruction="dense_decoder": with the decoder modules left dense, the decoder maps still get
  no gradient from hidden pixels (the encoder stops them) but are non-zero on hidden patches
  (the backbone's own decoder fills them)."""
  model = nafnet.create(ml_collections.ConfigDict({"preset": "nafnet_tiny"}))
  size = 32
  x = jax.random.uniform(jax.random.key(0), (2, size, size, 3))
  variables = model.init(jax.random.key(1), x)
  # NAFBlocks start as the identity (beta = gamma = 0), which would not spread anything.
  variables = jax.tree_util.tree_map_with_path(
      lambda p, v: jnp.full_like(v, 0.5)
      if jax.tree_util.keystr(p).endswith(("['beta']", "['gamma']"))
      else v,
      variables,
  )
  mask = masking.random_patch_mask(jax.random.key(2), 2, (2, 2))
  dense = masking.decoder_modules(model)

  def decoder_maps(img):
    with masking.patch_masking(mask, (size, size), unmasked=dense):
      return model.apply(variables, img, return_decoder_features=True)[1]

  def objective(img):
    return sum(jnp.sum(f * jnp.cos(jnp.arange(f.size).reshape(f.shape))) for f in decoder_maps(img))

  grad, feats = jax.jit(
      lambda img: (jax.grad(objective)(img), decoder_maps(img)),
      compiler_options=trainer_lib._FAST_COMPILE,
  )(x)
  hidden = 1.0 - np.asarray(masking.expand(mask, size, size))
  assert np.all(np.asarray(grad) * hidden == 0.0)
  assert np.abs(np.asarray(grad) * (1 - hidden)).max() > 1e-3
  finest = np.asarray(feats[-1])
  assert np.abs(finest * hidden).max() > 1e-3


def test_maskable_interface_is_required():
  class NotMaskable(nn.Module):

    @nn.compact
    def __call__(self, x):
      return x

  with pytest.raises(ValueError, match="Maskable"):
    masking.mask_patch_size(NotMaskable())
  with pytest.raises(ValueError, match="decoder_modules"):
    masking.decoder_modules(NotMaskable())


def test_quickstart_classifier_trains_at_a_tenth_of_the_network_lr():
  """The quickstart's classifier learning-rate group (docs/maskdcpt.md, "Why the classifier sat
  at chance") matches every classifier parameter of the real method and no backbone parameter:
  a regex that matched nothing would silently train the classifier at the full 3e-3."""
  config = config_lib.load("configs/maskdcpt.py:quickstart", {})
  method = maskdcpt.Method(config, data_base.DataInfo(num_classes=2, class_names=("noise", "jpeg")))
  batch = {"lq": jnp.zeros((1, 64, 64, 3), jnp.float32)}
  shapes = jax.eval_shape(lambda: method.init_variables(jax.random.key(0), batch))["params"]
  params = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  grads = jax.tree_util.tree_map(jnp.ones_like, params)
  optimizer = config.optimizer.copy_and_resolve_references()
  with optimizer.unlocked():  # the peak lr from the first update; groups and multipliers as set
    optimizer.update(schedule="constant", warmup_steps=0)
  tx = method.create_optimizer(optimizer, config.total_steps)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  steps = {
      part: {float(np.round(np.abs(np.asarray(u)).max(), 8)) for u in jax.tree_util.tree_leaves(up)}
      for part, up in updates.items()
  }
  # Adam's first step moves every parameter by the lr (weight decay adds nothing at zero).
  lr = config.optimizer.learning_rate
  np.testing.assert_allclose(sorted(steps["backbone"]), [lr], rtol=1e-4)
  np.testing.assert_allclose(sorted(steps["classifier"]), [0.1 * lr], rtol=1e-4)
