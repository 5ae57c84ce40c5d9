"""Runs one process of a tiny training run for tests/test_scale_out.py.

``python tests/multiprocess_train.py WORKDIR DEVICES PROCESS_ID NUM_PROCESSES PORT MODE``:
``DEVICES`` emulated CPU devices in this process; with ``NUM_PROCESSES > 1`` it joins a
``jax.distributed`` job on localhost:PORT. Every training example read in this process is
counted; ``WORKDIR/decodes-<PROCESS_ID>.json`` lists the indices read, per epoch (and the
evaluation examples read, validation and final evaluation together, under "eval"), and
``WORKDIR/result-<PROCESS_ID>.json`` holds what ``train_and_evaluate`` returned. With
``SIGTERM_AT=k`` in the environment, process 1 sends itself SIGTERM as its k-th batch is read.
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import signal
import sys
import threading

workdir, devices, process_id, num_processes, port, mode = sys.argv[1:7]
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={int(devices)}"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import jax  # noqa: E402

if int(num_processes) > 1:
  jax.distributed.initialize(f"localhost:{port}", num_processes=int(num_processes), process_id=int(process_id))

from sppnet_jax import train  # noqa: E402
from sppnet_jax.data import pipeline, sources  # noqa: E402
from test_train import tiny_config  # noqa: E402

reads: dict[int, list[int]] = collections.defaultdict(list)
lock = threading.Lock()
epoch_now = [0]


class Counting:
  """A source counting every example read: the training source's by the epoch being trained,
  the evaluation source's under "eval"."""

  def __init__(self, source, key=None):
    self.source = source
    self.key = key

  def __len__(self):
    return len(self.source)

  def __getattr__(self, name):
    if name in ("source", "key"):
      raise AttributeError(name)
    return getattr(self.source, name)

  def __getitem__(self, index):
    with lock:
      reads[epoch_now[0] if self.key is None else self.key].append(int(index))
    return self.source[index]


original_source = sources.source_from_config


def counted_source(data, which, **overrides):
  source = original_source(data, which, **overrides)
  return Counting(source) if which == "train" else Counting(source, "eval")


original_batches, original_full = pipeline.train_batches, pipeline.full_train_batches


sigterm_at = int(os.environ.get("SIGTERM_AT", "0")) if int(process_id) == 1 else 0
read_batches = [0]


def tracking(fn):
  def batches(*args, **kwargs):
    epoch_now[0] = kwargs["epoch"]
    for batch in fn(*args, **kwargs):
      read_batches[0] += 1
      if read_batches[0] == sigterm_at:
        os.kill(os.getpid(), signal.SIGTERM)
      yield batch
  return batches


sources.source_from_config = counted_source
pipeline.train_batches, pipeline.full_train_batches = tracking(original_batches), tracking(original_full)

config = tiny_config(mode, epochs=2, ckpt=3)
config.data.cache = False
config.data.worker_count = 0
# The reads are counted by the epoch being trained; the training-subset diagnostics read training
# examples between epochs, which would count as that epoch's, so they are off here.
config.eval.train_subset_examples = 0
results = train.train_and_evaluate(config, workdir)
pathlib.Path(workdir, f"result-{process_id}.json").write_text(json.dumps(results))
pathlib.Path(workdir, f"decodes-{process_id}.json").write_text(json.dumps({str(k): v for k, v in reads.items()}))
