"""Classical flat / background corrections without calibration frames (NumPy/SciPy), the baselines
that ``flatai evaluate`` scores beside the model.

Like Siril's background extraction: the frame is cut into a grid of boxes; each
box's background is a sigma-clipped median (stars rejected); boxes that disagree
with the fitted surface (nebulae, bright stars) are rejected and the surface is
refitted. The surface is a polynomial of total degree 2–4 in the sensor
coordinates, or a smoothed thin-plate-spline RBF through the samples. Removed by
subtraction (additive, a gradient ``G``) or division (multiplicative, a flat
``F`` normalised to median 1). A third estimate takes a large median filter of
the frame itself as ``F``. GraXpert's classical background extraction joins them
when it is installed (``graxpert_sub`` / ``graxpert_div``, see ``graxpert.py``).

Each method maps an ``(H, W, C) float32`` linear frame to a dict of
``corrected``, ``F`` and ``G`` (each ``(H, W, C) float32``, linear; ``F`` = 1 or
``G`` = 0 where the method does not estimate it). Channels are corrected on their own.
"""
from __future__ import annotations

import numpy as np
from astropy.stats import sigma_clipped_stats
from scipy import interpolate, ndimage

from flatai_jax.evaluation.quality import robust_sigma


def box_samples(plane: np.ndarray, grid: int = 16, sigma: float = 3.0, iters: int = 3):
  """Background samples of a ``(H, W)`` plane: sigma-clipped box medians.

  Args:
    plane: ``(H, W)`` linear.
    grid: boxes along the shorter side (square boxes).
    sigma: clipping threshold in robust σ (``quality.robust_sigma``).
    iters: clipping iterations.
  Returns:
    ``x, y`` box centres in [-1, 1] sensor coordinates and ``values`` (each ``(n,)``).
  """
  h, w = plane.shape
  size = max(min(h, w) // grid, 2)
  ny, nx = h // size, w // size
  oy, ox = (h - ny * size) // 2, (w - nx * size) // 2
  boxes = plane[oy:oy + ny * size, ox:ox + nx * size].astype(np.float64)
  boxes = boxes.reshape(ny, size, nx, size).transpose(0, 2, 1, 3).reshape(ny * nx, -1)
  _, values, _ = sigma_clipped_stats(np.ma.masked_invalid(boxes), axis=1, sigma=sigma,
                                     maxiters=iters, stdfunc=robust_sigma)
  values = np.ma.filled(np.ma.asarray(values, np.float64), np.nan)
  cy = oy + (np.arange(ny) + 0.5) * size
  cx = ox + (np.arange(nx) + 0.5) * size
  yy, xx = np.meshgrid(cy, cx, indexing="ij")
  ok = np.isfinite(values)
  return (_to_unit(xx.ravel(), w)[ok], _to_unit(yy.ravel(), h)[ok], values[ok])


def _to_unit(pixel_centre, size):
  """Pixel coordinate (centre of pixel i at i + 0.5) → [-1, 1]."""
  return 2.0 * pixel_centre / size - 1.0


def _pixel_grid(h, w):
  y = _to_unit(np.arange(h) + 0.5, h)
  x = _to_unit(np.arange(w) + 0.5, w)
  return np.meshgrid(x, y)


def _powers(degree):
  return [(i, j) for i in range(degree + 1) for j in range(degree + 1 - i)]


def _poly_terms(x, y, degree):
  return np.stack([x ** i * y ** j for i, j in _powers(degree)], -1)


def _poly_eval(coef, x, y, degree):
  """``Σ coef_k x^i y^j`` without materialising the ``(..., terms)`` design matrix."""
  out = np.zeros(np.broadcast(x, y).shape)
  for c, (i, j) in zip(coef, _powers(degree)):
    out += c * x ** i * y ** j
  return out


def _robust(fit, x, y, v, sigma=2.5, iters=3):
  """Refits ``fit(x, y, v) -> predictor`` after rejecting samples off the surface by more than
  ``sigma`` robust σ (``quality.robust_sigma``) of the kept residuals."""
  keep = np.ones(v.shape, bool)
  for _ in range(iters):
    predict = fit(x[keep], y[keep], v[keep])
    res = v - predict(x, y)
    spread = robust_sigma(res[keep])
    new = np.abs(res - np.median(res[keep])) <= sigma * max(spread, 1e-12)
    if new.sum() < 0.5 * v.size or (new == keep).all():
      break
    keep = new
  return predict


def poly_background(plane: np.ndarray, degree: int = 3, grid: int = 16) -> np.ndarray:
  """``(H, W) float64`` background surface: polynomial of total ``degree`` fitted to box samples."""
  x, y, v = box_samples(plane, grid)

  def fit(xs, ys, vs):
    coef, *_ = np.linalg.lstsq(_poly_terms(xs, ys, degree), vs, rcond=None)
    return lambda xq, yq: _poly_eval(coef, xq, yq, degree)

  predict = _robust(fit, x, y, v)
  xx, yy = _pixel_grid(*plane.shape)
  return predict(xx, yy)


def rbf_background(plane: np.ndarray, grid: int = 16, smoothing: float = 1e-3,
                   coarse: int = 8) -> np.ndarray:
  """``(H, W) float64`` smoothed thin-plate-spline RBF through the box samples.

  ``smoothing`` is scipy's ``RBFInterpolator`` smoothing of the samples divided by
  their standard deviation (0 = exact interpolation through every box);
  the surface is evaluated every ``coarse`` px and interpolated (cubic) between.
  """
  x, y, v = box_samples(plane, grid)
  scale = max(float(np.var(v)), 1e-30)

  def fit(xs, ys, vs):
    rbf = interpolate.RBFInterpolator(np.stack([xs, ys], -1), vs / np.sqrt(scale),
                                      kernel="thin_plate_spline", smoothing=smoothing,
                                      degree=1)
    return lambda xq, yq: rbf(np.stack([np.ravel(xq), np.ravel(yq)], -1)).reshape(
        np.shape(xq)) * np.sqrt(scale)

  predict = _robust(fit, x, y, v)
  h, w = plane.shape
  cy, cx = max(h // coarse, 2), max(w // coarse, 2)
  xs = np.linspace(-1.0 + 1.0 / w, 1.0 - 1.0 / w, cx)
  ys = np.linspace(-1.0 + 1.0 / h, 1.0 - 1.0 / h, cy)
  surface = predict(*np.meshgrid(xs, ys))
  return _resize(surface, (h, w))


def _resize(coarse: np.ndarray, shape) -> np.ndarray:
  """Cubic resampling of a coarse surface whose samples span the pixel centres end to end."""
  gy = np.linspace(0, coarse.shape[0] - 1, shape[0])
  gx = np.linspace(0, coarse.shape[1] - 1, shape[1])
  yy, xx = np.meshgrid(gy, gx, indexing="ij")
  return ndimage.map_coordinates(coarse, [yy, xx], order=3, mode="nearest")


def median_flat(plane: np.ndarray, size: float = 0.125, binned_side: int = 256) -> np.ndarray:
  """``(H, W) float64`` flat estimate: the frame block-averaged to about ``binned_side`` px
  on its shorter side, median-filtered over ``size`` × that side, resampled (bilinear) to
  full size, normalised to median 1."""
  h, w = plane.shape
  b = max(1, min(h, w) // binned_side)
  hb, wb = h // b, w // b
  binned = np.nanmean(plane[:hb * b, :wb * b].reshape(hb, b, wb, b), axis=(1, 3))
  k = max(3, int(size * min(h, w) / b) | 1)
  smooth = ndimage.median_filter(binned, size=k, mode="reflect")
  # binned pixel centres sit at (i + 0.5)·b − 0.5 in full-frame pixels
  yy, xx = np.meshgrid((np.arange(h) + 0.5) / b - 0.5, (np.arange(w) + 0.5) / b - 0.5, indexing="ij")
  full = ndimage.map_coordinates(smooth, [yy, xx], order=1, mode="nearest")
  return full / np.median(full)


def _per_channel(image, fn):
  return np.stack([fn(image[..., c]) for c in range(image.shape[-1])], -1)


def subtract(image: np.ndarray, background: np.ndarray) -> dict:
  """Additive correction: ``image − (bg − median bg)``; ``G`` = that background, ``F`` = 1."""
  g = background - np.median(background, axis=(0, 1), keepdims=True)
  return {"corrected": (image - g).astype(np.float32), "F": np.ones_like(image, np.float32),
          "G": g.astype(np.float32)}


def divide(image: np.ndarray, flat: np.ndarray) -> dict:
  """Multiplicative correction: ``image / (flat / median flat)``; ``F`` that ratio, ``G`` = 0."""
  f = flat / np.median(flat, axis=(0, 1), keepdims=True)
  f = np.where(f > 1e-6, f, 1e-6)
  return {"corrected": (image / f).astype(np.float32), "F": f.astype(np.float32),
          "G": np.zeros_like(image, np.float32)}


def methods(degree: int = 3, grid: int = 16, median_size: float = 0.125) -> dict:
  """The baselines by name: ``name -> fn(image (H, W, C)) -> {corrected, F, G}``.

  ``uncorrected`` (the input itself), ``poly_sub`` / ``poly_div`` (polynomial
  background subtracted / divided), ``rbf_div`` (RBF surface divided),
  ``median_flat`` (median-filtered frame as F, divided); and, when GraXpert is
  installed (extra ``graxpert``), ``graxpert_sub`` / ``graxpert_div``: GraXpert's
  classical RBF background with its default grid and settings
  (:mod:`flatai_jax.evaluation.graxpert`), subtracted (GraXpert's default) / divided.
  """
  from flatai_jax.evaluation import graxpert
  poly = lambda im: _per_channel(im, lambda p: poly_background(p, degree, grid))
  found = {}
  if graxpert.available():
    gx = lambda im: _per_channel(im, graxpert.background)
    found = {"graxpert_sub": lambda im: subtract(im, gx(im)),
             "graxpert_div": lambda im: divide(im, gx(im))}
  return {
      "uncorrected": lambda im: {"corrected": im, "F": np.ones_like(im), "G": np.zeros_like(im)},
      "poly_sub": lambda im: subtract(im, poly(im)),
      "poly_div": lambda im: divide(im, poly(im)),
      "rbf_div": lambda im: divide(im, _per_channel(im, lambda p: rbf_background(p, grid))),
      "median_flat": lambda im: divide(im, _per_channel(im, lambda p: median_flat(p, median_size))),
      **found,
  }


SKY_FLAT_KAPPA = 3.0  # sky flat: pixels above the frame's median by this many robust σ are sources
SKY_FLAT_GROW = 3  # … grown by this many px


def sky_flat(frames: list) -> np.ndarray:
  """The classical sky flat of a dithered sequence: each frame's sources masked (above its median
  by ``SKY_FLAT_KAPPA`` robust σ, grown by ``SKY_FLAT_GROW`` px), the frame divided by the median
  of the rest, the frames median-combined per pixel (masked pixels left out), median 1.

  Args:
    frames: ``(H, W, C)`` linear frames of one sensor (all held: evaluation sizes).
  Returns:
    ``(H, W, C) float32``, median 1; 1 where every frame was masked.
  """
  stack = []
  for frame in frames:
    plane = np.asarray(frame, np.float64)
    out = np.empty_like(plane)
    for c in range(plane.shape[-1]):
      p = plane[..., c]
      level = np.nanmedian(p)
      sources = ndimage.binary_dilation(p > level + SKY_FLAT_KAPPA * robust_sigma(p - level),
                                        iterations=SKY_FLAT_GROW)
      out[..., c] = np.where(sources, np.nan, p / np.nanmedian(p[~sources]))
    stack.append(out.astype(np.float32))
  import warnings
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # all-masked pixels: 1 below
    flat = np.nanmedian(np.stack(stack), 0)
  flat = np.where(np.isfinite(flat), flat, np.nanmedian(flat))
  return (flat / np.median(flat, axis=(0, 1), keepdims=True)).astype(np.float32)


def sequence_methods(degree: int = 3, grid: int = 16) -> dict:
  """Classical corrections of a whole sequence: ``name -> fn([frames]) -> [corrected]``:
  ``sky_flat`` (divided by :func:`sky_flat`) and ``sky_flat_poly`` (then each frame's own
  polynomial background subtracted, as Siril's background extraction after flat-fielding)."""
  poly = lambda im: _per_channel(im, lambda p: poly_background(p, degree, grid))

  def flat_only(frames):
    f = sky_flat(frames)
    return [divide(x, f)["corrected"] for x in frames]

  def flat_then_poly(frames):
    return [subtract(x, poly(x))["corrected"] for x in flat_only(frames)]

  return {"sky_flat": flat_only, "sky_flat_poly": flat_then_poly}
