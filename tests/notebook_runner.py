"""Runs a notebook top to bottom with parameters, as papermill does, using nbclient only.

  python tests/notebook_runner.py colabs/opd.ipynb --set VARIANT='"smoke"' [--output out.ipynb]
      [--cwd DIR] [--timeout 1800]

A cell tagged "injected-parameters" with the `--set` assignments is inserted after the cell
tagged "parameters" (an earlier injected cell is replaced; without --set none is inserted). The
notebook runs in a fresh kernel of this Python in --cwd; with --output the executed notebook,
outputs included, is written there (this is how the committed outputs of colabs/ are made).
Self-contained (no jaxmilab import) so the Colab-simulating test can run it from a venv that has
only the wheel.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import nbclient
import nbformat


def inject(nb, assignments: dict[str, str]):
  """Inserts (or replaces) the injected-parameters cell after the `parameters` cell."""
  cells = [
      c for c in nb.cells if "injected-parameters" not in c.get("metadata", {}).get("tags", [])
  ]
  if not assignments:  # nothing to inject: the notebook runs with its own parameters
    nb.cells = cells
    return nb
  tagged = [i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
  if len(tagged) != 1:
    raise ValueError(f"expected exactly one cell tagged 'parameters', found {len(tagged)}")
  cell = nbformat.v4.new_code_cell(
      "# Parameters injected by tests/notebook_runner.py\n"
      + "".join(f"{k} = {v}\n" for k, v in assignments.items())
  )
  cell.metadata["tags"] = ["injected-parameters"]
  cells.insert(tagged[0] + 1, cell)
  nb.cells = cells
  return nb


def run(
    path: str,
    assignments: dict[str, str],
    *,
    cwd: str,
    output: str | None = None,
    timeout: int = 1800,
):
  nb = inject(nbformat.read(path, as_version=4), assignments)
  start = time.time()
  client = nbclient.NotebookClient(
      nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": cwd}}
  )
  try:
    client.execute()
  finally:
    if output:
      nbformat.write(nb, output)
  return nb, time.time() - start


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("notebook")
  parser.add_argument("--set", action="append", default=[], help="NAME=python-literal")
  parser.add_argument("--output")
  parser.add_argument("--cwd", default=os.getcwd())
  parser.add_argument("--timeout", type=int, default=1800)
  args = parser.parse_args(argv)
  assignments = dict(item.split("=", 1) for item in args.set)
  _, seconds = run(
      args.notebook, assignments, cwd=args.cwd, output=args.output, timeout=args.timeout
  )
  print(f"{args.notebook}: ran in {seconds:.0f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
