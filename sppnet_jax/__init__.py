"""SPP-net in JAX/Flax: spatial pyramid pooling networks for classification and detection."""

__version__ = "0.1.0"
