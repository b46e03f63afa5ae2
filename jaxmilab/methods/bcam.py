"""B-CAM: background-aware CAM (Zhu et al., arXiv 2112.14379, TPAMI 2023), trained end to end.

As released (zh460045050/BCAM SingleObjectLocalization/wsol/{resnet,vgg,inception}.py
`*BCAM`; the head is jaxmilab.models.wsol_backbones.BCAMHead):
  two attention aggregators A, B (1x1 conv -> K heads, zero init = average pooling; on the
  pooled map F for ResNet50 / InceptionV3, with bias on VGG16's 512-channel features before
  conv6), softmax over positions per head; f_o = mean_heads(softmax(A .) F), f_b likewise
  with B, F the pooled map (ResNet layer4, VGG ReLU(conv6), Inception SPG_A3_2b after
  dropout 0.5 in training); object / background classifiers W_o, W_b (1x1 conv with bias):
    s_oo = W_o f_o,  s_bo = W_b f_o(stopgrad F),  s_bb = W_b f_b(stopgrad F),  s_ob = W_o f_b
  (attention weights are never stopped).
Stagger loss (official wsol/method/bcam.py `get_loss`, MLSM = multilabel soft margin):
  r1 CE(s_oo, y) + r2 MLSM(s_bo, 1 - onehot) + r3 MLSM(s_bb, 1) + r4 MLSM(s_ob, 0).
Inference (official inference.py `Generator`): object score s_oo[k] - s_bo[k], background
score s_bb[k] - s_ob[k] ("cub" / "ilsvrc" map modes; "openimages" uses s_oo[k] and s_bb[k]);
maps from their gradients G at the map layer M (Train.sh `--target_layer`: ResNet layer4,
VGG conv6 before its ReLU, Inception SPG_A3_1b) with weights w = spatial mean of G:
  "cub": sum_c G_c w_c;  "ilsvrc": sum_c G_c ReLU(w_c);  "openimages": sum_c M_c w_c;
bilinear upsample to the image, then the protocol's bicubic resize + min-max.
"prob" mode thresholds the min-max object map as usual; "mask" mode is the binary map
argmax([M_b, M_o]) (object where M_o > M_b), which needs no threshold.

Scoring as released (official inference.py `CAMComputer`: CUB / ILSVRC go to the
BoxEvaluator, OpenImages to the MaskEvaluator): the box metrics (MaxBoxAccV2, MaxBoxAcc@t,
gt_known_loc, top1_loc) come from the `config.method.map_mode` map ("cub" / "ilsvrc"; output
"scoremap"), PxAP and pIoU from the "openimages" map (the gradient of s_oo alone weighting
the layer-4 features, i.e. the W_o CAM; output "scoremap_px"), whatever `map_mode` is. The
release never scores a "cub" / "ilsvrc" map with PxAP. Eval reports `config.method.inference`
("prob" | "mask") under the protocol names and the other mode under "<mode>/<name>".
It also reports how concentrated the aggregators' attention is, so a collapse is visible:
"attention_A/top_share" = mass of the head-mean attention of A on its top 1/16 of the
feature cells (6.25 % = uniform, 100 % = all on those cells), "attention_A/head_top_share"
= the same per head, averaged over heads; likewise for B (eval means; training logs A's).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxmilab.methods import base
from jaxmilab.methods import wsol
from jaxmilab.models import wsol_backbones

MAP_MODES = ("cub", "ilsvrc", "openimages")
# Every config.method key of bcam: the shared WSOL ones and the B-CAM ones (config_lib fills
# the missing ones).
CONFIG_DEFAULTS = dict(
    wsol.CONFIG_DEFAULTS,
    num_heads=100,  # attention heads K of each aggregator
    loss_weights=(1.0, 1.0, 1.0, 1.0),  # r1..r4 of the stagger loss
    inference="prob",  # "prob" | "mask" (module docstring)
    map_mode="cub",  # MAP_MODES (official inference.py `Generator`)
    require_init_from=False,  # refuse to train without init_from (a CAM run)
)
BCAMHead = wsol_backbones.BCAMHead  # the model component; re-exported for the method's users


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


def top_share(att: jax.Array) -> jax.Array:
  """Share of attention mass on the top max(1, N // 16) cells: att [B, N] or [B, N, K]
  (per head, averaged over heads) -> [B]; each column of att sums to 1 over N."""
  if att.ndim == 2:
    att = att[..., None]
  n = att.shape[1]
  k = max(1, n // 16)
  top = jax.lax.top_k(jnp.moveaxis(att, 1, -1), k)[0]  # [B, K, k]
  return jnp.mean(jnp.sum(top, -1), -1)


def attention_shares(scores: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Per-example top shares (percent) of aggregators A and B: head mean and per head."""
  out = {}
  for name in ("a", "b"):
    heads = scores[f"att_{name}_heads"]  # [B, N, K]
    out[f"att_{name}_top_share"] = 100.0 * top_share(jnp.mean(heads, -1))
    out[f"att_{name}_head_top_share"] = 100.0 * top_share(heads)
  return out


def gradient_maps(
    score_fn, map_features: jax.Array, labels: jax.Array, mode: str
) -> tuple[jax.Array, jax.Array]:
  """(M_o, M_b) [B, h, w] gradient-weighted maps at the map layer (official `Generator`).

  `score_fn(offset)` returns the head's scores with `offset` added at the map layer, so its
  gradient at offset 0 is the gradient there; `map_features` is that layer's activation.
  """
  index = jnp.arange(labels.shape[0])
  zero = jnp.zeros(map_features.shape, jnp.float32)

  def score(offset, which):
    s = score_fn(offset)
    if which == "object":
      value = s["s_oo"] if mode == "openimages" else s["s_oo"] - s["s_bo"]
    else:
      value = s["s_bb"] if mode == "openimages" else s["s_bb"] - s["s_ob"]
    return jnp.sum(value[index, labels])  # examples are independent: per-example gradients

  out = []
  for which in ("object", "background"):
    g = jax.grad(score)(zero, which)  # [B, h, w, C]
    w = jnp.mean(g, axis=(1, 2), keepdims=True)  # [B, 1, 1, C]
    if mode == "cub":
      m = jnp.sum(g * w, -1)
    elif mode == "ilsvrc":
      m = jnp.sum(g * jax.nn.relu(w), -1)
    else:
      m = jnp.sum(map_features.astype(jnp.float32) * w, -1)
    out.append(m)
  return out[0], out[1]


class Method(wsol.WSOLMethod):
  """B-CAM training (stagger loss) and "prob" / "mask" evaluation."""

  DEFAULTS = CONFIG_DEFAULTS
  EXAMPLE_MEANS = {
      f"attention_{n.upper()}/{kind}": f"att_{n}_{kind}"
      for n in ("a", "b")
      for kind in ("top_share", "head_top_share")
  }

  def __init__(self, config, data_info):
    super().__init__(config, data_info)
    m = self.opts
    self.backbone = wsol.build_backbone(config, data_info, m.init_from, with_classifier=False)
    self.arch = wsol_backbones.arch_of(self.backbone)
    self.head = wsol_backbones.bcam_head(self.arch, data_info.num_classes, int(m.num_heads))
    weights = tuple(m.loss_weights)
    if len(weights) != 4:
      raise ValueError(
          f"config.method.loss_weights={weights}: give 4 weights (r1..r4 of the stagger loss)."
      )
    self.loss_weights = dict(zip(("ce_oo", "mlsm_bo", "mlsm_bb", "mlsm_ob"), map(float, weights)))
    self.inference = m.inference
    if self.inference not in ("prob", "mask"):
      raise ValueError(f"config.method.inference={self.inference!r}: use 'prob' or 'mask'.")
    self.map_mode = m.map_mode
    if self.map_mode not in MAP_MODES:
      raise ValueError(f"config.method.map_mode={self.map_mode!r}: use one of {MAP_MODES}.")
    other = "mask" if self.inference == "prob" else "prob"
    # Box metrics from the map_mode map, PxAP / pIoU from the "openimages" map (as released).
    box_key = {"prob": "scoremap", "mask": "scoremap_mask"}
    px_key = {"prob": "scoremap_px", "mask": "scoremap_px_mask"}
    self.SCOREMAPS = [  # pylint: disable=invalid-name
        (prefix, keys[mode], (kind,))
        for mode, prefix in ((self.inference, ""), (other, f"{other}/"))
        for keys, kind in ((box_key, "boxes"), (px_key, "masks"))
    ]

  def _head(self, params, out, train=False, rng=None):
    att = wsol_backbones.bcam_attention_input(self.arch, out)
    rngs = {"dropout": rng} if train and rng is not None else {}
    return self.head.apply(
        {"params": params["bcam_head"]}, out["features"], att, train=train, rngs=rngs
    )

  def init_variables(self, rng, batch):
    x = wsol.preprocess(batch["image"])
    k1, k2 = jax.random.split(rng)
    variables = dict(self.backbone.init({"params": k1, "dropout": k1}, x, train=False))
    out = self.backbone.apply(variables, x, train=False)
    head = self.head.init(
        {"params": k2, "dropout": k2},
        out["features"],
        wsol_backbones.bcam_attention_input(self.arch, out),
    )
    params = {"backbone": variables.pop("params"), "bcam_head": head["params"]}
    return {"params": params, **variables}

  def _backbone(self, params, model_state, x, train, rng=None, **kwargs):
    return wsol.apply_backbone(
        self.backbone, params["backbone"], model_state, x, train=train, rng=rng, **kwargs
    )

  def check_initialisation(self) -> None:
    """As WSOLMethod's, and `require_init_from` (configs/bcam.py quickstart) needs init_from."""
    super().check_initialisation()
    m = self.options()
    if m.require_init_from and not m.init_from:
      raise ValueError(
          "config.method.require_init_from=True: B-CAM fine-tunes a trained classifier "
          "(the release starts from ImageNet weights); pass --config.method.init_from=<a "
          "converged cam run, e.g. of configs/cam.py:quickstart>, or set "
          "--config.method.require_init_from=False to train from scratch."
      )

  def loss(self, params, model_state, batch, rng):
    self.check_initialisation()
    rng_backbone, rng_head = jax.random.split(rng)
    out, model_state = self._backbone(
        params, model_state, wsol.preprocess(batch["image"]), True, rng_backbone
    )
    scores = self._head(params, out, train=True, rng=rng_head)
    terms = stagger_loss_terms(scores, batch["label"])
    loss = sum(self.loss_weights[k] * v for k, v in terms.items())
    accuracy = jnp.mean(jnp.argmax(scores["s_oo"], -1) == batch["label"])
    att_a = 100.0 * jnp.mean(top_share(jnp.mean(scores["att_a_heads"], -1)))
    return loss, ({**terms, "accuracy": accuracy, "attention_A/top_share": att_a}, model_state)

  def maps(self, params, model_state, images, labels, modes=None):
    """{mode: (M_o, M_b)} at feature resolution for each map mode in `modes` (default: the
    configured map_mode), and the head's scores, for `images` and `labels`."""
    out, _ = self._backbone(params, model_state, wsol.preprocess(images), False)
    low = jax.lax.stop_gradient(out["low"])

    def score_fn(offset):  # f_high from the split point, with the offset at the map layer
      resumed, _ = self._backbone(
          params, model_state, None, False, low_features=low, map_offset=offset
      )
      return self._head(params, resumed)

    feats = jax.lax.stop_gradient(out["map"])
    maps = {
        mode: gradient_maps(score_fn, feats, labels, mode) for mode in (modes or (self.map_mode,))
    }
    return maps, self._head(params, out)

  def eval_step(self, params, model_state, batch):
    size = batch["image"].shape[1:3]
    modes = tuple(dict.fromkeys((self.map_mode, "openimages")))
    maps, scores = self.maps(params, model_state, batch["image"], batch["label"], modes)
    outputs = {}
    for mode, suffix in ((self.map_mode, ""), ("openimages", "_px")):
      m_o, m_b = maps[mode]
      # Bilinear to the image size; the protocol's cv2 bicubic resize to that size is the identity.
      fore = wsol.resize_maps(m_o, size, "bilinear")  # [B, H, W]
      back = wsol.resize_maps(m_b, size, "bilinear")
      outputs[f"scoremap{suffix}"] = wsol.normalize_minmax(fore)
      outputs[f"scoremap{suffix}_back"] = wsol.normalize_minmax(back)
      outputs[f"scoremap{suffix}_mask"] = (fore > back).astype(
          jnp.float32
      )  # argmax([back, fore]); ties -> back
    return {**outputs, **attention_shares(scores), "pred": jnp.argmax(scores["s_oo"], -1)}

  def init_from(self, variables, loaded):
    """Loads a `cam` run (flat backbone params, its fc is dropped) or a `bcam` run."""
    params = loaded["params"]
    if "backbone" not in params:
      loaded = dict(loaded, params={"backbone": params})
    return base.merge_variables(variables, loaded)
