"""Counting XLA compilations, so tests and runs can show that shapes never recompile."""

from __future__ import annotations

import collections
import contextlib
from typing import Iterator

from jax import monitoring

_BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_counts: collections.Counter = collections.Counter()
_registered = False


def _listener(event: str, duration: float, **kwargs) -> None:
  del duration
  if event == _BACKEND_COMPILE_EVENT:
    _counts[kwargs.get("fun_name", "?")] += 1


@contextlib.contextmanager
def count_compiles() -> Iterator[collections.Counter]:
  """Yields a Counter of function name -> backend compiles made inside the block."""
  global _registered
  if not _registered:
    monitoring.register_event_duration_secs_listener(_listener)
    _registered = True
  before = collections.Counter(_counts)
  result: collections.Counter = collections.Counter()
  try:
    yield result
  finally:
    result.update(_counts - before)
