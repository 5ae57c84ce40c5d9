"""One process at a time in a workdir.

:func:`hold` takes an exclusive lock on ``WORKDIR/.lock`` (``fcntl.flock``) for as long as a
command works in the workdir and writes its holder (pid, host, command) into that file. Another
process asking for the same workdir is refused at once with :class:`WorkdirBusyError`, which
names the workdir and the holder. The kernel drops a lock when its process ends, however it
ends (SIGKILL included), so a lock left behind by a killed process is simply taken over.

Within one process a workdir already held is held again (nested callers share the lock). A
job of several JAX processes locks one file per process (``.lock`` for process 0,
``.lock.K`` for process K), so its own processes never refuse each other while a second job
in the same workdir is refused on every process.

On release the lock file is removed, and so is the workdir when this call created it and
nothing else was written there (a command refused during its set-up leaves no trace).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import pathlib
import shlex
import socket
import sys
from typing import Iterator

__all__ = ["LOCK_FILE", "WorkdirBusyError", "lock_path", "command_line", "hold"]

LOCK_FILE = ".lock"
_COMMAND_CHARS = 300  # the longest command shown in a refusal

# Locks this process holds: resolved lock path -> (file descriptor, nesting depth).
_HELD: dict[str, tuple[int, int]] = {}


class WorkdirBusyError(RuntimeError):
  """Another process holds the workdir's lock."""


def lock_path(workdir: str | os.PathLike, process_index: int = 0) -> pathlib.Path:
  """The lock file of JAX process ``process_index`` in ``workdir``."""
  name = LOCK_FILE if process_index == 0 else f"{LOCK_FILE}.{process_index}"
  return pathlib.Path(workdir) / name


def command_line(argv: list[str] | None = None) -> str:
  """This process's command line as a user would type it (``sppnet ...`` for the CLI), shortened."""
  argv = list(sys.argv if argv is None else argv)
  main = sys.modules.get("__main__")
  spec = getattr(main, "__spec__", None)
  program = "sppnet" if spec is not None and spec.name == "sppnet_jax.cli" else os.path.basename(argv[0] or "python")
  text = shlex.join([program, *argv[1:]])
  return text if len(text) <= _COMMAND_CHARS else text[:_COMMAND_CHARS - 3] + "..."


def _holder(fd: int) -> str:
  """Who holds the lock, from the lock file's contents: 'pid P on HOST: COMMAND'."""
  try:
    info = json.loads(os.pread(fd, 64 * 1024, 0).decode("utf-8"))
    return f"pid {int(info['pid'])} on {info['host']}: {info['command']}"
  except (OSError, ValueError, KeyError, TypeError):
    return "holder not recorded yet"


def _make_dirs(directory: pathlib.Path) -> list[pathlib.Path]:
  """Makes ``directory`` and its missing parents; the ones made, outermost first."""
  missing = []
  for d in (directory, *directory.parents):
    if d.exists():
      break
    missing.append(d)
  directory.mkdir(parents=True, exist_ok=True)
  return missing[::-1]


def _acquire(path: pathlib.Path, workdir: pathlib.Path) -> int | None:
  """An open descriptor of ``path`` holding its exclusive lock; None when the file system has no
  locks (warned). Raises :class:`WorkdirBusyError` when another process holds it."""
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _holder(fd)
      os.close(fd)
      raise WorkdirBusyError(f"{workdir} is in use by another process ({holder}); wait for it to finish or stop "
                             "it, or give another --workdir.") from None
    except OSError as e:  # a file system without locks: run unlocked rather than not at all
      os.close(fd)
      logging.warning("cannot lock %s (%s); running without a workdir lock.", path, e.strerror)
      return None
    try:
      same = os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
      same = False
    if same:  # not a file its previous holder removed between our open and our lock
      return fd
    os.close(fd)


def _record(fd: int, command: str) -> None:
  info = {"pid": os.getpid(), "host": socket.gethostname(), "command": command}
  os.ftruncate(fd, 0)
  os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)


def _release(path: pathlib.Path, fd: int | None, made: list[pathlib.Path]) -> None:
  if fd is not None:
    path.unlink(missing_ok=True)  # while still locked: nobody else can be holding this file
    os.close(fd)
  for d in reversed(made):  # only directories this call made, and only while empty
    try:
      d.rmdir()
    except OSError:
      break


@contextlib.contextmanager
def hold(workdir: str | os.PathLike, command: str | None = None, process_index: int = 0) -> Iterator[pathlib.Path]:
  """Holds ``workdir``'s lock (making the directory) for the ``with`` block; yields the lock file.

  Raises :class:`WorkdirBusyError` at once when another process holds it. ``command`` (default:
  this process's command line) is recorded for that error message.
  """
  workdir = pathlib.Path(workdir)
  path = lock_path(workdir, process_index)
  key = os.path.realpath(path)
  if key in _HELD:
    fd, depth = _HELD[key]
    _HELD[key] = (fd, depth + 1)
    try:
      yield path
    finally:
      fd, depth = _HELD.pop(key)
      if depth > 1:
        _HELD[key] = (fd, depth - 1)
    return
  made = _make_dirs(workdir)
  try:
    fd = _acquire(path, workdir)
  except BaseException:
    _release(path, None, made)
    raise
  if fd is not None:
    _record(fd, command or command_line())
  _HELD[key] = (fd, 1)
  try:
    yield path
  finally:
    _HELD.pop(key, None)
    _release(path, fd, made)
