"""Keeping decoded examples in memory, shared by every run in one process.

A generated source (the built-in shapes) costs ~2 ms of rendering per example and
an epoch reads every example again; an evaluation reads the same split once per
view and test size, and the ablation evaluates several networks on it. With
``data.cache=True`` the source is wrapped in :class:`InMemory`, which renders each
example once, on first read, and keeps it; :func:`shared` returns the same
wrapper for every source with the same ``repr`` in this process, so the variants
of an ablation read one copy.
"""

from __future__ import annotations

import threading
from typing import Any, Sequence

__all__ = ['InMemory', 'shared']


class InMemory:
  """A random-access source whose examples are read once and then kept."""

  def __init__(self, source: Sequence[Any]):
    self.source = source
    self._items: list[Any] = [None] * len(source)

  def __len__(self) -> int:
    return len(self._items)

  def __repr__(self) -> str:
    return f'InMemory({self.source!r})'

  def __getattr__(self, name: str) -> Any:  # num_classes, render, ... of the wrapped source
    if name == 'source':
      raise AttributeError(name)
    return getattr(self.source, name)

  def __getitem__(self, index: int) -> Any:
    item = self._items[index]
    if item is None:
      item = self.source[index]
      self._items[index] = item
    return item


_SHARED: dict[str, InMemory] = {}
_LOCK = threading.Lock()


def shared(source: Sequence[Any]) -> InMemory:
  """The process-wide :class:`InMemory` for ``source``, keyed by ``repr(source)``.

  Only sources whose ``repr`` names everything that determines their examples
  (the synthetic ones do: split, length, seed, sizes) may be shared this way.
  """
  key = repr(source)
  with _LOCK:
    if key not in _SHARED:
      _SHARED[key] = InMemory(source)
    return _SHARED[key]
