"""Finding the examples of a dataset that cannot be decoded (``sppnet check-data``).

:func:`check_source` reads every example of a source in a thread pool (Pillow and
the TFDS readers release the GIL while decoding) and lists each one that raises,
with its index, its file name where the source knows it, and the error.
:func:`check_data` does that for the training and/or evaluation split of a
config's dataset, exactly as a run reads it (same split folders, hold-out and
subset draw), always with ``on_bad_image='error'`` so nothing is skipped, and lists
the files of an image folder's class folders that are not images Pillow decodes
(left out of the split, see :class:`~sppnet_jax.data.sources.ImageFolderSource`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import time
from typing import Any, Callable, Sequence

from sppnet_jax.data import sources

__all__ = ["BadExample", "SplitCheck", "check_source", "check_data", "non_image_files", "format_checks", "SPLITS"]

SPLITS = ("train", "eval", "both")


@dataclasses.dataclass(frozen=True)
class BadExample:
  index: int
  filename: str | None
  error: str


@dataclasses.dataclass(frozen=True)
class SplitCheck:
  which: str  # 'train' or 'eval'
  split: str  # the split's name in the dataset
  source: str  # repr of the source scanned
  num_examples: int
  bad: tuple[BadExample, ...]
  seconds: float
  non_image_files: tuple[str, ...] = ()  # files of the split's folder left out as not images

  def to_dict(self) -> dict:
    return {**dataclasses.asdict(self), "bad": [dataclasses.asdict(b) for b in self.bad],
            "num_bad": len(self.bad), "non_image_files": list(self.non_image_files),
            "num_non_image_files": len(self.non_image_files)}


def _filename(source: Any, index: int) -> str | None:
  get = getattr(source, "filename", None)
  if not callable(get):
    return None
  try:
    return str(get(index))
  except Exception:  # a source that cannot name this example
    return None


def _probe(source: Sequence[Any], index: int) -> BadExample | None:
  try:
    source[index]
  except Exception as e:  # every failure to read an example is a finding, not a crash of the scan
    return BadExample(index, _filename(source, index), f"{type(e).__name__}: {e}")
  return None


def check_source(source: Sequence[Any], *, workers: int | None = None, block: int = 512,
                 progress: Callable[[int, int], None] | None = None) -> tuple[list[BadExample], float]:
  """(every example of ``source`` that fails to read, sorted by index; seconds taken).

  ``workers`` threads (default: the number of CPUs) read the examples; ``block``
  indices are in flight at a time, so memory stays bounded on large splits.
  ``progress(done, total)`` is called after every block.
  """
  workers = workers or os.cpu_count() or 1
  if workers < 1:
    raise ValueError(f"workers must be >= 1; got {workers}")
  n, bad, start = len(source), [], time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
    for lo in range(0, n, block):
      found = pool.map(lambda i: _probe(source, i), range(lo, min(lo + block, n)))
      bad += [b for b in found if b is not None]
      if progress is not None:
        progress(min(lo + block, n), n)
  return sorted(bad, key=lambda b: b.index), time.perf_counter() - start


def check_data(config: Any, split: str = "both", *, workers: int | None = None,
               progress: Callable[[str, int, int], None] | None = None) -> list[SplitCheck]:
  """Scans the ``split`` ('train', 'eval' or 'both') of the dataset named by ``config.data``."""
  if split not in SPLITS:
    raise ValueError(f"--split must be one of {', '.join(SPLITS)}; got {split!r}")
  results = []
  for which in (("train", "eval") if split == "both" else (split,)):
    source = sources.source_from_config(config.data, which, on_bad_image="error")
    report = None if progress is None else (lambda done, total, w=which: progress(w, done, total))
    bad, seconds = check_source(source, workers=workers, progress=report)
    results.append(SplitCheck(which, str(config.data[f"{which}_split"]), repr(source), len(source), tuple(bad),
                              seconds, non_image_files(source)))
  return results


def non_image_files(source: Any) -> tuple[str, ...]:
  """The files an image-folder source left out as not images (through any wrapper); () for others."""
  files = getattr(source, "non_image_files", ())
  return tuple(str(f) for f in files) if isinstance(files, (tuple, list)) else ()


def format_checks(results: Sequence[SplitCheck]) -> str:
  """A plain-text report: one line per split, then one per undecodable example and one per file
  left out as not an image; a closing line sums them up."""
  lines = []
  for r in results:
    rate = r.num_examples / r.seconds if r.seconds > 0 else float("inf")
    left_out = f", {len(r.non_image_files)} file(s) left out as not images" if r.non_image_files else ""
    lines.append(f"{r.which} split {r.split!r}: {r.num_examples} examples, {len(r.bad)} undecodable{left_out}, "
                 f"{r.seconds:.1f} s ({rate:.0f} examples/s) [{r.source}]")
    for b in r.bad:
      lines.append(f"  [{b.index}] {b.filename or '(no file name)'}: {b.error}")
    for f in r.non_image_files:
      lines.append(f"  not an image, left out: {f}")
  total = sum(len(r.bad) for r in results)
  lines.append("all examples decode." if total == 0 else
               f"{total} undecodable example(s). Replace or delete those files, or train with "
               "--config.data.on_bad_image=skip to skip them (counted in the metrics).")
  left_out = sorted({f for r in results for f in r.non_image_files})
  if left_out:
    lines.append(f"{len(left_out)} file(s) are not images Pillow decodes (by extension) and are left out of the "
                 "data; convert them to an image format or move them out of the class folders.")
  return "\n".join(lines)
