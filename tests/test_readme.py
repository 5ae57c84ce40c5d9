"""The README's result tables and verdict lines are the committed artefacts' own lines.

A block of the README that starts with ``<!-- from: PATH -->`` and ends with ``<!-- end -->``
quotes the file PATH (relative to the repository): every table row and every list item in it
must be a line of that file, character for character, in the file's order.
"""

from __future__ import annotations

import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"<!-- from: (\S+) -->\n(.*?)<!-- end -->", re.S)


def unquoted_lines(text: str, root: pathlib.Path) -> dict[str, list[str]]:
  """For every quoted block of ``text``: its quoted lines that are not lines of its artefact
  (an artefact that is missing, or a block that quotes nothing, counts as a failure too)."""
  problems = {}
  for path, body in BLOCK.findall(text):
    lines = [line for line in body.splitlines() if line.startswith(("|", "- "))]
    artefact = root / path
    if not artefact.is_file():
      problems[path] = ["(not committed)"]
      continue
    source = artefact.read_text().splitlines()
    missing = [line for line in lines if line not in source] if lines else ["(the block quotes no line)"]
    if not missing:  # the quoted lines keep the artefact's order (a table is not reassembled)
      position = -1
      for line in lines:
        later = [i for i, text in enumerate(source) if text == line and i > position]
        if not later:
          missing.append(f"(out of the artefact's order) {line}")
          break
        position = later[0]
    if missing:
      problems.setdefault(path, []).extend(missing)
  return problems


def test_readme_quotes_its_artefacts_verbatim():
  text = (REPO / "README.md").read_text()
  assert BLOCK.findall(text), "the README quotes no artefact"
  assert unquoted_lines(text, REPO) == {}


def test_a_changed_number_or_a_missing_artefact_is_caught(tmp_path):
  (tmp_path / "report.md").write_text("# r\n\n| single | 15.93 [14.9, 17.0] |\n- multi − single: +3.3 points\n")
  quote = "<!-- from: report.md -->\n| single | {} |\n- multi − single: +3.3 points\n<!-- end -->\n"
  assert unquoted_lines(quote.format("15.93 [14.9, 17.0]"), tmp_path) == {}
  assert unquoted_lines(quote.format("15.94 [14.9, 17.0]"), tmp_path) == {"report.md": ["| single | 15.94 [14.9, 17.0] |"]}
  assert unquoted_lines(quote.replace("report.md", "gone.md"), tmp_path) == {"gone.md": ["(not committed)"]}
  swapped = "<!-- from: report.md -->\n- multi − single: +3.3 points\n| single | 15.93 [14.9, 17.0] |\n<!-- end -->\n"
  assert unquoted_lines(swapped, tmp_path) == {"report.md": ["(out of the artefact's order) | single | 15.93 [14.9, 17.0] |"]}
