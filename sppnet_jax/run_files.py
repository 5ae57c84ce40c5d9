"""JSON files of a run: written whole (a crash never leaves half a file) and read with errors
that name the file and say how to go on.

:func:`write_json` writes a temporary file beside the target and renames it over the target
(``os.replace`` is atomic on one file system), so a reader sees the old file or the new one.
:func:`read_json` turns an empty, cut-short or garbled file into one ``ValueError`` naming the
file, what is wrong with it and the remedy its caller gives.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

__all__ = ["write_json", "write_text", "read_json"]


def write_text(path: str | os.PathLike, text: str) -> None:
  """Writes ``text`` to ``path`` atomically: a temporary file in the same directory, flushed to
  disk, then renamed over ``path``. On an error the temporary file is removed and ``path`` is
  left as it was."""
  path = pathlib.Path(path)
  partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  try:
    with open(partial, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(partial, path)
  except BaseException:
    partial.unlink(missing_ok=True)
    raise


def write_json(path: str | os.PathLike, value: Any, **dump_kwargs) -> None:
  """Writes ``value`` as JSON to ``path`` atomically (:func:`write_text`); ``dump_kwargs`` go to
  ``json.dumps`` (e.g. ``indent=2, sort_keys=True``)."""
  write_text(path, json.dumps(value, **dump_kwargs))


def _what_is_wrong(text: str, error: json.JSONDecodeError) -> str:
  if not text.strip():
    return "it is empty"
  if error.pos >= len(text.rstrip()):
    return f"it is cut short at line {error.lineno}"
  return f"{error.msg} at line {error.lineno}, column {error.colno}"


def read_json(path: str | os.PathLike, remedy: str) -> Any:
  """The JSON value in ``path``. An unreadable file raises one ``ValueError``: ``PATH is not
  valid JSON (what is wrong); REMEDY``. A missing file raises ``FileNotFoundError`` as usual."""
  path = pathlib.Path(path)
  data = path.read_bytes()
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise ValueError(f"{path} is not valid JSON (byte {e.start} is not UTF-8 text); {remedy}") from None
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON ({_what_is_wrong(text, e)}); {remedy}") from None
