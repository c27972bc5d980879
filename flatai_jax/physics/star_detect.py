"""Star detection on one image plane (host side, NumPy + ``sep``, SExtractor's background and
extraction): the one definition shared by the PSF-field fit (``physics.psf_fit``, used by
``flatai correct --method=physics``) and the star metrics of the evaluation (``evaluation.stars``).

Unlike the rest of ``physics`` this module is not JAX: detection is a host step before the
jitted fit.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import sep
from scipy import ndimage
from scipy.spatial import cKDTree

from flatai_jax.physics import noise

FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))  # a Gaussian's FWHM / σ


def _mesh(hw) -> int:
  """Side, px, of the ``sep`` background meshes of an ``(H, W)`` plane: ``max(16, min(H, W) // 8)``."""
  return int(max(16, min(hw) // 8))


def background(plane: np.ndarray) -> tuple[np.ndarray, float]:
  """``(H, W)`` plane minus its ``sep`` background (meshes of :func:`_mesh` px), float64, and the
  background's global RMS (the pixel noise σ, the plane's unit)."""
  data = np.ascontiguousarray(plane, np.float64)
  box = _mesh(data.shape)
  bkg = sep.Background(data, bw=box, bh=box)
  return data - bkg.back(), float(bkg.globalrms)


def sky_noise(plane: np.ndarray, data: np.ndarray | None = None) -> float:
  """Pixel noise σ of a plane with white noise (``noise.second_difference_sigma`` against its
  ``sep`` background; ``data``: the plane less it, :func:`background`'s, when at hand). Unlike
  ``sep``'s global RMS it is not inflated by the wide halos of aberrated stars, which can cover
  half of a crowded frame."""
  p = np.asarray(plane, np.float64)
  data = background(p)[0] if data is None else data
  return float(noise.second_difference_sigma(p, data))


MASK_SNR = 3.0  # sources masked by source_masked_noise: footprints above this × σ, ≥ 5 px …
MASK_GROW = 5  # … grown by this many px (the halos below the threshold)
MIN_SKY = 0.1  # fraction of the frame left unmasked for a masked estimate; else second differences
MASK_ROUNDS = 3  # re-masks at the new σ, at most (stops when σ moves by < 1 %)
MESH_MIN_PX = 50  # a mesh with fewer pixels off the sources has no σ of its own
SAMPLE_PX = 4_000_000  # larger frames: σ from a mosaic of SAMPLE_TILES² tiles of this many px …
SAMPLE_TILES = 3  # … spread from edge to edge (a 6000 × 4000 frame: 2 s, 31 s for the whole)


def noise_sample(plane: np.ndarray) -> np.ndarray:
  """The plane, or for one over ``SAMPLE_PX`` a mosaic of ``SAMPLE_TILES × SAMPLE_TILES`` square
  tiles of about ``SAMPLE_PX`` px in all, their corners spread evenly from the frame's first row
  and column to its last (vignetted corners and the centre alike)."""
  h, w = plane.shape
  if h * w <= SAMPLE_PX:
    return plane
  side = min(h, w, int(np.sqrt(SAMPLE_PX)) // SAMPLE_TILES)
  ys = np.linspace(0, h - side, SAMPLE_TILES).astype(int)
  xs = np.linspace(0, w - side, SAMPLE_TILES).astype(int)
  return np.block([[plane[y:y + side, x:x + side] for x in xs] for y in ys])


def source_masked_noise(plane: np.ndarray) -> float:
  """Pixel noise σ of a plane, white or correlated: the median over ``sep``'s background meshes of
  the robust σ (1.4826 × MAD) of their pixels off the sources — footprints above ``MASK_SNR`` σ
  grown by ``MASK_GROW`` px, re-made at each new σ from ``sep``'s RMS down (photutils'
  source-mask recipe). Meshes with under ``MESH_MIN_PX`` such pixels are left out.

  ``sep``'s RMS counts the wide halos of aberrated stars as noise (3.1× the true σ on the
  synthetic frames with corners at 3.8× the centre's FWHM); second differences
  (:func:`sky_noise`) miss the correlated part of a resampled or scanned frame's noise (a
  Spitzer mosaic 0.31 for 1.09, a POSS plate 110 for 197). Where the sources leave under
  ``MIN_SKY`` of the frame, or of its meshes, to measure on (a field whose halos fill it), the
  second differences are returned. A frame over ``SAMPLE_PX`` is measured on
  :func:`noise_sample`'s mosaic of it.

  Args:
    plane: ``(H, W)`` linear pixels.
  Returns:
    σ, the plane's unit.
  """
  plane = noise_sample(plane)
  data, sigma = background(plane)
  box = _mesh(plane.shape)
  meshes = (plane.shape[0] // box) * (plane.shape[1] // box)
  for _ in range(MASK_ROUNDS):
    mask = ndimage.binary_dilation(_footprints(data, MASK_SNR * max(sigma, 1e-12)),
                                   iterations=MASK_GROW)
    per_mesh = _mesh_sigmas(data, mask, box)
    if mask.mean() > 1.0 - MIN_SKY or per_mesh.size < MIN_SKY * meshes:
      return sky_noise(plane, data)
    previous, sigma = sigma, float(np.median(per_mesh))
    if abs(previous - sigma) < 0.01 * sigma:
      break
  return sigma


def _footprints(data: np.ndarray, thresh: float) -> np.ndarray:
  """``(H, W) bool``: the pixels of ``sep``'s detections (≥ 5 px) above ``thresh`` in ``data``."""
  return _sep_extract(data, thresh, minarea=5, deblend_nthresh=1, segmentation_map=True)[1] > 0


def _sep_extract(data: np.ndarray, thresh: float, **kwargs):
  """``sep.extract(data, thresh, **kwargs)``. A nebula that fills the frame overflows ``sep``'s
  buffer of active pixels (300,000 by default: "internal pixel buffer full"): then once more
  with room for every pixel of ``data``, ``sep``'s limit restored after."""
  try:
    return sep.extract(data, thresh, **kwargs)
  except Exception as err:
    if "pixel buffer full" not in str(err):
      raise
  stack = sep.get_extract_pixstack()
  sep.set_extract_pixstack(max(stack, data.size))
  try:
    return sep.extract(data, thresh, **kwargs)
  finally:
    sep.set_extract_pixstack(stack)


def _mesh_sigmas(data: np.ndarray, mask: np.ndarray, box: int) -> np.ndarray:
  """``(m,)`` 1.4826 × the MAD of the unmasked pixels of each whole ``box × box`` mesh of
  ``data`` that has at least ``MESH_MIN_PX`` of them."""
  ny, nx = data.shape[0] // box, data.shape[1] // box
  cut = lambda a: (a[:ny * box, :nx * box].reshape(ny, box, nx, box).transpose(0, 2, 1, 3)
                   .reshape(ny * nx, box * box))
  d, free = cut(data), ~cut(mask)
  full = free.sum(1) >= MESH_MIN_PX
  v = np.where(free[full], d[full], np.nan)
  return 1.4826 * np.nanmedian(np.abs(v - np.nanmedian(v, 1, keepdims=True)), 1)


class Extraction(NamedTuple):
  """:func:`extract`'s result: what :func:`find_stars`, :func:`crowded_stars` and
  :func:`extraction_fwhm` start from (one ``sep`` pass each on a 6000 × 4000 frame: ~16 s)."""
  data: np.ndarray  # (H, W) float64 the plane less its background
  objs: np.ndarray  # sep's detections above the threshold (no deblending)
  segments: np.ndarray  # (H, W) int their segmentation map
  faint: np.ndarray  # every detection at a quarter of the threshold (deblended)


def find_stars(plane: np.ndarray, noise_rms: float, usable: np.ndarray | None = None,
               snr: float = 10.0, max_stars: int = 200, box: int = 15,
               compact: bool = True, extraction: Extraction | None = None) -> np.ndarray:
  """Isolated stars of a plane.

  Args:
    plane: ``(H, W)`` linear image (a noise-free truth, or an observed frame).
    noise_rms: pixel noise σ of the observed frame, same unit; stars need a
      peak above ``snr · noise_rms``.
    usable: optional ``(H, W) bool``; stars touching an unusable (e.g.
      saturated) pixel within ``box`` are dropped.
    snr: peak signal-to-noise threshold.
    max_stars: keep the brightest this many.
    box: fit box side, px; stars closer than ``box`` to another source (also
      fainter ones, found at a quarter of the threshold) or to the border are dropped.
      A fainter detection inside the star's own footprint (its pixels above the
      threshold) is the star's own structure, not a neighbour (:func:`isolated`).
    compact: drop sources with a half-light radius above 1.5× the 20th
      percentile of all detections (nebula knots, blends): right on a truth
      frame, which has one seeing; False for a frame whose PSF grows across
      the field (the PSF-field fit).
    extraction: :func:`extract` of this plane, ``noise_rms`` and ``snr`` when at hand.
  Returns:
    ``(n, 2) float64`` (x, y) pixel positions (pixel centres at integers),
    brightest first.
  """
  data, objs, segments, faint = extraction or extract(plane, noise_rms, snr)
  if len(objs) == 0:
    return np.zeros((0, 2))
  xy = np.stack([objs["x"], objs["y"]], -1)
  half = box // 2
  # isolation against every detection, also fainter ones (found at a lower threshold)
  others = np.stack([faint["x"], faint["y"]], -1) if len(faint) else xy
  keep = isolated(xy, others, segments, box) & _inside(xy, plane.shape, half) & (objs["flag"] == 0)
  if compact:  # point sources only: nebula knots have larger half-light radii than the frame's stars
    hlr, _ = sep.flux_radius(data, xy[:, 0], xy[:, 1], np.full(len(xy), float(half)), 0.5,
                             subpix=5)
    keep &= hlr < 1.5 * np.percentile(hlr, 20)
  keep = _usable(keep, xy, usable, half)
  idx = np.flatnonzero(keep)
  idx = idx[np.argsort(-objs["peak"][idx])][:max_stars]
  return xy[idx]


def extract(plane: np.ndarray, noise_rms: float, snr: float,
            data: np.ndarray | None = None) -> Extraction:
  """The plane minus its background (``data``: :func:`background`'s, when at hand); ``sep``'s
  detections above ``snr · noise_rms`` (no deblending) with their segmentation map; and every
  detection at a quarter of that threshold (deblended), the neighbours."""
  data = background(plane)[0] if data is None else data
  thresh = snr * max(noise_rms, 1e-12)
  objs, segments = _sep_extract(data, thresh, minarea=3, deblend_cont=1.0,
                               segmentation_map=True)
  if len(objs) == 0:
    return Extraction(data, objs, segments, objs)
  try:
    faint = _sep_extract(data, max(thresh / 4, 1e-12), minarea=3)
  except Exception as err:  # a crowded frame's blends overflow sep's deblending: keep them whole
    if "deblending overflow" not in str(err):
      raise
    faint = _sep_extract(data, max(thresh / 4, 1e-12), minarea=3, deblend_nthresh=1)
  return Extraction(data, objs, segments, faint)


def _usable(keep: np.ndarray, xy: np.ndarray, usable: np.ndarray | None, half: int) -> np.ndarray:
  """``keep``, less the stars whose stamp of half-side ``half`` about the rounded position
  touches a pixel that is not ``usable`` (``(H, W) bool``; None: every pixel is)."""
  keep = keep.copy()
  if usable is not None:
    for i in np.flatnonzero(keep):
      x, y = int(round(xy[i, 0])), int(round(xy[i, 1]))
      keep[i] = usable[y - half:y + half + 1, x - half:x + half + 1].all()
  return keep


def _inside(xy: np.ndarray, hw, half: int) -> np.ndarray:
  """``(n,) bool``: a stamp of half-side ``half`` about the rounded position is in the frame."""
  h, w = hw
  return ((xy[:, 0] > half + 1) & (xy[:, 0] < w - half - 2) &
          (xy[:, 1] > half + 1) & (xy[:, 1] < h - half - 2))


def extraction_fwhm(plane: np.ndarray, noise_rms: float, snr: float = 10.0,
                    extraction: Extraction | None = None) -> np.ndarray:
  """``(n,)`` FWHM, px, of the unblended detections above ``snr · noise_rms`` from ``sep``'s
  second moments (``2.355 · sqrt(a · b)``): cruder than :func:`shapes`, but needs no isolation.
  ``extraction``: :func:`extract` of these arguments, when at hand."""
  objs = (extraction or extract(plane, noise_rms, snr)).objs
  ok = (objs["flag"] == 0) & (objs["b"] > 0) if len(objs) else np.zeros(0, bool)
  return FWHM_PER_SIGMA * np.sqrt(objs["a"][ok] * objs["b"][ok])


def crowded_stars(plane: np.ndarray, noise_rms: float, size: int, fwhm: float,
                  usable: np.ndarray | None = None, snr: float = 10.0,
                  extraction: Extraction | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Stars of a crowded plane, each with its neighbours' light masked on its stamp.

  Where no star is isolated by a whole stamp (a dense field), a star is still measurable when
  its neighbours' light stays off its core: each other detection ``j`` (the deblended faint
  extraction, also fainter ones) covers a disk out to where a Gaussian of the frame's ``fwhm``
  and its peak falls to the noise, ``r_j = fwhm/2 · sqrt(log2(peak_j / σ)) + 1`` px. A star is
  kept when no disk reaches within ``fwhm`` of its centre and at least half of its stamp is
  clear; the disks are its stamp's mask. A star's own lobes (faint detections inside its own
  segment, :func:`isolated`) are not its neighbours.

  Args:
    plane: ``(H, W)`` linear image.
    noise_rms: its pixel noise σ, same unit.
    size: stamp side, px, odd (stamps centred on the rounded positions, as
      ``psf_fit.cut_stamps``).
    fwhm: the frame's typical star FWHM, px.
    usable: optional ``(H, W) bool``; stars touching an unusable pixel within the stamp
      are dropped.
    snr: peak signal-to-noise threshold of a star.
    extraction: :func:`extract` of this plane, ``noise_rms`` and ``snr`` when at hand.
  Returns:
    ``(n, 2) float64`` (x, y) px brightest first, and ``(n, size, size) bool``: True where the
    stamp is clear of other sources.
  """
  data, objs, segments, faint = extraction or extract(plane, noise_rms, snr)
  half = size // 2
  if len(objs) == 0 or len(faint) == 0:
    return np.zeros((0, 2)), np.zeros((0, size, size), bool)
  xy = np.stack([objs["x"], objs["y"]], -1)
  others = np.stack([faint["x"], faint["y"]], -1)
  radius = 0.5 * fwhm * np.sqrt(np.log2(np.maximum(faint["peak"] / max(noise_rms, 1e-12), 2.0))) + 1
  yy, xx = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float64)
  reach = half * np.sqrt(2.0) + float(radius.max())
  keep = _inside(xy, plane.shape, half) & (objs["flag"] == 0)
  clear = np.ones((len(xy), size, size), bool)
  around = neighbours(xy, others, segments, reach)
  for i in np.flatnonzero(keep):
    near = around[i]
    if near.size == 0:
      continue
    d = np.hypot(*(others[near] - xy[i]).T)
    if np.any(d - radius[near] < fwhm):
      keep[i] = False
      continue
    cx, cy = np.rint(xy[i])
    for (ox, oy), r in zip(others[near] - (cx, cy), radius[near]):
      clear[i] &= (xx - ox) ** 2 + (yy - oy) ** 2 > r * r
    keep[i] = clear[i].mean() >= 0.5
  keep = _usable(keep, xy, usable, half)
  idx = np.flatnonzero(keep)
  idx = idx[np.argsort(-objs["peak"][idx])]
  return xy[idx], clear[idx]


def isolated(xy: np.ndarray, others: np.ndarray, segments: np.ndarray, box: float) -> np.ndarray:
  """Which stars have no other source within ``box`` px.

  The fainter extraction deblends (``sep``'s default contrast, 0.005 of the flux), so it splits
  an aberrated star's own light into several detections 2.5–8 px apart: the lobes of a coma /
  astigmatic PSF, more distinct the sharper the PSF is rendered. Those lie inside the star's
  own footprint above the detection threshold, where the detection itself (no deblending)
  takes them as one source; they are not neighbours. A source whose light merges with the
  star's above that threshold is a blend the detection cannot tell from the star's own PSF
  either (kept, as before). Neighbours come from a k-d tree: a dense distance matrix is
  n × m (20,000 stars of a 6000 × 4000 frame: 15 GiB and minutes).

  Args:
    xy: ``(n, 2)`` (x, y) px of the stars, detection ``i`` labelled ``i + 1`` in ``segments``.
    others: ``(m, 2)`` (x, y) px of all detections at the lower threshold.
    segments: ``(H, W) int`` ``sep``'s segmentation map of the stars' extraction (0: sky).
    box: isolation distance, px.
  Returns:
    ``(n,) bool``: no detection of ``others`` within ``box`` px except the nearest (the star
    itself) and those whose position is inside the star's own segment.
  """
  return np.array([near.size == 0 for near in neighbours(xy, others, segments, box)], bool)


def neighbours(xy: np.ndarray, others: np.ndarray, segments: np.ndarray, radius: float
               ) -> list[np.ndarray]:
  """For each star, the indices of the detections ``others`` within ``radius`` px that are
  other sources: neither the nearest (the star itself) nor inside the star's own segment (its
  lobes, :func:`isolated`). Arguments as :func:`isolated`'s; a k-d tree, no distance matrix."""
  tree = cKDTree(others)
  _, nearest = tree.query(xy)
  h, w = segments.shape
  ij = np.rint(others).astype(int)
  label = segments[np.clip(ij[:, 1], 0, h - 1), np.clip(ij[:, 0], 0, w - 1)]
  out = []
  for i, near in enumerate(tree.query_ball_point(xy, radius)):
    near = np.asarray(near, int)
    out.append(near[(near != nearest[i]) & (label[near] != i + 1)])
  return out


SHAPE_RADIUS = 12  # px: stamp half-side of :func:`shapes`
SHAPE_ROUNDS = 12  # adaptive-weight iterations of :func:`shapes`


def shapes(plane: np.ndarray, xy: np.ndarray, radius: int = SHAPE_RADIUS,
           data: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Size and elongation of stars from adaptive second moments (a Gaussian weight matched to
  each star, ``SHAPE_ROUNDS`` rounds), on the plane minus its ``sep`` background.

  A cheap, model-free measure for comparing one frame before and after a correction (the same
  stars, the same method): unlike a profile fit it needs no PSF model, so it also describes
  stars a model cannot (undersampled, defocused, seeing-blurred).

  Args:
    plane: ``(H, W)`` linear image.
    xy: ``(n, 2)`` (x, y) px of the stars.
    radius: stamp half-side, px.
    data: the plane less its background (:func:`background`'s), when at hand.
  Returns:
    ``(n,) float64`` each: ``size`` the FWHM of the Gaussian of the same weighted moments
    (px), ``ellipticity`` ``1 − b/a`` of its moment ellipse; NaN where a stamp leaves the
    frame or its weighted flux is not positive.
  """
  data = background(plane)[0] if data is None else data
  h, w = data.shape
  yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1].astype(np.float64)
  size, ell = np.full(len(xy), np.nan), np.full(len(xy), np.nan)
  for i, (x, y) in enumerate(np.asarray(xy, np.float64)):
    xi, yi = int(round(x)), int(round(y))
    if not (radius <= xi < w - radius and radius <= yi < h - radius):
      continue
    cut = data[yi - radius:yi + radius + 1, xi - radius:xi + radius + 1]
    cx, cy, mxx, myy, mxy = x - xi, y - yi, 2.0, 2.0, 0.0
    for _ in range(SHAPE_ROUNDS):
      # a matched Gaussian weight halves the moments of a Gaussian star: the weight's
      # covariance is the measured one, doubled back
      det = mxx * myy - mxy * mxy
      if not det > 1e-4:  # noise made the moments degenerate
        break
      dx, dy = xx - cx, yy - cy
      weight = np.exp(-(myy * dx * dx - 2 * mxy * dx * dy + mxx * dy * dy) / (2.0 * det))
      f = cut * weight
      total = f.sum()
      if not total > 0:
        break
      cx, cy = cx + (f * dx).sum() / total, cy + (f * dy).sum() / total
      dx, dy = xx - cx, yy - cy
      mxx = max(2.0 * (f * dx * dx).sum() / total, 0.05)
      myy = max(2.0 * (f * dy * dy).sum() / total, 0.05)
      mxy = 2.0 * (f * dx * dy).sum() / total
    else:
      lam = np.linalg.eigvalsh(np.array([[mxx, mxy], [mxy, myy]]))
      if lam[0] > 0:
        size[i] = FWHM_PER_SIGMA * float(np.sqrt(np.sqrt(lam[0] * lam[1])))
        ell[i] = 1.0 - float(np.sqrt(lam[0] / lam[1]))
  return size, ell


def aperture_flux(data: np.ndarray, xy: np.ndarray, aperture: float) -> np.ndarray:
  """``(n,) float64`` fluxes of the stars ``xy`` in a circle of ``aperture`` px on ``data``
  (background removed), less a local background from the annulus 2–6 px outside it."""
  if not len(xy):
    return np.full(0, np.nan)
  flux, _, _ = sep.sum_circle(np.ascontiguousarray(data, np.float64), xy[:, 0], xy[:, 1],
                              aperture, bkgann=(aperture + 2.0, aperture + 6.0))
  return np.asarray(flux, np.float64)


def ringing(plane: np.ndarray, xy: np.ndarray, noise: float, radius: int = 12,
            data: np.ndarray | None = None) -> np.ndarray:
  """Dark halos around stars: the minimum of each star's radial profile, in noise units.

  The plane's ``sep`` background is removed, the profile is the mean in 1-px annuli
  from 1 to ``radius`` px around the star's position, and its minimum is divided by
  ``noise`` (the pixel σ of the same plane, its unit). Around a star without ringing
  the profile falls to the sky: ≳ −1 for a few pixels per annulus; a dark halo gives a
  large negative value.

  Args:
    plane: ``(H, W)`` linear image.
    xy: ``(n, 2)`` star positions, px, at least ``radius`` inside the border.
    noise: pixel noise σ.
    data: the plane less its background (:func:`background`'s), when at hand.
  Returns:
    ``(n,) float64``.
  """
  data = background(plane)[0] if data is None else data
  yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
  rr = np.rint(np.hypot(xx, yy)).astype(int)
  out = np.full(len(xy), np.nan)
  for i, (x, y) in enumerate(np.rint(xy).astype(int)):
    cut = data[y - radius:y + radius + 1, x - radius:x + radius + 1]
    if cut.shape != rr.shape:
      continue
    prof = [cut[rr == r].mean() for r in range(1, radius + 1)]
    out[i] = min(prof) / max(noise, 1e-12)
  return out
