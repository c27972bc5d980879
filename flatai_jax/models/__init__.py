"""Flax NNX models, their input preparation and forward pass."""
from flatai_jax.models.forward import abstract_params, forward, model_inputs, split_model
from flatai_jax.models.unet import AttentionResUNet, build_model

__all__ = ["AttentionResUNet", "abstract_params", "build_model", "forward", "model_inputs",
           "split_model"]
