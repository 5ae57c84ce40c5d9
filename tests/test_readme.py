"""The README's result tables and verdict lines are the committed artefacts' own lines.

A block of the README that starts with ``<!-- from: PATH -->`` and ends with ``<!-- end -->``
quotes the file PATH (relative to the repository): every table row and every list item in it
must be a line of that file, character for character.
"""

from __future__ import annotations

import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"<!-- from: (\S+) -->\n(.*?)<!-- end -->", re.S)


def quoted_blocks(text: str) -> list[tuple[str, list[str]]]:
  return [(path, [line for line in body.splitlines() if line.startswith(("|", "- "))])
          for path, body in BLOCK.findall(text)]


def test_readme_quotes_its_artefacts_verbatim():
  blocks = quoted_blocks((REPO / "README.md").read_text())
  assert blocks, "the README quotes no artefact"
  for path, lines in blocks:
    artefact = REPO / path
    assert artefact.is_file(), f"the README quotes {path}, which is not committed"
    source = set(artefact.read_text().splitlines())
    assert lines, f"the README's block from {path} quotes no line"
    missing = [line for line in lines if line not in source]
    assert not missing, f"README lines not in {path}: {missing}"


def test_a_changed_number_is_caught():
  text = "<!-- from: a.md -->\n| run | 12.34 |\n- verdict\n<!-- end -->\n"
  [(path, lines)] = quoted_blocks(text)
  assert path == "a.md" and lines == ["| run | 12.34 |", "- verdict"]
  assert "| run | 12.35 |" not in lines
