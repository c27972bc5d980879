"""Star images from an independent optics code, hcipy (optional: ``pip install flatai-jax[optics]``),
for the aberration evaluation's second case (``evaluation.aberration``): the same Zernike
coefficients and pupil as the project's renderer, none of its code.

Pupil: diameter 1 on ``n_pupil`` samples, grey edges by ``pupil_supersample``² sub-samples, the
central obstruction and spider vanes of the spec; wavefront ``Σ c_j Z_j`` (hcipy's Noll basis,
waves RMS at λ_ref, ``radial_cutoff=False`` as the project's polynomials); each wavelength of the
band propagated by hcipy's Fraunhofer propagator (focal length 1, so the focal plane is in
λ_ref/D) onto ``oversample``² sub-samples per detector pixel (λ_ref/D = ``q`` px), summed into
pixels. Each star is placed with its centroid over the kernel at the kernel's centre pixel plus
its sub-pixel offset (within ``CENTRE_TOL``), by moving the focal grid, as the project's renderer recentres
its PSFs; each image sums to 1 over the kernel.
"""
from __future__ import annotations

import functools

import numpy as np

from flatai_jax.physics import psf

CENTRE_TOL = 0.005  # px: the focal grid is moved until the centroid is this near the request
CENTRE_PASSES = 8  # at most this many moves


def missing() -> str | None:
  """None when hcipy imports, else the one-line reason the independent case is skipped."""
  try:
    import hcipy  # noqa: F401
  except ImportError as e:
    return f"hcipy not installed ({e}); pip install 'flatai-jax[optics]'"
  return None


@functools.lru_cache(maxsize=4)
def _pupil(spec: psf.PSFSpec):
  """hcipy ``(pupil grid, aperture field, Zernike basis)`` of the spec's pupil at λ_ref."""
  import hcipy
  grid = hcipy.make_pupil_grid(spec.n_pupil, 1.0)
  parts = [hcipy.make_circular_aperture(1.0)]
  if spec.obstruction:
    inner = hcipy.make_circular_aperture(spec.obstruction)
    parts.append(lambda g: 1 - inner(g))
  for v in range(spec.spider_vanes):
    phi = 2 * np.pi * v / spec.spider_vanes
    parts.append(hcipy.make_spider((0, 0), (0.6 * np.cos(phi), 0.6 * np.sin(phi)),
                                   spec.spider_width))
  aperture = hcipy.evaluate_supersampled(
      lambda g: hcipy.Field(np.prod([f(g) for f in parts], axis=0), g), grid,
      spec.pupil_supersample)
  basis = hcipy.make_zernike_basis(spec.num_modes, 1.0, grid, 1, radial_cutoff=False)
  return grid, aperture, basis


def _image(spec: psf.PSFSpec, coeffs: np.ndarray, centre) -> np.ndarray:
  """``(k, k) float64`` the PSF of ``(J,)`` coefficients on detector pixels whose centre pixel
  looks at ``centre`` = (x, y) in λ_ref/D, summed over the band, not normalised."""
  import hcipy
  grid, aperture, basis = _pupil(spec)
  k, s = spec.kernel_size, spec.oversample
  focal = hcipy.make_uniform_grid([k * s, k * s], [k / spec.q] * 2, center=np.asarray(centre))
  opd = basis.linear_combination(np.asarray(coeffs, np.float64))  # waves at λ_ref
  img = 0.0
  for lam, w in zip(spec.wavelengths, spec.weights):
    prop = hcipy.FraunhoferPropagator(grid, focal, focal_length=1)
    field = aperture * np.exp(2j * np.pi * opd / lam)
    img = img + w * prop(hcipy.Wavefront(field, lam)).power.shaped
  return np.asarray(img).reshape(k, s, k, s).sum(axis=(1, 3))


def _centroid(img: np.ndarray) -> np.ndarray:
  """(x, y) centroid of a ``(k, k)`` image relative to its centre pixel, px."""
  k = img.shape[-1]
  r = np.arange(k) - k // 2
  total = img.sum()
  return np.array([(img.sum(0) * r).sum(), (img.sum(1) * r).sum()]) / total


def unit_stamps(coeffs: np.ndarray, dxy: np.ndarray, spec: psf.PSFSpec) -> np.ndarray:
  """``(N, k, k) float64`` unit-flux star images (``star_field.Renderer``): the PSFs of
  ``(N, J)`` Noll coefficients (waves RMS at λ_ref), each with its centroid at the centre pixel
  plus ``(N, 2)`` (x, y) px (module docstring)."""
  out = []
  for c, d in zip(np.asarray(coeffs, np.float64), np.asarray(dxy, np.float64)):
    centre = np.zeros(2)  # λ_ref/D seen by the centre pixel
    img = _image(spec, c, centre)
    for _ in range(CENTRE_PASSES):  # the kernel cuts the wing: the centroid moves < 1:1
      miss = _centroid(img) - d
      if np.abs(miss).max() < CENTRE_TOL:
        break
      centre = centre + miss / spec.q
      img = _image(spec, c, centre)
    out.append(img / img.sum())
  return np.stack(out)


def renderer(cfg):
  """:func:`unit_stamps` for ``config.degrade.psf`` as a ``star_field.Renderer``."""
  spec = psf.PSFSpec.from_config(cfg)
  return lambda coeffs, dxy: unit_stamps(coeffs, dxy, spec)
