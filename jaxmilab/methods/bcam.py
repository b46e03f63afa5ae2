"""B-CAM: background-aware CAM (Zhu et al., arXiv 2112.14379, TPAMI 2023), trained end to end.

On the backbone's last feature map F [B, h, w, C] (official SingleObjectLocalization/wsol):
  two attention aggregators A, B (1x1 conv C -> K heads, no bias, zero init = average pooling),
  softmax over positions per head; f_o = mean_heads(softmax(A F) F), f_b likewise with B;
  object / background classifiers W_o, W_b (1x1 conv with bias):
    s_oo = W_o f_o,  s_bo = W_b f_o(stopgrad F),  s_bb = W_b f_b(stopgrad F),  s_ob = W_o f_b
  (attention weights are never stopped).
Stagger loss (official wsol/method/bcam.py `get_loss`, MLSM = multilabel soft margin):
  r1 CE(s_oo, y) + r2 MLSM(s_bo, 1 - onehot) + r3 MLSM(s_bb, 1) + r4 MLSM(s_ob, 0).
Inference (official inference.py `Generator`): object score s_oo[k] - s_bo[k], background
score s_bb[k] - s_ob[k] ("cub" / "ilsvrc" map modes; "openimages" uses s_oo[k] and s_bb[k]);
maps from their gradients G at F with weights w = spatial mean of G:
  "cub": sum_c G_c w_c;  "ilsvrc": sum_c G_c ReLU(w_c);  "openimages": sum_c F_c w_c;
bilinear upsample to the image, then the protocol's bicubic resize + min-max.
"prob" mode thresholds the min-max object map as usual; "mask" mode is the binary map
argmax([M_b, M_o]) (object where M_o > M_b), which needs no threshold.
Eval reports `config.method.inference` ("prob" | "mask") under the protocol names and the
other mode under "<mode>/<name>".
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxmilab.methods import base
from jaxmilab.methods import cam

MAP_MODES = ("cub", "ilsvrc", "openimages")


class BCAMHead(nn.Module):
  """Aggregators A / B and classifiers W_o / W_b; returns the four scores [B, K] each."""
  num_classes: int
  num_heads: int = 100

  @nn.compact
  def __call__(self, features: jax.Array) -> dict[str, jax.Array]:
    b, h, w, c = features.shape
    f = features.astype(jnp.float32).reshape(b, h * w, c)  # [B, N, C]
    f_sg = jax.lax.stop_gradient(f)
    zeros = nn.initializers.zeros
    att_a = jax.nn.softmax(nn.Dense(self.num_heads, use_bias=False, kernel_init=zeros,
                                    name="aggregator_A")(f), axis=1)  # [B, N, K]
    att_b = jax.nn.softmax(nn.Dense(self.num_heads, use_bias=False, kernel_init=zeros,
                                    name="aggregator_B")(f), axis=1)
    # mean over heads of the per-head pooled features = pooling with the mean attention.
    pool = lambda att, x: jnp.einsum("bnk,bnc->bc", att, x) / self.num_heads  # [B, C]
    w_o = nn.Dense(self.num_classes, name="classifier_A")
    w_b = nn.Dense(self.num_classes, name="classifier_B")
    return {"s_oo": w_o(pool(att_a, f)), "s_bo": w_b(pool(att_a, f_sg)),
            "s_bb": w_b(pool(att_b, f_sg)), "s_ob": w_o(pool(att_b, f)),
            "att_a": att_a.sum(-1).reshape(b, h, w), "att_b": att_b.sum(-1).reshape(b, h, w)}


def multilabel_soft_margin(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """torch.nn.functional.multilabel_soft_margin_loss: mean_b mean_k BCE-with-logits."""
  per = -(targets * jax.nn.log_sigmoid(logits) + (1 - targets) * jax.nn.log_sigmoid(-logits))
  return jnp.mean(jnp.mean(per, axis=-1))


def stagger_loss_terms(scores: dict[str, jax.Array], labels: jax.Array) -> dict[str, jax.Array]:
  """The four stagger-loss terms (unweighted)."""
  s_oo = scores["s_oo"]
  onehot = jax.nn.one_hot(labels, s_oo.shape[-1], dtype=jnp.float32)
  return {
      "ce_oo": optax.softmax_cross_entropy_with_integer_labels(s_oo, labels).mean(),
      "mlsm_bo": multilabel_soft_margin(scores["s_bo"], 1.0 - onehot),
      "mlsm_bb": multilabel_soft_margin(scores["s_bb"], jnp.ones_like(onehot)),
      "mlsm_ob": multilabel_soft_margin(scores["s_ob"], jnp.zeros_like(onehot)),
  }


def gradient_maps(head: nn.Module, head_params, features: jax.Array, labels: jax.Array,
                  mode: str) -> tuple[jax.Array, jax.Array]:
  """(M_o, M_b) [B, h, w] gradient-weighted maps at `features` (official `Generator`)."""
  index = jnp.arange(labels.shape[0])

  def scores(f, which):
    s = head.apply({"params": head_params}, f)
    if which == "object":
      score = s["s_oo"] if mode == "openimages" else s["s_oo"] - s["s_bo"]
    else:
      score = s["s_bb"] if mode == "openimages" else s["s_bb"] - s["s_ob"]
    return jnp.sum(score[index, labels])  # examples are independent: per-example gradients

  out = []
  for which in ("object", "background"):
    g = jax.grad(scores)(features.astype(jnp.float32), which)  # [B, h, w, C]
    w = jnp.mean(g, axis=(1, 2), keepdims=True)  # [B, 1, 1, C]
    if mode == "cub":
      m = jnp.sum(g * w, -1)
    elif mode == "ilsvrc":
      m = jnp.sum(g * jax.nn.relu(w), -1)
    else:
      m = jnp.sum(features.astype(jnp.float32) * w, -1)
    out.append(m)
  return out[0], out[1]


class Method(base.Method):
  """B-CAM training (stagger loss) and "prob" / "mask" evaluation."""

  def __init__(self, config, data_info):
    super().__init__(config, data_info)
    cam.check_method_keys(config, "bcam")
    m = config.method
    self.backbone = cam.build_backbone(config, data_info, with_classifier=False)
    self.head = BCAMHead(data_info.num_classes, int(m.get("num_heads", 100)))
    weights = tuple(m.get("loss_weights", (1.0, 1.0, 1.0, 1.0)))
    if len(weights) != 4:
      raise ValueError(f"config.method.loss_weights={weights}: give 4 weights (r1..r4 of the stagger loss).")
    self.loss_weights = dict(zip(("ce_oo", "mlsm_bo", "mlsm_bb", "mlsm_ob"), map(float, weights)))
    self.inference = m.get("inference", "prob")
    if self.inference not in ("prob", "mask"):
      raise ValueError(f"config.method.inference={self.inference!r}: use 'prob' or 'mask'.")
    self.map_mode = m.get("map_mode", "cub")
    if self.map_mode not in MAP_MODES:
      raise ValueError(f"config.method.map_mode={self.map_mode!r}: use one of {MAP_MODES}.")
    self.eval_kwargs = dict(cam_curve_interval=float(m.get("cam_curve_interval", 0.01)),
                            iou_thresholds=tuple(m.get("iou_thresholds", (30, 50, 70))),
                            multi_contour=bool(m.get("multi_contour", True)))

  def init_variables(self, rng, batch):
    x = cam.preprocess(batch["image"])
    k1, k2 = jax.random.split(rng)
    variables = dict(self.backbone.init({"params": k1, "dropout": k1}, x, train=False))
    feats = self.backbone.apply(variables, x, train=False)["features"]
    head = self.head.init(k2, feats)
    params = {"backbone": variables.pop("params"), "bcam_head": head["params"]}
    return {"params": params, **variables}

  def _features(self, params, model_state, images, train, rng=None):
    variables = {"params": params["backbone"], **model_state}
    x = cam.preprocess(images)
    if train and model_state:
      out, new_state = self.backbone.apply(variables, x, train=True, rngs={"dropout": rng},
                                           mutable=list(model_state))
      return out["features"], dict(new_state)
    rngs = {"dropout": rng} if train else {}
    return self.backbone.apply(variables, x, train=train, rngs=rngs)["features"], model_state

  def loss(self, params, model_state, batch, rng):
    feats, model_state = self._features(params, model_state, batch["image"], True, rng)
    scores = self.head.apply({"params": params["bcam_head"]}, feats)
    terms = stagger_loss_terms(scores, batch["label"])
    loss = sum(self.loss_weights[k] * v for k, v in terms.items())
    accuracy = jnp.mean(jnp.argmax(scores["s_oo"], -1) == batch["label"])
    return loss, ({**terms, "accuracy": accuracy}, model_state)

  def eval_step(self, params, model_state, batch):
    feats, _ = self._features(params, model_state, batch["image"], False)
    feats = jax.lax.stop_gradient(feats)
    size = batch["image"].shape[1:3]
    m_o, m_b = gradient_maps(self.head, params["bcam_head"], feats, batch["label"], self.map_mode)
    # Bilinear to the image size; the protocol's cv2 bicubic resize to that size is the identity.
    fore = cam.resize_maps(m_o, size, "bilinear")  # [B, H, W]
    back = cam.resize_maps(m_b, size, "bilinear")
    scores = self.head.apply({"params": params["bcam_head"]}, feats)
    return {"scoremap": cam.normalize_minmax(fore),
            "scoremap_back": cam.normalize_minmax(back),
            "scoremap_mask": (fore > back).astype(jnp.float32),  # argmax([back, fore]); ties -> back
            "pred": jnp.argmax(scores["s_oo"], -1)}

  def summarize_eval(self, outputs):
    prob = cam.wsol_summary(outputs, "scoremap", **self.eval_kwargs)
    mask = cam.wsol_summary(outputs, "scoremap_mask", **self.eval_kwargs)
    main, other = (prob, mask) if self.inference == "prob" else (mask, prob)
    other_name = "mask" if self.inference == "prob" else "prob"
    main.update({f"{other_name}/{k}": v for k, v in other.items() if k != "accuracy"})
    return main

  def eval_images(self, outputs):
    return cam.overlay_grid(outputs, ("scoremap", "scoremap_back", "scoremap_mask"))

  def init_from(self, variables, loaded):
    """Loads a `cam` run (flat backbone params, its fc is dropped) or a `bcam` run."""
    params = loaded["params"]
    if "backbone" not in params:
      loaded = dict(loaded, params={"backbone": params})
    return cam.Method.init_from(self, variables, loaded)
