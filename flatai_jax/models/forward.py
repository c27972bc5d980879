"""The model's input contract and forward pass, shared by training, evaluation and correction.

``model_inputs`` turns linear observed pixels into what the network sees
(robustly normalised image and noise map); ``forward`` runs a split NNX model
on a prepared batch. Neither knows about optimizers or checkpoints.
"""
from __future__ import annotations

import jax
from flax import nnx

from flatai_jax.models.unet import build_model
from flatai_jax.physics import noise, normalize


def model_inputs(observed):
  """Normalises observed images and computes the noise map — the model's input contract.

  Args:
    observed: ``(N, H, W, C) float32`` linear.
  Returns:
    dict: ``observed`` normalised, ``noise`` ``(N, H, W, C)`` σ map in
    normalised units, ``offset`` and ``scale`` ``(N, 1, 1, 1)``.
  """
  offset, scale = normalize.robust_stats(observed)
  x = normalize.normalize(observed, offset, scale)
  return {"observed": x, "noise": jax.vmap(noise.estimate_noise_map)(x),
          "offset": offset, "scale": scale}


def forward(graphdef, params, batch):
  """Model predictions for a prepared batch (``observed``, ``coords``, ``noise``: see
  :func:`model_inputs` and ``data.synthetic.make_batch``)."""
  model = nnx.merge(graphdef, params)
  return model(batch["observed"], batch["coords"], batch["noise"])


def split_model(config, init_key):
  """``(graphdef, params)`` of a freshly initialised model (float32 parameters)."""
  model = build_model(config, nnx.Rngs(params=init_key))
  return nnx.split(model, nnx.Param)


def abstract_params(config):
  """``(graphdef, params)`` with ``jax.ShapeDtypeStruct`` leaves: shapes without allocation."""
  holder = {}

  def init():
    graphdef, params = split_model(config, jax.random.key(0))
    holder["graphdef"] = graphdef
    return params

  params = jax.eval_shape(init)
  return holder["graphdef"], params
