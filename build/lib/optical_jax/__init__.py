"""optical-jax: OPTICAL (optimal-transport distillation for cross-lingual retrieval) in JAX/Flax."""

__version__ = "0.1.0"
