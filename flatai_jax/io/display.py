"""Display stretches for previews only; never applied to data that a model sees."""
from __future__ import annotations

import numpy as np


def asinh_stretch(image: np.ndarray, black: float | None = None, white: float | None = None,
                  softening: float = 0.02) -> np.ndarray:
  """Maps linear pixels to [0, 1] for viewing.

  Args:
    image: ``(..., H, W, C)`` or ``(H, W)`` linear values, any unit.
    black, white: levels mapped to 0 and 1 before the stretch; default to the
      0.5th percentile and the 99.9th percentile of ``image``.
    softening: asinh knee as a fraction of the white level; smaller shows
      fainter structure.
  Returns:
    Array of the same shape, float32 in [0, 1].
  """
  x = np.asarray(image, dtype=np.float64)
  if black is None:
    black = float(np.percentile(x, 0.5))
  if white is None:
    white = float(np.percentile(x, 99.9))
  span = max(white - black, 1e-12)
  t = np.clip((x - black) / span, 0.0, None)
  return np.clip(np.arcsinh(t / softening) / np.arcsinh(1.0 / softening), 0.0, 1.0).astype(
      np.float32)


def linear_levels(image: np.ndarray, low: float = 1.0, high: float = 99.0) -> np.ndarray:
  """Percentile min/max scaling to [0, 1] for smooth fields such as F and G."""
  x = np.asarray(image, dtype=np.float64)
  lo, hi = np.percentile(x, [low, high])
  return np.clip((x - lo) / max(hi - lo, 1e-12), 0.0, 1.0).astype(np.float32)
