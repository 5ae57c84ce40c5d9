"""Procedurally generated shape images: a built-in dataset that needs no download.

Every image is rendered on the fly from a random generator seeded by
``(seed, split, index)``, so a source of any length costs no memory or disk and
the same triple always gives the same pixels.

A scene is a textured background (smooth noise, stripes, a gradient, a
checkerboard or soft blotches), optional small clutter (dots and short line
segments, far smaller than any object) and one or more shape objects. Each
object class is a shape defined in unit coordinates; an instance is that shape
stretched (aspect ratio within 1/s..s, s = 1.6 by default), rotated, scaled (its extent varies about 5x
within a class), moved and filled with a shaded colour that contrasts with the
background under it.

Two sources share the renderer:

* :class:`SyntheticClassification` - one object per image, TFDS-style
  ``{'image', 'label'}`` examples, photo-like sizes (short side 160-320 px,
  width/height ratio 3:4 to 16:9).
* :class:`SyntheticDetection` - 1-5 objects per image in TFDS ``voc`` layout
  (normalised ``[ymin, xmin, ymax, xmax]`` boxes tight around the visible
  pixels, small or heavily occluded objects flagged ``is_difficult``), VOC-like
  sizes (about 375x500).
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
  'CLASS_NAMES',
  'SceneObject',
  'SyntheticClassification',
  'SyntheticDetection',
  'render_scene',
  'shape_mask',
]

CLASS_NAMES: tuple[str, ...] = (
  'ellipse', 'rectangle', 'triangle', 'star', 'cross', 'ring',
  'hexagon', 'crescent', 'arrow', 'heart', 'l_shape', 'frame',
)

_CIRCLE_POINTS = 48


def _regular_polygon(n: int, radius: float = 1.0, phase: float = 0.0) -> np.ndarray:
  """Vertices (n, 2) as (x, y) of a regular n-gon centred at the origin."""
  t = phase + 2.0 * np.pi * np.arange(n) / n
  return np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)


def _circle(radius: float = 1.0, cx: float = 0.0) -> np.ndarray:
  """A circle approximated by a fine regular polygon, optionally shifted in x."""
  return _regular_polygon(_CIRCLE_POINTS, radius) + np.array([cx, 0.0])


def _star(points: int = 5, outer: float = 1.0, inner: float = 0.45) -> np.ndarray:
  """A star with alternating outer and inner vertices, first point up."""
  t = -np.pi / 2 + np.pi * np.arange(2 * points) / points
  r = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
  return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _heart() -> np.ndarray:
  """The classic parametric heart curve scaled to about [-1, 1], tip down."""
  t = np.linspace(0.0, 2.0 * np.pi, _CIRCLE_POINTS, endpoint=False)
  x = 16 * np.sin(t) ** 3
  y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
  return np.stack([x / 17.0, (y + 2.5) / 17.0], axis=1)


def _square(half: float) -> np.ndarray:
  return np.array([[-half, -half], [half, -half], [half, half], [-half, half]])


# Each class: a list of (vertices (n, 2) in unit (x, y) coordinates, sign).
# The mask is the union of the positive polygons minus the negative ones.
_SHAPES: dict[str, list[tuple[np.ndarray, int]]] = {
  'ellipse': [(_circle(1.0), 1)],
  'rectangle': [(_square(0.85), 1)],
  'triangle': [(_regular_polygon(3, 1.0, -np.pi / 2) + np.array([0.0, 0.25]), 1)],
  'star': [(_star(), 1)],
  'cross': [(np.array([
    [-0.3, -1], [0.3, -1], [0.3, -0.3], [1, -0.3], [1, 0.3], [0.3, 0.3],
    [0.3, 1], [-0.3, 1], [-0.3, 0.3], [-1, 0.3], [-1, -0.3], [-0.3, -0.3]]), 1)],
  'ring': [(_circle(1.0), 1), (_circle(0.55), -1)],
  'hexagon': [(_regular_polygon(6, 1.0), 1)],
  'crescent': [(_circle(1.0), 1), (_circle(0.85, cx=0.5), -1)],
  'arrow': [(np.array([
    [-1, -0.22], [0.15, -0.22], [0.15, -0.6], [1, 0], [0.15, 0.6], [0.15, 0.22],
    [-1, 0.22]]), 1)],
  'heart': [(_heart(), 1)],
  'l_shape': [(np.array([
    [-0.7, -1], [-0.15, -1], [-0.15, 0.45], [0.7, 0.45], [0.7, 1], [-0.7, 1]]), 1)],
  'frame': [(_square(0.9), 1), (_square(0.5), -1)],
}
assert tuple(_SHAPES) == CLASS_NAMES


@dataclasses.dataclass(frozen=True)
class SceneObject:
  """One rendered object: class, tight pixel box of its visible part, flags.

  ``box`` is ``(ymin, xmin, ymax, xmax)`` in pixels with exclusive ends, tight
  around the pixels of the object that are visible in the final image.
  ``visible`` is the fraction of the object's own mask that no later object
  covers; ``extent`` is the larger side of the unoccluded mask's box, in pixels.
  """
  label: int
  box: tuple[int, int, int, int]
  visible: float
  extent: int
  difficult: bool


def _split_code(split: str) -> int:
  """A stable integer for a split name (Python's ``hash`` is salted per run)."""
  if not isinstance(split, str) or not split:
    raise ValueError(f'split must be a non-empty string such as "train", got {split!r}')
  return zlib.crc32(split.encode('utf-8'))


def _example_rng(seed: int, split: str, index: int) -> np.random.Generator:
  """The generator for one example: a pure function of (seed, split, index)."""
  if seed < 0:
    raise ValueError(f'seed must be a non-negative integer, got {seed}')
  return np.random.default_rng([int(seed), _split_code(split), int(index)])


def _random_colour(rng: np.random.Generator) -> np.ndarray:
  return rng.uniform(0.0, 255.0, size=3).astype(np.float32)


def _ramp_lut(colours: list[np.ndarray]) -> np.ndarray:
  """A (256, 3) uint8 palette running linearly through ``colours`` (at least two)."""
  stops = np.linspace(0.0, 1.0, len(colours))
  t = np.linspace(0.0, 1.0, 256)
  lut = np.stack([np.interp(t, stops, [c[ch] for c in colours]) for ch in range(3)], axis=1)
  return np.clip(np.round(lut), 0, 255).astype(np.uint8)


def _apply_lut(t: np.ndarray, lut: np.ndarray) -> np.ndarray:
  """Map a field ``t`` in [0, 1] (values outside are clipped) through a palette."""
  idx = np.clip(t * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)
  return np.take(lut, idx, axis=0)


_NOISE_SIZE = 640
_noise_cache: list[np.ndarray] = []


def _grain(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
  """Unit Gaussian pixel noise (h, w): a random window of a fixed field, so it costs no sampling.

  The field is generated once from a fixed seed; the window offset comes from
  ``rng``, so the result is still a pure function of the example's generator.
  Images larger than the field fall back to fresh samples.
  """
  if h > _NOISE_SIZE or w > _NOISE_SIZE:
    return rng.standard_normal((h, w), dtype=np.float32)
  if not _noise_cache:
    _noise_cache.append(
      np.random.default_rng(20140618).standard_normal((_NOISE_SIZE, _NOISE_SIZE), np.float32))
  y0 = int(rng.integers(0, _NOISE_SIZE - h + 1))
  x0 = int(rng.integers(0, _NOISE_SIZE - w + 1))
  return _noise_cache[0][y0:y0 + h, x0:x0 + w]


def _background_field(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
  """A textured scalar field (h, w) in about [0, 1]: one of five texture kinds."""
  kind = rng.integers(5)
  y = np.arange(h, dtype=np.float32)[:, None]
  x = np.arange(w, dtype=np.float32)[None, :]
  if kind == 0:  # smooth noise
    return _smooth_noise(rng, h, w, int(rng.integers(3, 14)))
  if kind in (1, 3):  # stripes or checkerboard in a random orientation
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(6.0, 40.0)
    c, s = np.float32(np.cos(angle) / period), np.float32(np.sin(angle) / period)
    u = x * c + y * s
    if kind == 1:
      return 0.5 + 0.5 * np.sin(np.float32(2 * np.pi) * u)
    v = y * c - x * s
    return ((np.floor(u) + np.floor(v)) % 2).astype(np.float32)
  if kind == 2:  # linear gradient
    angle = rng.uniform(0, 2 * np.pi)
    c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    t = x * (c / max(w - 1, 1)) + y * (s / max(h - 1, 1))
    lo = min(0.0, float(c)) + min(0.0, float(s))
    return (t - np.float32(lo)) / np.float32(abs(float(c)) + abs(float(s)))
  # soft blotches: a contrast-stretched smooth field
  t = _smooth_noise(rng, h, w, int(rng.integers(4, 10)))
  return (t - 0.5) * np.float32(rng.uniform(3, 8)) + 0.5


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
  """Smooth random field (h, w) in [0, 1]: a coarse random grid, bilinearly upsampled.

  Pillow does the upsampling (single-threaded C), which is much faster than a
  matrix product when other processes compete for the BLAS threads.
  """
  gh = max(2, int(round(cells * h / max(h, w))) + 1)
  gw = max(2, int(round(cells * w / max(h, w))) + 1)
  grid = rng.random((gh, gw), dtype=np.float32)
  return np.asarray(Image.fromarray(grid).resize((w, h), Image.BILINEAR))


def _background(rng: np.random.Generator, h: int, w: int, grain: np.ndarray,
                amp: float) -> np.ndarray:
  """A textured uint8 background (h, w, 3): a texture field through a 2-3 colour palette.

  The palette colours lie within +-48 per channel of a random base colour, so the
  texture is clearly visible but has less contrast than the objects painted on it
  (whose colours are drawn far from the background under them).
  """
  field = _background_field(rng, h, w)
  base = _random_colour(rng)
  colours = [np.clip(base + rng.uniform(-48, 48, 3), 0, 255) for _ in range(int(rng.integers(2, 4)))]
  if amp > 0:
    field = field + np.float32(amp) * grain
  return _apply_lut(field, _ramp_lut(colours))


def _clutter(rng: np.random.Generator, img: np.ndarray, count: int) -> None:
  """Paint ``count`` small dots, polygons and strokes in place (far smaller than objects)."""
  h, w, _ = img.shape
  short = min(h, w)
  canvas = Image.fromarray(img)
  draw = ImageDraw.Draw(canvas)
  for _ in range(count):
    colour = tuple(int(c) for c in _random_colour(rng))
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    if rng.random() < 0.5:
      r = max(1.0, rng.uniform(0.005, 0.025) * short)
      verts = _regular_polygon(int(rng.integers(3, 9)), r, rng.uniform(0, np.pi)) + np.array([cx, cy])
      draw.polygon([tuple(p) for p in verts.tolist()], fill=colour)
    else:
      length, angle = rng.uniform(0.02, 0.06) * short, rng.uniform(0, np.pi)
      d = np.array([np.cos(angle), np.sin(angle)]) * length / 2
      draw.line([(cx - d[0], cy - d[1]), (cx + d[0], cy + d[1])], fill=colour,
                width=int(rng.integers(1, 3)))
  img[...] = np.asarray(canvas)


def _transform(label: int, size: float, aspect: float, angle: float,
               ) -> list[tuple[np.ndarray, int]]:
  """Class polygons stretched by ``aspect`` (x/y), rotated, scaled to ``size`` px extent.

  Returned vertices are (x, y) pixel offsets from the object centre.
  """
  sx, sy = np.sqrt(aspect), 1.0 / np.sqrt(aspect)
  c, s = np.cos(angle), np.sin(angle)
  rot = np.array([[c, -s], [s, c]])
  parts = [((v * np.array([sx, sy])) @ rot.T, sign) for v, sign in _SHAPES[CLASS_NAMES[label]]]
  pos = np.concatenate([v for v, sign in parts if sign > 0])
  extent = float(np.max(pos.max(0) - pos.min(0)))
  scale = size / extent
  return [(v * scale, sign) for v, sign in parts]


def shape_mask(parts: list[tuple[np.ndarray, int]], cx: float, cy: float,
               h: int, w: int) -> tuple[np.ndarray, int, int]:
  """Rasterise polygon parts centred at (cx, cy) inside an (h, w) image.

  Positive parts are filled, then negative parts are cut out, in order.
  Returns ``(mask, top, left)``: a boolean mask covering only the clipped
  bounding box of the positive parts, and that box's position in the image.
  """
  pos = np.concatenate([v for v, sign in parts if sign > 0]) + np.array([cx, cy])
  left = max(0, int(np.floor(pos[:, 0].min())))
  top = max(0, int(np.floor(pos[:, 1].min())))
  right = min(w, int(np.ceil(pos[:, 0].max())) + 1)
  bottom = min(h, int(np.ceil(pos[:, 1].max())) + 1)
  mh, mw = max(bottom - top, 0), max(right - left, 0)
  if mh == 0 or mw == 0:
    return np.zeros((mh, mw), bool), top, left
  canvas = Image.new('L', (mw, mh), 0)
  draw = ImageDraw.Draw(canvas)
  offset = np.array([cx - left, cy - top])
  for verts, sign in parts:
    draw.polygon([tuple(p) for p in (verts + offset).tolist()], fill=1 if sign > 0 else 0)
  return np.asarray(canvas).astype(bool), top, left


def _mask_box(mask: np.ndarray, top: int, left: int) -> tuple[int, int, int, int] | None:
  """Tight (ymin, xmin, ymax, xmax) box, exclusive ends, of a local mask; None if empty."""
  rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
  if rows.size == 0:
    return None
  return (top + int(rows[0]), left + int(cols[0]), top + int(rows[-1]) + 1, left + int(cols[-1]) + 1)


def _paint(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray, top: int, left: int,
           grain: np.ndarray, amp: float) -> None:
  """Fill the mask in place with a shaded colour that contrasts with the background under it."""
  mh, mw = mask.shape
  region = img[top:top + mh, left:left + mw]
  under = region[mask].mean(0) if mask.any() else np.full(3, 128.0)
  colour = _random_colour(rng)
  for _ in range(8):  # rejection-sample a colour far from the local background
    if np.abs(colour - under).sum() > 150.0:
      break
    colour = _random_colour(rng)
  # A gentle linear shading across the object so the fill is not perfectly flat.
  angle, strength = rng.uniform(0, 2 * np.pi), rng.uniform(0.0, 0.35)
  y = np.linspace(0.0, 1.0, mh, dtype=np.float32)[:, None] * np.float32(np.sin(angle))
  x = np.linspace(0.0, 1.0, mw, dtype=np.float32)[None, :] * np.float32(np.cos(angle))
  t = x + y
  if amp > 0:
    t = t + np.float32(amp) * grain[top:top + mh, left:left + mw]
  lut = _ramp_lut([colour * (1.0 - strength / 2), np.clip(colour * (1.0 + strength / 2), 0, 255)])
  fill = _apply_lut((t + 1.0) / 2.0, lut)
  region[mask] = fill[mask]


def render_scene(rng: np.random.Generator, h: int, w: int, labels: list[int], *,
                 min_size: float, max_size: float, clutter: int,
                 p_inside: float = 1.0, centre_spread: float | None = None,
                 max_angle: float = np.pi, max_stretch: float = 1.6,
                 return_masks: bool = False,
                 ) -> tuple[np.ndarray, list[SceneObject]] | tuple[
                   np.ndarray, list[SceneObject], list[np.ndarray]]:
  """Render a scene with one object per entry of ``labels``, drawn in that order.

  Object extents (larger side of the unrotated-stretched shape, in pixels) are
  log-uniform in ``[min_size, max_size]``. Each object lies fully inside the
  image with probability ``p_inside`` (always for the last one, so at least one
  object is fully visible); otherwise only its centre does and the border may
  cut it. With ``centre_spread`` s, fully-inside objects are centred within the
  middle fraction s of each side (as photo subjects tend to be), which keeps them
  in the five training crops. Rotations are uniform in ``[-max_angle, max_angle]``
  and aspect stretches log-uniform in ``[1/max_stretch, max_stretch]``. Later
  objects occlude earlier ones. Returns the uint8 image and one
  :class:`SceneObject` per label whose visible part is non-empty (in draw order);
  with ``return_masks=True`` also each returned object's visible-pixel mask
  (h, w) bool, e.g. to check that boxes are tight.
  """
  grain = _grain(rng, h, w)
  amp = float(rng.uniform(0.0, 0.05))
  img = _background(rng, h, w, grain, amp)
  if clutter > 0:
    _clutter(rng, img, clutter)
  painted: list[tuple[int, np.ndarray, int, int, int]] = []
  coverage = np.zeros((h, w), np.int16)  # index+1 of the object owning each pixel
  for k, label in enumerate(labels):
    size = float(np.exp(rng.uniform(np.log(min_size), np.log(max_size))))
    size = min(size, 0.98 * min(h, w))
    aspect = float(np.exp(rng.uniform(-np.log(max_stretch), np.log(max_stretch))))
    parts = _transform(label, size, aspect, rng.uniform(-max_angle, max_angle))
    pos = np.concatenate([v for v, sign in parts if sign > 0])
    lo, hi = pos.min(0), pos.max(0)
    if k == len(labels) - 1 or rng.random() < p_inside:
      x_range = [-lo[0], max(w - hi[0], -lo[0] + 1e-3)]
      y_range = [-lo[1], max(h - hi[1], -lo[1] + 1e-3)]
      if centre_spread is not None:
        for r, side in ((x_range, w), (y_range, h)):
          a, b = side * (1 - centre_spread) / 2, side * (1 + centre_spread) / 2
          if max(a, r[0]) < min(b, r[1]):
            r[:] = max(a, r[0]), min(b, r[1])
      cx, cy = rng.uniform(*x_range), rng.uniform(*y_range)
    else:
      cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    mask, top, left = shape_mask(parts, cx, cy, h, w)
    _paint(rng, img, mask, top, left, grain, amp)
    mh, mw = mask.shape
    coverage[top:top + mh, left:left + mw][mask] = k + 1
    painted.append((label, mask, top, left, int(mask.sum())))
  objects, masks = [], []
  for k, (label, mask, top, left, area) in enumerate(painted):
    mh, mw = mask.shape
    visible_mask = mask & (coverage[top:top + mh, left:left + mw] == k + 1)
    box = _mask_box(visible_mask, top, left)
    full = _mask_box(mask, top, left)
    if box is None or full is None:
      continue
    visible = float(visible_mask.sum()) / max(area, 1)
    extent = max(full[2] - full[0], full[3] - full[1])
    objects.append(SceneObject(label, box, visible, extent,
                               difficult=visible < 0.4 or extent < 20))
    if return_masks:
      full_mask = np.zeros((h, w), bool)
      full_mask[top:top + mh, left:left + mw] = visible_mask
      masks.append(full_mask)
  if return_masks:
    return img, objects, masks
  return img, objects


def _check_size_args(num_examples: int, seed: int) -> None:
  if not isinstance(num_examples, (int, np.integer)) or num_examples < 0:
    raise ValueError(f'num_examples must be a non-negative integer, got {num_examples!r}')
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f'seed must be a non-negative integer, got {seed!r}')


def _check_index(index: Any, n: int) -> int:
  if not isinstance(index, (int, np.integer)):
    raise TypeError(f'index must be an integer, got {type(index).__name__}')
  i = int(index)
  if i < 0:
    i += n
  if not 0 <= i < n:
    raise IndexError(f'index {index} out of range for a source of {n} examples')
  return i


class SyntheticClassification:
  """Random-access classification source: one shape per image, label = its class.

  Args:
    split: any split name (``'train'``, ``'validation'``, ...); different names
      give different images.
    num_examples: length of the source.
    seed: base seed; examples are a pure function of ``(seed, split, index)``.
    min_side, max_side: range of the image's short side in pixels.
    clutter: maximum number of small distractor marks per image (0 disables).

    object_size: (min, max) of the object's extent as a fraction of the short
      side, log-uniform in between; default (0.22, 0.9), so within a class
      object sizes vary by over 4x. Train and evaluation splits can differ
      (a scale-shift experiment: train on a narrow band, test on a wide one).

  Image width/height ratios are log-uniform in [3/4, 16/9] (portrait and
  landscape). The object's centre lies in the middle 40% of each side, so the
  centre and corner training crops keep it in view. Objects are upright within
  +-22.5 degrees and stretched by at most 4:3, as photographed objects mostly are.
  """

  DEFAULT_OBJECT_SIZE: tuple[float, float] = (0.22, 0.9)
  centre_spread: float = 0.4
  max_angle: float = np.pi / 8
  max_stretch: float = 4 / 3

  def __init__(self, split: str, num_examples: int, seed: int = 0, min_side: int = 160,
               max_side: int = 320, clutter: int = 6,
               object_size: tuple[float, float] = DEFAULT_OBJECT_SIZE):
    _check_size_args(num_examples, seed)
    _split_code(split)
    if not 16 <= min_side <= max_side:
      raise ValueError(
        f'need 16 <= min_side <= max_side, got min_side={min_side}, max_side={max_side}')
    low, high = (float(x) for x in object_size)
    if not 0.05 <= low <= high <= 0.98:
      raise ValueError(f'object_size must be (min, max) fractions of the short side with '
                       f'0.05 <= min <= max <= 0.98, got {tuple(object_size)}')
    self.split, self.num_examples, self.seed = split, int(num_examples), int(seed)
    self.min_side, self.max_side, self.clutter = int(min_side), int(max_side), int(clutter)
    self.min_rel_size, self.max_rel_size = low, high

  @property
  def num_classes(self) -> int:
    return len(CLASS_NAMES)

  def __len__(self) -> int:
    return self.num_examples

  def __repr__(self) -> str:
    return (f'SyntheticClassification(split={self.split!r}, num_examples={self.num_examples}, '
            f'seed={self.seed}, min_side={self.min_side}, max_side={self.max_side}, '
            f'clutter={self.clutter}, object_size=({self.min_rel_size:g}, {self.max_rel_size:g}))')

  def _draw_layout(self, index: int) -> tuple[np.random.Generator, int, int, int]:
    """The example's generator after its first draws, with its label and image (h, w)."""
    i = _check_index(index, self.num_examples)
    rng = _example_rng(self.seed, self.split, i)
    label = int(rng.integers(len(CLASS_NAMES)))
    short = int(rng.integers(self.min_side, self.max_side + 1))
    ratio = float(np.exp(rng.uniform(np.log(3 / 4), np.log(16 / 9))))  # width / height
    if ratio >= 1:
      return rng, label, short, int(round(short * ratio))
    return rng, label, int(round(short / ratio)), short

  def image_shape(self, index: int) -> tuple[int, int]:
    """(h, w) of example ``index`` without rendering it."""
    _, _, h, w = self._draw_layout(index)
    return h, w

  def label(self, index: int) -> int:
    """The class of example ``index`` without rendering it."""
    return self._draw_layout(index)[1]

  def render(self, index: int) -> tuple[np.ndarray, SceneObject]:
    """The image of example ``index`` and its object (class and tight box)."""
    rng, label, h, w = self._draw_layout(index)
    short = min(h, w)
    image, objects = render_scene(
      rng, h, w, [label], min_size=self.min_rel_size * short,
      max_size=self.max_rel_size * short, clutter=int(rng.integers(0, self.clutter + 1)),
      centre_spread=self.centre_spread, max_angle=self.max_angle, max_stretch=self.max_stretch)
    return image, objects[0]

  def __getitem__(self, index: int) -> dict[str, Any]:
    image, obj = self.render(index)
    return {'image': image, 'label': obj.label}


class SyntheticDetection:
  """Random-access detection source in TFDS ``voc`` layout, 1-5 objects per image.

  Examples are ``{'image': uint8 (H, W, 3), 'objects': {'bbox': float32 (N, 4),
  'label': int64 (N,), 'is_difficult': bool (N,)}, 'image/filename': str}``.
  Boxes are normalised ``[ymin, xmin, ymax, xmax]`` (``ymax`` = exclusive pixel
  end / height, as TFDS converts VOC's 1-based inclusive boxes) and tight
  around each object's visible pixels. Objects may overlap and be cut by the
  border; an object is ``is_difficult`` when less than 40% of it is visible or
  its extent is under 20 px; fully hidden objects are dropped.
  Images are VOC-like: long side mostly 500 px, short side 281-375, about a
  quarter portrait. ``max_objects`` (default 5) and ``object_size`` (extent as
  a fraction of the short side, default 0.05-0.7) shape a variant; the defaults
  give the images above.
  """

  DEFAULT_OBJECT_SIZE: tuple[float, float] = (0.05, 0.7)

  def __init__(self, split: str, num_examples: int, seed: int = 0, clutter: int = 8, max_objects: int = 5,
               object_size: tuple[float, float] = DEFAULT_OBJECT_SIZE):
    _check_size_args(num_examples, seed)
    _split_code(split)
    low, high = (float(x) for x in object_size)
    if not 0.01 <= low <= high <= 0.98:
      raise ValueError(f'object_size must be (min, max) fractions of the short side with '
                       f'0.01 <= min <= max <= 0.98, got {tuple(object_size)}')
    if int(max_objects) < 1:
      raise ValueError(f'max_objects must be at least 1, got {max_objects}')
    self.split, self.num_examples, self.seed = split, int(num_examples), int(seed)
    self.clutter, self.max_objects, self.object_size = int(clutter), int(max_objects), (low, high)

  @property
  def num_classes(self) -> int:
    return len(CLASS_NAMES)

  def __len__(self) -> int:
    return self.num_examples

  def __repr__(self) -> str:
    return (f'SyntheticDetection(split={self.split!r}, num_examples={self.num_examples}, '
            f'seed={self.seed})')

  def render(self, index: int, return_masks: bool = False):
    """The image of example ``index`` and its visible objects (pixel boxes).

    With ``return_masks=True`` a third element lists each object's visible mask.
    """
    i = _check_index(index, self.num_examples)
    rng = _example_rng(self.seed, self.split, i)
    long = 500 if rng.random() < 0.8 else int(rng.integers(400, 501))
    short = int(rng.choice([375, 333, 375, 281, int(rng.integers(300, 376))]))
    h, w = (short, long) if rng.random() < 0.75 else (long, short)
    labels = [int(x) for x in rng.integers(len(CLASS_NAMES), size=int(rng.integers(1, self.max_objects + 1)))]
    low, high = self.object_size
    return render_scene(rng, h, w, labels, min_size=low * short, max_size=high * short,
                        clutter=int(rng.integers(0, self.clutter + 1)), p_inside=0.7,
                        return_masks=return_masks)

  def __getitem__(self, index: int) -> dict[str, Any]:
    image, objects = self.render(index)
    h, w = image.shape[:2]
    scale = np.array([h, w, h, w], np.float32)
    boxes = np.array([o.box for o in objects], np.float32).reshape(-1, 4) / scale
    return {
      'image': image,
      'objects': {
        'bbox': boxes.astype(np.float32),
        'label': np.array([o.label for o in objects], np.int64),
        'is_difficult': np.array([o.difficult for o in objects], bool),
      },
      'image/filename': f'synthetic_{self.split}_{int(index) % max(self.num_examples, 1):06d}.png',
    }
