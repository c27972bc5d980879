"""Non-linear (stretched) inputs: which stretch a frame carries, its inverse and its re-application.

The model corrects linear light (``observed = clean · F + G``). A display image (an 8-bit
PNG/JPEG, sRGB-encoded) or a frame stretched with a midtones transfer function (PixInsight's
and Siril's MTF) is first mapped back to linear, corrected there, and the corrected image is
stretched again the same way; F and G are written in linear units.

``--input_stretch``:

- ``auto``: 8-bit PNG/JPEG → ``srgb``; a floating-point frame whose values lie in [0, 1] with
  its median at a display level (≥ 0.05) is tested for a midtones stretch from its stars
  (:func:`estimate_midtones`) → ``mtf:M`` when they show one; everything else (integer FITS,
  XISF, 16-bit TIFF/PNG, frames without enough stars) → ``linear``;
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


MIN_STARS = 20          # stars needed to decide on a midtones stretch
STRETCHED_BELOW = 0.3   # an estimated midtones balance below this is a stretch; above, linear
CROP = 2048             # px: the central crop measured
DISPLAY_MEDIAN = 0.05   # a stretched frame's median sky sits at least this high in [0, 1]


def _star_size_trend(stamps: np.ndarray, m: float) -> float:
  """Slope of log(effective area) against log(peak) of background-subtracted star stamps after
  undoing ``mtf(m, ·)``: 0 in linear light, where every star is the same PSF times its flux;
  positive while a stretch is left (it flattens bright cores), negative when over-undone."""
  x = mtf(1.0 - m, stamps)
  k = stamps.shape[-1]
  c = k // 2
  yy, xx = np.mgrid[0:k, 0:k]
  r = np.hypot(yy - c, xx - c)
  sky = np.median(x[:, r >= c - 0.5], axis=1)
  peak = (x[:, c - 1:c + 2, c - 1:c + 2] - sky[:, None, None]).mean((1, 2))  # 3×3: less noise
  flux = ((x - sky[:, None, None]) * (r <= 3.0)).sum((1, 2))
  ok = (peak > 0) & (flux > 0)
  if ok.sum() < 3:
    return 0.0
  lp, la = np.log(peak[ok]), np.log(flux[ok] / peak[ok])
  return float(np.polyfit(lp, la, 1)[0])


def estimate_midtones(plane: np.ndarray) -> tuple[float | None, int]:
  """The midtones balance M of an MTF stretch, measured on the stars of a plane in [0, 1].

  In linear light every unsaturated star is the same PSF scaled by its flux, so its effective
  area (flux within 3 px over its peak) does not depend on its brightness; a midtones stretch
  flattens bright cores more than faint ones, so bright stars look larger. M is the balance
  whose inverse makes the area independent of the peak (bisection on logit M, 40 steps).

  Args:
    plane: ``(H, W)`` values in [0, 1]; its central ``CROP``² pixels are measured.
  Returns:
    ``(M, stars used)``; M = 0.5 (the identity) when the stars show no stretch; None with
    fewer than :data:`MIN_STARS` usable stars (isolated, peak below 0.98, not touching the
    border) or when no M in (1e-4, 0.5) makes them alike.
  """
  from flatai_jax.physics import star_detect
  plane = np.nan_to_num(np.asarray(plane, np.float64))
  h, w = plane.shape
  y0, x0 = max(0, (h - CROP) // 2), max(0, (w - CROP) // 2)
  plane = plane[y0:y0 + CROP, x0:x0 + CROP]      # the central crop holds stars enough
  k, c = 11, 5
  try:
    xy = star_detect.find_stars(plane, star_detect.sky_noise(plane), usable=plane < 0.98,
                                snr=8.0, max_stars=400, box=k, compact=False)
  except Exception:  # sep gives up on crowded or nebulous frames (deblending overflow)
    return None, 0
  stamps = []
  for x, y in np.rint(xy).astype(int):
    s = plane[y - c - 1:y + c + 2, x - c - 1:x + c + 2]
    dy, dx = np.unravel_index(np.argmax(s[1:-1, 1:-1]), (k, k))
    y, x = y + dy - c, x + dx - c       # centred on the brightest pixel
    stamp = plane[y - c:y + c + 1, x - c:x + c + 1]
    if stamp.shape == (k, k):
      stamps.append(stamp)
  if len(stamps) < MIN_STARS:
    return None, len(stamps)
  stamps = np.stack(stamps)
  from scipy.special import expit
  lo, hi = -9.0, 0.0     # logit M: from a very strong stretch to none (M = 0.5)
  f_lo, f_hi = _star_size_trend(stamps, expit(lo)), _star_size_trend(stamps, expit(hi))
  if f_hi <= 0:          # the stars are already alike: no stretch
    return 0.5, len(stamps)
  if f_lo >= 0:          # bright stars stay wider under any inverse: not a midtones stretch
    return None, len(stamps)
  for _ in range(40):
    mid = 0.5 * (lo + hi)
    if _star_size_trend(stamps, expit(mid)) < 0:
      lo = mid
    else:
      hi = mid
  return float(expit(0.5 * (lo + hi))), len(stamps)


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


def resolve(mode: str, image_format: str, source_dtype: str,
            image: np.ndarray | None = None) -> tuple[str, float | None, str | None]:
  """``(kind, M, the one line saying what was decided or None)`` for a file.

  Args:
    mode: ``--input_stretch`` (see module docstring).
    image_format, source_dtype: from ``ImageMeta`` (``'png'``, ``'uint8'`` …).
    image: the ``(H, W, C)`` values as read; ``auto`` tests a floating-point frame in [0, 1]
      for a midtones stretch on it (the mean of its channels).
  """
  kind, m = parse(mode)
  display = image_format in ("png", "jpeg") and np.dtype(source_dtype) == np.uint8
  if kind == "auto":
    if not display:
      return _auto_for_float(image, source_dtype)
    return "srgb", None, (f"input stretch: srgb (auto: an 8-bit {image_format.upper()} is a "
                          "display image): corrected in linear light, sRGB re-applied")
  if kind == "linear":
    return kind, None, ("input stretch: linear (--input_stretch=linear): an 8-bit display "
                        "image corrected as if linear" if display else None)
  what = "sRGB" if kind == "srgb" else f"MTF with midtones {m:g}"
  return kind, m, (f"input stretch: {kind} (--input_stretch={mode}): corrected in linear light, "
                   f"{what} re-applied")


def _auto_for_float(image: np.ndarray | None, source_dtype: str) -> tuple[str, float | None,
                                                                        str | None]:
  """``auto`` for everything but 8-bit display images: linear unless a float frame in [0, 1]
  with a display-level median shows a midtones stretch in its stars."""
  if image is None or np.dtype(source_dtype).kind != "f":
    return "linear", None, None
  finite = image[np.isfinite(image)]
  if finite.size == 0 or finite.min() < 0.0 or finite.max() > 1.0:
    return "linear", None, None
  if np.median(finite) < DISPLAY_MEDIAN:
    return "linear", None, None
  m, n = estimate_midtones(np.mean(image, axis=-1))
  if m is None:
    return "linear", None, (f"input stretch: linear (auto: the frame's level looks stretched but "
                            f"{n} usable stars cannot tell; --input_stretch=mtf:M if it is)")
  if m >= STRETCHED_BELOW:
    return "linear", None, None
  m = float(f"{m:.3g}")
  return "mtf", m, (f"input stretch: mtf:{m:g} (auto: bright stars are wider than faint ones as "
                    f"after a midtones stretch, measured on {n} stars): corrected in linear "
                    "light, the stretch re-applied")


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
