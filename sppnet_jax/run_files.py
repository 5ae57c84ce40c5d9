"""The files of a run (JSON, text, NumPy archives): written whole (a crash never leaves half a
file) and read with errors that name the file and say how to go on.

:func:`write_text`, :func:`write_json` and :func:`write_npz` write a temporary file beside the
target and rename it over the target (``os.replace`` is atomic on one file system), so a reader
sees the old file or the new one; they are the project's one atomic writer.
:func:`read_json` turns an empty, cut-short or garbled file into one ``ValueError`` naming the
file, what is wrong with it and the remedy its caller gives.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import IO, Any, Callable

import numpy as np

__all__ = ["write_json", "write_text", "write_npz", "read_json"]


def _write_whole(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
  """Runs ``write`` on a temporary file in ``path``'s directory, flushes it to disk and renames it
  over ``path``. On an error the temporary file is removed and ``path`` is left as it was."""
  path = pathlib.Path(path)
  partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  try:
    with open(partial, "wb") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(partial, path)
  except BaseException:
    partial.unlink(missing_ok=True)
    raise


def write_text(path: str | os.PathLike, text: str) -> None:
  """Writes ``text`` (UTF-8) to ``path`` atomically."""
  _write_whole(path, lambda f: f.write(text.encode("utf-8")))


def write_npz(path: str | os.PathLike, compressed: bool = False, **arrays: Any) -> None:
  """``np.savez`` (``np.savez_compressed`` with ``compressed``) of ``arrays`` to ``path`` atomically."""
  save = np.savez_compressed if compressed else np.savez
  _write_whole(path, lambda f: save(f, **arrays))


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
