"""MACL (issue 16): the positional contrastive loss against numpy and PyTorch references, the
dense loss, bilinear downsampling, the four-branch network, init_from parts, the streaming
evaluators, and the smoke runs of pre-training and fine-tuning through the trainer.

References: a loop-per-anchor numpy transcription of the official SupConLoss
(contrastive_method="pcl"; stevezs315/MACL loss/contrast_loss.py) and a PyTorch
transcription of the same class for gradients; PyTorch's F.interpolate(align_corners=True).
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxmilab import config_lib
from jaxmilab import metrics as metrics_lib
from jaxmilab import trainer
from jaxmilab.data.base import DataInfo
from jaxmilab.evaluation import segmentation
from jaxmilab.methods import macl
from jaxmilab.methods import macl_finetune


def _numpy_loss(z1, z2, positions, threshold, temperature, base=0.07):
  """Official SupConLoss (pcl) written anchor by anchor."""
  feats = np.concatenate([z1, z2]).astype(np.float64)
  feats /= np.linalg.norm(feats, axis=1, keepdims=True)
  pos = np.concatenate([positions, positions]).astype(np.float64)
  n = len(feats)
  losses = []
  for i in range(n):
    logits = np.array([feats[i] @ feats[j] / temperature for j in range(n)])
    denom = np.log(sum(np.exp(logits[j]) for j in range(n) if j != i))
    positives = [j for j in range(n) if j != i and abs(pos[i] - pos[j]) < threshold]
    losses.append(-(temperature / base) * np.mean([logits[j] - denom for j in positives]))
  return float(np.mean(losses))


def _batch(rng, b=6, c=5):
  z1 = rng.standard_normal((b, c)).astype(np.float32)
  z2 = rng.standard_normal((b, c)).astype(np.float32)
  positions = rng.choice(np.linspace(0.05, 1.0, 20), size=b).astype(np.float32)
  return z1, z2, positions


@pytest.mark.parametrize("threshold,temperature", [(0.1, 0.1), (0.3, 0.5), (1e-6, 0.07)])
def test_positional_loss_matches_numpy(threshold, temperature):
  rng = np.random.default_rng(0)
  z1, z2, positions = _batch(rng)
  positions[1] = positions[0] + 0.5 * threshold  # a cross-slice positive
  got = macl.positional_contrastive_loss(
      jnp.asarray(z1),
      jnp.asarray(z2),
      jnp.asarray(positions),
      threshold=threshold,
      temperature=temperature,
  )
  want = _numpy_loss(z1, z2, positions, threshold, temperature)
  np.testing.assert_allclose(float(got), want, rtol=1e-5)
  # Scale invariance (the function normalises) and view symmetry.
  again = macl.positional_contrastive_loss(
      jnp.asarray(3 * z1),
      jnp.asarray(z2),
      jnp.asarray(positions),
      threshold=threshold,
      temperature=temperature,
  )
  swapped = macl.positional_contrastive_loss(
      jnp.asarray(z2),
      jnp.asarray(z1),
      jnp.asarray(positions),
      threshold=threshold,
      temperature=temperature,
  )
  np.testing.assert_allclose([float(again), float(swapped)], [want, want], rtol=1e-5)


def test_positional_loss_hand_case():
  # Two slices far apart; views identical per slice and orthogonal across slices: each anchor's
  # only positive is its other view (cosine 1), the two negatives have cosine 0.
  z = jnp.eye(2)
  t = 0.5
  got = macl.positional_contrastive_loss(z, z, jnp.array([0.1, 0.9]), threshold=0.1, temperature=t)
  want = -(t / 0.07) * (1 / t - np.log(np.exp(1 / t) + 2.0))
  np.testing.assert_allclose(float(got), want, rtol=1e-6)


@pytest.mark.torch
def test_positional_loss_gradient_matches_pytorch():
  import torch  # pylint: disable=g-import-not-at-top

  def supcon(features, labels, threshold, temperature, base=0.07):  # official SupConLoss, pcl
    b = features.shape[0]
    labels = labels.contiguous().view(-1, 1)
    mask = (torch.abs(labels.T.repeat(b, 1) - labels.repeat(1, b)) < threshold).float()
    contrast = torch.cat(torch.unbind(features, dim=1), dim=0)
    logits = torch.nn.functional.cosine_similarity(
        contrast.unsqueeze(1), contrast.unsqueeze(0), dim=-1
    )
    logits = logits / temperature
    mask = mask.repeat(2, 2)
    logits_mask = torch.scatter(torch.ones_like(mask), 1, torch.arange(2 * b).view(-1, 1), 0)
    mask = mask * logits_mask
    log_prob = logits - torch.log((torch.exp(logits) * logits_mask).sum(1, keepdim=True))
    mean_log_prob_pos = (mask * log_prob).sum(1) / mask.sum(1)
    return (-(temperature / base) * mean_log_prob_pos).view(2, b).mean()

  rng = np.random.default_rng(1)
  z1, z2, positions = _batch(rng, b=8, c=4)
  t1 = torch.tensor(z1, dtype=torch.float64, requires_grad=True)
  t2 = torch.tensor(z2, dtype=torch.float64, requires_grad=True)
  ref = supcon(torch.stack([t1, t2], 1), torch.tensor(positions, dtype=torch.float64), 0.1, 0.1)
  ref.backward()
  loss_fn = lambda a, b: macl.positional_contrastive_loss(
      a, b, jnp.asarray(positions), threshold=0.1, temperature=0.1
  )
  value, (g1, g2) = jax.value_and_grad(loss_fn, argnums=(0, 1))(jnp.asarray(z1), jnp.asarray(z2))
  np.testing.assert_allclose(float(value), ref.item(), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(g1), t1.grad.numpy(), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.asarray(g2), t2.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_dense_loss_is_the_mean_over_locations():
  rng = np.random.default_rng(2)
  a = rng.standard_normal((4, 3, 2, 5)).astype(np.float32)
  d = rng.standard_normal((4, 3, 2, 5)).astype(np.float32)
  positions = np.array([0.1, 0.15, 0.6, 0.9], np.float32)
  got = macl.dense_contrastive_loss(
      jnp.asarray(a), jnp.asarray(d), jnp.asarray(positions), threshold=0.1, temperature=0.1
  )
  want = np.mean(
      [_numpy_loss(a[:, y, x], d[:, y, x], positions, 0.1, 0.1) for y in range(3) for x in range(2)]
  )
  np.testing.assert_allclose(float(got), want, rtol=1e-5)
  # Padding: a masked-out example changes nothing for the rest.
  valid = jnp.array([True, True, True, False])
  masked = macl.dense_contrastive_loss(
      jnp.asarray(a),
      jnp.asarray(d),
      jnp.asarray(positions),
      threshold=0.1,
      temperature=0.1,
      valid=valid,
  )
  want3 = np.mean(
      [
          _numpy_loss(a[:3, y, x], d[:3, y, x], positions[:3], 0.1, 0.1)
          for y in range(3)
          for x in range(2)
      ]
  )
  np.testing.assert_allclose(float(masked), want3, rtol=1e-5)


def test_downsample_align_corners():
  x = np.arange(2 * 8 * 12 * 3, dtype=np.float32).reshape(2, 8, 12, 3)
  y = np.asarray(macl.downsample(jnp.asarray(x), 0.25))
  assert y.shape == (2, 2, 3, 3)
  # align_corners=True: output corners are the input corners; the map is linear in x and y.
  np.testing.assert_allclose(y[:, 0, 0], x[:, 0, 0])
  np.testing.assert_allclose(y[:, -1, -1], x[:, -1, -1])
  # Row 1 of 2 samples input row 7; column 1 of 3 samples column 5.5 = mean of columns 5 and 6.
  np.testing.assert_allclose(y[:, 1, 1], (x[:, 7, 5] + x[:, 7, 6]) / 2, rtol=1e-6)


@pytest.mark.torch
def test_downsample_matches_pytorch():
  import torch  # pylint: disable=g-import-not-at-top

  x = np.random.default_rng(3).standard_normal((2, 16, 20, 3)).astype(np.float32)
  ref = torch.nn.functional.interpolate(
      torch.tensor(x.transpose(0, 3, 1, 2)), scale_factor=0.25, mode="bilinear", align_corners=True
  )
  np.testing.assert_allclose(
      np.asarray(macl.downsample(jnp.asarray(x), 0.25)),
      ref.numpy().transpose(0, 2, 3, 1),
      atol=1e-5,
  )


# ------------------------------------------------------------------------- network, method


def _config(variant="macl", width=2, depth=3):
  return ml_collections.ConfigDict(
      {
          "method": {"name": "macl", "variant": variant},
          "model": {"name": "pcl_unet", "width": width, "depth": depth},
      }
  )


def _views(rng, b=4, size=32):
  out = {k: jnp.asarray(rng.random((b, size, size, 1), dtype=np.float32)) for k in macl.VIEW_KEYS}
  out["position"] = jnp.asarray(np.array([0.1, 0.12, 0.5, 0.9], np.float32)[:b])
  return out


@pytest.mark.slow  # compiles the network's init and loss (tens of seconds on 2 cores)
def test_macl_branches_parameters_and_gradients():
  method = macl.Method(_config(), DataInfo())  # depth 3, 32 px: H/8 pixel maps
  batch = _views(np.random.default_rng(4))
  variables = jax.jit(method.init_variables)(jax.random.key(0), batch)
  params = variables["params"]
  assert sorted(params) == ["aux_image_head", "backbone", "dom_image_head", "pixel_projector"]
  # Only the encoder and decoder blocks 1-2 of the backbone exist (and are pre-trained).
  assert sorted(params["backbone"]) == ["decoder", "encoder"]
  assert sorted(params["backbone"]["decoder"]) == ["block_1", "block_2"]
  out = jax.jit(lambda v, x: method.net.apply(v, x, train=False))(
      variables, {k: batch[k] for k in macl.VIEW_KEYS}
  )
  w = 2
  # Depth 3: 8w-channel bottleneck at H/8; decoder block 2 outputs 2w channels at H/8.
  assert out["pixel_aux"].shape == out["pixel_dom"].shape == (4, 4, 4, 2 * w)
  assert out["y_aux"].shape == (4, 4, 4, 8 * w) and out["y_dom"].shape == (4, 1, 1, 8 * w)
  assert out["g_1"].shape == out["g_2"].shape == (4, 128)
  state = {k: v for k, v in variables.items() if k != "params"}
  (loss, (terms, new_state)), grads = jax.jit(jax.value_and_grad(method.loss, has_aux=True))(
      params, state, batch, jax.random.key(1)
  )
  np.testing.assert_allclose(
      float(loss), float(terms["l_g"] + 0.5 * terms["l_d"] + terms["l_er"]), rtol=1e-6
  )
  # Every parameter group receives gradient; BatchNorm statistics move.
  for name in ("aux_image_head", "dom_image_head", "pixel_projector"):
    assert float(optax_norm(grads[name])) > 0
  assert float(optax_norm(grads["backbone"]["decoder"]["block_2"])) > 0
  assert not np.allclose(
      new_state["batch_stats"]["backbone"]["encoder"]["level_1_conv_1"]["bn"]["mean"],
      state["batch_stats"]["backbone"]["encoder"]["level_1_conv_1"]["bn"]["mean"],
  )
  # L_ER by hand: mean |down(Y~) - Y|.
  l_er = np.mean(np.abs(np.asarray(macl.downsample(out["y_aux"], 0.25)) - np.asarray(out["y_dom"])))
  eval_terms = method._terms(out, batch["position"])  # pylint: disable=protected-access
  np.testing.assert_allclose(float(eval_terms["l_er"]), l_er, rtol=1e-5)


@pytest.mark.slow  # compiles two networks' init and forward (~40 s on 2 cores)
def test_symmetric_arm_reads_the_dominant_input_at_full_resolution_and_the_warning(caplog):
  """`method.symmetric=True` (the released --symmetric_net): the dominant branch encodes its view
  without the 0.25 downsampling, so with the two image views made equal its bottleneck equals
  the auxiliary one and L_ER is 0 (asymmetric: a 1 x 1 bottleneck, L_ER > 0). init_variables
  warns about the asymmetric 1 x 1 bottleneck (L_ER then ties it to one corner cell), not about
  the symmetric one."""
  import logging  # pylint: disable=g-import-not-at-top

  batch = _views(np.random.default_rng(6))
  batch["view_i2"] = batch["view_i1"]
  views = {k: batch[k] for k in macl.VIEW_KEYS}
  outs = {}
  for symmetric in (False, True):
    config = _config()
    config.method.symmetric = symmetric
    method = macl.Method(config, DataInfo())  # depth 3, 32 px
    caplog.clear()
    with caplog.at_level(logging.WARNING):
      variables = method.init_variables(jax.random.key(0), batch)
    warned = "dominant branch's bottleneck is 1x1 (auxiliary 4x4)" in caplog.text
    assert warned == (not symmetric), caplog.text
    out = jax.jit(lambda v, x, m=method: m.net.apply(v, x, train=False))(variables, views)
    terms = method._terms(out, batch["position"])  # pylint: disable=protected-access
    outs[symmetric] = (out, float(terms["l_er"]))
  (asym, asym_er), (sym, sym_er) = outs[False], outs[True]
  assert asym["y_dom"].shape[1:3] == (1, 1) and sym["y_dom"].shape[1:3] == (4, 4)
  np.testing.assert_array_equal(np.asarray(sym["y_dom"]), np.asarray(sym["y_aux"]))
  assert sym_er == 0.0 and asym_er > 1e-4
  # The dominant pixel map is resized to the auxiliary grid for L_d (our reading, see macl.py).
  assert sym["pixel_dom"].shape == sym["pixel_aux"].shape


def optax_norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree_util.tree_leaves(tree)))


@pytest.mark.slow  # compiles the network's init and loss (tens of seconds on 2 cores)
def test_pcl_variant_has_encoder_only_and_l_g():
  method = macl.Method(_config("pcl"), DataInfo())
  batch = _views(np.random.default_rng(5))
  variables = jax.jit(method.init_variables)(jax.random.key(0), batch)
  assert sorted(variables["params"]) == ["backbone", "image_head"]
  assert sorted(variables["params"]["backbone"]) == ["encoder"]
  loss, (terms, _) = jax.jit(method.loss)(
      variables["params"], {"batch_stats": variables["batch_stats"]}, batch, jax.random.key(0)
  )
  assert sorted(terms) == ["cos_within", "dead_v1", "dead_v2", "l_g", "pair_margin"]
  assert float(loss) == float(terms["l_g"])
  # The released PCL head: 16w -> 16w -> ReLU -> 512 (run_script.sh --classes 512).
  assert variables["params"]["image_head"]["fc_2"]["kernel"].shape == (8 * 2, 512)


def test_config_errors():
  with pytest.raises(ValueError, match="variant"):
    macl.Method(
        ml_collections.ConfigDict(
            {"method": {"name": "macl", "variant": "simclr"}, "model": {"name": "pcl_unet"}}
        ),
        DataInfo(),
    )
  with pytest.raises(ValueError, match="unknown key"):
    macl.Method(
        ml_collections.ConfigDict(
            {"method": {"name": "macl", "alpha": 1.0}, "model": {"name": "pcl_unet"}}
        ),
        DataInfo(),
    )
  with pytest.raises(ValueError, match="encode"):
    macl.Method(
        ml_collections.ConfigDict({"method": {"name": "macl"}, "model": {"name": "unet"}}),
        DataInfo(),
    )


# ------------------------------------------------------------------------------ fine-tuning


def _finetune(num_classes=3, blocks=2):
  config = ml_collections.ConfigDict(
      {
          "method": {"name": "macl_finetune", "init_decoder_blocks": blocks},
          "model": {"name": "pcl_unet", "width": 2, "depth": 3, "num_classes": 0},
      }
  )
  return macl_finetune.Method(config, DataInfo(num_classes=num_classes))


@pytest.mark.slow  # compiles the network's init and loss (tens of seconds on 2 cores)
def test_init_from_takes_encoder_and_decoder_blocks_1_2_only():
  pre = macl.Method(_config(), DataInfo())
  batch = _views(np.random.default_rng(6))
  pre_vars = jax.jit(pre.init_variables)(jax.random.key(7), batch)
  ft = _finetune()
  fresh = jax.jit(ft.init_variables)(jax.random.key(8), {"image": jnp.zeros((2, 32, 32, 1))})
  loaded = {
      "params": jax.device_get(pre_vars["params"]),
      "batch_stats": jax.device_get(pre_vars["batch_stats"]),
  }
  merged = ft.init_from(jax.device_get(dict(fresh)), loaded)
  same = lambda a, b: all(
      np.array_equal(x, y)
      for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
  )
  assert same(merged["params"]["encoder"], pre_vars["params"]["backbone"]["encoder"])
  for block in ("block_1", "block_2"):
    assert same(
        merged["params"]["decoder"][block], pre_vars["params"]["backbone"]["decoder"][block]
    )
    assert same(
        merged["batch_stats"]["decoder"][block],
        pre_vars["batch_stats"]["backbone"]["decoder"][block],
    )
  for block in ("block_3",):  # never pre-trained: stays as initialised here
    assert same(merged["params"]["decoder"][block], fresh["params"]["decoder"][block])
  assert same(merged["params"]["head"], fresh["params"]["head"])
  # Only block 1 when asked; a different width is an error naming the array.
  one = _finetune(blocks=1).init_from(jax.device_get(dict(fresh)), loaded)
  assert same(one["params"]["decoder"]["block_2"], fresh["params"]["decoder"]["block_2"])
  wide = macl_finetune.Method(
      ml_collections.ConfigDict(
          {
              "method": {"name": "macl_finetune"},
              "model": {"name": "pcl_unet", "width": 4, "depth": 3},
          }
      ),
      DataInfo(num_classes=3),
  )
  wide_vars = jax.jit(wide.init_variables)(jax.random.key(0), {"image": jnp.zeros((1, 32, 32, 1))})
  with pytest.raises(ValueError, match="shape"):
    wide.init_from(jax.device_get(dict(wide_vars)), loaded)


def test_finetune_loss_is_pixel_cross_entropy():
  ft = _finetune(num_classes=3)
  rng = np.random.default_rng(9)
  batch = {
      "image": jnp.asarray(rng.random((2, 32, 32, 1), dtype=np.float32)),
      "labels": jnp.asarray(rng.integers(0, 3, (2, 32, 32)), jnp.int32),
  }
  variables = jax.jit(ft.init_variables)(jax.random.key(0), batch)
  loss, (metrics, _) = jax.jit(ft.loss)(
      variables["params"], {"batch_stats": variables["batch_stats"]}, batch, jax.random.key(0)
  )
  logits, _ = jax.jit(lambda v, x: ft.net.apply(v, x, train=True, mutable=["batch_stats"]))(
      variables, batch["image"]
  )
  logits = np.asarray(logits, np.float64)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  ce = -np.take_along_axis(logp, np.asarray(batch["labels"])[..., None], -1).mean()
  np.testing.assert_allclose(float(metrics["ce"]), ce, rtol=1e-5)
  assert float(loss) == pytest.approx(ce, rel=1e-5)  # l2_weight 0


def test_streaming_dice_equals_concatenated_computation():
  """The streamed, padded, multi-batch MACLFinetuneEvaluator equals pooled Dice over all slices
  at once."""
  rng = np.random.default_rng(10)
  k = 4
  gt = rng.integers(0, k, (13, 8, 8))
  pred = np.where(rng.random((13, 8, 8)) < 0.7, gt, rng.integers(0, k, (13, 8, 8)))
  ev = segmentation.MACLFinetuneEvaluator(k)
  for start in range(0, 13, 5):  # batches of 5, the last padded
    sl = slice(start, start + 5)
    n = len(gt[sl])
    pad = lambda a: np.concatenate([a, np.zeros((5 - n,) + a.shape[1:], a.dtype)])
    batch = {
        "labels": pad(gt[sl]),
        "image": pad(np.zeros((n, 8, 8, 1), np.float32)),
        "valid": np.arange(5) < n,
    }
    ev.update(batch, {"prediction": pad(pred[sl])})
  got = ev.compute()
  for c in range(1, k):
    p, g = pred == c, gt == c
    want = 200.0 * np.sum(p & g) / (p.sum() + g.sum())
    assert got[f"dice/{c}"] == pytest.approx(want)
  assert got["dice"] == pytest.approx(np.mean([got[f"dice/{c}"] for c in range(1, k)]))
  assert ev.images().shape == (4 * 8, 3 * 8, 3)
  # The method's evaluator, fed the whole set in one update, gives the same numbers.
  method = _finetune(num_classes=k)
  host = {
      "labels": gt,
      "prediction": pred,
      "image": np.zeros((13, 8, 8, 1), np.float32),
      "valid": np.ones(13, bool),
  }
  whole = method.evaluator()
  whole.update(host, host)
  assert whole.compute() == pytest.approx(got)


def test_dice_evaluator_hand_case():
  ev = segmentation.DiceEvaluator(3)
  ev.accumulate(np.array([[1, 1], [0, 2]]), np.array([[1, 0], [0, 0]]))
  ev.accumulate(np.array([[0, 0], [0, 0]]), np.array([[2, 2], [0, 0]]))
  out = ev.compute()
  assert out["dice/1"] == pytest.approx(200 * 1 / 3)  # |P|=2, |G|=1, |P n G|=1
  assert out["dice/2"] == pytest.approx(0.0)  # |P|=1, |G|=2, no overlap
  assert out["dice"] == pytest.approx(100 / 3)


# ------------------------------------------------------------------------------ smoke runs


@pytest.mark.slow
def test_smoke_pretrain_then_finetune(tmp_path):
  """The issue's "done when": both smoke CLIs' configs through the trainer, init_from chained."""
  pre_dir, ft_dir = str(tmp_path / "macl"), str(tmp_path / "ft")
  trainer.train_and_evaluate(config_lib.load("configs/macl.py:smoke"), pre_dir)
  records = metrics_lib.read_jsonl(pre_dir)
  train = [r for r in records if r["split"] == "train" and "loss" in r]  # not the speed rows
  assert {"l_g", "l_d", "l_er", "loss"} <= set(train[-1])
  assert all(np.isfinite(r["loss"]) for r in train)
  evals = [r for r in records if r["split"] == "eval"]
  assert {"l_g", "l_d", "l_er", "retrieval_accuracy"} <= set(evals[-1])
  config = config_lib.load("configs/macl_finetune.py:smoke", {"method.init_from": pre_dir})
  trainer.train_and_evaluate(config, ft_dir)
  evals = metrics_lib.read_split(ft_dir, "eval")
  assert evals and 0.0 <= evals[-1]["dice"] <= 100.0
  assert {f"dice/{c}" for c in (1, 2, 3)} <= set(evals[-1])
  with open(os.path.join(ft_dir, "config.json"), encoding="utf-8") as f:
    assert json.load(f)["method"]["init_from"] == pre_dir


# ------------------------------------------------------- collapse value and dead centre units


def test_chance_l_g_is_the_loss_of_collapsed_embeddings():
  """Identical embeddings give (T / 0.07) ln(2B - 1) whatever the positions (4.906 at B = 16)."""
  rng = np.random.default_rng(0)
  for b, t in ((16, 0.1), (5, 0.3)):
    z = np.tile(rng.standard_normal((1, 7)).astype(np.float32), (b, 1))
    positions = rng.uniform(0, 1, b).astype(np.float32)
    got = float(macl.positional_contrastive_loss(z, z, positions, threshold=0.1, temperature=t))
    np.testing.assert_allclose(got, macl.chance_l_g(b, t), rtol=1e-5)
  np.testing.assert_allclose(macl.chance_l_g(16), 0.1 / 0.07 * np.log(31), rtol=1e-12)
  assert abs(macl.chance_l_g(16) - 4.906) < 1e-3


def test_dead_fraction_hand_case():
  y = np.zeros((2, 2, 2, 4), np.float32)
  y[0, 1, 1, 0] = 0.5  # channel 0 alive in example 0 only
  y[1, 0, 0, 2] = 2.0  # channel 2 alive in example 1 only
  y[:, :, :, 3] = -1.0  # never positive (a ReLU output is never negative; still dead)
  assert float(macl.dead_fraction(jnp.asarray(y))) == 0.5
  # Padding examples do not count: with example 1 invalid, channel 2 is dead too.
  assert float(macl.dead_fraction(jnp.asarray(y), jnp.asarray([True, False]))) == 0.75


def test_embedding_similarity_against_numpy_and_hand_cases():
  """cos_within / pair_margin (the L_g pair diagnostics) against a loop over pairs, with padding."""
  rng = np.random.default_rng(3)
  b, c = 5, 6
  z1 = rng.standard_normal((b, c)).astype(np.float32)
  z2 = (z1 + 0.5 * rng.standard_normal((b, c))).astype(np.float32)
  valid = np.array([True, True, False, True, True])
  n = lambda v: v / np.linalg.norm(v)
  idx = [i for i in range(b) if valid[i]]
  pairs = [(i, j) for i in idx for j in idx if i != j]
  within = np.mean(
      [(n(z1[i]) @ n(z1[j]) + n(z2[i]) @ n(z2[j])) / 2 for i, j in pairs], dtype=np.float64
  )
  margin = np.mean([n(z1[i]) @ n(z2[i]) for i in idx]) - np.mean(
      [n(z1[i]) @ n(z2[j]) for i, j in pairs]
  )
  got = macl.embedding_similarity(jnp.asarray(z1), jnp.asarray(z2), jnp.asarray(valid))
  np.testing.assert_allclose(float(got["cos_within"]), within, rtol=1e-5)
  np.testing.assert_allclose(float(got["pair_margin"]), margin, rtol=1e-5)
  # Two branches that agree on a common direction but whose per-slice deviations are
  # unrelated (the plateau of docs/macl.md): margin ~ 0 although cos_within is ~1.
  base = rng.standard_normal((1, 64)).astype(np.float32) * 10
  a = base + rng.standard_normal((256, 64)).astype(np.float32)
  d = base + rng.standard_normal((256, 64)).astype(np.float32)
  plateau = macl.embedding_similarity(jnp.asarray(a), jnp.asarray(d))
  assert float(plateau["cos_within"]) > 0.98 and abs(float(plateau["pair_margin"])) < 2e-3
  # Correlated deviations (what a shared head gives PCL from the start): a clear margin.
  shared = macl.embedding_similarity(jnp.asarray(a), jnp.asarray(a + 0.1 * (d - base)))
  assert float(shared["pair_margin"]) > 0.005
