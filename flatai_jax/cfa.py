"""Colour-filter-array (Bayer) raw frames: the pattern, the four sub-planes, and their correction
with one shared flat field.

A flat field is a property of the optics and the pixels, common to the colours up to a gain, so
the four sub-planes of a 2 × 2 Bayer mosaic share one F. They are corrected together:

1. the mosaic is split into its four ``(⌈H/2⌉, ⌈W/2⌉)`` sub-planes (odd sides reflect-padded,
   which keeps every pixel's colour);
2. each sub-plane is divided by its median (the per-colour gain) and the four are averaged into
   one plane, which the model corrects as a mono frame: F and G of that plane;
3. per colour k, ``plane_k ≈ a_k · (plane − G) + b_k · G`` is fitted on block medians (least
   squares; ``plane − G`` is sky and objects times F), so G gets a colour (b_k) while F stays
   shared; ``corrected_k = (plane_k − b_k · G) / F``;
4. the sub-planes go back into the mosaic, F and the confidence are the shared fields at every
   site of a 2 × 2 cell (half a pixel apart between colours; F changes by < 0.1 % over that).

The output is still a mosaic with the same pattern, so it can replace master-flat division before
debayering. A psf-only model corrects each sub-plane on its own.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from flatai_jax import working_grid

PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")
MODES = ("auto", "none") + PATTERNS  # --cfa
FIT_GRID = (24, 32)  # block-median grid of the per-colour fit, cells (gh ≤ gw)


def effective_pattern(pattern: str, x_offset: int = 0, y_offset: int = 0) -> str:
  """The 2 × 2 pattern seen from array pixel (0, 0): pixel ``(y, x)`` has colour
  ``pattern[2·((y + y_offset) % 2) + (x + x_offset) % 2]`` (FITS ``XBAYROFF``/``YBAYROFF``)."""
  return "".join(pattern[2 * ((r + y_offset) % 2) + (c + x_offset) % 2]
                 for r in (0, 1) for c in (0, 1))


def resolve(mode: str, meta_cfa, shape) -> tuple[str | None, str | None]:
  """``(pattern at pixel (0, 0) or None, the one line saying what was decided or None)``.

  Args:
    mode: one of :data:`MODES` (``--cfa``).
    meta_cfa: ``ImageMeta.cfa`` (``(pattern, x offset, y offset)`` or None).
    shape: the image's ``(H, W, C)``.
  Raises:
    ValueError: an unsupported pattern, or a pattern forced on a colour image.
  """
  if mode not in MODES:
    raise ValueError(f"--cfa={mode} must be one of {'|'.join(MODES)}")
  stated = None
  if meta_cfa is not None:
    name, dx, dy = meta_cfa
    stated = f"{name} (x offset {dx}, y offset {dy})"
  if mode == "none":
    return None, (f"CFA {stated} in the file ignored (--cfa=none): corrected as mono"
                  if stated else None)
  if mode == "auto":
    if meta_cfa is None:
      return None, None
    name, dx, dy = meta_cfa
    if name not in PATTERNS:
      raise ValueError(f"CFA pattern {name!r} is not a 2x2 Bayer pattern ({', '.join(PATTERNS)});"
                       " use --cfa=none to correct it as mono")
    pattern, source = effective_pattern(name, dx, dy), f"detected {stated}"
  else:
    pattern, source = mode, f"--cfa={mode}" + (f", the file states {stated}" if stated else "")
  if shape[-1] != 1 or min(shape[:2]) < 2:
    raise ValueError(f"a CFA mosaic must be one channel and at least 2x2 px; shape {tuple(shape)}")
  return pattern, (f"CFA {pattern} at pixel (0, 0) ({source}): corrected as 4 sub-planes with "
                   "one shared F and G per colour")


def split(mosaic: np.ndarray) -> np.ndarray:
  """``(H, W)`` mosaic → ``(4, ⌈H/2⌉, ⌈W/2⌉)`` sub-planes, index ``2·dy + dx`` for the sites
  ``(dy, dx)`` of a 2 × 2 cell; odd sides are reflect-padded (same colour)."""
  h, w = mosaic.shape
  padded = np.pad(mosaic, ((0, h % 2), (0, w % 2)), mode="reflect")
  return np.stack([padded[dy::2, dx::2] for dy in (0, 1) for dx in (0, 1)])


def merge(planes: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  """Inverse of :func:`split`: ``(4, h, w)`` → the ``(H, W)`` mosaic."""
  _, h, w = planes.shape
  out = np.empty((2 * h, 2 * w), planes.dtype)
  for k in range(4):
    out[k // 2::2, k % 2::2] = planes[k]
  return out[:hw[0], :hw[1]]


def colour_fit(plane: np.ndarray, signal: np.ndarray, g_field: np.ndarray) -> tuple[float, float]:
  """``(a, b)`` of ``plane ≈ a · signal + b · G`` by least squares on block medians (stars and
  NaN rejected); ``signal`` is the mono plane less its G (sky and objects times F: a nebula
  that fills the frame is in it, so it does not pull ``b``); ``b = 0`` when G is zero."""
  h, w = plane.shape
  geo = working_grid.geometry((h, w), (min(FIT_GRID[0], min(h, w)), min(FIT_GRID[1], max(h, w))))
  y, f, g = (working_grid.bin_frame(a, geo).ravel().astype(np.float64)
             for a in (plane, signal, g_field))
  design = np.stack([f, g], -1)
  (a, b), *_ = np.linalg.lstsq(design, y, rcond=1e-6)
  return float(a), float(b)


def luminance(mosaic: np.ndarray, gains=None) -> tuple[np.ndarray, np.ndarray]:
  """Steps 1–2 of the module docstring: the four sub-planes and the gain-normalised mean plane
  the model corrects.

  Args:
    mosaic: ``(H, W, 1) float32`` linear raw frame; NaN allowed.
    gains: the four sub-planes' gains (default: their medians, :func:`colour_gains`); a session
      passes its first frame's to every frame, so that its frames keep their relative levels.
  Returns:
    planes ``(4, ⌈H/2⌉, ⌈W/2⌉)`` and the mono plane ``(⌈H/2⌉, ⌈W/2⌉, 1)``.
  Raises:
    ValueError: a sub-plane's median is not positive (not a raw mosaic).
  """
  planes = split(mosaic[..., 0])
  gains = colour_gains(planes) if gains is None else np.asarray(gains)
  return planes, (planes / gains[:, None, None]).mean(0)[..., None]


def colour_gains(planes: np.ndarray) -> np.ndarray:
  """The ``(4,)`` medians of :func:`split` sub-planes, the colours' gains.

  Raises:
    ValueError: one is not positive (not a raw mosaic).
  """
  gains = np.nanmedian(planes, axis=(1, 2))
  if not np.all(np.isfinite(gains)) or np.any(gains <= 0):
    raise ValueError(f"CFA sub-plane medians {np.round(gains, 6).tolist()} must be positive: "
                     "is this a raw mosaic?")
  return gains


def from_luminance(planes: np.ndarray, lum, hw, correct_fn=None):
  """Steps 3–4 of the module docstring: the mosaic's correction from its mono plane's.

  Args:
    planes: ``(4, h, w)`` from :func:`luminance`; hw: the mosaic's ``(H, W)``.
    lum: the ``Correction`` of the mono plane (``F`` None for a psf-only model, which then
      corrects each colour with ``correct_fn`` on its own).
  Returns:
    ``lum``'s type, every field an ``(H, W, 1)`` mosaic.
  """
  to_mosaic = lambda stack: merge(np.asarray(stack, np.float32), hw)[..., None]
  if lum.F is None:  # psf-only model: each colour on its own
    parts = [correct_fn(p[..., None]).corrected[..., 0] for p in planes]
    return dataclasses.replace(lum, corrected=to_mosaic(parts))
  f_field, g_field = lum.F[..., 0], lum.G[..., 0]
  signal = np.nan_to_num(lum.corrected[..., 0] * f_field)  # the mono plane less its G
  g_colour = [colour_fit(p, signal, g_field)[1] * g_field for p in planes]
  corrected = [(p - g) / f_field for p, g in zip(planes, g_colour)]
  confidence = None if lum.confidence is None else to_mosaic([lum.confidence[..., 0]] * 4)
  return dataclasses.replace(lum, corrected=to_mosaic(corrected), F=to_mosaic([f_field] * 4),
                             G=to_mosaic(g_colour), confidence=confidence)


def correct_mosaic(correct_fn, mosaic: np.ndarray):
  """Corrects a Bayer mosaic in CFA space (see module docstring).

  Args:
    correct_fn: ``image (h, w, 1) -> Correction`` (``Corrector.correct`` with its settings).
    mosaic: ``(H, W, 1) float32`` linear raw frame; NaN allowed (stays NaN).
  Returns:
    the ``Correction`` of ``correct_fn``'s type, every field an ``(H, W, 1)`` mosaic.
  """
  planes, mono = luminance(mosaic)
  return from_luminance(planes, correct_fn(mono), mosaic.shape[:2], correct_fn)
