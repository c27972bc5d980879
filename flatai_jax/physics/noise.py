"""Poisson–Gaussian sensor noise in the linear domain and the noise-level map.

Units: pixel values are fractions of full well (1.0 = saturation), so one
electron is ``1 / full_well_e``. A camera whose full well ``full_well_e`` reads
out as ``A`` ADU (e.g. 65 535 for 16 bits) has a gain of ``full_well_e / A``
e⁻/ADU; the model needs only the electrons per unit, so no ADU scale is drawn.
The variance model (:func:`noise_variance`, tested) is

    Var[observed] = signal / full_well_e + (read_noise_e / full_well_e)²

where ``signal`` includes the sky background and G (every photon-electron
counts), i.e. shot noise ``∝ signal`` plus a constant read-noise floor.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from flatai_jax.physics import distributions as dist


class NoiseParams(NamedTuple):
  """Sensor of one frame, float32 scalars."""
  full_well_e: jax.Array  # electrons at saturation (1.0)
  read_noise_e: jax.Array  # electrons RMS


def draw_noise_params(key, cfg) -> NoiseParams:
  """Draws a sensor from ``cfg`` (``config.degrade.noise``) distribution specs."""
  u = jax.random.uniform(key, (2,))
  return dist.materialize(NoiseParams(dist.from_uniform(u[0], cfg.full_well_e),
                                      dist.from_uniform(u[1], cfg.read_noise_e)))


def noise_variance(signal, full_well_e, read_noise_e):
  """Per-pixel variance of :func:`add_sensor_noise` in signal units, same shape as ``signal``."""
  return jnp.maximum(signal, 0.0) / full_well_e + (read_noise_e / full_well_e) ** 2


def add_sensor_noise(key, signal: jnp.ndarray, full_well_e, read_noise_e) -> jnp.ndarray:
  """Adds shot and read noise.

  Shot noise uses the Gaussian limit of the Poisson law (variance = mean in
  electrons), which keeps the step free of the slow rejection sampler of
  ``jax.random.poisson``. Mean and variance are exact; only the skewness
  ``1/√N_e`` is missing (2 % at 2 500 e⁻, 11 % at the faintest sky of the
  default config, 0.01 × 8 000 e⁻).

  Args:
    key: PRNG key.
    signal: ``(H, W, C) float32`` expected signal, linear, ≥ 0.
    full_well_e: electrons per unit of ``signal`` (may be traced).
    read_noise_e: Gaussian read noise in electrons RMS (may be traced).
  Returns:
    ``(H, W, C) float32`` noisy signal in the same units.
  """
  sigma = jnp.sqrt(noise_variance(signal, full_well_e, read_noise_e))
  noisy = signal + sigma * jax.random.normal(key, signal.shape, jnp.float32)
  return noisy.astype(jnp.float32)


def box_mean(x: jnp.ndarray, radius: int) -> jnp.ndarray:
  """Mean over the ``(2r+1) × (2r+1)`` box around each pixel, the image reflected at its border.

  Args:
    x: ``(H, W, C) float32``, any unit; ``H, W > radius``.
    radius: static half-size ``r`` of the box, px.
  Returns:
    ``(H, W, C) float32``, ``x``'s unit. Separable (a column sum, then a row sum: ``2(2r+1)``
    additions per pixel, not ``(2r+1)²``).
  """
  k = 2 * radius + 1
  padded = jnp.pad(x, ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
  s = jax.lax.reduce_window(padded, 0.0, jax.lax.add, (k, 1, 1), (1, 1, 1), "VALID")
  s = jax.lax.reduce_window(s, 0.0, jax.lax.add, (1, k, 1), (1, 1, 1), "VALID")
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
  return jnp.sqrt(box_mean(r * r, radius) / 1.25).astype(jnp.float32)


def second_difference_sigma(plane, data):
  """Pixel noise σ of a plane with white noise: 1.4826 × the median absolute deviation of the
  second differences ``a − 2b + c`` along rows, / √6, over the fainter half of the pixel
  triples (their sum in ``data``, the plane minus its background, below its median).

  The triple's sum is uncorrelated with its second difference (independent for Gaussian
  noise), so the selection does not bias σ, and stars and the wide halos of aberrated stars
  (half of a crowded frame) stay out of it. NumPy arrays are reduced on the host (the frames
  of ``flatai correct``: ``star_detect.sky_noise``), JAX arrays in the trace (the in-step
  deconvolution of ``deconvolve.sharpen_traced``).

  Args:
    plane: ``(H, W)`` linear pixels.
    data: ``(H, W)`` the plane minus its background, same unit.
  Returns:
    σ, the plane's unit (a float for NumPy input, a 0-d array for JAX input).
  """
  triple = data[:, :-2] + data[:, 1:-1] + data[:, 2:]
  d = plane[:, :-2] - 2.0 * plane[:, 1:-1] + plane[:, 2:]
  if isinstance(plane, jax.Array):
    d = jnp.where(triple < jnp.median(triple), d, jnp.nan)
    mad = jnp.nanmedian(jnp.abs(d - jnp.nanmedian(d)))
  else:
    d = d[triple < np.median(triple)]
    d = d[np.isfinite(d)]
    mad = float(np.median(np.abs(d - np.median(d))))
  return 1.4826 * mad / math.sqrt(6.0)
