"""Procedural linear skies: the embedded default training data.

Units: 1.0 is the sensor's saturation level (full well); a dark sky
background is ~0.01–0.1. A sky is the sum of

- stars: a truncated power-law luminosity function ``N(>flux) ∝ flux^−α``
  between ``star_flux_min`` and ``star_flux_max`` (the brightest saturate their
  cores), uniform positions, or a Plummer cluster in some frames, sparse fields
  in others; colours of black bodies of the drawn temperature (RGB);
- galaxies: Sérsic profiles ``I ∝ exp(−b_n((r/r_e)^{1/n} − 1))``, elliptical,
  redder for higher ``n``;
- both convolved with one Moffat seeing profile per frame;
- nebulosity: soft-thresholded multi-scale fractal noise (emission, with Hα /
  OIII colours in RGB) and dark lanes that absorb what lies behind them.

Everything is a pure function of a JAX key with static shapes. ``draw_stars``
exposes the star catalogue (tests check its luminosity function).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln

from flatai_jax.physics import distributions as dist

BAND_UM = (0.61, 0.53, 0.46)  # effective wavelengths of the R, G, B channels, µm
_HC_K_UM_K = 14387.77  # h·c / k_B in µm·K
EMISSION_RGB = ((1.0, 0.32, 0.42), (0.30, 0.95, 0.85))  # Hα(+Hβ, SII) and OIII colours


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


@functools.lru_cache(maxsize=64)
def cubic_upsampling_matrix(n_in: int, factor: int) -> np.ndarray:
  """``(n_in·factor, n_in)`` float32 weights of Keys cubic interpolation (a = −0.5).

  Output sample ``i`` sits at input coordinate ``(i + 0.5) / factor − 0.5``;
  edges are clamped and each row sums to 1.
  """
  src = (np.arange(n_in * factor) + 0.5) / factor - 0.5
  j0 = np.floor(src).astype(np.int64)
  out = np.zeros((n_in * factor, n_in), np.float64)
  rows = np.arange(n_in * factor)
  for tap in range(-1, 3):
    j = j0 + tap
    d = np.abs(src - j)
    w = np.where(d <= 1, 1.5 * d ** 3 - 2.5 * d ** 2 + 1,
                 np.where(d < 2, -0.5 * d ** 3 + 2.5 * d ** 2 - 4 * d + 2, 0.0))
    np.add.at(out, (rows, np.clip(j, 0, n_in - 1)), w)
  return out.astype(np.float32)


def fractal_noise(key, shape_hw: tuple[int, int], scales=(4, 8, 16, 32, 64),
                  slope: float = 1.0) -> jnp.ndarray:
  """Multi-scale smooth noise, ``(H, W) float32`` with zero mean and unit standard deviation.

  Each octave is a coarse Gaussian grid upsampled by cubic interpolation (two
  small matmuls with :func:`cubic_upsampling_matrix`) to full size and
  weighted by ``scale ** slope`` so that large scales dominate.
  """
  h, w = shape_hw
  total = jnp.zeros((h, w), jnp.float32)
  grids = [(h // s + 3, w // s + 3) for s in scales]
  sizes = [gh * gw for gh, gw in grids]
  white = jax.random.normal(key, (sum(sizes),), jnp.float32)  # one threefry call for all octaves
  start = 0
  for s, (gh, gw), size in zip(scales, grids, sizes):
    coarse = white[start:start + size].reshape(gh, gw)
    start += size
    wy = jnp.asarray(cubic_upsampling_matrix(gh, s)[s:s + h])
    wx = jnp.asarray(cubic_upsampling_matrix(gw, s)[s:s + w])
    total = total + (float(s) ** slope) * (wy @ coarse @ wx.T)
  return (total - total.mean()) / (total.std() + 1e-6)


def blackbody_rgb(temperature_k, channels: int) -> jnp.ndarray:
  """Relative RGB of a black body: ``(..., C)`` with mean 1 over channels (ones for mono)."""
  t = jnp.asarray(temperature_k, jnp.float32)[..., None]
  if channels == 1:
    return jnp.ones(t.shape, jnp.float32)
  lam = jnp.asarray(BAND_UM, jnp.float32)
  b = lam ** -5 / jnp.expm1(_HC_K_UM_K / (lam * t))
  return b / b.mean(axis=-1, keepdims=True)


class StarCatalogue(NamedTuple):
  """Stars of one padded frame (n = max_stars), float32 unless noted."""
  yx: jax.Array  # (n, 2) positions, px of the padded frame
  flux: jax.Array  # (n,) total flux (sum over pixels and mean over channels)
  temperature_k: jax.Array  # (n,)
  active: jax.Array  # (n,) bool


def star_fluxes(u, cfg):
  """Inverse CDF of the truncated power law: uniform ``u`` in [0, 1) → fluxes."""
  lo, hi, a = cfg.star_flux_min, cfg.star_flux_max, cfg.star_flux_alpha
  return lo * (1.0 - u * (1.0 - (lo / hi) ** a)) ** (-1.0 / a)


def draw_stars(key, cfg, padded_hw: tuple[int, int]) -> StarCatalogue:
  """One frame's stars from ``cfg`` (``config.sky``).

  The share of the ``max_stars`` slots in use is drawn from ``star_fraction``,
  or from ``sparse_fraction`` with probability ``sparse_probability``. With
  probability ``cluster_probability`` a share ``cluster_fraction`` of the stars
  follows a Plummer profile of radius ``cluster_radius_px`` around a point of
  the frame.
  """
  n = cfg.max_stars
  ph, pw = padded_hw
  r = dist.Uniforms(key, 8 + 7 * n)
  sparse = r.bernoulli(cfg.sparse_probability)
  fraction = jnp.where(sparse, r.sample(cfg.sparse_fraction), r.sample(cfg.star_fraction))
  active = r.take((n,)) < fraction
  size = jnp.array([ph - 1.0, pw - 1.0])
  yx = r.take((n, 2)) * size
  # Plummer sphere projected: R = a / sqrt(u^(-2/3) - 1), uniform direction
  clustered = r.bernoulli(cfg.cluster_probability)
  centre = r.take((2,)) * size
  u = r.sample((1e-3, 0.99), (n,))
  radius = r.sample(cfg.cluster_radius_px) / jnp.sqrt(u ** (-2.0 / 3.0) - 1.0)
  ang = r.angle((n,))
  member = clustered & (jnp.arange(n) < cfg.cluster_fraction * n)
  near = centre + radius[:, None] * jnp.stack([jnp.sin(ang), jnp.cos(ang)], -1)
  yx = jnp.where(member[:, None], near, yx)
  inside = jnp.all((yx >= 0) & (yx <= size), axis=-1)
  return dist.materialize(StarCatalogue(yx=yx, flux=star_fluxes(r.take((n,)), cfg),
                                       temperature_k=r.sample(cfg.star_temperature_k, (n,)),
                                       active=active & inside))


def sersic_b(n):
  """``b_n`` with half the light inside ``r_e`` (Ciotti & Bertin 1999 expansion)."""
  return 2.0 * n - 1.0 / 3.0 + 4.0 / (405.0 * n) + 46.0 / (25515.0 * n * n)


def sersic_images(key, cfg, padded_hw: tuple[int, int], channels: int) -> jnp.ndarray:
  """Up to ``max_galaxies`` elliptical Sérsic galaxies, ``(H, W, C)``, each of its drawn flux."""
  ng = cfg.max_galaxies
  ph, pw = padded_hw
  if ng == 0:
    return jnp.zeros((ph, pw, channels), jnp.float32)
  r = dist.Uniforms(key, 8 * ng)
  on = r.bernoulli(cfg.galaxy_probability, (ng,))
  yx = r.take((ng, 2)) * jnp.array([ph - 1.0, pw - 1.0])
  n = r.sample(cfg.sersic_index, (ng,))
  r_e = r.sample(cfg.galaxy_radius_px, (ng,))
  q = r.sample(cfg.galaxy_axis_ratio, (ng,))
  theta = 0.5 * r.angle((ng,))
  flux = r.sample(cfg.galaxy_flux, (ng,)) * on
  yx, n, r_e, q, theta, flux = dist.materialize((yx, n, r_e, q, theta, flux))
  b = sersic_b(n)
  col = lambda v: v[:, None, None]  # (ng,) → (ng, 1, 1): W innermost vectorises on CPU
  c, s = col(jnp.cos(theta)), col(jnp.sin(theta))
  prof = 0.0
  for oy, ox in ((-0.25, -0.25), (-0.25, 0.25), (0.25, -0.25), (0.25, 0.25)):  # 2×2 per pixel
    y = jnp.arange(ph, dtype=jnp.float32)[None, :, None] + oy - col(yx[:, 0])
    x = jnp.arange(pw, dtype=jnp.float32)[None, None, :] + ox - col(yx[:, 1])
    major, minor = x * c + y * s, (-x * s + y * c) / col(q)
    r = jnp.sqrt(major * major + minor * minor + 1e-4)
    prof = prof + 0.25 * jnp.exp(-col(b) * ((r / col(r_e)) ** (1.0 / col(n)) - 1.0))
  total = 2.0 * jnp.pi * q * r_e ** 2 * n * jnp.exp(b + gammaln(2.0 * n) - 2.0 * n * jnp.log(b))
  img = prof * col(flux / total)  # (ng, H, W)
  # bulge-dominated (high n) galaxies are old and red, discs bluer
  colour = blackbody_rgb(3500.0 + 6000.0 * jnp.clip((4.0 - n) / 3.5, 0.0, 1.0), channels)
  return jnp.einsum("ghw,gc->hwc", img, colour)


def render_sky(key, shape_hw: tuple[int, int], channels: int, cfg, with_seeing: bool = False):
  """One clean linear sky.

  Args:
    key: PRNG key.
    shape_hw: static ``(H, W)``.
    channels: static 1 (mono) or 3 (RGB).
    cfg: ``config.sky`` (see configs/default.py for every knob and its unit).
    with_seeing: also return the FWHM of the frame's Moffat seeing (px, ``()``), which the
      training's in-step deconvolution keeps in the restored crop (``data.synthetic``).
  Returns:
    ``(H, W, C) float32``, linear, ≥ 0, 1.0 = saturation; with ``with_seeing``, ``(sky, fwhm)``.
  """
  h, w = shape_hw
  k_stars, k_gal, k_neb, k_lanes, k_par = jax.random.split(key, 5)
  r = dist.Uniforms(k_par, 8)
  pad = cfg.psf_size // 2
  ph, pw = h + 2 * pad, w + 2 * pad

  # Stars and galaxies over the padded frame (halos enter from outside), then seeing.
  stars = draw_stars(k_stars, cfg, (ph, pw))
  colour = blackbody_rgb(stars.temperature_k, channels)
  points = _splat((ph, pw), stars.yx[:, 0], stars.yx[:, 1],
                  (stars.flux * stars.active)[:, None] * colour)
  points = points + sersic_images(k_gal, cfg, (ph, pw), channels)
  fwhm = r.sample(cfg.fwhm_px)
  kernel = moffat_kernel(fwhm, cfg.moffat_beta, cfg.psf_size)
  objects = jax.vmap(_fft_convolve_same, in_axes=(-1, None), out_axes=-1)(points, kernel)
  objects = objects[pad:pad + h, pad:pad + w]

  # Nebulosity in a fraction of frames: emission (Hα/OIII mix in RGB) and dark lanes.
  neb_on = r.bernoulli(cfg.nebula_probability)
  neb_amp = r.sample(cfg.nebula_amplitude) * neb_on
  nebula = jax.nn.softplus(3.0 * fractal_noise(k_neb, (h, w)) - 1.5) / 3.0
  mix = r.take()
  if channels == 3:
    tint = (1.0 - mix) * jnp.asarray(EMISSION_RGB[0]) + mix * jnp.asarray(EMISSION_RGB[1])
  else:
    tint = jnp.ones((1,))
  background = r.sample(cfg.background)
  lanes_on = neb_on & r.bernoulli(cfg.dark_lane_probability)
  tau = r.sample(cfg.dark_lane_depth) * lanes_on
  neb_amp, tint, background, tau = dist.materialize((neb_amp, tint, background, tau))
  behind = neb_amp * nebula[:, :, None] * tint + objects
  lanes = jax.nn.softplus(4.0 * fractal_noise(k_lanes, (h, w)) - 3.0) / 4.0
  sky = background + behind * jnp.exp(-tau * lanes)[:, :, None]
  sky = jnp.maximum(sky, 0.0).astype(jnp.float32)
  return (sky, jnp.asarray(fwhm, jnp.float32)) if with_seeing else sky
