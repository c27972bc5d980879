"""The one forward model of image formation, and its flat-field inverse.

    observed = min((clean ⊛ PSF) · F + G, saturation) + noise

Used by the training step, ``flatai synth`` and evaluation. The PSF part
(``cfg.apply_psf``) is a random field-dependent optical system per example
(``physics.optics``), applied by spatially varying convolution.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from flatai_jax import rng
from flatai_jax.physics import flat, noise, optics


def expected_signal(clean, f_field, g_field, saturation, blur=None):
  """Noise-free observed signal.

  Args:
    clean: ``(H, W, C) float32`` true sky, linear.
    f_field: ``(H, W, C)`` multiplicative flat F.
    g_field: ``(H, W, C)`` additive field G (same unit as ``clean``).
    saturation: full-well level in the same unit.
    blur: optional callable ``clean -> clean ⊛ PSF``.
  Returns:
    ``(H, W, C) float32``.
  """
  blurred = clean if blur is None else blur(clean)
  return jnp.minimum(blurred * f_field + g_field, saturation)


def invert_flat(observed, f_field, g_field):
  """The flat-field correction ``(observed − G) / F`` — the only place it is computed."""
  return (observed - g_field) / f_field


def degrade(key, clean, coords, cfg, sensor_hw):
  """Degrades one clean image with fields drawn from ``key``.

  Args:
    key: PRNG key of this example.
    clean: ``(H, W, C) float32`` linear, 1.0 = saturation.
    coords: ``(H, W, 2)`` global sensor coordinates of the crop.
    cfg: ``config.degrade``.
    sensor_hw: static ``(H, W)`` of the virtual sensor, px (``config.data.sensor_hw``):
      converts the flat field's physical lengths to px; its aspect places the PSF field.
  Returns:
    dict with ``observed``, ``F``, ``G`` — each ``(H, W, C) float32`` — and,
    when ``cfg.apply_psf``, ``psf`` ``(gy, gx, k, k) float32``: the true PSFs at
    the crop's grid nodes (``physics.convolve.node_coords``), each summing to 1.
  """
  k_flat, k_sensor, _, k_noise = jax.random.split(key, 4)
  c = clean.shape[-1]
  sensor_hw = (float(sensor_hw[0]), float(sensor_hw[1]))
  aspect = sensor_hw[0] / sensor_hw[1]
  if cfg.apply_flat:
    f_field, g_field = flat.draw_flat_fields(k_flat, coords, c, cfg.flat, sensor_hw)
  else:
    f_field, g_field = jnp.ones_like(clean), jnp.zeros_like(clean)
  blur, extra = None, {}
  if cfg.apply_psf:
    psfs = optics.psf_field(jax.random.fold_in(key, rng.PSF), coords, cfg.psf, aspect)
    blur, extra = (lambda image: optics.blur(image, psfs)), {"psf": psfs}
  signal = expected_signal(clean, f_field, g_field, cfg.saturation, blur)
  if cfg.noise.enabled:
    sensor = noise.draw_noise_params(k_sensor, cfg.noise)
    observed = noise.add_sensor_noise(k_noise, signal, sensor.full_well_e, sensor.read_noise_e)
  else:
    observed = signal
  return {"observed": observed, "F": f_field, "G": g_field, **extra}
