"""Star measurements for the psf/combined evaluation: detection (``physics.star_detect``, with
``sep``), a per-star elliptical Moffat fit (FWHM, ellipticity), aperture flux.

Stars are found once on the truth frame (isolated, unsaturated, well above the
noise) and then measured at those positions on every image to compare
(corrected, uncorrected, baselines, truth), so each image is scored on the same stars.
"""
from __future__ import annotations

import numpy as np
from scipy import optimize

from flatai_jax.physics import geometry, star_detect

CENTRE_RADIUS = 0.4  # stars within this field radius (0 centre, 1 corner) are "centre"
CORNER_RADIUS = 0.7  # stars beyond it are "corner"

find_stars = star_detect.find_stars  # the one detection, shared with the PSF-field fit
# the one aperture flux and halo measure, shared with the correction's guard (correct_psf.harm)
aperture_flux = star_detect.aperture_flux
ringing = star_detect.ringing
field_radius_px = geometry.field_radius_px


def moffat(params, dx, dy):
  """Elliptical Moffat ``bg + A (1 + (u/a1)² + (v/a2)²)^(−β)``, ``u, v`` rotated by θ.

  ``params = (A, x0, y0, log a1, log a2, θ, log(β − 1), bg)``.
  """
  amp, x0, y0, la1, la2, th, lb, bg = params
  c, s = np.cos(th), np.sin(th)
  u = c * (dx - x0) + s * (dy - y0)
  v = -s * (dx - x0) + c * (dy - y0)
  q = (u * np.exp(-la1)) ** 2 + (v * np.exp(-la2)) ** 2
  return bg + amp * (1.0 + q) ** (-(1.0 + np.exp(lb)))


def fit_star(cutout: np.ndarray, x0: float, y0: float) -> tuple[float, float]:
  """FWHM (px, geometric mean of the two axes) and ellipticity ``1 − b/a`` of one star.

  Args:
    cutout: ``(k, k)`` background-subtracted pixels.
    x0, y0: starting centre within the cutout, px.
  Returns:
    ``(fwhm, ellipticity)``; NaN when the fit fails.
  """
  k = cutout.shape[0]
  dy, dx = np.mgrid[0:k, 0:k].astype(np.float64)
  peak = float(cutout.max())
  if not np.isfinite(peak) or peak <= 0:
    return np.nan, np.nan
  start = np.array([peak, x0, y0, np.log(1.5), np.log(1.5), 0.0, np.log(2.0), 0.0])
  lo = [0.0, x0 - 3, y0 - 3, np.log(0.2), np.log(0.2), -np.pi, np.log(0.2), -peak]
  hi = [10 * peak, x0 + 3, y0 + 3, np.log(k), np.log(k), np.pi, np.log(60.0), peak]
  try:
    res = optimize.least_squares(lambda p: (moffat(p, dx, dy) - cutout).ravel(), start,
                                 bounds=(lo, hi), x_scale="jac", max_nfev=200)
  except (ValueError, np.linalg.LinAlgError):
    return np.nan, np.nan
  _, _, _, la1, la2, _, lb, _ = res.x
  beta = 1.0 + np.exp(lb)
  a1, a2 = np.exp(la1), np.exp(la2)
  fwhm = 2.0 * np.sqrt(a1 * a2) * np.sqrt(2.0 ** (1.0 / beta) - 1.0)
  return float(fwhm), float(1.0 - min(a1, a2) / max(a1, a2))


def measure(plane: np.ndarray, xy: np.ndarray, box: int = 15, aperture: float = 6.0) -> dict:
  """FWHM, ellipticity and aperture flux of the stars at ``xy`` on one plane.

  Args:
    plane: ``(H, W)`` linear image (background is removed with sep first).
    xy: ``(n, 2)`` positions from :func:`find_stars`.
    box: fit box side, px (odd).
    aperture: aperture radius, px; flux is background-subtracted with a local annulus.
  Returns:
    dict of ``(n,) float64``: ``fwhm`` (px), ``ellipticity``, ``flux``.
  """
  data, _ = star_detect.background(plane)
  half = box // 2
  fwhm, ell = np.full(len(xy), np.nan), np.full(len(xy), np.nan)
  for i, (x, y) in enumerate(xy):
    xi, yi = int(round(x)), int(round(y))
    cut = data[yi - half:yi + half + 1, xi - half:xi + half + 1]
    fwhm[i], ell[i] = fit_star(cut, x - xi + half, y - yi + half)
  return {"fwhm": fwhm, "ellipticity": ell, "flux": aperture_flux(data, xy, aperture)}


def summarize(table: dict, reference: dict, radius: np.ndarray, min_stars: int = 3) -> dict:
  """Star metrics of one image over pooled stars.

  Returns:
    ``fwhm_px`` median FWHM; ``fwhm_ratio`` median corner FWHM / median centre
    FWHM (1 = uniform); ``ellipticity`` median ``1 − b/a``; ``flux_ratio``
    median measured / true aperture flux; ``stars`` count used. NaN where too
    few stars fit.
  """
  ok = np.isfinite(table["fwhm"]) & (table["fwhm"] > 0.5)
  med = lambda v: float(np.median(v)) if v.size >= min_stars else float("nan")
  centre, corner = ok & (radius < CENTRE_RADIUS), ok & (radius > CORNER_RADIUS)
  ratio = table["flux"] / np.where(reference["flux"] > 0, reference["flux"], np.nan)
  good_flux = np.isfinite(ratio)
  return {"fwhm_px": med(table["fwhm"][ok]),
          "fwhm_ratio": med(table["fwhm"][corner]) / med(table["fwhm"][centre]),
          "ellipticity": med(table["ellipticity"][ok]),
          "flux_ratio": med(ratio[good_flux]),
          "stars": int(ok.sum())}


ZONE_CENTRE, ZONE_CORNER = 0.3, 0.7  # aberration zones (issue 15): field radius < 0.3, > 0.7
MEASURE_BOX, MEASURE_APERTURE = 25, 10.0  # px: fit box and flux aperture of aberrated stars


def zones(xy: np.ndarray, hw) -> dict:
  """``(n,) bool`` masks of issue 15's zones for ``(n, 2)`` (x, y) star positions on a frame
  of ``hw`` px: ``centre`` (field radius < ``ZONE_CENTRE``), ``corner`` (> ``ZONE_CORNER``)
  and ``all``."""
  radius = field_radius_px(xy, hw)
  return {"centre": radius < ZONE_CENTRE, "corner": radius > ZONE_CORNER,
          "all": np.ones(len(xy), bool)}


def zone_metrics(image: np.ndarray, xy: np.ndarray, reference: np.ndarray, masks: dict,
                 noise: float) -> dict:
  """Star metrics of one image per zone, against the same stars in the truth.

  Args:
    image, reference: ``(H, W)`` linear frames (the truth: the stars through the target PSF).
    xy: ``(n, 2)`` star positions, px, at least ``MEASURE_BOX // 2`` and 12 px (``ringing``)
      inside the border.
    masks: zone name → ``(n,) bool`` (:func:`zones`).
    noise: pixel noise σ, the frames' unit.
  Returns:
    zone → ``fwhm_px`` median FWHM (:func:`measure`, elliptical Moffat, ``MEASURE_BOX`` px),
    ``ellipticity`` median ``1 − b/a``, ``flux_ratio`` median aperture flux image / reference
    (``MEASURE_APERTURE`` px radius), ``ringing_sigma`` the lowest star's :func:`ringing`
    (noise σ; ≲ −3: dark halos), ``stars`` count; NaN for a zone without a fitted star.
  """
  m = measure(image, xy, box=MEASURE_BOX, aperture=MEASURE_APERTURE)
  ref = measure(reference, xy, box=MEASURE_BOX, aperture=MEASURE_APERTURE)
  ratio = m["flux"] / np.where(ref["flux"] > 0, ref["flux"], np.nan)
  ring = ringing(image, xy, noise)
  med = lambda v: float(np.nanmedian(v)) if np.isfinite(v).any() else float("nan")
  out = {}
  for name, z in masks.items():
    out[name] = {"fwhm_px": med(m["fwhm"][z]), "ellipticity": med(m["ellipticity"][z]),
                 "flux_ratio": med(ratio[z]),
                 "ringing_sigma": float(np.nanmin(ring[z])) if np.isfinite(ring[z]).any()
                 else float("nan"),
                 "stars": int(np.isfinite(m["fwhm"][z]).sum())}
  return out
