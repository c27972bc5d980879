"""Global sensor coordinates of crops and tiles.

Coordinates are pixel centres mapped to [-1, 1] across the *full* sensor, so a
crop or tile at the corner of the frame sees corner coordinates.
"""
from __future__ import annotations

import jax.numpy as jnp


def frame_coords(offset_yx, crop_hw: tuple[int, int], sensor_hw) -> jnp.ndarray:
  """Global coordinates of the pixels of a crop.

  Args:
    offset_yx: ``(2,)`` int or float, top-left pixel of the crop on the sensor
      (may be traced).
    crop_hw: static ``(h, w)`` of the crop in pixels.
    sensor_hw: ``(2,)`` full sensor ``(H, W)`` in pixels (may be traced).
  Returns:
    ``(h, w, 2) float32``: channel 0 is x (columns), channel 1 is y (rows),
    both in [-1, 1] over the full sensor (pixel centres).
  """
  h, w = crop_hw
  oy, ox = offset_yx[0], offset_yx[1]
  sh, sw = sensor_hw[0], sensor_hw[1]
  ys = (2.0 * (oy + jnp.arange(h, dtype=jnp.float32) + 0.5) / sh) - 1.0
  xs = (2.0 * (ox + jnp.arange(w, dtype=jnp.float32) + 0.5) / sw) - 1.0
  yy, xx = jnp.meshgrid(ys, xs, indexing="ij")
  return jnp.stack([xx, yy], axis=-1).astype(jnp.float32)


def field_radius(coords: jnp.ndarray, aspect: float) -> jnp.ndarray:
  """Radius from the sensor centre, 1 at the corners.

  Args:
    coords: ``(..., 2)`` global (x, y) in [-1, 1].
    aspect: sensor height / width.
  Returns:
    ``(...)`` float32, 0 at the centre, 1 at each corner.
  """
  x, y = coords[..., 0], coords[..., 1] * aspect
  return jnp.sqrt((x * x + y * y) / (1.0 + aspect * aspect))
