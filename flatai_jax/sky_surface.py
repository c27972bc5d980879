"""The sky surface of a binned frame: a robust smooth fit, and whether it explains the frame.

On the working grid (``working_grid.bin_frame``: block medians, stars rejected)
a frame is sky + extended objects + cell noise. Vignetting, gradients, domes and
glow are smooth; a galaxy or a nebula is bright, has edges and filaments. So:

1. **Fit** a low-order 2-D Legendre surface to the cells, rejecting cells above
   it by ``kappa_high`` robust σ (objects, grown by one cell) and far below it
   (dead columns), until the sky cells no longer change.
2. **Test** the frame (:func:`structure`, a degree-4 fit): the robust σ of the
   cells about the surface over the noise of one cell (from differences of neighbouring cells,
   which a smooth surface does not change). A frame of sky and noise gives ≈ 1;
   a nebula or galaxy that fills the frame gives 3 – 7: no smooth surface can
   tell its light from background, and a frame-scale fit would eat it — which is
   what the classical tools do.
3. **Refine** the surface where it is trusted: the residual on sky cells,
   smoothed over ``smooth_cells`` (normalised convolution, object cells left
   out), is added, so the surface follows the frame's real sky between the
   objects at a scale of a few cells, never inside them.

Numpy on the host, on a ``(gh, gw)`` grid: a few milliseconds.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from flatai_jax import scores

DEGREE = 3  # Legendre degree of the surface (its refinement follows the rest)
STRUCTURE_DEGREE = 4  # … of the fit that tests a frame for smooth sky (vignetting up to r⁴)
KAPPA_HIGH = 3.0  # cells above the surface by this many σ are objects
KAPPA_LOW = 4.0  # … below it by this many, defects
SMOOTH_CELLS = 1.5  # Gaussian σ of the refinement, grid cells
ITERATIONS = 8  # clipping rounds at most


@dataclasses.dataclass(frozen=True)
class SkyFit:
  """A sky surface on the grid, ``(gh, gw) float64`` in the grid's units."""
  surface: np.ndarray  # the refined surface (smooth fit + sky-cell refinement)
  sky: np.ndarray  # bool, the cells used as sky
  support: np.ndarray  # [0, 1], how much sky-cell data backs the refinement at each cell
  noise: float  # σ of one cell, grid units
  structure: float  # robust σ of the cells about the smooth fit / noise (≈ 1: sky and noise)


def cell_noise(plane: np.ndarray) -> float:
  """σ of one cell of ``(gh, gw)``: robust σ of differences of horizontal neighbours / √2,
  in quadrature with the rounding noise ``q/√12`` of values quantised in steps of ``q`` (the
  smallest non-zero difference; block medians of 8-bit pixels can differ by 0 or ±q only, and
  their MAD alone is then 0).

  Cell noise adds in quadrature in the difference; a smooth field cancels up to its
  change per cell δ (σ is overestimated by ~δ²/4σ²: 2 % for δ = 0.3 σ). Block medians
  of integer pixels are quantised; the MAD then moves by up to ±15 %.
  """
  d = np.diff(np.asarray(plane, np.float64), axis=1)
  steps = np.abs(d[d != 0.0])
  q = float(steps.min()) if steps.size else 0.0
  return float(np.hypot(scores.robust_sigma(d) / np.sqrt(2.0), q / np.sqrt(12.0)))


def legendre_basis(hw, degree: int = DEGREE) -> np.ndarray:
  """``(gh·gw, K)`` products ``P_i(y) P_j(x)``, ``i + j ≤ degree``, on ``[−1, 1]²``."""
  py = np.polynomial.legendre.legvander(np.linspace(-1.0, 1.0, hw[0]), degree)
  px = np.polynomial.legendre.legvander(np.linspace(-1.0, 1.0, hw[1]), degree)
  return np.stack([np.outer(py[:, i], px[:, j]).ravel()
                   for i in range(degree + 1) for j in range(degree + 1 - i)], 1)


def fit_sky(plane: np.ndarray, degree: int = DEGREE, kappa_high: float = KAPPA_HIGH,
            kappa_low: float = KAPPA_LOW, smooth_cells: float = SMOOTH_CELLS) -> SkyFit:
  """The sky surface of one ``(gh, gw)`` grid plane (see the module docstring).

  Args:
    plane: ``(gh, gw)`` binned frame (block medians), linear, finite.
  """
  plane = np.asarray(plane, np.float64)
  gh, gw = plane.shape
  basis = legendre_basis((gh, gw), degree)
  values = plane.ravel()
  noise = max(cell_noise(plane), 1e-12 * max(abs(float(np.median(plane))), 1.0))
  sky = np.ones(values.size, bool)
  for _ in range(ITERATIONS):
    coef, *_ = np.linalg.lstsq(basis[sky], values[sky], rcond=None)
    smooth = basis @ coef
    residual = values - smooth
    sigma = max(float(scores.robust_sigma(residual[sky])), noise)
    keep = (residual < kappa_high * sigma) & (residual > -kappa_low * sigma)
    keep = ~ndimage.binary_dilation(~keep.reshape(gh, gw), iterations=1).ravel()
    if keep.sum() < basis.shape[1] * 4 or (keep == sky).all():
      break
    sky = keep
  structure = float(scores.robust_sigma(residual)) / noise
  smooth, sky = smooth.reshape(gh, gw), sky.reshape(gh, gw)
  weight = sky.astype(np.float64)
  num = ndimage.gaussian_filter((plane - smooth) * weight, smooth_cells, mode="nearest")
  den = ndimage.gaussian_filter(weight, smooth_cells, mode="nearest")
  support = np.clip(den / 0.5, 0.0, 1.0)  # half the nearby cells sky → full support
  refinement = np.where(den > 0.05, num / np.maximum(den, 1e-6), 0.0)
  return SkyFit(surface=smooth + refinement, sky=sky, support=support, noise=noise,
                structure=structure)


def structure(plane: np.ndarray, degree: int = STRUCTURE_DEGREE) -> float:
  """How far ``(gh, gw)`` is from smooth sky and noise: :attr:`SkyFit.structure` of a
  degree-``degree`` fit (≈ 1 for sky, gradients and vignetting; 3 – 7 where a nebula or a
  galaxy fills the frame)."""
  return fit_sky(plane, degree=degree).structure


def ramp_down(value: float, start: float, end: float) -> float:
  """1 at ``value ≤ start``, 0 at ``value ≥ end``, linear between."""
  return float(np.clip((end - value) / (end - start), 0.0, 1.0))
