"""Augmentation of clean crops, applied on device inside the train step before degradation.

Flips and quarter turns are exact symmetries of the sky (the artifacts are
drawn afterwards from the crop's sensor coordinates, so they keep their
physical orientation); the intensity scale varies the sky's brightness
relative to the noise and the saturation level.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def dihedral(image, k: jax.Array, flip: jax.Array):
  """One of the 8 symmetries of a square: ``k`` quarter turns, then a left-right flip.

  Args:
    image: ``(H, W, C)``; when H != W only half turns keep the shape, so ``k`` must be even.
    k: int32 scalar in [0, 4).
    flip: bool scalar.
  """
  if image.shape[0] != image.shape[1]:
    turned = jnp.where(k >= 2, jnp.rot90(image, 2, axes=(0, 1)), image)
    return jnp.where(flip, turned[:, ::-1], turned)
  turned = jax.lax.switch(k, [lambda x, n=n: jnp.rot90(x, n, axes=(0, 1)) for n in range(4)], image)
  return jnp.where(flip, turned[:, ::-1], turned)


def augment_clean(key, clean, cfg):
  """Randomly transforms one clean crop.

  Args:
    key: PRNG key.
    clean: ``(H, W, C) float32`` linear.
    cfg: ``config.augment`` — ``rot90``, ``flips`` (bool) and
      ``intensity_scale`` ``(lo, hi)`` for a log-uniform factor (``(1, 1)`` = off).
  Returns:
    ``(H, W, C) float32``.
  """
  k_rot, k_flip, k_scale = jax.random.split(key, 3)
  square = clean.shape[0] == clean.shape[1]
  if cfg.rot90:  # a frame that is not square only turns by half turns
    k = jax.random.randint(k_rot, (), 0, 4) if square else 2 * jax.random.randint(k_rot, (), 0, 2)
  else:
    k = jnp.int32(0)
  flip = jax.random.bernoulli(k_flip) if cfg.flips else jnp.bool_(False)
  lo, hi = cfg.intensity_scale
  scale = jnp.exp(jax.random.uniform(k_scale, (), minval=jnp.log(lo), maxval=jnp.log(hi)))
  return dihedral(clean, k, flip) * scale
