"""Benchmarks of the pooling ops."""

from sppnet_jax.bench.pooling import format_table, run_pooling_benchmark

__all__ = ["format_table", "run_pooling_benchmark"]
