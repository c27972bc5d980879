"""Image-quality scores of a corrected frame against its known truth (NumPy, host side).

Every function takes linear ``(H, W, C)`` arrays. Used by ``evaluate`` for the
model and for the classical baselines alike, so they are scored the same way:

- :func:`psnr` (``flatai_jax.scores.psnr``: peak = the truth's 99.9th − 0.1th
  percentile, median difference removed — the number ``eval_final.json`` and
  ``flatai correct --reference`` print too), :func:`ssim` (Wang et al. 2004,
  Gaussian window σ = 1.5 px, K1 = 0.01, K2 = 0.03, ``L`` = :func:`data_range`;
  the same numbers as ``skimage.metrics.structural_similarity`` with
  ``gaussian_weights=True, use_sample_covariance=False``);
- :func:`robust_sigma`, :func:`noise_sigma`: the one robust σ (1.4826·MAD) and the
  pixel noise σ of a frame;
- :func:`affine_align`: a global gain and pedestal cannot be known without
  calibration frames, so each output is mapped by the least-squares ``a·x + b``
  onto the truth before it is scored;
- :func:`f_rms_pct`, :func:`g_rms_pct`: errors of the estimated fields;
- :func:`dust_depths`, :func:`dust_residual`: the dip of each dust shadow left in
  corrected/truth, and their one summary (over-correction counts as much as a dip left);
- :func:`corner_centre_pct`: flatness residual between the frame corners and its centre;
- :func:`empty_sky`, :func:`noise_gain`: where a frame holds no source light, and how much a
  method amplifies white noise there (issue 15: ≤ 1.5× in empty sky).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from flatai_jax import scores

SSIM_SIGMA = 1.5  # Gaussian window σ, px (Wang et al. 2004)
SSIM_TRUNCATE = 3.5  # window half-width in σ (11 × 11 px window, as skimage)
SSIM_K1, SSIM_K2 = 0.01, 0.03
robust_sigma = scores.robust_sigma  # the one robust σ (1.4826·MAD), shared with correction


noise_sigma = scores.noise_sigma  # the one pixel-noise σ, shared with correction


def valid_mask(observed: np.ndarray, saturation: float, grow: int = 2) -> np.ndarray:
  """``(H, W, C) bool``: finite pixels away from saturated star cores.

  Clipped cores cannot be recovered by any method, so every score skips them
  (and ``grow`` px around them).
  """
  sat = observed >= 0.98 * saturation
  if grow > 0 and sat.any():
    sat = ndimage.binary_dilation(sat, iterations=grow)
  return np.isfinite(observed) & ~sat


def _masked(a: np.ndarray, mask) -> np.ndarray:
  """``a``'s pixels under ``mask`` (all when None), ``(n,) float64``."""
  return (a[mask] if mask is not None else a.ravel()).astype(np.float64)


def data_range(reference: np.ndarray, mask=None) -> float:
  """Peak-to-floor of the truth over ``mask``: ``scores.data_range`` (99.9th − 0.1th
  percentile; PSNR's peak and SSIM's ``L``)."""
  return float(scores.data_range(_masked(reference, mask)))


def block_means(x: np.ndarray, mask: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
  """Means of ``block × block`` cells over masked pixels, ``(cells,)``, and the cells' pixel count."""
  h, w = x.shape[:2]
  hb, wb = h // block, w // block
  cut = lambda a: a[:hb * block, :wb * block].reshape(hb, block, wb, block, -1)
  m = cut(mask.astype(np.float64))
  n = m.sum(axis=(1, 3))
  return (cut(x.astype(np.float64)) * m).sum(axis=(1, 3)) / np.maximum(n, 1), n


def affine_fit(image: np.ndarray, reference: np.ndarray, mask=None,
               block: int = 8) -> tuple[float, float]:
  """``(a, b)``: the least-squares ``a·image + b ≈ reference`` over means of ``block × block``
  cells (over ``mask``), so neither noise nor a remaining blur biases the gain (regression
  dilution)."""
  m = np.isfinite(image) if mask is None else mask
  xb, n = block_means(image, m, block)
  yb, _ = block_means(reference, m, block)
  full = n >= 0.5 * block * block
  xv, yv = xb[full], yb[full]
  xm, ym = xv.mean(), yv.mean()
  var = np.mean((xv - xm) ** 2)
  a = np.mean((xv - xm) * (yv - ym)) / var if var > 0 else 1.0
  return float(a), float(ym - a * xm)


def affine_align(image: np.ndarray, reference: np.ndarray, mask=None, block: int = 8) -> np.ndarray:
  """``a·image + b`` with ``(a, b)`` from :func:`affine_fit`, ``float64``.

  A per-frame gain and pedestal are not identifiable without calibration
  frames; aligning removes them before any score.
  """
  a, b = affine_fit(image, reference, mask, block)
  return a * image.astype(np.float64) + b


def psnr(image: np.ndarray, reference: np.ndarray, mask=None) -> float:
  """Peak signal-to-noise ratio over ``mask``, dB: ``scores.psnr`` (peak = :func:`data_range`
  of the truth, MSE of the difference minus its median)."""
  return float(scores.psnr(_masked(image, mask), _masked(reference, mask)))


def ssim_map(image: np.ndarray, reference: np.ndarray, peak: float) -> np.ndarray:
  """Per-pixel SSIM, ``(H, W, C) float64``: Gaussian-weighted local means, variances and
  covariance (σ = 1.5 px, reflect borders), ``C1 = (K1·peak)²``, ``C2 = (K2·peak)²``."""
  x = image.astype(np.float64)
  y = reference.astype(np.float64)
  blur = lambda a: np.stack([ndimage.gaussian_filter(a[..., c], SSIM_SIGMA, mode="reflect",
                                                     truncate=SSIM_TRUNCATE)
                             for c in range(a.shape[-1])], axis=-1)
  mx, my = blur(x), blur(y)
  vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
  c1, c2 = (SSIM_K1 * peak) ** 2, (SSIM_K2 * peak) ** 2
  return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))


def ssim(image: np.ndarray, reference: np.ndarray, peak: float, mask=None) -> float:
  """Mean SSIM over ``mask`` (default: all pixels but the 5-px window border, as skimage)."""
  s = ssim_map(image, reference, peak)
  if mask is None:
    p = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
    return float(s[p:-p, p:-p].mean())
  return float(s[mask].mean())


def f_rms_pct(f_est: np.ndarray, f_true: np.ndarray, mask=None) -> float:
  """RMS relative error of F, %: ``rms(r / median(r) − 1)·100`` with ``r = F_est / F_true``
  (the overall scale of a flat is arbitrary, so it is divided out)."""
  r = f_est.astype(np.float64) / f_true
  r = r[mask] if mask is not None else r.ravel()
  return float(100.0 * np.sqrt(np.mean((r / np.median(r) - 1.0) ** 2)))


def g_rms_pct(g_est: np.ndarray, g_true: np.ndarray, sky: float, mask=None) -> float:
  """RMS error of G after removing its median (a pedestal), in % of the sky level ``sky``."""
  d = g_est.astype(np.float64) - g_true
  d = d[mask] if mask is not None else d.ravel()
  return float(100.0 * np.sqrt(np.mean((d - np.median(d)) ** 2)) / max(sky, 1e-12))


def away_from_sources(reference: np.ndarray, grow: int, size: int = 15,
                      nsigma: float = 5.0) -> np.ndarray:
  """``(H, W, C)`` bool: pixels at least ``grow`` px from any compact source of the truth.

  A source is where the truth exceeds its ``size``-px median background by more
  than ``nsigma`` robust σ of that excess. Blur moves a star's flux by up to a
  PSF radius, so ratios of blurred to sharp images are only meaningful away
  from sources (e.g. the dust dip of a psf/combined correction).
  """
  plane = reference.mean(-1).astype(np.float64)
  excess = plane - ndimage.median_filter(plane, size=size, mode="reflect")
  sigma = robust_sigma(excess)
  near = ndimage.binary_dilation(excess > nsigma * max(sigma, 1e-12), iterations=max(grow, 1))
  return np.repeat(~near[..., None], reference.shape[-1], axis=-1)


def dust_depths(corrected: np.ndarray, reference: np.ndarray, dust: np.ndarray,
                mask=None, threshold: float = 0.002, ring_px: int = 4) -> list[tuple[float, float]]:
  """``(remaining, true)`` dip depth of each dust shadow, fractions.

  Args:
    corrected, reference: ``(H, W, C)`` aligned output and truth.
    dust: ``(H, W, C)`` the true dust shadows alone (1 = no dust).
    mask: pixels to use.
    threshold: a shadow is where ``1 − dust > threshold``.
    ring_px: width of the comparison ring around each shadow, px.
  Returns:
    per shadow, the dip of ``corrected − reference`` inside the shadow against the
    ring around it, over the reference's mean inside (a smooth additive residual
    cancels between the two, a left-over dip ``d`` of F gives ``d``); and the true
    dip ``1 − dust_in / dust_ring`` of the dust map.
  """
  m = np.ones(dust.shape[:2], bool) if mask is None else mask.all(-1)
  shadow = (1.0 - dust.mean(-1)) > threshold
  labels, n = ndimage.label(shadow)
  out = []
  for i in range(1, n + 1):
    blob = labels == i
    ring = ndimage.binary_dilation(blob, iterations=ring_px) & ~shadow & m
    blob = blob & m
    if blob.sum() < 4 or ring.sum() < 4:
      continue
    diff = lambda sel: float((corrected[sel] - reference[sel]).mean())
    remaining = (diff(ring) - diff(blob)) / max(float(reference[blob].mean()), 1e-30)
    out.append((remaining, 1.0 - dust[blob].mean() / dust[ring].mean()))
  return out


DUST_MIN_DEPTH = 0.003  # shadows shallower than 0.3 % (the range: 0.3–10 %) are noise here


def dust_residual(depths) -> float | None:
  """The one summary of :func:`dust_depths`: ``Σ|remaining| / Σ true`` over the shadows at
  least ``DUST_MIN_DEPTH`` deep (None without any). 1 = the dip left as it was, 0 = removed;
  a shadow over-corrected into a bump of k times its depth counts k, as a dip left would (a
  signed sum lets bumps cancel dips: a method that over-corrects looked better than one that
  removed nothing).

  Args:
    depths: ``(remaining, true)`` pairs, e.g. from several frames' :func:`dust_depths`.
  """
  d = np.asarray(depths, np.float64).reshape(-1, 2)
  d = d[d[:, 1] >= DUST_MIN_DEPTH]
  return float(np.abs(d[:, 0]).sum() / d[:, 1].sum()) if len(d) else None


def corner_centre_pct(corrected: np.ndarray, reference: np.ndarray, mask=None,
                      box: float = 0.125) -> float:
  """Flatness residual, %: ``100·(mean corner ratio / centre ratio − 1)`` of ``Σcorrected/Σreference``
  in the four corner boxes and the centre box, each ``box`` of the frame side (0 = flat;
  an uncorrected vignetted frame gives about its corner/centre − 1)."""
  h, w = corrected.shape[:2]
  bh, bw = max(int(h * box), 2), max(int(w * box), 2)
  m = np.ones(corrected.shape, bool) if mask is None else mask

  def ratio(ys, xs):
    sel = m[ys, xs]
    return corrected[ys, xs][sel].sum() / max(reference[ys, xs][sel].sum(), 1e-30)

  cy, cx = (h - bh) // 2, (w - bw) // 2
  centre = ratio(slice(cy, cy + bh), slice(cx, cx + bw))
  corners = [ratio(ys, xs) for ys in (slice(0, bh), slice(h - bh, h))
             for xs in (slice(0, bw), slice(w - bw, w))]
  return float(100.0 * (np.mean(corners) / centre - 1.0))


EMPTY_SKY_LEVEL = 0.5  # empty sky: every noise-free source frame below this many noise σ


def empty_sky(light, noise: float, level: float = EMPTY_SKY_LEVEL) -> np.ndarray:
  """``(H, W) bool``: the empty sky, where no source puts light above ``level`` noise σ.

  Args:
    light: sequence of ``(H, W)`` noise-free source light frames, sky level excluded, e.g.
      the stars through the aberrated PSF field and through the target PSF (an aberrated
      star's flares reach far beyond a few FWHM of its position, so a mask of grown star
      positions is not empty).
    noise: pixel noise σ, the frames' unit.
    level: threshold in σ.
  """
  return np.all([np.asarray(f) < level * noise for f in light], axis=0)


def noise_gain(out: np.ndarray, out_again: np.ndarray, image: np.ndarray,
               image_again: np.ndarray, mask=None) -> float:
  """White-noise gain of a method: ``σ(out_again − out) / σ(image_again − image)`` over
  ``mask`` (default all pixels), ``out`` the method's output for ``image`` and ``out_again``
  for ``image_again`` = ``image`` plus an independent noise draw. 1 = noise passed as it
  is; it holds for a non-linear method (RL) too, and counts nothing of the sources that both
  frames share."""
  d_out = _masked(np.asarray(out_again) - np.asarray(out), mask)
  d_in = _masked(np.asarray(image_again) - np.asarray(image), mask)
  return float(np.std(d_out) / np.std(d_in))
