"""Every documented config key can be set from the command line; mistakes get one line.

Walks every config file and variant of the package, the component schemas
(`CONFIG_DEFAULTS`) and every `python -m jaxmilab.main` command in
the README, and runs the CLI on the mistakes users make (unknown key, typo, wrong type).
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from PIL import Image

from jaxmilab import config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL = [(exp, v) for exp, variants in config_lib.available_configs().items() for v in variants]


def test_every_config_declares_its_variants():
  configs = config_lib.available_configs()
  assert {"dcpt", "maskdcpt", "restoration", "cam", "opd", "teaformer"} <= set(configs)
  for exp, variants in configs.items():
    assert "smoke" in variants, f"configs/{exp}.py: VARIANTS must include smoke"


QUICKSTARTS = [exp for exp, variant in ALL if variant == "quickstart"]


@pytest.mark.parametrize("exp", QUICKSTARTS)
def test_quickstarts_checkpoint_at_most_100_steps_apart(exp):
  """An interruption (Ctrl-C, SIGTERM, a crash) of a quickstart loses at most 100 steps, a minute
  or so on a CPU, not the run (a quickstart that saved only at its end lost all of it)."""
  config = config_lib.load(f"jaxmilab:{exp}:quickstart")
  assert config.checkpoint_every_steps <= min(100, config.total_steps), (
      f"configs/{exp}.py:quickstart saves every {config.checkpoint_every_steps} of "
      f"{config.total_steps} steps"
  )


def _leaves(config, prefix=""):
  for k, v in config.items():
    if isinstance(v, ml_collections.ConfigDict):
      yield from _leaves(v, f"{prefix}{k}.")
    else:
      yield prefix + k, v


@pytest.mark.parametrize("exp,variant", ALL, ids=[f"{e}:{v}" for e, v in ALL])
def test_every_key_of_every_variant_can_be_overridden(exp, variant):
  config = config_lib.load(f"jaxmilab:{exp}:{variant}")
  # The selected components' declared keys are all present ...
  for part in ("model", "method", "data"):
    for key in config_lib.component_defaults(part, config[part]):
      assert key in config[part], f"{exp}:{variant}: config.{part}.{key} missing"
  # ... and each leaf can be set from the command line (a round trip of its own value).
  copy = ml_collections.ConfigDict(config.to_dict())
  for key, value in _leaves(config):
    if isinstance(value, (bool, int, float, str)) and not (isinstance(value, str) and "," in value):
      config_lib.apply_override(copy, key, str(value), from_string=True)
      got = copy
      for p in key.split("."):
        got = got[p]
      assert got == value and type(got) is type(value), (key, value, got)


def _readme_commands():
  """`jaxmilab.main` command lines in the README and its docs/ pages."""
  paths = [os.path.join(REPO, "README.md")] + sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))
  text = "\n".join(open(p, encoding="utf-8").read() for p in paths).replace("\\\n", " ")
  for line in text.splitlines():
    if "jaxmilab.main" in line and "--config=" in line:
      yield line


def test_readme_main_commands_name_real_keys():
  commands = list(_readme_commands())
  assert len(commands) >= 5
  for line in commands:
    spec = re.search(r"--config=(\S+)", line).group(1)
    if "<" in spec:
      continue  # the generic pattern
    overrides = dict(re.findall(r"--config\.([\w.]+)=(\S+)", line))
    config_lib.load(spec, overrides, string_values=True)  # raises ConfigError on a bad key


def test_root_can_be_set_on_the_pretraining_quickstarts(tmp_path):
  photos = tmp_path / "photos"
  photos.mkdir()
  rng = np.random.default_rng(0)
  for i in range(12):
    Image.fromarray(rng.integers(0, 256, (80, 96, 3), np.uint8)).save(photos / f"p{i}.png")
  from jaxmilab import registry

  for spec in ("configs/dcpt.py:quickstart", "configs/maskdcpt.py:quickstart"):
    config = config_lib.load(
        spec,
        {"data.root": str(photos), "data.patch_size": "32", "data.eval_size": "32"},
        string_values=True,
    )
    assert config.data.root == str(photos)
    data = registry.get_data(config.data.name)(
        config.data, batch_size=4, seed=0, process_index=0, process_count=1
    )
    batch = next(data.train)
    assert batch["gt"].shape[1:3] == (32, 32)


@pytest.mark.parametrize(
    "key,value,expected",
    [
        (
            "optimizer.lr",
            "1",
            "Unknown config key config.optimizer.lr; did you mean "
            "config.optimizer.learning_rate",
        ),
        (
            "total_steps",
            "abc",
            "--config.total_steps='abc' is not an integer (config.total_steps is",
        ),
        ("data.rot", "/x", "did you mean config.data.root"),
        ("modle.name", "x", "Unknown config key config.modle; did you mean config.model?"),
        ("optimizer.name", "adamm", "is not one of adam, adamw, amsgrad, sgd; did you mean adam"),
        ("optimizer.learning_rate", "-1", "learning_rate=-1.0 must be > 0"),
        ("mesh.fsdp", "0", "config.mesh.fsdp=0 must be >= 1, or -1"),
        ("data.patch_size", "1.5", "is not an integer"),
        ("model", "x", "config.model is a group of keys"),
    ],
)
def test_mistakes_name_the_key_and_what_is_allowed(key, value, expected):
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.load("jaxmilab:dcpt:quickstart", {key: value}, string_values=True)
  assert expected in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "override,expected",
    [
        ("--config.optimizer.lr=1", "did you mean config.optimizer.learning_rate"),
        ("--config.total_steps=abc", "--config.total_steps='abc' is not an integer"),
    ],
)
def test_cli_mistakes_are_one_line_with_exit_code_2(tmp_path, override, expected):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [
          sys.executable,
          "-m",
          "jaxmilab.main",
          "--config=jaxmilab:dcpt:quickstart",
          f"--workdir={tmp_path}",
          override,
      ],
      capture_output=True,
      text=True,
      env=env,
      cwd=str(tmp_path),
      timeout=300,
  )
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert lines[-1].startswith("error: ") and expected in lines[-1], lines[-3:]
  assert "Traceback" not in proc.stderr
  assert not os.listdir(tmp_path)  # nothing was built or written


def test_package_form_and_checkout_form_load_the_same_config():
  a = config_lib.load("configs/maskdcpt.py:pod")
  b = config_lib.load("jaxmilab:maskdcpt:pod")
  assert a.to_dict() == b.to_dict()
  with pytest.raises(config_lib.ConfigError, match="no variant 'smokee'.*did you mean smoke"):
    config_lib.load("jaxmilab:dcpt:smokee")
  with pytest.raises(config_lib.ConfigError, match="no experiment 'dcp'"):
    config_lib.load("jaxmilab:dcp:smoke")


def test_pyproject_lists_every_subpackage():
  """pyproject.toml lists packages explicitly (configs/ is mapped to jaxmilab.configs)."""
  import tomllib  # pylint: disable=g-import-not-at-top

  with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
    listed = set(tomllib.load(f)["tool"]["setuptools"]["packages"])
  tree = {
      os.path.relpath(root, REPO).replace(os.sep, ".")
      for root, _, files in os.walk(os.path.join(REPO, "jaxmilab"))
      if "__init__.py" in files
  }
  assert listed == tree | {"jaxmilab.configs"}


# ------------------------------------------------------------------- config_lib.options


def test_options_reads_the_config_value_else_the_declared_default():
  defaults = dict(mask_ratio=0.5, loss="l1", sizes=(1, 2))
  part = ml_collections.ConfigDict(dict(name="maskdcpt", mask_ratio=0.75))
  opts = config_lib.options(part, defaults)
  assert opts.mask_ratio == 0.75 and opts["mask_ratio"] == 0.75  # set in the config
  assert opts.loss == "l1" and opts.sizes == (1, 2)  # declared default
  assert opts.name == "maskdcpt"
  assert dict(opts) == dict(name="maskdcpt", mask_ratio=0.75, loss="l1", sizes=(1, 2))
  assert isinstance(opts, config_lib.Options)
  # A key set to a falsy value is the config's value, not the default.
  assert config_lib.options({"mask_ratio": 0.0}, defaults).mask_ratio == 0.0
  assert config_lib.options(None, defaults).loss == "l1"
  with pytest.raises(TypeError, match="read-only"):
    opts.loss = "l2"


def test_options_reading_an_undeclared_key_names_the_key_and_the_component():
  opts = config_lib.options({"name": "maskdcpt"}, dict(mask_ratio=0.5))
  with pytest.raises(
      AttributeError,
      match=r"config.method of 'maskdcpt' has no key 'mask_ratoi'" r".*did you mean mask_ratio",
  ):
    _ = opts.mask_ratoi
  with pytest.raises(KeyError, match="has no key 'loss'"):
    _ = opts["loss"]
  with pytest.raises(KeyError, match="has no key 'loss'"):
    opts.get("loss", "l1")  # no second default at the read
  assert "loss" not in opts and "mask_ratio" in opts


def test_options_rejects_keys_the_component_does_not_declare():
  with pytest.raises(
      config_lib.ConfigError,
      match=r"config.model: unknown key\(s\) \['widht'\] for 'unet'; allowed "
      r"keys: name, width, depth.*did you mean width",
  ):
    config_lib.options({"name": "unet", "widht": 8}, dict(width=32, depth=4), part="model")
  # ConfigError is a ValueError, as the components' own checks raised before.
  with pytest.raises(ValueError, match="for 'mine'"):
    config_lib.options({"x": 1}, {}, component="mine")


def test_options_required_keys_have_no_default():
  opts = config_lib.options(
      {"name": "deeplab", "num_classes": 21},
      dict(output_stride=16),
      part="model",
      required=("num_classes",),
  )
  assert (opts.num_classes, opts.output_stride) == (21, 16)
  with pytest.raises(
      config_lib.ConfigError, match=r"config.model.num_classes is required by 'deeplab'"
  ):
    config_lib.options(
        {"name": "deeplab"}, dict(output_stride=16), part="model", required=("num_classes",)
    )


def test_options_a_key_set_to_none_is_not_set():
  # The rule of models.common.resolve: None takes the default, and an undeclared None key
  # (left by the component a config started with) is no error.
  opts = config_lib.options(
      {"name": "unet", "width": None, "heads": None}, dict(width=32), part="model"
  )
  assert dict(opts) == dict(name="unet", width=32)
  with pytest.raises(config_lib.ConfigError, match="is required"):
    config_lib.options({"num_classes": None}, {}, required=("num_classes",))


def test_components_declare_each_default_once():
  """Models read through options take their defaults from the dataclass fields; the mesh from
  config_lib.MESH_DEFAULTS, which base_config uses too."""
  from jaxmilab import sharding  # pylint: disable=g-import-not-at-top
  from jaxmilab.models import common, deeplab, pcl_unet, unet  # pylint: disable=g-import-not-at-top

  assert unet.CONFIG_DEFAULTS == dict(width=32, depth=5, out_channels=0, dtype="float32")
  assert unet.create({}) == unet.UNet()  # the declaration is the class's defaults
  assert pcl_unet.CONFIG_DEFAULTS == dict(width=32, depth=4, num_classes=0, dtype="float32")
  assert pcl_unet.create({}).num_classes == pcl_unet.PCLUNet.num_classes  # 0 = the field's
  fields = common.config_defaults(deeplab.DeepLab)
  assert all(deeplab.CONFIG_DEFAULTS[k] == fields[k] for k in ("arch", "style", "lorm", "dtype"))
  assert "num_classes" not in fields  # no default: the method sets it
  assert config_lib.base_config().mesh.to_dict() == config_lib.MESH_DEFAULTS
  assert dict(sharding.mesh_options({"fsdp": 2})) == dict(config_lib.MESH_DEFAULTS, fsdp=2)
  assert sharding.mesh_shape({"fsdp": 2}, 8) == (4, 2, 1)  # data=-1 (declared): the rest
  with pytest.raises(config_lib.ConfigError, match=r"config.mesh: unknown key\(s\) \['fdsp'\]"):
    sharding.mesh_shape({"fdsp": 2}, 8)


def test_optimizer_keys_are_declared_once_and_a_stray_one_is_an_error():
  assert config_lib.base_config().optimizer.to_dict() == config_lib.OPTIMIZER_DEFAULTS
  config = config_lib.load("jaxmilab:dcpt:smoke").unlock()
  config.optimizer.warmup = 5  # a typo in a config file (warmup_steps) is no longer ignored
  with pytest.raises(
      config_lib.ConfigError,
      match=r"config.optimizer: unknown key\(s\) \['warmup'\].*did you mean " r"warmup_steps",
  ):
    config_lib.validate(config)
