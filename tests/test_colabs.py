"""Notebooks run top to bottom on the smoke config (nbclient, a fresh kernel)."""

from __future__ import annotations

import os

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_quickstart_notebook_runs_on_smoke(tmp_path):
  nb = nbformat.read(os.path.join(REPO, "colabs", "quickstart.ipynb"), as_version=4)
  params = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
  assert len(params) == 1
  params[0].source = f'VARIANT = "smoke"\nWORKDIR = "{tmp_path / "run"}"\n'
  client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                   resources={"metadata": {"path": REPO}})
  client.execute()
  outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
  assert "trained 6 steps" in outputs
  assert "gaussian_noise" in outputs
  assert any("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
