"""Global sensor coordinates of crops and tiles, and the one field position / field radius.

Coordinates are pixel centres mapped to [-1, 1] across the *full* sensor, so a
crop or tile at the corner of the frame sees corner coordinates. The field
position is measured from the sensor centre in units of the half-diagonal
(pixels square): the optics (``optics``), the star metrics of the report
(``evaluation.stars``) and the tests all use :func:`field_position` /
:func:`field_radius`.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np


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


def pixel_coords(xy_px, sensor_hw) -> jnp.ndarray:
  """Global coordinates of pixel positions (the inverse of :func:`frame_coords`' pixel grid).

  Args:
    xy_px: ``(..., 2)`` (x, y) pixel positions on the sensor, pixel centres at integers.
    sensor_hw: ``(H, W)`` of the sensor, px.
  Returns:
    ``(..., 2) float32`` global (x, y), -1 and 1 at the sensor's outer pixel edges.
  """
  h, w = sensor_hw
  xy = jnp.asarray(xy_px, jnp.float32)
  return 2.0 * (xy + 0.5) / jnp.asarray([w, h], jnp.float32) - 1.0


def field_position(coords, aspect: float) -> jnp.ndarray:
  """Field vector from global sensor coordinates.

  Args:
    coords: ``(..., 2)`` global (x, y) in [-1, 1].
    aspect: sensor height / width.
  Returns:
    ``(..., 2) float32`` (hx, hy) from the sensor centre in half-diagonals,
    ``|h| = 1`` at the corners.
  """
  norm = jnp.sqrt(1.0 + aspect * aspect)
  return jnp.stack([coords[..., 0], coords[..., 1] * aspect], axis=-1) / norm


def field_radius(coords, aspect: float) -> jnp.ndarray:
  """Field radius ``|field_position|``: ``(...)`` float32, 0 at the sensor centre, 1 at each corner.

  Args:
    coords: ``(..., 2)`` global (x, y) in [-1, 1].
    aspect: sensor height / width.
  """
  return jnp.linalg.norm(field_position(coords, aspect), axis=-1)


def field_radius_px(xy, hw) -> np.ndarray:
  """``(n,) float64`` field radius (:func:`field_radius`) of ``(n, 2)`` (x, y) pixel positions
  on a frame of ``hw`` = ``(H, W)`` px: 0 at the frame centre, 1 at its corners."""
  h, w = hw
  return np.asarray(field_radius(pixel_coords(xy, (h, w)), h / w), np.float64)
