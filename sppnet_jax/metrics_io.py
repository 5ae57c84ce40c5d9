"""Run metrics: one JSON line per record in ``metrics.jsonl`` plus TensorBoard events."""

from __future__ import annotations

import json
import logging
import pathlib

import tensorboardX


def read_metrics(workdir: str | pathlib.Path) -> list[dict]:
  """The records of ``workdir/metrics.jsonl``. A last line cut short (the process was killed while
  writing it) is dropped with a warning; a bad line anywhere else is an error naming the file and line."""
  path = pathlib.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  lines = [(i, line) for i, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
  records = []
  for k, (number, line) in enumerate(lines):
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError as e:
      if k == len(lines) - 1:
        logging.warning("%s: line %d is cut short (%s); it is left out.", path, number, e.msg)
        break
      raise ValueError(f"{path}, line {number}: not a JSON record ({e.msg}); the file is damaged. Remove that "
                       "line to use the rest.") from e
  return records


class MetricWriter:
  """Appends ``{"step": s, **scalars}`` lines to ``workdir/metrics.jsonl`` and scalars to TensorBoard.

  ``drop_after_step``: on resume, records written after the restored checkpoint (steps
  that are about to be replayed) are removed from the JSON lines and purged from
  TensorBoard, so the files describe one consistent run.
  """

  def __init__(self, workdir: str | pathlib.Path, drop_after_step: int | None = None):
    workdir = pathlib.Path(workdir)
    self.path = workdir / "metrics.jsonl"
    if drop_after_step is not None and self.path.exists():
      kept = [r for r in read_metrics(workdir) if r["step"] <= drop_after_step]
      self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    self._file = self.path.open("a")
    self._tb = tensorboardX.SummaryWriter(str(workdir / "tensorboard"), purge_step=drop_after_step or None)

  def write(self, step: int, scalars: dict) -> None:
    self._file.write(json.dumps({"step": int(step), **{k: float(v) for k, v in scalars.items()}}) + "\n")
    self._file.flush()
    for name, value in scalars.items():
      self._tb.add_scalar(name, float(value), int(step))

  def close(self) -> None:
    self._file.close()
    self._tb.close()
