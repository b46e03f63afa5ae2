"""One command-line surface: every CLI uses absl flags, snake_case names and the same words for
the same things; every console script in pyproject.toml resolves to a `run()`; the console is
quiet by default (library INFO logs only with --verbosity >= 1)."""

from __future__ import annotations

import json
import logging as std_logging
import os
import re
import subprocess
import sys
import tomllib

import pytest

from jaxmilab import console

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Every command line of the package (module run with `python -m`).
CLI_MODULES = (
    "jaxmilab.main",
    "jaxmilab.quickstart",
    "jaxmilab.opd_quickstart",
    "jaxmilab.macl_quickstart",
    "jaxmilab.restore",
    "jaxmilab.evaluate",
    "jaxmilab.compile",
    "jaxmilab.data.build_uir",
    "jaxmilab.convert.torchvision_wsol",
    "jaxmilab.benchmarks.cdsp_ablation",
    "jaxmilab.benchmarks.data_pipeline",
    "jaxmilab.benchmarks.maskdcpt_probe",
    "jaxmilab.benchmarks.opd_effects",
    "jaxmilab.benchmarks.pretrain_effects",
    "jaxmilab.benchmarks.tea_attention",
    "jaxmilab.benchmarks.train_step",
    "jaxmilab.benchmarks.wsol_effects",
)
# Names that mean the same thing as a canonical one: files written -> --output, run folders ->
# --workdir, data roots -> *_root / *_dir.
SYNONYMS = {
    "out": "output",
    "json_out": "output",
    "out_file": "output",
    "output_file": "output",
    "out_dir": "output",
    "output_dir": "output",
    "save_path": "output",
    "logdir": "workdir",
    "log_dir": "workdir",
    "run_dir": "workdir",
    "rundir": "workdir",
    "model_dir": "workdir",
    "datadir": "data_root",
    "data_dir": "data_root",
    "dataroot": "data_root",
    "root": "data_root",
}
SNAKE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")

# Imports each CLI in turn (in one subprocess: their flags live on absl's global FLAGS, and
# several define the same names), runs its define_flags() where flags are defined on demand,
# records the flags the module defined and removes them before the next import.
_PROBE = r"""
import importlib, json, sys
from absl import app, flags, logging   # absl's own flags (--verbosity, --log_dir, ...) first
FLAGS = flags.FLAGS
out = {}
for name in sys.argv[1:]:
  before = set(FLAGS)
  module = importlib.import_module(name)
  if hasattr(module, "define_flags"):
    module.define_flags()
  defined = sorted(set(FLAGS) - before)
  source = open(module.__file__, encoding="utf-8").read()
  out[name] = {"flags": defined, "argparse": "argparse" in source,
               "run": callable(getattr(module, "run", None))}
  owners = {m for m, fl in FLAGS.flags_by_module_dict().items()
            if any(f.name in defined for f in fl)}
  for f in defined:
    delattr(FLAGS, f)
  for m in owners | {name}:   # re-imported by a later CLI (data_pipeline imports train_step)
    sys.modules.pop(m, None)
print("JSON" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def cli_flags() -> dict[str, dict]:
  result = subprocess.run(
      [sys.executable, "-c", _PROBE, *CLI_MODULES],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=600,
      check=False,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  line = [l for l in result.stdout.splitlines() if l.startswith("JSON")][-1]
  return json.loads(line[len("JSON") :])


def test_every_cli_uses_absl_snake_case_flags(cli_flags):
  problems = []
  for module, info in cli_flags.items():
    if info["argparse"]:
      problems.append(f"{module}: uses argparse (move it to absl flags)")
    if not info["flags"]:
      problems.append(f"{module}: defines no absl flags")
    for name in info["flags"]:
      if not SNAKE.match(name):
        problems.append(f"{module}: --{name} is not snake_case")
      if name in SYNONYMS:
        problems.append(f"{module}: --{name} should be --{SYNONYMS[name]}")
  assert not problems, "\n".join(problems)


def test_same_words_for_the_same_things(cli_flags):
  """Run folders are --workdir, written files --output; spot-check the main CLIs."""
  want = {
      "jaxmilab.main": {"workdir", "config"},
      "jaxmilab.quickstart": {"workdir", "variant"},
      "jaxmilab.opd_quickstart": {"workdir", "variant"},
      "jaxmilab.macl_quickstart": {"workdir", "variant"},
      "jaxmilab.restore": {"input", "output", "model", "weights", "tile", "tile_overlap"},
      "jaxmilab.evaluate": {"output", "data_root", "model", "weights", "save_images"},
      "jaxmilab.data.build_uir": {"output", "clean_dir"},
      "jaxmilab.convert.torchvision_wsol": {"output", "checkpoint"},
      "jaxmilab.benchmarks.train_step": {"output", "config"},
      "jaxmilab.benchmarks.tea_attention": {"output"},
      "jaxmilab.benchmarks.cdsp_ablation": {"output"},
      "jaxmilab.benchmarks.opd_effects": {"output"},
      "jaxmilab.benchmarks.wsol_effects": {"output"},
  }
  missing = {
      m: sorted(names - set(cli_flags[m]["flags"]))
      for m, names in want.items()
      if names - set(cli_flags[m]["flags"])
  }
  assert not missing, missing


def _console_scripts() -> dict[str, str]:
  with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
    return tomllib.load(f)["project"]["scripts"]


def test_console_scripts_resolve_to_run(cli_flags):
  scripts = _console_scripts()
  assert scripts["jaxmilab-train"] == "jaxmilab.main:run"
  for name in (
      "jaxmilab-restore",
      "jaxmilab-evaluate",
      "jaxmilab-compile",
      "jaxmilab-quickstart",
      "jaxmilab-build-uir",
  ):
    assert name in scripts, name
  for name, target in scripts.items():
    module, _, attr = target.partition(":")
    assert attr == "run", (name, target)
    assert module in cli_flags, f"{name} -> {module} is not in CLI_MODULES"
    assert cli_flags[module]["run"], f"{name}: {module} has no callable run()"
  # Every CLI except the benchmarks has a console script.
  scripted = {t.partition(":")[0] for t in scripts.values()}
  assert {m for m in CLI_MODULES if ".benchmarks." not in m} <= scripted


def test_benchmarks_import_together_and_define_flags_on_demand():
  """Benchmarks share flag names (--steps, --seeds, --output): importing them all in one process
  defines no flag, and each defines its own set into a fresh FlagValues, holding every flag its
  source reads (`FLAGS.x`, `FLAGS["x"]`). (Defined at import, they
  clashed in a pytest worker: opd_effects after pretrain_effects raised DuplicateFlagError.)"""
  names = [m for m in CLI_MODULES if ".benchmarks." in m]
  code = (
      "import importlib, re, sys\n"
      "from absl import flags, logging\n"
      "modules = [importlib.import_module(n) for n in sys.argv[1:]]\n"
      "for m in modules:\n"
      "  fv = flags.FlagValues()\n"
      "  m.define_flags(fv)\n"
      "  assert 'output' in fv or 'workdir' in fv, m.__name__\n"
      "  assert not set(fv) & set(flags.FLAGS), (m.__name__, set(fv) & set(flags.FLAGS))\n"
      "  src = open(m.__file__).read()\n"
      "  used = set(re.findall(r'FLAGS\\.([a-z_]+)\\b', src))\n"
      "  used |= set(re.findall(r'FLAGS\\[\"([a-z_]+)\"\\]', src))\n"
      "  used -= {'is_parsed', 'unparse_flags', 'mark_as_parsed'}\n"
      "  assert used <= set(fv), (m.__name__, 'reads undefined flags', sorted(used - set(fv)))\n"
      "print('OK')\n"
  )
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  result = subprocess.run(
      [sys.executable, "-c", code, *names],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
      check=False,
  )
  assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]


def test_in_process_main_parses_a_fresh_flag_set(tmp_path):
  """restore.main / evaluate.main can be called one after another (both define --output and
  --model) and report bad flags as a one-line ValueError."""
  from jaxmilab import evaluate  # pylint: disable=g-import-not-at-top
  from jaxmilab import restore  # pylint: disable=g-import-not-at-top

  with pytest.raises(ValueError, match="--weights is required"):
    restore.main(["--model=nafnet_tiny", f"--input={tmp_path}", f"--output={tmp_path}"])
  with pytest.raises(ValueError, match="--data_root is required"):
    evaluate.main(["--model=nafnet_tiny", "--weights=w.pth"])
  with pytest.raises(ValueError, match="jaxmilab-restore.*list-models"):
    restore.main(["--list-models"])  # dashes: not a flag of restore
  assert restore.main(["--list_models"]) == 0


def test_console_setup_quiets_libraries_not_jaxmilab():
  """Library INFO records are dropped and jaxmilab's own kept; --verbosity=1 lets all through."""
  from absl import logging  # pylint: disable=g-import-not-at-top

  handler = logging.get_absl_handler()

  def passes(pathname: str, level: int) -> bool:
    record = std_logging.LogRecord("absl", level, pathname, 1, "msg", None, None)
    return bool(handler.filter(record))

  ours = os.path.join(REPO, "jaxmilab", "trainer.py")
  orbax = "/site-packages/orbax/checkpoint/checkpoint_manager.py"
  try:
    assert console.setup(level=0)
    assert passes(ours, std_logging.INFO) and passes(orbax, std_logging.WARNING)
    assert not passes(orbax, std_logging.INFO)
    assert passes("/site-packages/clu/metric_writers/logging_writer.py", std_logging.INFO)
    assert not passes("/site-packages/clu/periodic_actions.py", std_logging.INFO)
    assert std_logging.getLogger("jax").level == std_logging.WARNING
    assert not console.setup(level=1)
    assert passes(orbax, std_logging.INFO)
  finally:
    console.setup(level=1)
    for name in console.LIBRARY_LOGGERS:
      std_logging.getLogger(name).setLevel(std_logging.NOTSET)


def test_quickstarts_end_with_one_report(tmp_path, capsys):
  """Every quickstart ends through console.report_results: heading, table, wall / CPU time on
  stdout, the table alone in <workdir>/results.md."""
  import pathlib  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  from jaxmilab import console  # pylint: disable=g-import-not-at-top

  table = "| a | b |\n|---|---|\n| 1 | 2 |"
  console.report_results(str(tmp_path / "run"), "Heading.", table, time.time() - 5, os.times())
  out = capsys.readouterr().out
  assert out.startswith("\nHeading.\n\n" + table + "\n\nTotal wall time: ")
  assert "; CPU time: " in out
  assert (tmp_path / "run" / "results.md").read_text(encoding="utf-8") == table + "\n"
  for module in ("quickstart", "opd_quickstart", "macl_quickstart"):
    source = (pathlib.Path(console.__file__).parent / f"{module}.py").read_text(encoding="utf-8")
    assert "console.report_results(" in source and "results.md" not in source, module


def test_quickstart_overrides_reach_only_their_stages(tmp_path):
  """--set reaches the pre-training stages, --ft_set the fine-tuning stages; scratch gets
  neither, and each <p>/ft loads its own pre-training run. (A subprocess: jaxmilab.quickstart
  defines absl flags that other CLI modules imported in this process also define.)"""
  script = """
import json, os, sys
from jaxmilab import metrics as metrics_lib, quickstart, trainer
root = sys.argv[1]
seen = {}
trainer.train_to_end = lambda config, workdir: seen.setdefault(\
os.path.relpath(workdir, root), config)
metrics_lib.read_split = lambda workdir, split: [{"psnr": 0.0}]
quickstart.run_stages(root, ("dcpt", "maskdcpt"), "smoke", seed=3,
                      pretrain_overrides={"method.cls_weight": 0.5},
                      finetune_overrides={"method.zero_output_after_init_from": True})
print(json.dumps({k: {"seed": c.seed, "init_from": c.method.get("init_from", ""),
                      "zero_after": c.method.get("zero_output_after_init_from", False),
                      "cls_weight": c.method.get("cls_weight")} for k, c in seen.items()}))
# A mistaken pre-training key stops before any stage (scratch included) trains.
seen.clear()
try:
  quickstart.run_stages(root + "/bad", ("dcpt",), "smoke", seed=0,
                        pretrain_overrides={"method.no_such_key": 1})
except Exception as e:
  print(json.dumps({"error": str(e), "trained": sorted(seen)}))
"""
  out = subprocess.run(
      [sys.executable, "-c", script, str(tmp_path)],
      capture_output=True,
      text=True,
      check=True,
      env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )
  seen, bad = (json.loads(l) for l in out.stdout.strip().splitlines()[-2:])
  assert "no_such_key" in bad["error"] and bad["trained"] == []
  assert set(seen) == {"scratch", "dcpt/pretrain", "dcpt/ft", "maskdcpt/pretrain", "maskdcpt/ft"}
  assert all(c["seed"] == 3 for c in seen.values())
  assert not seen["scratch"]["zero_after"] and not seen["scratch"]["init_from"]
  for p in ("dcpt", "maskdcpt"):
    assert seen[f"{p}/pretrain"]["cls_weight"] == 0.5
    assert seen[f"{p}/ft"]["zero_after"]
    assert seen[f"{p}/ft"]["init_from"] == os.path.join(str(tmp_path), p, "pretrain")


@pytest.mark.slow
def test_tensorflow_import_after_setup_prints_nothing():
  """clu's summary writer imports TensorFlow, which printed "oneDNN custom operations are on"
  (and absl's "log messages before InitializeLog" line) at every CLI start; after
  console.setup() the import is silent. Fails without the TF_ENABLE_ONEDNN_OPTS default."""
  code = "from jaxmilab import console; console.setup(); import tensorflow"
  env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "JAX_PLATFORMS"))}
  result = subprocess.run(
      [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert "oneDNN" not in result.stderr and "InitializeLog" not in result.stderr, result.stderr


@pytest.mark.slow
@pytest.mark.libtpu
def test_cpu_host_with_libtpu_starts_quietly(monkeypatch):
  """With the [tpu] extra on a machine without an accelerator, a CLI's console.setup() keeps
  libtpu's PJRT plugin from initialising (it printed six lines about TPU_WORKER_HOSTNAMES at
  every start); an explicit JAX_PLATFORMS, or an accelerator's device node, leaves JAX alone."""
  if console._accelerator_present():  # pylint: disable=protected-access
    pytest.skip("this host has an accelerator")
  code = "from jaxmilab import console; console.setup(); import jax; print(jax.devices())"
  env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
  result = subprocess.run(
      [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
  )
  assert result.returncode == 0 and "CpuDevice" in result.stdout, result.stderr[-2000:]
  assert "TPU_WORKER_HOSTNAMES" not in result.stderr, result.stderr[-2000:]
  assert "TPU_ACCELERATOR_TYPE" not in result.stderr
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert not console.skip_absent_tpu()  # the user's choice stands
  monkeypatch.delenv("JAX_PLATFORMS")
  monkeypatch.setattr(console, "_accelerator_present", lambda: True)
  assert not console.skip_absent_tpu()
