"""The one definition of an image's error against its truth: data range, centred error, MAE, PSNR.

Used by the jitted held-out crop metrics (``evaluation.crops``, ``eval_final.json``;
``xp=jax.numpy``), by ``flatai correct --reference`` (``correct.error_vs_reference``)
and by the evaluation report (``evaluation.quality.psnr``) — all NumPy callers use
``xp=numpy`` (the default) — so the three print the same PSNR for the same arrays.

PSNR, dB: ``10·log10(peak² / MSE)`` where

- ``peak`` = :func:`data_range` of the *truth*: its 99.9th minus its 0.1th
  percentile (linear interpolation), so a few hot pixels or star cores do not set
  it, and it does not depend on a pedestal or a unit: an affine map ``a·x + b``
  applied to both image and truth leaves the PSNR unchanged (the crop metrics,
  computed in normalised units, equal the linear-unit number);
- ``MSE`` is the mean square of the :func:`centred_error`, the difference minus
  its median: a constant pedestal is not identifiable without calibration
  frames, so it is not counted as an error.

Functions take arrays of any shape and reduce over ``axis`` (default: all
elements); masked callers pass the selected pixels. Pure array code, no JAX
import: correction, training and evaluation may all import it.
"""
from __future__ import annotations

import numpy as np

PEAK_QUANTILES = (0.001, 0.999)  # data range: 99.9th − 0.1th percentile of the truth
MIN_PEAK = 1e-12  # data range floor (a constant truth), image units
MIN_MSE = 1e-30  # MSE floor (a perfect image), image units²


def data_range(reference, axis=None, xp=np):
  """Peak of PSNR (and SSIM's ``L``): 99.9th − 0.1th percentile of ``reference`` over ``axis``.

  Returns: float array of ``reference``'s shape without ``axis`` (a scalar for
  ``axis=None``), same unit as ``reference``, at least ``MIN_PEAK``.
  """
  lo, hi = xp.quantile(reference, xp.asarray(PEAK_QUANTILES), axis=axis)
  return xp.maximum(hi - lo, MIN_PEAK)


def centred_error(image, reference, axis=None, xp=np):
  """``d − median(d)`` with ``d = image − reference``, the median over ``axis``; the inputs' shape."""
  d = image - reference
  return d - xp.median(d, axis=axis, keepdims=True)


def mae(image, reference, axis=None, xp=np):
  """Mean absolute :func:`centred_error` over ``axis``, in image units."""
  return xp.mean(xp.abs(centred_error(image, reference, axis, xp)), axis=axis)


def psnr(image, reference, axis=None, xp=np):
  """PSNR over ``axis``, dB: ``10·log10(data_range(reference)² / mean(centred_error²))``."""
  mse = xp.mean(centred_error(image, reference, axis, xp) ** 2, axis=axis)
  peak = data_range(reference, axis, xp)
  return 10.0 * xp.log10(peak ** 2 / xp.maximum(mse, MIN_MSE))


MAD_TO_SIGMA = 1.482602218505602  # 1 / Φ⁻¹(3/4): σ of a Gaussian per median absolute deviation


def robust_sigma(values, axis=None):
  """Robust standard deviation over ``axis``: ``1.4826 · median(|x − median(x)|)``, NaN ignored
  (NumPy). Equals ``astropy.stats.mad_std(values, axis, ignore_nan=True)``; stars, hot pixels
  and other outliers barely move it. ``(...)`` float64, the input's unit."""
  v = np.asarray(values, np.float64)
  centre = np.nanmedian(v, axis=axis, keepdims=True)
  return MAD_TO_SIGMA * np.nanmedian(np.abs(v - centre), axis=axis)


NOISE_CLIP = 4.0  # noise_sigma: differences beyond this many robust σ are not noise
_CLIPPED_STD = 0.99946  # std of a unit Gaussian clipped at ±NOISE_CLIP


def noise_sigma(plane: np.ndarray) -> float:
  """Pixel noise σ of a ``(H, W)`` plane, its unit: neighbouring-pixel differences along rows
  (they cancel stars' and gradients' smooth parts) over √2, as the RMS of the differences
  within ``NOISE_CLIP`` robust σ (:func:`robust_sigma`) of their median — robust to stars
  and hot pixels like the MAD, and unlike the MAD not moved by the quantisation of integer
  pixels (a smooth field added to a 16-bit frame moves its MAD by a few %)."""
  d = np.diff(plane.astype(np.float64), axis=1).ravel()
  d = d[np.isfinite(d)]
  centre, spread = np.median(d), robust_sigma(d)
  if spread <= 0.0 and d.size:  # over half the differences 0: quantised, nearly noiseless
    dev = np.abs(d - centre)
    spread = float(np.sqrt(np.mean(dev[dev <= np.percentile(dev, 99.0)] ** 2)))
  kept = d[np.abs(d - centre) <= NOISE_CLIP * max(spread, 1e-300)]
  if kept.size < 2:
    return float(spread / np.sqrt(2.0))
  return float(np.sqrt(np.mean((kept - centre) ** 2)) / _CLIPPED_STD / np.sqrt(2.0))
