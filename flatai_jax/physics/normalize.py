"""The one normalisation of linear pixel data, used by training, evaluation and correction.

``x_n = (x - offset) / scale`` with ``offset`` the 0.5th percentile and
``scale`` the 99.5th minus the 0.5th percentile of one image (per example,
over H, W and C). Because a PSF sums to 1, the affine map commutes with the forward model when
the truth is expressed as ``clean_n = (clean - offset) / scale``, ``F``
unchanged and ``G_n = (G - offset·(1 - F)) / scale``: then
``observed_n = (clean_n ⊛ PSF)·F + G_n`` exactly (see :func:`fields_to_normalized`).
Nothing is clipped: star cores may exceed 1.
"""
from __future__ import annotations

import jax.numpy as jnp

LOW_QUANTILE = 0.005
HIGH_QUANTILE = 0.995
MIN_SCALE = 1e-6


def robust_stats(x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Offset and scale of images.

  Args:
    x: ``(..., H, W, C)`` float, linear.
  Returns:
    offset, scale: each ``(..., 1, 1, 1)`` float32, broadcastable against x.
  """
  flat = x.reshape(x.shape[:-3] + (-1,)).astype(jnp.float32)
  q = jnp.quantile(flat, jnp.array([LOW_QUANTILE, HIGH_QUANTILE]), axis=-1)
  lo, hi = q[0], q[1]
  scale = jnp.maximum(hi - lo, MIN_SCALE * jnp.maximum(jnp.abs(hi), 1.0))
  expand = lambda v: v[..., None, None, None]
  return expand(lo), expand(scale)


def normalize(x: jnp.ndarray, offset: jnp.ndarray, scale: jnp.ndarray) -> jnp.ndarray:
  """Linear ``x`` → normalised units."""
  return (x - offset) / scale


def denormalize(x_n: jnp.ndarray, offset: jnp.ndarray, scale: jnp.ndarray) -> jnp.ndarray:
  """Normalised units → linear ``x`` (inverse of :func:`normalize`)."""
  return x_n * scale + offset


def fields_to_normalized(clean, f_field, g_field, offset, scale):
  """Truth in normalised units: ``(clean_n, F, G_n)`` (see module docstring)."""
  return (normalize(clean, offset, scale), f_field,
          (g_field - offset * (1.0 - f_field)) / scale)


def fields_from_normalized(clean_n, f_field, g_n, offset, scale):
  """Inverse of :func:`fields_to_normalized`: ``(clean, F, G)`` in linear units."""
  return (denormalize(clean_n, offset, scale), f_field,
          g_n * scale + offset * (1.0 - f_field))
