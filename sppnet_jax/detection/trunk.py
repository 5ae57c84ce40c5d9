"""The network whose conv trunk and fc6/fc7 detection uses: a trained classification run, or a
fresh random slim one (reported as such: its features are random, only the fine-tuned fc layers learn).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sppnet_jax import models
from sppnet_jax.detection import features as feats


@dataclasses.dataclass
class Trunk:
  """A network whose trunk and fc6/fc7 detection uses, with its input settings."""
  model: models.SPPNet
  params: Any
  settings: feats.FeatureSettings
  description: str
  key: str  # identifies the trunk weights for cache keys


def load_trunk(config: ml_collections.ConfigDict) -> Trunk:
  """The trunk of ``config.trunk`` (a classification workdir, or a fresh random one)."""
  f = config.features
  common = dict(scales=tuple(int(s) for s in f.scales), target_side=float(f.target_side), rule=f.rule,
                size_multiple=int(f.size_multiple), window_batch=int(f.window_batch), levels=tuple(f.levels))
  if config.trunk.workdir:
    from sppnet_jax import workdir  # lazy: pulls in orbax
    run_config, model, params, mean = workdir.load_run(config.trunk.workdir)
    if model.levels is None:
      raise ValueError(f"{config.trunk.workdir} holds a no-SPP network; detection needs an SPP trunk.")
    if tuple(model.levels) != common["levels"]:
      raise ValueError(f"config.features.levels {common['levels']} differ from the trunk's pyramid "
                       f"{tuple(model.levels)}: fc6 expects the trunk's; set features.levels to match.")
    if not isinstance(mean, str):  # a mean image: its per-channel mean applies to any window
      mean = np.asarray(mean, np.float32)
      mean = tuple(float(x) for x in (mean.reshape(-1, 3).mean(0) if mean.size >= 3 else [float(mean)] * 3))
    settings = feats.FeatureSettings(mean=mean, **common)
    digest = hashlib.sha1(b"".join(np.asarray(x).tobytes() for x in jax.tree.leaves(params["trunk"]))).hexdigest()
    return Trunk(model, params, settings, f"trained trunk from {config.trunk.workdir} ({run_config.model.name})",
                 digest[:12])
  t = config.trunk
  model = models.create_model(t.name, num_classes=2, width=t.width, depth=t.get("depth"), fc_width=t.fc_width,
                              levels=tuple(f.levels))
  size = max(models.min_image_size(model.layers), 64)
  params = model.init(jax.random.key(int(t.seed)), jnp.zeros((1, size, size, 3)))["params"]
  desc = (f"RANDOMLY INITIALISED {t.name} trunk (width {t.width}, fc {t.fc_width}, seed {t.seed}): no "
          "classification workdir was given, so conv features are random and only the fine-tuned fc layers learn")
  return Trunk(model, params, feats.FeatureSettings(**common), desc, f"random-{t.name}-{t.width}-{t.get('depth')}-"
               f"{t.fc_width}-{t.seed}")
