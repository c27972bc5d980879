"""Poisson–Gaussian sensor noise in the linear domain and the noise-level map.

Units: pixel values are fractions of full well (1.0 = saturation); the gain
converts them to electrons (``electrons = value * full_well_e``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def add_sensor_noise(key, signal: jnp.ndarray, full_well_e, read_noise_e) -> jnp.ndarray:
  """Adds shot and read noise.

  Shot noise uses the Gaussian limit of the Poisson law (variance = mean in
  electrons), accurate above a few tens of electrons, which a sky background
  always exceeds.

  Args:
    key: PRNG key.
    signal: ``(H, W, C) float32`` expected signal, linear, ≥ 0.
    full_well_e: electrons per unit of ``signal`` (may be traced).
    read_noise_e: Gaussian read noise in electrons RMS (may be traced).
  Returns:
    ``(H, W, C) float32`` noisy signal in the same units.
  """
  electrons = jnp.maximum(signal, 0.0) * full_well_e
  sigma_e = jnp.sqrt(electrons + read_noise_e ** 2)
  noisy = electrons + sigma_e * jax.random.normal(key, signal.shape, jnp.float32)
  return (noisy / full_well_e).astype(jnp.float32)


def _box_mean(x: jnp.ndarray, radius: int) -> jnp.ndarray:
  k = 2 * radius + 1
  padded = jnp.pad(x, ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
  s = jax.lax.reduce_window(padded, 0.0, jax.lax.add, (k, k, 1), (1, 1, 1), "VALID")
  return s / (k * k)


def estimate_noise_map(image: jnp.ndarray, radius: int = 4) -> jnp.ndarray:
  """Local noise level estimated from the image itself.

  The residual against the mean of the four neighbours has variance
  ``1.25 σ²`` for white noise; its local RMS over a ``(2r+1)²`` box, divided by
  √1.25, estimates σ. The same estimator runs in training and at correction
  time, so the model never sees a map it could not have at inference.

  Args:
    image: ``(H, W, C) float32`` linear or normalised pixels.
    radius: half-size of the averaging box in pixels.
  Returns:
    ``(H, W, C) float32`` σ estimate in the units of ``image``.
  """
  p = jnp.pad(image, ((1, 1), (1, 1), (0, 0)), mode="reflect")
  neighbours = (p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:]) / 4.0
  r = image - neighbours
  return jnp.sqrt(_box_mean(r * r, radius) / 1.25).astype(jnp.float32)
