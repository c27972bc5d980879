"""Multiplicative flat field F and additive field G, drawn on device from optics.

Fields are functions of *global* sensor coordinates (``geometry.frame_coords``),
so any crop or tile of a frame sees the part of the field that belongs to its
position. Physical lengths are converted to pixels with ``cfg.pixel_size_um``
on the virtual sensor ``sensor_hw`` (``config.data.sensor_hw``).

Normalisation convention of F (tested)::

    F = V · D · S · P

- ``V`` vignetting: exactly 1 on the optical axis and ≤ 1 everywhere; for a
  centred, symmetric axis ``V(corner) / V(centre) = 1 − strength``. It is the
  product of a natural cos⁴-type falloff ``(1 + t² r²)^−2`` and a mechanical
  clip ``1 − (1 − c_m) · (max(r − r₀, 0) / (1 − r₀))²`` beyond the onset radius
  ``r₀``; ``r`` is the (elliptical, offset) field radius, 1 at the corner. The
  drawn ``mechanical_fraction`` splits ``ln(1 − strength)`` between the two.
- ``D`` dust shadows: ≤ 1 (dust only darkens).
- ``S`` bright specks: ≥ 1.
- ``P`` PRNU: pixel-scale and low-frequency blotches, each ``1 + σ·n`` with
  zero-mean ``n``, so its expectation is 1.

F is therefore *not* renormalised to mean 1 (PyTorch FlatAI did that): the optical
axis of a clean sensor is the reference, and the mean of F is the flat's true
mean (< 1 when vignetted). G is ≥ 0, in the same linear unit as the sky (1.0 =
saturation).

Dust geometry (all in px): a particle at lateral position ``p`` (from the
optical axis ``o``) a distance ``d`` in front of the sensor, in a beam of focal
ratio ``N`` converging from an exit pupil at distance ``L``, shadows the pixels
whose ray through the particle lands inside the (annular) exit pupil. Its
shadow is the pupil projected through the particle: centred at
``o + (p − o) · L / (L − d)`` (moved towards the field edge by ``≈ d·tan θ``)
with outer diameter ``(L / N) · d / (L − d) ≈ d / N`` and a hole of
``obstruction`` times that.

``draw_flat_params`` draws every random parameter (cheap, vmappable: tests
check their distributions); ``render_flat`` turns them into fields.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from flatai_jax.physics import distributions as dist
from flatai_jax.physics.sky import fractal_noise

_GLOW_SITES = np.array([[-1, -1], [1, -1], [-1, 1], [1, 1],
                         [0, -1], [0, 1], [-1, 0], [1, 0]], np.float32)  # corners, then edges


class FlatParams(NamedTuple):
  """Random parameters of one frame's F and G.

  float32 unless noted; n = ``max_dust``, m = ``max_specks``.
  """
  strength: jax.Array  # () corner darkening, corner/centre = 1 − strength
  mechanical_fraction: jax.Array  # () share of ln(corner/centre) from the mechanical clip
  mechanical_onset: jax.Array  # () field radius r₀ where the clip starts
  centre: jax.Array  # (2,) optical axis (x, y), global coordinates
  asymmetry: jax.Array  # () ellipticity a: radii scaled by 1 ± a
  asymmetry_angle: jax.Array  # () orientation, rad
  focal_ratio: jax.Array  # () N
  exit_pupil_mm: jax.Array  # () L
  obstruction: jax.Array  # () central obstruction ratio (0 = unobstructed)
  dust_active: jax.Array  # (n,) bool
  dust_xy: jax.Array  # (n, 2) particle positions, global coordinates
  dust_distance_mm: jax.Array  # (n,) d
  dust_depth: jax.Array  # (n,) fractional darkening
  dust_softness: jax.Array  # (n,) edge width / shadow radius
  speck_active: jax.Array  # (m,) bool
  speck_xy: jax.Array  # (m, 2) global coordinates
  speck_gain: jax.Array  # (m,) F excess at the centre
  speck_sigma_px: jax.Array  # (m,) Gaussian sigma, px
  prnu_sigma: jax.Array  # () pixel-scale relative RMS
  blotch_sigma: jax.Array  # () low-frequency relative RMS
  level: jax.Array  # () G pedestal
  slope: jax.Array  # (2,) linear G per unit global x, y
  quadratic: jax.Array  # (3,) G coefficients of x², y², xy
  dome_amplitude: jax.Array  # () light-pollution dome at its side (0 when absent)
  dome_direction: jax.Array  # (2,) unit vector towards the bright side
  dome_scale: jax.Array  # () e-folding distance, global units
  glow_amplitude: jax.Array  # () amplifier glow at its site (0 when absent)
  glow_xy: jax.Array  # (2,) glow site (a corner or an edge midpoint), global coordinates
  glow_scale: jax.Array  # () e-folding distance, global x units
  tint: jax.Array  # (4, C) per-channel factors of pedestal, gradients, dome, glow (mean 1)


def capped_poisson(u, mean: float, cap: int) -> jax.Array:
  """``min(Poisson(mean), cap)`` int32 from a uniform ``u`` by the inverse CDF.

  ``mean`` and ``cap`` are static (from the config).
  """
  k = np.arange(cap)
  pmf = np.exp(k * np.log(max(mean, 1e-30)) - mean - np.cumsum(np.log(np.maximum(k, 1))))
  cdf = jnp.asarray(np.cumsum(pmf), jnp.float32)
  return jnp.sum(u >= cdf).astype(jnp.int32)


def draw_flat_params(key, cfg, channels: int) -> FlatParams:
  """Draws one frame's parameters from ``cfg`` (``config.degrade.flat``).

  Distribution specs as in ``physics.distributions``. Dust count is Poisson
  with mean ``dust_mean`` capped at ``max_dust``; particles are uniform over
  the sensor, or with probability ``dust_cluster_probability`` Gaussian around
  one centre at one shared distance. Directions and orientations are uniform.
  """
  n, m = cfg.max_dust, cfg.max_specks
  r = dist.Uniforms(key, 64 + 8 * n + 6 * m + 4 * channels)
  s = r.sample
  unit = lambda a: jnp.stack([jnp.cos(a), jnp.sin(a)], -1)

  count = capped_poisson(r.take(), cfg.dust_mean, n)
  clustered = r.bernoulli(cfg.dust_cluster_probability)
  uniform_xy = s((-1.0, 1.0), (n, 2))
  cluster_xy = s((-0.8, 0.8), (1, 2))
  spread = s(cfg.dust_cluster_spread, (1, 1))
  near = cluster_xy + spread * r.normal((n, 2))
  distance = s(cfg.dust_distance_mm, (n,))
  obstructed = r.bernoulli(cfg.obstruction_probability)

  colour = lambda: (1.0 + cfg.channel_spread * r.normal((channels,))
                    if channels > 1 else jnp.ones((1,)))
  dome_colour = jnp.asarray(cfg.dome_colour, jnp.float32)[:channels] if channels > 1 else 1.0
  tint = jnp.stack([colour(), colour(), colour() * dome_colour, colour()])
  tint = jnp.maximum(tint, 0.05)
  tint = tint / tint.mean(axis=1, keepdims=True)

  quad_dir = r.normal((3,))
  return dist.materialize(FlatParams(
      strength=s(cfg.vignetting_strength),
      mechanical_fraction=s(cfg.mechanical_fraction),
      mechanical_onset=s(cfg.mechanical_onset),
      centre=s(cfg.centre_offset, (2,)),
      asymmetry=s(cfg.asymmetry),
      asymmetry_angle=r.angle(),
      focal_ratio=s(cfg.focal_ratio),
      exit_pupil_mm=s(cfg.exit_pupil_mm),
      obstruction=jnp.where(obstructed, s(cfg.obstruction), 0.0),
      dust_active=jnp.arange(n) < count,
      dust_xy=jnp.where(clustered, near, uniform_xy),
      dust_distance_mm=jnp.where(clustered, distance[:1], distance),
      dust_depth=s(cfg.dust_depth, (n,)),
      dust_softness=s(cfg.dust_softness, (n,)),
      speck_active=r.bernoulli(cfg.speck_probability, (m,)),
      speck_xy=s((-1.0, 1.0), (m, 2)),
      speck_gain=s(cfg.speck_gain, (m,)),
      speck_sigma_px=s(cfg.speck_sigma_px, (m,)),
      prnu_sigma=s(cfg.prnu_sigma),
      blotch_sigma=s(cfg.prnu_blotch_sigma),
      level=s(cfg.gradient_level),
      slope=s(cfg.gradient_slope) * unit(r.angle()),
      quadratic=s(cfg.quadratic_amplitude) * quad_dir / jnp.linalg.norm(quad_dir),
      dome_amplitude=s(cfg.dome_amplitude) * r.bernoulli(cfg.dome_probability),
      dome_direction=unit(r.angle()),
      dome_scale=s(cfg.dome_scale),
      glow_amplitude=s(cfg.glow_amplitude) * r.bernoulli(cfg.glow_probability),
      glow_xy=jnp.asarray(_GLOW_SITES)[jnp.minimum((8 * r.take()).astype(jnp.int32), 7)],
      glow_scale=s(cfg.glow_scale),
      tint=tint.astype(jnp.float32)))


def _to_px(xy, sensor_hw):
  """Global coordinates ``(..., 2)`` → px from the sensor centre ``(..., 2)``."""
  return xy * jnp.array([sensor_hw[1] / 2.0, sensor_hw[0] / 2.0], jnp.float32)


def vignetting(p: FlatParams, coords, sensor_hw) -> jnp.ndarray:
  """``V``: ``(H, W) float32`` in (0, 1], 1 on the optical axis (module docstring)."""
  h, w = sensor_hw
  half_diag = 0.5 * (h * h + w * w) ** 0.5
  d = _to_px(coords - p.centre, sensor_hw)
  c, s = jnp.cos(p.asymmetry_angle), jnp.sin(p.asymmetry_angle)
  u = (d[..., 0] * c + d[..., 1] * s) / (1.0 + p.asymmetry)
  v = (-d[..., 0] * s + d[..., 1] * c) / (1.0 - p.asymmetry)
  r = jnp.sqrt(u * u + v * v) / half_diag
  log_corner = jnp.log1p(-jnp.minimum(p.strength, 0.95))
  c_nat = jnp.exp((1.0 - p.mechanical_fraction) * log_corner)
  c_mech = jnp.exp(p.mechanical_fraction * log_corner)
  t2 = c_nat ** -0.5 - 1.0
  natural = (1.0 + t2 * r * r) ** -2
  ramp = jnp.maximum(r - p.mechanical_onset, 0.0) / (1.0 - p.mechanical_onset)
  mechanical = 1.0 - (1.0 - c_mech) * ramp * ramp
  return jnp.clip(natural * mechanical, 0.05, 1.0)


def shadow_geometry(p: FlatParams, cfg, sensor_hw):
  """Shadow centres ``(n, 2)`` px from the sensor centre and outer radii ``(n,)`` px."""
  pix_mm = cfg.pixel_size_um * 1e-3
  d = p.dust_distance_mm / pix_mm
  big_l = p.exit_pupil_mm / pix_mm
  axis = _to_px(p.centre, sensor_hw)
  centres = axis + (_to_px(p.dust_xy, sensor_hw) - axis) * (big_l / (big_l - d))[:, None]
  radius = 0.5 * (big_l / p.focal_ratio) * d / (big_l - d)
  return centres, radius


def dust_shadows(p: FlatParams, coords, cfg, sensor_hw) -> jnp.ndarray:
  """``D``: product of soft-edged shadows of the (annular) pupil, ``(H, W)`` in (0, 1]."""
  centres, radius = shadow_geometry(p, cfg, sensor_hw)
  xy = _to_px(coords, sensor_hw)
  col = lambda v: v[:, None, None]  # (n,) → (n, 1, 1): W innermost vectorises on CPU
  dx = xy[None, ..., 0] - col(centres[:, 0])
  dy = xy[None, ..., 1] - col(centres[:, 1])
  rho = jnp.sqrt(dx * dx + dy * dy)  # (n, H, W)
  width = jnp.maximum(p.dust_softness * radius, 0.3)
  inner_r = p.obstruction * radius
  inner_w = jnp.maximum(p.dust_softness * inner_r, 0.3)
  disc = jax.nn.sigmoid((col(radius) - rho) / col(width))
  hole = jnp.where(p.obstruction > 0, jax.nn.sigmoid((col(inner_r) - rho) / col(inner_w)), 0.0)
  shadow = jnp.clip(disc - hole, 0.0, 1.0) * col(p.dust_depth * p.dust_active)
  return jnp.prod(1.0 - shadow, axis=0)


def specks(p: FlatParams, coords, sensor_hw) -> jnp.ndarray:
  """``S``: rare bright specks, ``(H, W)`` ≥ 1.

  Separable Gaussians (two 1-D profiles per speck), so ``coords`` must be a
  ``geometry.frame_coords`` grid: rows share y, columns share x.
  """
  xy = _to_px(coords, sensor_hw)
  centre = _to_px(p.speck_xy, sensor_hw)  # (m, 2)
  inv = 0.5 / p.speck_sigma_px ** 2
  ex = jnp.exp(-inv * (xy[0, :, 0][:, None] - centre[:, 0]) ** 2)  # (W, m)
  ey = jnp.exp(-inv * (xy[:, 0, 1][:, None] - centre[:, 1]) ** 2)  # (H, m)
  return 1.0 + jnp.einsum("hm,wm,m->hw", ey, ex, p.speck_gain * p.speck_active)


def additive_field(p: FlatParams, coords, cfg, sensor_hw) -> jnp.ndarray:
  """``G``: pedestal, linear and quadratic gradients, dome, amplifier glow; ``(H, W, C)`` ≥ 0."""
  x, y = coords[..., 0], coords[..., 1]
  zero = jnp.zeros_like(x)
  q = p.quadratic
  gradients = ((p.slope[0] * x + p.slope[1] * y if cfg.gradient else zero) +
               (q[0] * x * x + q[1] * y * y + q[2] * x * y if cfg.quadratic else zero))
  parts = [zero + p.level, gradients]
  toward = p.dome_direction[0] * x + p.dome_direction[1] * y
  parts.append(p.dome_amplitude * jnp.exp((toward - 1.0) / p.dome_scale) if cfg.dome else zero)
  if cfg.glow:
    aspect = sensor_hw[0] / sensor_hw[1]
    dist_g = jnp.sqrt((x - p.glow_xy[0]) ** 2 + ((y - p.glow_xy[1]) * aspect) ** 2)
    parts.append(p.glow_amplitude * jnp.exp(-dist_g / p.glow_scale))
  else:
    parts.append(zero)
  g = sum(part[..., None] * tint for part, tint in zip(parts, p.tint))  # (H, W, C)
  return jnp.maximum(g, 0.0)


def render_flat(p: FlatParams, key, coords, cfg, sensor_hw):
  """F and G of one crop from drawn parameters.

  Args:
    p: FlatParams of the frame (``channels`` = ``p.tint.shape[1]``).
    key: PRNG key of the PRNU pixel noise and blotches.
    coords: ``(H, W, 2)`` global sensor coordinates in [-1, 1].
    cfg: ``config.degrade.flat`` (switches, static sizes, pixel size).
    sensor_hw: static ``(H, W)`` of the virtual sensor, px.
  Returns:
    F ``(H, W, C) float32`` (convention in the module docstring);
    G ``(H, W, C) float32`` ≥ 0, linear units.
  """
  h, w = coords.shape[:2]
  c = p.tint.shape[1]
  f = jnp.ones((h, w), jnp.float32)
  if cfg.vignetting:
    f = f * vignetting(p, coords, sensor_hw)
  if cfg.dust:
    f = f * dust_shadows(p, coords, cfg, sensor_hw)
  if cfg.specks:
    f = f * specks(p, coords, sensor_hw)
  f = jnp.broadcast_to(f[..., None], (h, w, c))
  k_pix, k_blot = jax.random.split(key)
  if cfg.prnu:
    f = f * (1.0 + p.prnu_sigma * jax.random.normal(k_pix, (h, w, c), jnp.float32))
  if cfg.prnu_blotches:
    blot = fractal_noise(k_blot, (h, w), tuple(cfg.prnu_blotch_scales_px), slope=0.0)
    f = f * (1.0 + p.blotch_sigma * blot[..., None])
  return f.astype(jnp.float32), additive_field(p, coords, cfg, sensor_hw).astype(jnp.float32)


def draw_flat_fields(key, coords, channels: int, cfg, sensor_hw):
  """Draws F and G for one example (:func:`draw_flat_params` then :func:`render_flat`).

  Args:
    key: PRNG key.
    coords: ``(H, W, 2)`` global sensor coordinates in [-1, 1].
    channels: static 1 or 3.
    cfg: ``config.degrade.flat`` (distributions and switches).
    sensor_hw: static ``(H, W)`` of the virtual sensor, px.
  Returns:
    F, G: each ``(H, W, C) float32`` (see :func:`render_flat`).
  """
  k_par, k_pix = jax.random.split(key)
  return render_flat(draw_flat_params(k_par, cfg, channels), k_pix, coords, cfg, sensor_hw)
