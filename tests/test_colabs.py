"""The notebooks in colabs/: their shape (default suite) and a simulated Colab run (slow).

The slow test builds a wheel of the project, installs it into a fresh virtual environment and
runs every notebook with VARIANT = "smoke" from an empty folder outside the repository, with
tests/notebook_runner.py copied next to it: a notebook that needs the checkout fails here.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(REPO, "colabs", "*.ipynb")))
NAMES = [os.path.basename(p)[:-6] for p in NOTEBOOKS]
EXPECTED = {"maskdcpt_quickstart", "restore_your_photo", "teaformer", "opd", "wsol", "cdsp", "macl"}


def _cells(path):
  with open(path, encoding="utf-8") as f:
    return json.load(f)["cells"]


def _source(cell):
  return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def test_one_notebook_per_family():
  assert set(NAMES) == EXPECTED


def test_runner_injects_parameters_only_when_given():
  sys.path.insert(0, os.path.join(REPO, "tests"))
  try:
    import notebook_runner  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.pop(0)
  import nbformat  # pylint: disable=g-import-not-at-top

  nb = nbformat.read(NOTEBOOKS[0], as_version=4)
  tags = lambda nb: [c.get("metadata", {}).get("tags", []) for c in nb.cells]
  injected = notebook_runner.inject(nb, {"VARIANT": '"smoke"'})
  where = [i for i, t in enumerate(tags(injected)) if "injected-parameters" in t]
  assert len(where) == 1 and "parameters" in tags(injected)[where[0] - 1]
  assert 'VARIANT = "smoke"' in injected.cells[where[0]].source
  # Re-injecting replaces the cell; no assignments leave none (a committed run has none).
  again = notebook_runner.inject(injected, {"SEED": "1"})
  assert sum("injected-parameters" in t for t in tags(again)) == 1
  assert not any("injected-parameters" in t for t in tags(notebook_runner.inject(injected, {})))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NAMES)
def test_notebook_shape(path):
  cells = _cells(path)
  code = [c for c in cells if c["cell_type"] == "code"]
  install = _source(code[0])
  # The set-up cell installs only when jaxmilab is missing, from one overridable source, and
  # matches JAX to the accelerator.
  assert 'find_spec("jaxmilab") is None' in install and "JAXMILAB_SOURCE" in install
  assert "jax[cuda12]" in install and "jax[tpu]" in install and "jax.devices()" in install
  assert "pip install jaxmilab" not in install.replace("\n", " ")
  tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
  assert len(tagged) == 1 and 'VARIANT = "quickstart"' in _source(tagged[0])
  assert not any("injected-parameters" in c.get("metadata", {}).get("tags", []) for c in code)
  # Outputs are committed: images shown, no error.
  outputs = [o for c in code for o in c.get("outputs", [])]
  assert any("image/png" in o.get("data", {}) for o in outputs), "commit the executed notebook"
  assert not [o for o in outputs if o.get("output_type") == "error"]
  # Committed outputs show no orbax restore noise that reads like a broken checkpoint (#32).
  printed = "\n".join(
      "".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", "")) for o in outputs
  )
  assert "Metadata file does not exist" not in printed
  # Nothing refers to the checkout: configs by package name, never by a relative path.
  text = "\n".join(_source(c) for c in code)
  assert "configs/" not in text.replace("configs/restoration.py:<VARIANT>", "")
  # A smoke dry run and a quickstart run never share a workdir: the default names the variant.
  if "WORKDIR" in text:
    assert re.search(r'WORKDIR = WORKDIR or f".*\{VARIANT\}', text), "WORKDIR must name VARIANT"


def test_readme_has_a_badge_per_notebook():
  readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
  for name in NAMES:
    assert f"colabs/{name}.ipynb" in readme and "colab-badge.svg" in readme, name


@pytest.mark.slow
def test_notebooks_run_from_a_wheel_in_a_fresh_venv(tmp_path):
  wheels = tmp_path / "wheels"
  subprocess.run(
      [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), REPO],
      check=True,
      cwd=str(tmp_path),
  )
  wheel = glob.glob(str(wheels / "jaxmilab-*.whl"))[0]
  names = zipfile.ZipFile(wheel).namelist()
  configs = sorted(os.path.basename(p) for p in glob.glob(os.path.join(REPO, "configs", "*.py")))
  for c in configs:
    assert f"jaxmilab/configs/{c}" in names, f"{c} missing from the wheel"
  assert not [n for n in names if n.startswith(("tests/", "colabs/", "launch/"))]

  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
  python = str(venv / "bin" / "python")
  subprocess.run(
      [
          python,
          "-m",
          "pip",
          "install",
          "-q",
          wheel,
          "nbclient",
          "nbformat",
          "ipykernel",
          "matplotlib",
      ],
      check=True,
      cwd=str(tmp_path),
  )
  empty = tmp_path / "colab"
  empty.mkdir()
  shutil.copy(os.path.join(REPO, "tests", "notebook_runner.py"), tmp_path / "runner.py")
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
  env.update(
      PATH=f"{venv / 'bin'}:{env.get('PATH', '')}",
      JAX_PLATFORMS="cpu",
      TF_CPP_MIN_LOG_LEVEL="3",
      XLA_FLAGS="",
  )
  # The wheel, not the checkout, is what the kernel imports.
  where = subprocess.run(
      [
          python,
          "-c",
          "import jaxmilab, jaxmilab.configs.maskdcpt as m; "
          "print(jaxmilab.__file__, m.__file__)",
      ],
      env=env,
      cwd=str(empty),
      capture_output=True,
      text=True,
      check=True,
  ).stdout
  assert REPO not in where and str(venv) in where, where
  for path, name in zip(NOTEBOOKS, NAMES):
    proc = subprocess.run(
        [
            python,
            str(tmp_path / "runner.py"),
            path,
            "--set",
            'VARIANT="smoke"',
            "--set",
            f'WORKDIR="{tmp_path / "runs" / name}"',
            "--cwd",
            str(empty),
            "--output",
            str(tmp_path / f"{name}.ipynb"),
        ],
        env=env,
        cwd=str(empty),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, f"{name}:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
