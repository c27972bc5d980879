"""Multiplicative flat field F and additive field G, drawn on device.

Fields are functions of *global* sensor coordinates, so any crop or tile of a
frame sees the part of the field that belongs to its position. Convention:
F = 1 at the optical centre of an unvignetted, dust-free sensor; dust only
darkens; G is in the same linear unit as the sky (1.0 = saturation).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from flatai_jax.physics.geometry import field_radius


def vignetting(coords, strength, power, centre_xy, aspect):
  """Radial falloff ``1 - strength * r**power`` around an offset optical centre.

  Args:
    coords: ``(H, W, 2)`` global (x, y) in [-1, 1].
    strength: corner darkening; corner/centre = 1 - strength for a centred axis.
    power: radial exponent (2 ≈ cos⁴ law at small angles, larger = mechanical).
    centre_xy: ``(2,)`` optical-axis offset in the same coordinates.
    aspect: sensor height / width.
  Returns:
    ``(H, W)`` float32 in (0, 1].
  """
  r = field_radius(coords - centre_xy, aspect)
  return jnp.clip(1.0 - strength * r ** power, 0.05, 1.0)


def dust_shadows(key, coords, cfg, aspect):
  """Product of soft-edged dust shadows (discs or rings), ``(H, W)`` in (0, 1]."""
  n = cfg.max_dust
  ks = jax.random.split(key, 6)
  count = jax.random.randint(ks[0], (), 0, n + 1)
  active = jnp.arange(n) < count
  cx = jax.random.uniform(ks[1], (n,), minval=-1.0, maxval=1.0)
  cy = jax.random.uniform(ks[2], (n,), minval=-1.0, maxval=1.0)
  radius = jax.random.uniform(ks[3], (n,), minval=cfg.dust_radius[0], maxval=cfg.dust_radius[1])
  depth = jax.random.uniform(ks[4], (n,), minval=cfg.dust_depth[0], maxval=cfg.dust_depth[1])
  inner = cfg.obstruction * radius
  x = coords[..., 0][..., None]
  y = coords[..., 1][..., None] * aspect
  d = jnp.sqrt((x - cx) ** 2 + (y - cy * aspect) ** 2)
  soft = cfg.dust_softness * radius
  outer_edge = jax.nn.sigmoid((radius - d) / soft)
  inner_edge = jax.nn.sigmoid((d - inner) / soft) if cfg.obstruction > 0 else 1.0
  shadow = 1.0 - depth * outer_edge * inner_edge * active
  return jnp.prod(shadow, axis=-1)


def gradient_field(key, coords, cfg):
  """Additive sky gradient plus an amplifier glow at a random corner, ``(H, W)``."""
  ks = jax.random.split(key, 5)
  level = jax.random.uniform(ks[0], (), minval=cfg.gradient_level[0], maxval=cfg.gradient_level[1])
  slope = jax.random.uniform(ks[1], (2,), minval=-1.0, maxval=1.0) * cfg.gradient_slope
  g = level + slope[0] * coords[..., 0] + slope[1] * coords[..., 1]
  corner = jnp.sign(jax.random.uniform(ks[2], (2,), minval=-1.0, maxval=1.0))
  glow_amp = jax.random.uniform(ks[3], (), minval=0.0, maxval=cfg.glow_amplitude)
  dist = jnp.sqrt(jnp.sum((coords - corner) ** 2, axis=-1))
  g = g + glow_amp * jnp.exp(-dist / cfg.glow_scale)
  return jnp.maximum(g, 0.0)


def draw_flat_fields(key, coords, channels: int, cfg, aspect: float):
  """Draws F and G for one example.

  Args:
    key: PRNG key.
    coords: ``(H, W, 2)`` global sensor coordinates in [-1, 1].
    channels: static 1 or 3.
    cfg: ``config.flat`` (distributions and switches).
    aspect: sensor height / width.
  Returns:
    F: ``(H, W, C) float32`` multiplicative, in (0, 1.05].
    G: ``(H, W, C) float32`` additive, ≥ 0, linear units.
  """
  ks = jax.random.split(key, 6)
  h, w = coords.shape[:2]
  f = jnp.ones((h, w), jnp.float32)
  if cfg.vignetting:
    strength = jax.random.uniform(ks[0], (), minval=cfg.vignetting_strength[0],
                                  maxval=cfg.vignetting_strength[1])
    centre = jax.random.uniform(ks[1], (2,), minval=-1.0, maxval=1.0) * cfg.centre_offset
    f = f * vignetting(coords, strength, cfg.vignetting_power, centre, aspect)
  if cfg.dust:
    f = f * dust_shadows(ks[2], coords, cfg, aspect)
  f = jnp.repeat(f[..., None], channels, axis=-1)
  if cfg.prnu:
    f = f * (1.0 + cfg.prnu_sigma * jax.random.normal(ks[3], f.shape, jnp.float32))
  g = jnp.zeros((h, w), jnp.float32)
  if cfg.gradient:
    g = gradient_field(ks[4], coords, cfg)
  g = jnp.repeat(g[..., None], channels, axis=-1)
  return f.astype(jnp.float32), g.astype(jnp.float32)
