r"""PyTorch WSOL weights -> flax variables of jaxmilab.models.wsol_backbones, from local files.

Reads with the weights-only reader `jaxmilab.convert.torch_checkpoint` (no pickled code runs):
* torchvision ImageNet weights (`resnet50-19c8e357.pth`, `vgg16-397923af.pth`,
  `inception_v3_google-1a9a5a14.pth`): the classifier (`fc.` / `classifier.`), Mixed_7* and
  AuxLogits are dropped; VGG16 conv indices are re-aligned in order, as wsolevaluation's
  `adjust_pretrained_model` does when pool4 is removed (large_feature_map).
* wsolevaluation / B-CAM checkpoints (`{"state_dict": ...}`, keys of ResNetCam / VggCam /
  InceptionCam / ResNetBCAM: `aggregator_A`, `classifier_A`, ...).
* DA-WSOL / BagCAMs checkpoints (`{"state_dict_extractor": ..., "state_dict_classifier": ...}`;
  the classifier's 1x1 conv `fc` becomes the Dense `fc` / `SPG_A4`).

Mapping rules: "layer3.1.conv2.weight" -> params/layer3_1/conv2/kernel (OIHW -> HWIO),
"features.28.bias" -> params/features_28/bias, "SPG_A3_1b.0.weight" -> params/SPG_A3_1b/kernel,
BatchNorm weight/bias -> scale/bias, running_mean/var -> batch_stats mean/var; linear and 1x1
conv classifier weights [K, C(, 1, 1)] -> Dense kernels [C, K]. B-CAM weights go under
params/backbone and params/bcam_head (the `bcam` method's layout).

  python -m jaxmilab.convert.torchvision_wsol --arch=resnet50 --checkpoint=resnet50-19c8e357.pth \
      --num_classes=200 --output=/runs/resnet50_imagenet
  python -m jaxmilab.main --config=configs/cam.py:resnet50_cub \
      --config.method.init_from=/runs/resnet50_imagenet

`--output` is an orbax folder that `config.method.init_from` accepts (parameters whose shape
does not fit, e.g. a 1000-class fc, keep their fresh initialisation).
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from jaxmilab.convert import torch_checkpoint
from jaxmilab.models import wsol_backbones

# large_feature_map (28x28 maps) per (architecture, dataset), as configs/cam.py: ResNet50 and
# InceptionV3 True, VGG16 False on CUB / ILSVRC (B-CAM Train.sh; BagCAMs run_train.sh and
# run_test_all.sh, CUB ResNet50 True). OpenImages: False for every architecture (ASSUMPTION:
# DA-WSOL / BagCAMs' OpenImages setting as reported to us; no OpenImages script of theirs was
# at hand).
LARGE_FEATURE_MAP = {
    (a, d): (a != "vgg16" and d != "openimages")
    for a in ("resnet50", "vgg16", "inceptionv3")
    for d in ("cub", "ilsvrc", "openimages")
}
_DROP = re.compile(r"^(classifier\.|AuxLogits\.|Mixed_7|.*num_batches_tracked$)")
_BCAM_HEAD = ("aggregator_A", "aggregator_B", "classifier_A", "classifier_B")


def read_wsol_state_dict(path: str) -> dict[str, np.ndarray]:
  """One flat {torch key: array} from any of the supported checkpoint layouts."""
  obj = torch_checkpoint.read_checkpoint(path) if not path.endswith(".safetensors") else None
  if isinstance(obj, dict) and "state_dict_extractor" in obj:
    sd = dict(torch_checkpoint.extract_state_dict(obj["state_dict_extractor"], path))
    if "state_dict_classifier" in obj:
      sd.update(torch_checkpoint.extract_state_dict(obj["state_dict_classifier"], path))
    return sd
  return torch_checkpoint.load_state_dict(path)


def _vgg_realign(sd: dict[str, np.ndarray], large_feature_map: bool) -> dict[str, np.ndarray]:
  """Maps torchvision's features.<i> conv indices onto VggCam's, in order
  (adjust_pretrained_model)."""
  ours, index = [], 0
  for v in wsol_backbones.VGG_CFG[bool(large_feature_map)]:
    if v == "M":
      index += 1
    else:
      ours.append(index)
      index += 2
  theirs = sorted({int(k.split(".")[1]) for k in sd if k.startswith("features.")})
  if theirs == ours:
    return sd
  out = {k: v for k, v in sd.items() if not k.startswith("features.")}
  for t, o in zip(theirs, ours):
    for suffix in ("weight", "bias"):
      if f"features.{t}.{suffix}" in sd:
        out[f"features.{o}.{suffix}"] = sd[f"features.{t}.{suffix}"]
  return out


def _flax_path(key: str) -> tuple[str, list[str], str]:
  """torch key -> (collection, module path, leaf name)."""
  parts = key.split(".")
  leaf = parts.pop()
  path: list[str] = []
  for p in parts:
    if p.isdigit() and path:
      if path[-1] in ("SPG_A3_1b", "SPG_A3_2b"):
        continue  # nn.Sequential(conv, ReLU): the conv is the module itself
      path[-1] = f"{path[-1]}_{p}"
    else:
      path.append(p)
  if leaf in ("running_mean", "running_var"):
    return "batch_stats", path, "mean" if leaf == "running_mean" else "var"
  return "params", path, leaf


def state_dict_to_variables(
    sd: dict[str, np.ndarray], *, arch: str, large_feature_map: bool, bcam: bool = False
) -> dict[str, Any]:
  """{"params": ..., "batch_stats": ...} nested dicts (numpy) from a flat torch state dict."""
  if arch == "vgg16":
    sd = _vgg_realign(sd, large_feature_map)
  out: dict[str, Any] = {"params": {}, "batch_stats": {}}
  for key, value in sd.items():
    if _DROP.match(key):
      continue
    collection, path, leaf = _flax_path(key)
    value = np.asarray(value, np.float32)
    if leaf == "weight":
      if value.ndim == 4 and path[-1] in ("fc", "SPG_A4", *_BCAM_HEAD):
        value = value.reshape(value.shape[:2])  # 1x1 conv classifier -> linear
      if value.ndim == 4:
        leaf, value = "kernel", value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
      elif value.ndim == 2:
        leaf, value = "kernel", value.T  # [out, in] -> [in, out]
      else:
        leaf = "scale"  # BatchNorm
    if bcam:
      path = (["bcam_head"] if path[0] in _BCAM_HEAD else ["backbone"]) + path
      if collection == "batch_stats":
        path = path[1:]  # the bcam method keeps the backbone's batch_stats unnested
    node = out[collection]
    for p in path:
      node = node.setdefault(p, {})
    node[leaf] = value
  return out


def load_into(
    variables: dict[str, Any], converted: dict[str, Any], *, strict_backbone: bool = True
) -> tuple[dict[str, Any], list[str]]:
  """Copies converted arrays into `variables` (same paths and shapes); returns (merged, skipped).

  With strict_backbone, a converted array whose path is missing in the model raises (a wrong
  architecture or preset); shape mismatches (e.g. a 1000-class fc) are skipped and reported.
  """
  flat_new = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(converted)}
  flat_old = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(variables)}
  missing = sorted(set(flat_new) - set(flat_old))
  if missing and strict_backbone:
    raise ValueError(
        f"{len(missing)} converted weights have no place in the model, e.g. {missing[:5]}; "
        f"check --arch / large_feature_map / preset."
    )
  skipped = sorted(
      k for k in flat_new if k in flat_old and np.shape(flat_new[k]) != np.shape(flat_old[k])
  )

  def pick(path, x):
    k = jax.tree_util.keystr(path)
    y = flat_new.get(k)
    return jnp.asarray(y, x.dtype) if y is not None and np.shape(y) == np.shape(x) else x

  return jax.tree_util.tree_map_with_path(pick, variables), skipped


def convert(
    path: str,
    *,
    arch: str,
    num_classes: int,
    large_feature_map: bool,
    preset: str = "paper",
    bcam: bool = False,
    num_heads: int = 100,
    image_size: int = 224,
) -> tuple[dict[str, Any], list[str]]:
  """Flax variables of the WSOL model for `path`; returns (variables, skipped keys)."""
  model_cfg = dict(preset=preset, num_classes=num_classes, large_feature_map=large_feature_map)
  x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  if bcam:
    backbone = wsol_backbones.create_backbone(arch, dict(model_cfg, with_classifier=False))
    bv = dict(backbone.init(jax.random.key(0), x))
    out = backbone.apply(bv, x)
    head = wsol_backbones.bcam_head(arch, num_classes, num_heads).init(
        jax.random.key(1), out["features"], wsol_backbones.bcam_attention_input(arch, out)
    )
    variables = {"params": {"backbone": bv.pop("params"), "bcam_head": head["params"]}, **bv}
  else:
    variables = dict(wsol_backbones.create_backbone(arch, model_cfg).init(jax.random.key(0), x))
  converted = state_dict_to_variables(
      read_wsol_state_dict(path), arch=arch, large_feature_map=large_feature_map, bcam=bcam
  )
  if not converted["batch_stats"]:
    converted.pop("batch_stats")
  return load_into(variables, converted)


MODEL_INFO = "wsol_model.json"  # next to `state`: the network the weights were converted for


def write_init_checkpoint(
    variables: dict[str, Any], out_dir: str, model_info: dict | None = None
) -> str:
  """Writes `<out_dir>/state` in the layout `config.method.init_from` reads.

  `model_info` (arch, large_feature_map, num_classes) goes to `<out_dir>/wsol_model.json`:
  the feature-map stride changes no weight shape, so the WSOL methods compare it with
  config.model to refuse loading the weights into the wrong network.
  """
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  variables = dict(variables)
  state = {
      "params": variables.pop("params"),
      "model_state": variables,
      "step": np.zeros((), np.int32),
  }
  path = os.path.join(os.path.abspath(out_dir), "state")
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path, jax.device_get(state))
  if model_info is not None:
    with open(os.path.join(os.path.abspath(out_dir), MODEL_INFO), "w", encoding="utf-8") as f:
      json.dump(model_info, f)
  return os.path.abspath(out_dir)


def check_model_info(init_from: str, arch: str, large_feature_map: bool) -> None:
  """Raises if `init_from` was converted for another architecture or feature-map size."""
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top

  path = os.path.join(init_from, MODEL_INFO)
  if not init_from or not os.path.isfile(path):
    return
  with open(path, encoding="utf-8") as f:
    info = json.load(f)
  if info.get("arch", arch) != arch or bool(
      info.get("large_feature_map", large_feature_map)
  ) != bool(large_feature_map):
    raise ValueError(
        f"config.method.init_from={init_from} holds {info.get('arch')} weights converted with "
        f"large_feature_map={info.get('large_feature_map')} ({path}), but config.model builds "
        f"{arch} with large_feature_map={large_feature_map}; the stride changes no weight shape, "
        f"so the weights would load into the wrong network. Set "
        f"--config.model.large_feature_map={info.get('large_feature_map')} or convert again."
    )


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """The converter's flags (defined only when run as a program or by main())."""
  fv = {"flag_values": flag_values}
  flags.DEFINE_enum("arch", None, sorted(wsol_backbones.ARCHS), "Backbone architecture.", **fv)
  flags.DEFINE_string("checkpoint", None, "A local .pth / .pth.tar / .safetensors file.", **fv)
  flags.DEFINE_integer("num_classes", None, "Classes of the target config.", **fv)
  flags.DEFINE_bool(
      "large_feature_map",
      None,
      "28x28 maps; default as configs/cam.py for " "--dataset (LARGE_FEATURE_MAP).",
      **fv,
  )
  flags.DEFINE_enum("dataset", "cub", ["cub", "ilsvrc", "openimages"], "Target dataset.", **fv)
  flags.DEFINE_bool("bcam", False, "A B-CAM checkpoint (bcam method layout).", **fv)
  flags.DEFINE_integer("num_heads", 100, "B-CAM heads.", **fv)
  flags.DEFINE_string("output", None, "Orbax folder to write (for config.method.init_from).", **fv)


def convert_main(fv: flags.FlagValues) -> int:
  """The CLI on parsed flags: converts --checkpoint and writes --output."""
  for flag in ("arch", "checkpoint", "num_classes", "output"):
    if fv[flag].value is None:
      raise ValueError(f"--{flag} is required; see --help.")
  large = fv.large_feature_map
  if large is None:
    large = LARGE_FEATURE_MAP[(fv.arch, fv.dataset)]
  variables, skipped = convert(
      fv.checkpoint,
      arch=fv.arch,
      num_classes=fv.num_classes,
      large_feature_map=large,
      bcam=fv.bcam,
      num_heads=fv.num_heads,
  )
  out = write_init_checkpoint(
      variables,
      fv.output,
      {"arch": fv.arch, "large_feature_map": bool(large), "num_classes": fv.num_classes},
  )
  print(f"Wrote {out} (init_from). Kept fresh (shape mismatch): {skipped or 'none'}")
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  """In-process entry: main(["--arch=...", ...]) parses `argv` on a fresh flag set."""
  from jaxmilab import console  # pylint: disable=g-import-not-at-top

  return convert_main(console.parse_flags(define_flags, argv or [], prog="jaxmilab-convert-wsol"))


def _app_main(argv: Sequence[str]) -> None:
  from jaxmilab import console  # pylint: disable=g-import-not-at-top
  from jaxmilab import restore  # pylint: disable=g-import-not-at-top

  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  console.setup()
  restore.run_cli(lambda: convert_main(flags.FLAGS))


def run() -> None:
  """Console-script entry point (jaxmilab-convert-wsol)."""
  define_flags()
  app.run(_app_main)


if __name__ == "__main__":
  run()
