"""Pooling and geometry ops of SPP-net: pure JAX, jit- and vmap-friendly."""

from sppnet_jax.ops.geometry import (Geometry, final_shape, layer_output, layer_shapes, min_input_size, output_size,
                                     project_boxes, trunk_geometry)
from sppnet_jax.ops.pooling import (DEFAULT_LEVELS, bin_edges, check_levels, padded_spp, roi_spp,
                                    sliding_window_spp, sparse_table, spp, spp_output_dim)

__all__ = [
    "DEFAULT_LEVELS", "Geometry", "bin_edges", "check_levels", "final_shape", "layer_output", "layer_shapes",
    "min_input_size", "output_size", "padded_spp",
    "project_boxes", "roi_spp", "sliding_window_spp", "sparse_table", "spp", "spp_output_dim", "trunk_geometry",
]
