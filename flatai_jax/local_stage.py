"""The local stage: dust shadows smaller than the working grid's cells, at fine resolution.

The global stage (``correct.correct_frame``) holds F and G on a 96 × 128 grid;
a dust shadow smaller than about two of its cells (≈ 100 px on a 24-Mpx frame)
falls between them. This stage looks at what the global stage left, on a grid
4 times finer (block medians of ≈ 10 px on a 24-Mpx frame; 2 times on frames of about
600–1150 px: stars rejected),
for what a dust shadow is and nothing else is:

- a **dip** — dust only ever darkens (F < 1), so bright structure is never
  touched, whatever it is;
- **significant** — below the local sky by ``KAPPA`` σ of the smoothed cell
  noise, so noise alone makes none (a frame of pure noise gets F_local = 1
  exactly);
- **closed** — at least ``MIN_CELLS`` cells, surrounded by sky, not touching the frame's edge (where the global
  correction leaves its residuals; a shadow cut by the edge is not corrected);
- **on sky** — the local sky level is a smoothing of the fine grid with objects
  (cells above it by 3 σ, grown) left out, so the dark moat a bright object
  would leave in a plain running median is not taken for a shadow.

Inside the detected dips (grown by ``GROW`` cells, with a soft edge), F_local is
the measured dip of each fine cell (never above 1); elsewhere exactly 1. It is upsampled with the grid's cubic
convolution, so it is smooth at the fine cells' scale and cannot carry pixel
noise. Numpy on the host.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from flatai_jax import scores, sky_surface, working_grid

FINES = (4, 2)  # the fine grid is this many times the working grid along each side: the first
# whose cells are at least MIN_BLOCK px
POOL = 4  # fine cells pooled for the first sky level
MIN_BLOCK = 3  # px per fine cell at least (×4 from ≈ 1150 × 1540 px, ×2 from ≈ 390 × 520 px)
SKY_SIGMA = 6.0  # smoothing of the local sky level, fine cells
DIP_SIGMA = 1.0  # smoothing of the dip map before detection, fine cells
KAPPA = 5.0  # a dip is this many σ of the smoothed cell noise below the local sky
OBJECT_KAPPA = 3.0  # cells above the local sky by this many σ are objects (left out of it)
GROW = 2  # detected dips are grown by this many fine cells (a shadow's soft rim)
EDGE = 2  # dips reaching this close to the frame's edge, fine cells, are not taken as dust
MIN_CELLS = 4  # … nor dips of fewer fine cells (a 5σ noise excursion after smoothing covers 1–3)


@dataclasses.dataclass(frozen=True)
class LocalDust:
  """The local stage's result for one plane."""
  f_local: np.ndarray  # (H, W) float32, ≤ 1 inside detected shadows, exactly 1 elsewhere
  cells: int  # fine cells inside detected shadows
  deepest: float  # depth of the deepest dip, fraction (0 when none)


def fine_geometry(hw, grid_hw) -> working_grid.GridGeometry | None:
  """The fine grid of a frame: ``FINES`` times the working grid, the finest whose cells are
  at least ``MIN_BLOCK`` px; None for frames too small for any."""
  for fine in FINES:
    geo = working_grid.geometry(hw, (grid_hw[0] * fine, grid_hw[1] * fine))
    if min(geo.block) >= MIN_BLOCK:
      return geo
  return None


def dust_dips(plane: np.ndarray, geo: working_grid.GridGeometry) -> LocalDust:
  """Detects and measures small dust shadows in a globally corrected plane.

  Args:
    plane: ``(H, W)`` float32, linear: the frame after the global stage (sky flat at
      large scales), no NaN.
    geo: its fine grid (:func:`fine_geometry`).
  """
  fine = working_grid.bin_frame(plane, geo).astype(np.float64)
  first = _first_level(fine)
  objects = ndimage.binary_dilation(fine > first + OBJECT_KAPPA * sky_surface.cell_noise(fine),
                                    iterations=2)
  found = np.zeros(fine.shape, bool)
  for _ in range(2):  # the second pass leaves the shadows found out of the sky level
    level = _local_sky(fine, first, objects | ndimage.binary_dilation(found, iterations=GROW))
    ratio = fine / level - 1.0
    dip = ndimage.gaussian_filter(ratio, DIP_SIGMA, mode="nearest")
    found = _closed(dip < -KAPPA * max(float(scores.robust_sigma(dip)), 1e-12), geo)
    if not found.any():
      return LocalDust(np.ones(plane.shape, np.float32), 0, 0.0)
  region = ndimage.binary_dilation(found, iterations=GROW)
  weight = np.minimum(ndimage.gaussian_filter(region.astype(np.float64), 1.0) * 2.0, 1.0)
  weight[~region] = 0.0
  # detection on the smoothed map, the value from the cells themselves (smoothing would halve a
  # shadow a few cells across)
  log_f = np.minimum(np.log(np.maximum(1.0 + ratio, 1e-3)), 0.0) * weight
  f_local = np.exp(working_grid.upsample(log_f, geo))
  return LocalDust(np.minimum(f_local, 1.0).astype(np.float32), int(found.sum()),
                   float(-dip[found].min()))


def _closed(found: np.ndarray, geo: working_grid.GridGeometry) -> np.ndarray:
  """``found`` without dips of under ``MIN_CELLS`` cells and those that touch the frame's edge
  (within ``EDGE`` fine cells): a shadow is a closed dip in the sky, while the edges and corners
  are where a global correction leaves its residuals (and a shadow cut by the edge cannot be
  told from them)."""
  rows, cols = working_grid.inner_cells(geo)
  edge = np.ones(found.shape, bool)
  edge[rows.start + EDGE:rows.stop - EDGE, cols.start + EDGE:cols.stop - EDGE] = False
  labels, n = ndimage.label(found)
  small = np.flatnonzero(np.bincount(labels.ravel(), minlength=n + 1) < MIN_CELLS)
  return found & ~np.isin(labels, np.union1d(np.unique(labels[edge & found]), small))


def _first_level(fine: np.ndarray) -> np.ndarray:
  """A first sky level under each fine cell: running median on ``POOL × POOL`` means of fine
  cells (cheap on 24 Mpx), ``fine``'s shape."""
  gh, gw = fine.shape[0] // POOL, fine.shape[1] // POOL
  coarse = fine[:gh * POOL, :gw * POOL].reshape(gh, POOL, gw, POOL).mean(axis=(1, 3))
  first = ndimage.median_filter(coarse, size=int(4 * SKY_SIGMA / POOL) | 1, mode="nearest")
  first = np.repeat(np.repeat(first, POOL, axis=0), POOL, axis=1)
  return np.pad(first, [(0, fine.shape[0] - first.shape[0]), (0, fine.shape[1] - first.shape[1])],
                mode="edge")


def _local_sky(fine: np.ndarray, first: np.ndarray, excluded: np.ndarray) -> np.ndarray:
  """The sky level under each fine cell: normalised Gaussian smoothing over the cells not
  ``excluded`` (bool: objects — above ``first`` by ``OBJECT_KAPPA`` σ, grown by 2 cells — and
  the dips found so far); ``first`` where too few cells are left nearby."""
  sky = ~excluded
  num = ndimage.gaussian_filter(np.where(sky, fine, 0.0), SKY_SIGMA, mode="nearest")
  den = ndimage.gaussian_filter(sky.astype(np.float64), SKY_SIGMA, mode="nearest")
  return np.where(den > 0.05, num / np.maximum(den, 1e-6), first)
