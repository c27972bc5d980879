"""Field-dependent aberrations of a random optical system, and its PSF field over a crop.

Field position ``h = (hx, hy)`` (``geometry.field_position``) is measured from the
sensor centre in units of the half-diagonal (``|h| = 1`` at the corners; x along
columns, y along rows, pixels square). Seidel-like model, Noll coefficients in waves RMS at λ_ref:

- coma ∝ h, oriented radially: ``(Z8, Z7) = coma · (hx, hy)``; a positive
  ``coma`` throws the flare away from the centre (its sharp core inwards);
- astigmatism ∝ h², oriented with the field angle φ:
  ``(Z6, Z5) = astigmatism · |h|² (cos 2φ, sin 2φ) = astigmatism · (hx² − hy², 2 hx hy)``;
- field curvature ∝ h² and sensor tilt ∝ h add to the defocus:
  ``Z4 = defocus + field_curvature · |h|² + tilt · h``;
- constant spherical (Z11) and trefoil (Z9, Z10, a random orientation);
- no distortion: Zernike coma has a mean slope (its PSF centroid moves by
  ``2√8 q · coma`` px, ``(1 + 3ε²)`` times that with a central obstruction ε), so
  a tilt ``(Z2, Z3) = −√2 (1 + 3ε²) (Z8, Z7)`` puts every PSF's centroid back on
  its chief ray; a flat image then stays flat through the PSF field (the flat
  field F alone owns brightness changes across the sensor).

``draw_system`` draws one such system per training example from the ranges in
``config.degrade.psf``; ``psf_field`` turns it into the PSF grid of a crop.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from flatai_jax.physics import convolve, geometry, psf


class OpticalSystem(NamedTuple):
  """Aberration amplitudes of one system, float32, waves RMS at λ_ref."""
  defocus: jax.Array  # () constant Z4
  spherical: jax.Array  # () constant Z11
  trefoil: jax.Array  # (2,) constant (Z9, Z10)
  coma: jax.Array  # () Z7/Z8 amplitude at |h| = 1
  astigmatism: jax.Array  # () Z5/Z6 amplitude at |h| = 1
  field_curvature: jax.Array  # () Z4 added at |h| = 1
  tilt: jax.Array  # (2,) Z4 added per unit hx, hy (sensor tilt)


def field_coefficients(system: OpticalSystem, h, num_modes: int, obstruction: float = 0.0):
  """Noll coefficients of the system at field positions.

  Args:
    system: OpticalSystem (scalars or arrays broadcasting against ``h[..., 0]``).
    h: ``(..., 2)`` field vectors (``geometry.field_position``).
    num_modes: static ``J ≥ 11``.
    obstruction: static central obstruction ratio of the pupil (sets the tilt
      that cancels coma's mean slope).
  Returns:
    ``(..., J) float32`` waves RMS; piston is zero, tilt only cancels coma's.
  """
  if num_modes < 11:
    raise ValueError(f"the field model needs num_modes >= 11, got {num_modes}")
  hx, hy = h[..., 0], h[..., 1]
  h2 = hx * hx + hy * hy
  zero = jnp.zeros_like(hx)
  coeffs = [zero] * num_modes
  g_tilt = -math.sqrt(2.0) * (1.0 + 3.0 * obstruction ** 2) * system.coma
  coeffs[1] = g_tilt * hx
  coeffs[2] = g_tilt * hy
  coeffs[3] = system.defocus + system.field_curvature * h2 + system.tilt[0] * hx + system.tilt[1] * hy
  coeffs[4] = system.astigmatism * 2.0 * hx * hy  # Z5 sin 2θ
  coeffs[5] = system.astigmatism * (hx * hx - hy * hy)  # Z6 cos 2θ
  coeffs[6] = system.coma * hy  # Z7 coma along y
  coeffs[7] = system.coma * hx  # Z8 coma along x
  coeffs[8] = zero + system.trefoil[0]
  coeffs[9] = zero + system.trefoil[1]
  coeffs[10] = zero + system.spherical
  return jnp.stack(coeffs, axis=-1).astype(jnp.float32)


def draw_system(key, cfg) -> OpticalSystem:
  """A random optical system from the ranges in ``cfg`` (``config.degrade.psf``).

  Scalar amplitudes are uniform in their ``(low, high)`` range; trefoil gets a
  uniform magnitude in its range and a uniform orientation; the sensor tilt a
  uniform magnitude in ``[0, sensor_tilt]`` and a uniform direction.
  """
  ks = jax.random.split(key, 9)

  def uniform(k, rng):
    return jax.random.uniform(k, (), jnp.float32, rng[0], rng[1])

  def polar(k, magnitude):  # a 2-vector of that length in a uniform direction
    ang = jax.random.uniform(k, (), jnp.float32, 0.0, 2.0 * jnp.pi)
    return magnitude * jnp.stack([jnp.cos(ang), jnp.sin(ang)])

  return OpticalSystem(
      defocus=uniform(ks[0], cfg.defocus),
      spherical=uniform(ks[1], cfg.spherical),
      trefoil=polar(ks[3], uniform(ks[2], cfg.trefoil)),
      coma=uniform(ks[4], cfg.coma),
      astigmatism=uniform(ks[5], cfg.astigmatism),
      field_curvature=uniform(ks[6], cfg.field_curvature),
      tilt=polar(ks[8], uniform(ks[7], (0.0, cfg.sensor_tilt))))


def node_coefficients(key, coords, cfg, aspect: float):
  """Noll coefficients at the PSF grid nodes of one crop for a freshly drawn optical system.

  Args:
    key: PRNG key of this example's optics.
    coords: ``(H, W, 2)`` global sensor coordinates of the crop.
    cfg: ``config.degrade.psf``.
    aspect: sensor height / width.
  Returns:
    ``(gy, gx, J) float32`` waves RMS at λ_ref, at :func:`convolve.node_coords`.
  """
  system = draw_system(key, cfg)
  nodes = convolve.node_coords(coords, tuple(cfg.grid))
  return field_coefficients(system, geometry.field_position(nodes, aspect), cfg.num_modes,
                            float(cfg.obstruction))


def render_psfs(coeffs, cfg):
  """PSFs of Noll coefficients as the forward model renders them (``psf.centred``).

  Args:
    coeffs: ``(..., J)`` waves RMS at λ_ref.
    cfg: ``config.degrade.psf``, or its ``psf.PSFSpec`` (hashable: a cache key).
  Returns:
    ``(..., k, k) float32``, each summing to 1 with its centroid on the centre
    pixel and the kernel window around it (the kernel cuts an asymmetric PSF's far
    wing, which would otherwise move its centroid and distort the image).
  """
  spec = cfg if isinstance(cfg, psf.PSFSpec) else psf.PSFSpec.from_config(cfg)
  return psf.centred(coeffs, spec)


def psf_field(key, coords, cfg, aspect: float):
  """PSF grid of one crop for a freshly drawn optical system.

  Args:
    key: PRNG key of this example's optics.
    coords: ``(H, W, 2)`` global sensor coordinates of the crop.
    cfg: ``config.degrade.psf``.
    aspect: sensor height / width.
  Returns:
    ``(gy, gx, k, k) float32`` PSFs at the grid nodes of the crop
    (:func:`convolve.node_coords`), from :func:`render_psfs`.
  """
  return render_psfs(node_coefficients(key, coords, cfg, aspect), cfg)


def blurrer(psfs, hw: tuple[int, int]):
  """:func:`blur` by one PSF field as a function of the image, the PSFs' spectra computed once
  (an iteration that blurs many images by one field: Richardson–Lucy).

  Args:
    psfs: ``(gy, gx, k, k)`` from :func:`psf_field`.
    hw: static ``(H, W)`` of the images.
  Returns:
    ``image (H, W, C) float32 -> (H, W, C) float32``, the same as ``blur(image, psfs)``.
  """
  gy, gx, k, _ = psfs.shape
  m = k // 2
  kernels = convolve.cell_kernels(psfs, (hw[0] + 2 * m, hw[1] + 2 * m), margin=m)

  def apply(image):
    padded = jnp.pad(image, ((m, m), (m, m), (0, 0)), mode="reflect")
    out = convolve.convolve_cells(padded, kernels, (gy, gx), k, margin=m)
    return out[m:-m, m:-m] if m else out
  return apply


def blur(image, psfs):
  """The crop seen through its PSF field: reflect-padded spatially varying convolution.

  Light from outside the crop is approximated by reflecting the crop, so its
  borders are not darkened.

  Args:
    image: ``(H, W, C) float32`` linear.
    psfs: ``(gy, gx, k, k)`` from :func:`psf_field`.
  Returns:
    ``(H, W, C) float32``.
  """
  return blurrer(psfs, image.shape[:2])(image)
