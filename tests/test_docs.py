"""The README and its pages link to files and headings that exist (the README was split into
docs/*.md; a moved section must not leave a dead link behind)."""

from __future__ import annotations

import glob
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md", "ARCHITECTURE.md", "CHANGELOG.md", "launch/README.md"] + sorted(
    os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md"))
)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
  """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
  text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
  return text.replace(" ", "-")


def _anchors(path: str) -> set[str]:
  text = open(path, encoding="utf-8").read()
  text = re.sub(r"```.*?```", "", text, flags=re.S)  # '# comments' in code blocks are not headings
  return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, flags=re.M)}


def _links(page: str):
  text = open(os.path.join(REPO, page), encoding="utf-8").read()
  text = re.sub(r"```.*?```", "", text, flags=re.S)
  for target in LINK.findall(text):
    if not re.match(r"^[a-z]+:", target):
      yield target


def test_slug_matches_githubs_rule():
  assert _slug("Ahead-of-time compile for a slice (`jaxmilab.compile`)") == (
      "ahead-of-time-compile-for-a-slice-jaxmilabcompile"
  )
  assert _slug("4. Estimate: MaskDCPT-NAFNet on UIR-2.5M on a v5e-64") == (
      "4-estimate-maskdcpt-nafnet-on-uir-25m-on-a-v5e-64"
  )


@pytest.mark.parametrize("page", PAGES)
def test_relative_links_resolve(page):
  assert os.path.exists(os.path.join(REPO, page)), page
  base = os.path.dirname(os.path.join(REPO, page))
  dead = []
  for target in _links(page):
    path, _, anchor = target.partition("#")
    file = os.path.normpath(os.path.join(base, path)) if path else os.path.join(REPO, page)
    if not os.path.exists(file):
      dead.append(f"{target}: no file {os.path.relpath(file, REPO)}")
    elif anchor and file.endswith(".md") and anchor not in _anchors(file):
      dead.append(f"{target}: no heading #{anchor} in {os.path.relpath(file, REPO)}")
  assert not dead, f"{page}: dead links: {dead}"


def test_readme_indexes_every_docs_page():
  readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
  for page in PAGES:
    if page.startswith("docs/"):
      assert f"]({page})" in readme, f"README's Documentation table does not link {page}"
