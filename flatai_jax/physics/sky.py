"""Procedural linear skies: the embedded default training data.

Units: 1.0 is the sensor's saturation level (full well); a dark sky
background is ~0.01–0.1. Stars follow a power-law luminosity function and are
rendered with a Moffat profile (some saturate); nebulosity is multi-scale
fractal noise. Everything is a pure function of a JAX key with static shapes.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def moffat_kernel(fwhm: jnp.ndarray, beta: float, size: int) -> jnp.ndarray:
  """Unit-sum Moffat profile on a ``(size, size)`` grid centred on pixel ``size // 2``.

  Args:
    fwhm: scalar FWHM in pixels (may be traced).
    beta: Moffat power index (≈ 2.5–4.8 for seeing-limited stars).
    size: static odd grid size.
  """
  alpha = fwhm / (2.0 * jnp.sqrt(2.0 ** (1.0 / beta) - 1.0))
  r = jnp.arange(size, dtype=jnp.float32) - size // 2
  r2 = r[:, None] ** 2 + r[None, :] ** 2
  k = (1.0 + r2 / alpha ** 2) ** (-beta)
  return k / k.sum()


def _fft_convolve_same(image: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
  """Circular FFT convolution of ``(H, W)`` by a centred ``(k, k)`` kernel."""
  h, w = image.shape
  k = kernel.shape[0]
  padded = jnp.zeros((h, w), jnp.float32).at[:k, :k].set(kernel)
  padded = jnp.roll(padded, (-(k // 2), -(k // 2)), axis=(0, 1))
  return jnp.fft.irfft2(jnp.fft.rfft2(image) * jnp.fft.rfft2(padded), s=(h, w))


def _splat(grid_hw, ys, xs, values):
  """Bilinear deposit of point fluxes ``values (N, C)`` at float positions."""
  h, w = grid_hw
  y0, x0 = jnp.floor(ys), jnp.floor(xs)
  fy, fx = ys - y0, xs - x0
  out = jnp.zeros((h, w, values.shape[-1]), jnp.float32)
  for dy, dx, wt in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx),
                     (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
    yi = jnp.clip(y0.astype(jnp.int32) + dy, 0, h - 1)
    xi = jnp.clip(x0.astype(jnp.int32) + dx, 0, w - 1)
    out = out.at[yi, xi].add(values * wt[:, None])
  return out


def fractal_noise(key, shape_hw: tuple[int, int], scales=(4, 8, 16, 32, 64),
                  slope: float = 1.0) -> jnp.ndarray:
  """Multi-scale smooth noise, ``(H, W) float32`` with unit standard deviation.

  Each octave is a coarse Gaussian grid upsampled (cubic) to full size and
  weighted by ``scale ** slope`` so that large scales dominate.
  """
  h, w = shape_hw
  total = jnp.zeros((h, w), jnp.float32)
  for i, s in enumerate(scales):
    k = jax.random.fold_in(key, i)
    coarse = jax.random.normal(k, (h // s + 3, w // s + 3), jnp.float32)
    up = jax.image.resize(coarse, ((h // s + 3) * s, (w // s + 3) * s), "cubic")
    total = total + (float(s) ** slope) * up[s:s + h, s:s + w]
  return (total - total.mean()) / (total.std() + 1e-6)


def render_sky(key, shape_hw: tuple[int, int], channels: int, cfg) -> jnp.ndarray:
  """One clean linear sky.

  Args:
    key: PRNG key.
    shape_hw: static ``(H, W)``.
    channels: static 1 (mono) or 3 (RGB).
    cfg: ``config.sky`` (see configs/default.py for every knob and its unit).
  Returns:
    ``(H, W, C) float32``, linear, ≥ 0, 1.0 = saturation.
  """
  h, w = shape_hw
  ks = jax.random.split(key, 10)
  pad = cfg.psf_size // 2
  ph, pw = h + 2 * pad, w + 2 * pad

  # Stars: positions over the padded frame so that halos enter from outside.
  n = cfg.max_stars
  density = jax.random.uniform(ks[0], (), minval=cfg.star_fraction[0], maxval=cfg.star_fraction[1])
  active = jax.random.uniform(ks[1], (n,)) < density
  ys = jax.random.uniform(ks[2], (n,), minval=0.0, maxval=ph - 1.0)
  xs = jax.random.uniform(ks[3], (n,), minval=0.0, maxval=pw - 1.0)
  u = jax.random.uniform(ks[4], (n,), minval=1e-6, maxval=1.0)
  flux = jnp.minimum(cfg.star_flux_min * u ** (-1.0 / cfg.star_flux_alpha), cfg.star_flux_max)
  color = 1.0 + cfg.star_color_spread * jax.random.normal(ks[5], (n, channels))
  color = jnp.clip(color, 0.3, 3.0) if channels > 1 else jnp.ones((n, 1))
  points = _splat((ph, pw), ys, xs, (flux * active)[:, None] * color)
  fwhm = jax.random.uniform(ks[6], (), minval=cfg.fwhm_px[0], maxval=cfg.fwhm_px[1])
  kernel = moffat_kernel(fwhm, cfg.moffat_beta, cfg.psf_size)
  stars = jax.vmap(_fft_convolve_same, in_axes=(-1, None), out_axes=-1)(points, kernel)
  stars = stars[pad:pad + h, pad:pad + w]

  # Nebulosity: soft-thresholded fractal noise, present in a fraction of frames.
  neb_on = jax.random.uniform(ks[7], ()) < cfg.nebula_probability
  neb_amp = jax.random.uniform(ks[8], (), minval=cfg.nebula_amplitude[0],
                               maxval=cfg.nebula_amplitude[1]) * neb_on
  nebula = jax.nn.softplus(3.0 * fractal_noise(ks[9], (h, w)) - 1.5) / 3.0
  tint = jnp.array([1.0, 0.55, 0.75])[:channels] if channels == 3 else jnp.ones((1,))
  background = jax.random.uniform(jax.random.fold_in(key, 99), (),
                                  minval=cfg.background[0], maxval=cfg.background[1])
  sky = background + neb_amp * nebula[:, :, None] * tint + stars
  return jnp.maximum(sky, 0.0).astype(jnp.float32)
