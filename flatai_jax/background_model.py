"""GraXpert's view of a correction: one background model B and its Subtraction / Division.

The model separates a multiplicative flat field F and an additive field G
(``observed = clean · F + G``). GraXpert — and Siril through it — knows one
*background model* B, the image a perfectly flat sky would give, and two ways
to remove it (``graxpert/background_extraction.py``, release 3.x):

- Subtraction: ``observed − B + mean(B)``
- Division:    ``observed / B · mean(observed)`` (per channel)

Here ``B = s · F + G`` with ``s`` the sky level of the corrected frame (its
median), so Division is exact for a pure flat (G = 0) and Subtraction for a
pure gradient (F = 1). ``-smoothing`` blurs B as GraXpert does: a Gaussian of
σ = 20 · smoothing px on a 256-px working image, i.e. σ = 20 · smoothing / 256
of the frame's longer side.
"""
from __future__ import annotations

import numpy as np

from flatai_jax import working_grid

SMOOTHING_GRID = 256  # GraXpert's working image, px along the longer side
SMOOTHING_SIGMA = 20.0  # GraXpert's Gaussian σ per unit of -smoothing, working-image px
MODES = ("Subtraction", "Division")


def background_model(corrected: np.ndarray, f_field: np.ndarray, g_field: np.ndarray
                     ) -> np.ndarray:
  """``B = s · F + G`` per channel, ``s`` = the channel's median of ``corrected``.

  Args:
    corrected, f_field, g_field: ``(H, W, C) float32`` linear (NaN allowed in ``corrected``).
  Returns:
    ``(H, W, C) float32`` in the input's units.
  """
  sky = np.nanmedian(corrected, axis=(0, 1), keepdims=True)
  return (sky * f_field + g_field).astype(np.float32)


def smooth_background(background: np.ndarray, smoothing: float) -> np.ndarray:
  """GraXpert's ``-smoothing`` in [0, 1] on B: the change a Gaussian of σ = 20 · smoothing px
  makes on B binned to 256 px along its longer side, brought back to full size (cubic).

  Args:
    background: ``(H, W, C) float32``.
  Returns:
    ``(H, W, C) float32``; B itself for ``smoothing = 0``.
  """
  if not 0.0 <= smoothing <= 1.0:
    raise ValueError(f"smoothing {smoothing} must be in [0, 1]")
  if smoothing == 0.0:
    return background
  from scipy import ndimage
  h, w = background.shape[:2]
  long_side = max(h, w)
  cells = min(SMOOTHING_GRID, long_side)
  short = max(1, round(cells * min(h, w) / long_side))
  geo = working_grid.geometry((h, w), (short, cells))
  sigma = SMOOTHING_SIGMA * smoothing * cells / SMOOTHING_GRID
  out = np.empty_like(background, dtype=np.float32)
  for k in range(background.shape[-1]):
    grid = working_grid.bin_frame(background[..., k], geo)
    change = ndimage.gaussian_filter(grid.astype(np.float64), sigma, mode="nearest") - grid
    out[..., k] = background[..., k] + working_grid.upsample(change.astype(np.float32), geo)
  return out


def apply_background(observed: np.ndarray, background: np.ndarray, mode: str) -> np.ndarray:
  """GraXpert's correction with B: ``Subtraction`` or ``Division`` (see module docstring).

  Args:
    observed, background: ``(H, W, C)`` linear, same units.
    mode: one of :data:`MODES`.
  Returns:
    ``(H, W, C) float32``, not clipped (GraXpert clips to [0, 1]; linear data keep their
    star cores here).
  """
  if mode == "Subtraction":
    return (observed - background + np.mean(background)).astype(np.float32)
  if mode == "Division":
    level = np.nanmean(observed, axis=(0, 1), keepdims=True)
    return (observed / np.maximum(background, 1e-12) * level).astype(np.float32)
  raise ValueError(f"correction {mode!r} must be one of {', '.join(MODES)}")
