"""Receptive-field geometry and window projection, checked against hand-computed values."""

import numpy as np
import pytest

from sppnet_jax import models
from sppnet_jax.ops import Geometry, min_input_size, output_size, project_boxes, trunk_geometry

# The released Caffe ZF-5 (model-defs/Zeiler_conv5.prototxt), (kernel, stride, pad):
# conv1, pool1, conv2, pool2, conv3, conv4, conv5.
RELEASED_ZF5 = [(7, 2, 1), (3, 2, 0), (5, 2, 0), (3, 2, 0), (3, 1, 1), (3, 1, 1), (3, 1, 1)]


def test_released_zf5_geometry():
  # stride: 2 * 2 * 2 * 2 = 16.
  # receptive field: 1 + 6*1 (conv1) + 2*2 (pool1) + 4*4 (conv2) + 2*8 (pool2) + 3 * 2*16 (conv3-5) = 139.
  # centre of cell 0: each layer moves it by (its input stride) * ((k - 1)/2 - pad):
  #   conv1 1*(3-1) = 2, pool1 2*(1-0) = 2, conv2 4*(2-0) = 8, pool2 8*(1-0) = 8, conv3-5 16*(1-1) = 0 -> 20.
  # So cell u is centred at pixel 20 + 16u (0-based), i.e. 16(u'-1) + 21 in 1-based MATLAB terms,
  # the authors' offset0 = 21.
  assert trunk_geometry(RELEASED_ZF5) == Geometry(stride=16, receptive_field=139, offset=20.0)


def test_released_zf5_floor_pooling_gives_12_not_13():
  # The released paddings rely on Caffe's ceil-mode pooling; floor mode gives 110, 54, 25, 12 at 224.
  assert output_size(RELEASED_ZF5, 224) == 12
  assert output_size(RELEASED_ZF5, 180) == 9


def test_project_zf5_geometry():
  # This project's ZF-5 pads conv2 by 2 instead of 0 (so floor pooling gives 13x13 at 224):
  # conv1 (7,2,1), pool1 (3,2,0), conv2 (5,2,2), pool2 (3,2,0), conv3-5 (3,1,1).
  # stride 16; receptive field 1 + 6 + 4 + 16 + 16 + 3*32 = 139 (padding never changes it);
  # offset: conv1 1*(3-1) = 2, pool1 2*1 = 2, conv2 4*(2-2) = 0, pool2 8*1 = 8, conv3-5 0 -> 12.
  layers = models.trunk_layers("zf5")
  assert models.spatial_layers(layers) == [(7, 2, 1), (3, 2, 0), (5, 2, 2), (3, 2, 0), (3, 1, 1), (3, 1, 1), (3, 1, 1)]
  assert models.geometry(layers) == Geometry(stride=16, receptive_field=139, offset=12.0)
  # Channel width never changes where cells sit.
  assert models.geometry(models.trunk_layers("zf5", width=0.125)) == models.geometry(layers)


def test_other_trunks_geometry():
  # Convnet*-5: conv1 (11,4,2), conv2 (5,1,2), pool (3,2), conv3 (3,1,1), pool (3,2), conv4-5 (3,1,1).
  # stride 4*2*2 = 16; field 1 + 10 + 4*4 + 2*4 + 2*8 + 2*8 + 2*2*16 = 131;
  # offset 1*(5-2) + 4*(2-2) + 4*1 + 8*0 + 8*1 + 0 = 15.
  assert models.geometry(models.trunk_layers("convnet5")) == Geometry(16, 131, 15.0)
  # Overfeat-5: conv1 (7,2,0), pool (3,3), conv2 (5,1,2), pool (2,2), conv3-5 (3,1,1).
  # stride 2*3*2 = 12; field 1 + 6 + 2*2 + 4*6 + 1*6 + 3*2*12 = 113; offset 3 + 2*1 + 0 + 6*0.5 + 0 = 8.
  assert models.geometry(models.trunk_layers("overfeat5")) == Geometry(12, 113, 8.0)
  # Overfeat-7: two more 3x3 convs at stride 12: field 113 + 2*2*12 = 161.
  assert models.geometry(models.trunk_layers("overfeat7")) == Geometry(12, 161, 8.0)


def test_output_and_min_input_size():
  zf5 = models.spatial_layers(models.trunk_layers("zf5"))
  # 224 -> conv1 110 -> pool1 54 -> conv2 27 -> pool2 13; 180 -> 88 -> 43 -> 22 -> 10.
  assert output_size(zf5, 224) == 13
  assert output_size(zf5, 180) == 10
  # Smallest input: pool2 needs 3 cells in, so conv2 out >= 3, so (p1 + 4 - 5)//2 + 1 >= 3, p1 >= 5;
  # pool1 out >= 5 needs conv1 out >= 11; (s + 2 - 7)//2 + 1 >= 11 gives s >= 25.
  assert min_input_size(zf5) == 25
  assert output_size(zf5, 25) == 1
  assert output_size(zf5, 24) < 1
  assert output_size(zf5, 10) < 1


# ----------------------------------------------------------------------------------------
# Projection: left = floor((x1 - offset)/S) + 1, right = ceil((x2 - offset)/S) - 1, an empty
# range collapses to the cell nearest the window centre, then everything is clamped.

S16 = Geometry(stride=16, receptive_field=139, offset=0.0)


@pytest.mark.parametrize("window,box", [
    # x: floor(0/16)+1 = 1, ceil(223/16)-1 = 13 -> clamped to 12; y the same.
    ([0, 0, 223, 223], [1, 1, 12, 12]),
    # x: floor(2)+1 = 3, ceil(6.25)-1 = 6; y: floor(3)+1 = 4, ceil(4)-1 = 3 -> empty, nearest
    # to the centre 56: floor(56/16 + 0.5) = 4.
    ([32, 48, 100, 64], [3, 4, 6, 4]),
    # x: floor(1)+1 = 2, ceil(2.97)-1 = 2; y: floor(1)+1 = 2, ceil(2.06)-1 = 2.
    ([16, 16, 47.5, 33], [2, 2, 2, 2]),
    # Wholly left of / above the map: floor(-3.125)+1 = -3, ceil(-0.625)-1 = -1 -> clamped to 0.
    ([-50, -50, -10, -10], [0, 0, 0, 0]),
    # Edges exactly on cell centres 32 and 64 (cells 2 and 4) exclude those cells: 3..3.
    ([32, 32, 64, 64], [3, 3, 3, 3]),
])
def test_projection_with_zero_offset(window, box):
  got = project_boxes(np.array([window], np.float32), S16, np.array([13, 13]))
  assert got.dtype == np.int32
  np.testing.assert_array_equal(np.asarray(got)[0], box)


def test_projection_vectorised_with_per_image_map_sizes():
  geometry = Geometry(stride=16, receptive_field=139, offset=12.0)  # this project's ZF-5
  windows = np.array([
      [[0, 0, 223, 223], [20, 28, 60, 100], [100, 100, 105, 105], [12, 28, 44, 60]],
      [[0, 0, 223, 223], [400, 0, 500, 300], [-50, -50, -10, -10], [150, 40, 151, 41]],
  ], np.float32)
  map_hw = np.array([[13, 13], [10, 20]])  # (height, width) of each image's map
  want = np.array([
      [
          # x: floor(-12/16)+1 = 0, ceil(211/16)-1 = 13 -> 12 (13 wide); y the same.
          [0, 0, 12, 12],
          # x: floor(8/16)+1 = 1, ceil(48/16)-1 = 2; y: floor(16/16)+1 = 2, ceil(88/16)-1 = 5.
          [1, 2, 2, 5],
          # floor(88/16)+1 = 6 > ceil(93/16)-1 = 5: collapse to floor((102.5-12)/16 + 0.5) = 6.
          [6, 6, 6, 6],
          # edges on the centres 12 (cell 0) and 44 (cell 2) in x, 28 (1) and 60 (3) in y.
          [1, 2, 1, 2],
      ],
      [
          # 20 wide, 10 high: x 0..13, y 0..13 -> clamped to 9.
          [0, 0, 13, 9],
          # x: floor(388/16)+1 = 25, ceil(488/16)-1 = 30 -> both clamped to 19;
          # y: floor(-12/16)+1 = 0, ceil(288/16)-1 = 17 -> 9.
          [19, 0, 19, 9],
          # x: floor(-62/16)+1 = -3, ceil(-22/16)-1 = -2 -> 0; y the same.
          [0, 0, 0, 0],
          # x: floor(138/16)+1 = 9 > ceil(139/16)-1 = 8: collapse to floor(138.5/16 + 0.5) = 9;
          # y: floor(28/16)+1 = 2 > ceil(29/16)-1 = 1: collapse to floor(28.5/16 + 0.5) = 2.
          [9, 2, 9, 2],
      ],
  ])
  got = project_boxes(windows, geometry, map_hw)
  assert got.shape == (2, 4, 4) and got.dtype == np.int32
  np.testing.assert_array_equal(np.asarray(got), want)


def test_projected_boxes_are_inside_the_map_and_ordered():
  rng = np.random.default_rng(0)
  corners = rng.uniform(-100, 900, (3, 200, 2))
  windows = np.concatenate([corners, corners + rng.uniform(0, 400, (3, 200, 2))], -1).astype(np.float32)
  map_hw = np.array([[43, 57], [10, 10], [1, 30]])
  boxes = np.asarray(project_boxes(windows, Geometry(16, 139, 12.0), map_hw))
  for b, (h, w) in enumerate(map_hw):
    x1, y1, x2, y2 = boxes[b].T
    assert (0 <= x1).all() and (x1 <= x2).all() and (x2 < w).all()
    assert (0 <= y1).all() and (y1 <= y2).all() and (y2 < h).all()


def test_bad_windows():
  with pytest.raises(ValueError, match="NaN"):
    project_boxes(np.array([[0, 0, np.nan, 10]], np.float32), S16, np.array([13, 13]))
  with pytest.raises(ValueError, match="inf"):
    project_boxes(np.array([[0, 0, np.inf, 10]], np.float32), S16, np.array([13, 13]))
  with pytest.raises(ValueError, match="inverted"):
    project_boxes(np.array([[0, 20, 10, 10]], np.float32), S16, np.array([13, 13]))
  with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
    project_boxes(np.zeros((3, 5), np.float32), S16, np.array([13, 13]))
