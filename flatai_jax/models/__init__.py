"""Flax NNX models."""
from flatai_jax.models.unet import AttentionResUNet, build_model

__all__ = ["AttentionResUNet", "build_model"]
