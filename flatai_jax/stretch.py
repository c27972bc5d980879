"""Non-linear (stretched) inputs: which stretch a frame carries, its inverse and its re-application.

The model corrects linear light (``observed = clean · F + G``). A display image (an 8-bit
PNG/JPEG, sRGB-encoded) or a frame stretched with a midtones transfer function (PixInsight's
and Siril's MTF) is first mapped back to linear, corrected there, and the corrected image is
stretched again the same way; F and G are written in linear units.

``--input_stretch``:

- ``auto``: 8-bit PNG/JPEG → ``srgb``; everything else (FITS, XISF, 16-bit and float
  TIFF/PNG) → ``linear`` (as before);
- ``linear``: no change;
- ``srgb``: the sRGB transfer curve (IEC 61966-2-1), inverted exactly;
- ``mtf:M``: the midtones transfer function with midtones balance M in (0, 1),
  ``mtf(M, x) = (M − 1)·x / ((2M − 1)·x − M)``, whose inverse is ``mtf(1 − M, ·)``.
"""
from __future__ import annotations

import numpy as np

KINDS = ("auto", "linear", "srgb", "mtf")


def srgb_to_linear(y: np.ndarray) -> np.ndarray:
  """sRGB-encoded values (0..1) → linear light; the linear toe extends below 0."""
  y = np.asarray(y, np.float64)
  return np.where(y <= 0.04045, y / 12.92, ((np.maximum(y, 0.04045) + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
  """Linear light → sRGB-encoded values; inverse of :func:`srgb_to_linear`."""
  x = np.asarray(x, np.float64)
  return np.where(x <= 0.0031308, 12.92 * x,
                  1.055 * np.maximum(x, 0.0031308) ** (1 / 2.4) - 0.055)


def mtf(m: float, x: np.ndarray) -> np.ndarray:
  """Midtones transfer function: 0 → 0, ``m`` → 0.5, 1 → 1; ``mtf(1 − m, ·)`` is its inverse.
  Inputs are clipped to [0, 1] (the curve has a pole just outside)."""
  x = np.clip(np.asarray(x, np.float64), 0.0, 1.0)
  return (m - 1.0) * x / ((2.0 * m - 1.0) * x - m)


def parse(mode: str) -> tuple[str, float | None]:
  """``'mtf:0.1'`` → ``('mtf', 0.1)``; ``'srgb'`` → ``('srgb', None)``; raises ValueError."""
  kind, _, value = mode.partition(":")
  if kind not in KINDS or (kind == "mtf") != bool(value):
    raise ValueError(f"--input_stretch={mode} must be auto, linear, srgb or mtf:M")
  if kind != "mtf":
    return kind, None
  try:
    m = float(value)
  except ValueError:
    raise ValueError(f"--input_stretch={mode}: M must be a number in (0, 1)") from None
  if not 0.0 < m < 1.0:
    raise ValueError(f"--input_stretch={mode}: M must be in (0, 1)")
  return kind, m


def resolve(mode: str, image_format: str, source_dtype: str) -> tuple[str, float | None,
                                                                      str | None]:
  """``(kind, M, the one line saying what was decided or None)`` for a file.

  Args:
    mode: ``--input_stretch`` (see module docstring).
    image_format, source_dtype: from ``ImageMeta`` (``'png'``, ``'uint8'`` …).
  """
  kind, m = parse(mode)
  display = image_format in ("png", "jpeg") and np.dtype(source_dtype) == np.uint8
  if kind == "auto":
    if not display:
      return "linear", None, None
    return "srgb", None, (f"input stretch: srgb (auto: an 8-bit {image_format.upper()} is a "
                          "display image): corrected in linear light, sRGB re-applied")
  if kind == "linear":
    return kind, None, ("input stretch: linear (--input_stretch=linear): an 8-bit display "
                        "image corrected as if linear" if display else None)
  what = "sRGB" if kind == "srgb" else f"MTF with midtones {m:g}"
  return kind, m, (f"input stretch: {kind} (--input_stretch={mode}): corrected in linear light, "
                   f"{what} re-applied")


def to_linear(image: np.ndarray, kind: str, m: float | None = None) -> np.ndarray:
  """Stretched ``(H, W, C)`` values in [0, 1] → linear ``float32`` (NaN stays NaN)."""
  if kind == "linear":
    return image
  out = srgb_to_linear(image) if kind == "srgb" else mtf(1.0 - m, image)
  return np.where(np.isnan(image), np.nan, out).astype(np.float32)


def from_linear(image: np.ndarray, kind: str, m: float | None = None) -> np.ndarray:
  """Inverse of :func:`to_linear`: linear ``(H, W, C)`` → the input's stretch, ``float32``."""
  if kind == "linear":
    return image
  out = linear_to_srgb(image) if kind == "srgb" else mtf(m, image)
  return np.where(np.isnan(image), np.nan, out).astype(np.float32)
