"""Spatially varying, flux-conserving deconvolution of a frame to a target PSF, given its PSF
field (``psf_fit``): one Wiener/Tikhonov kernel per PSF node, blended by overlap-add.

At node ``n`` with PSF ``P_n`` the kernel is, in Fourier space,

    K_n = T · conj(P_n) / (|P_n|² + λ_n),   scaled so that K_n(0) = 1,

so the frame's PSF there becomes ``E_n = K_n ⊛ P_n = T · |P_n|² / (|P_n|² + λ_n)``: the target
``T`` times a factor in [0, 1] at every frequency: the result is never sharper than the target.
The kernels are applied exactly like the forward blur (``optics.blur`` →
``convolve.spatially_varying_convolve``: bilinear tent weights, a partition of unity, on the
source pixels, then each node's kernel); every kernel sums to 1, so the total flux is kept
exactly and a flat background stays flat.

Regularisation. λ comes from the noise (:func:`noise_lambda`: Wiener's noise-to-signal ratio
for the frame's typical star). For white pixel noise of any level σ the output noise is
``g · σ`` with ``g = √(Σ K²)`` (the kernel's noise gain); where restoring the target would
amplify the noise by more than ``max_noise_gain`` or ring (the effective PSF dipping below
zero by more than ``max_ringing`` of its peak: a dark halo), the node deconvolves to the
target broadened by the smallest Gaussian that keeps both (:func:`wiener_kernels`). A node
whose PSF already equals the target keeps ``K ≈ δ``.
"""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from flatai_jax.physics import convolve, optics, psf

BROADENING_PX = np.concatenate([[0.0], np.geomspace(0.2, 8.0, 40)])  # target σ_n tried, px
MAX_NOISE_GAIN = 1.5  # the deconvolution may amplify white noise by at most this
MAX_RINGING = 0.02  # effective PSF minimum ≥ −this × its peak (no dark halos)


def gaussian_psf(fwhm_px: float, size: int) -> np.ndarray:
  """``(size, size) float32`` round Gaussian of ``fwhm_px``, integrated over each pixel, centred
  on pixel ``size // 2``, summing to 1."""
  from scipy.special import erf
  s = fwhm_px / (2.0 * math.sqrt(2.0 * math.log(2.0)))
  x = np.arange(size) - size // 2
  g = erf((x + 0.5) / (s * math.sqrt(2.0))) - erf((x - 0.5) / (s * math.sqrt(2.0)))
  p = np.outer(g, g)
  return (p / p.sum()).astype(np.float32)


def target_psf(target, cfg, centre_coeffs=None) -> np.ndarray:
  """The PSF to deconvolve to, ``(k, k) float32`` summing to 1.

  Args:
    target: ``"diffraction"`` (the system's pupil without aberrations),
      ``"centre"`` (the fitted on-axis PSF, ``centre_coeffs``), or a float:
      the FWHM in px of a round Gaussian.
    cfg: ``config.degrade.psf`` (or its ``psf.PSFSpec``).
    centre_coeffs: ``(J,)`` Noll coefficients on the axis (``"centre"`` only).
  """
  spec = cfg if isinstance(cfg, psf.PSFSpec) else psf.PSFSpec.from_config(cfg)
  if target == "diffraction":
    return np.asarray(optics.render_psfs(jnp.zeros(spec.num_modes), spec))
  if target == "centre":
    return np.asarray(optics.render_psfs(jnp.asarray(centre_coeffs), spec))
  return gaussian_psf(float(target), spec.kernel_size)


def _spectrum(kernel: np.ndarray, n: int) -> np.ndarray:
  """rfft2 of a centred ``(..., k, k)`` kernel on an ``n × n`` grid, its centre at the origin."""
  k = kernel.shape[-1]
  pad = np.zeros(kernel.shape[:-2] + (n, n))
  pad[..., :k, :k] = kernel
  return np.fft.rfft2(np.roll(pad, (-(k // 2), -(k // 2)), axis=(-2, -1)))


def _centred(spectrum: np.ndarray, n: int, size: int) -> np.ndarray:
  """The central ``size × size`` of the inverse rfft2 on ``n × n`` (origin moved to the centre)."""
  full = np.fft.irfft2(spectrum, s=(n, n))
  full = np.roll(full, (size // 2, size // 2), axis=(-2, -1))
  return full[..., :size, :size]


def _gaussian_taper(n: int, sigma_px: np.ndarray) -> np.ndarray:
  """``(S, n, n // 2 + 1)`` rfft2 of round Gaussians of ``(S,)`` σ px (σ = 0: all ones)."""
  fy = np.fft.fftfreq(n)[:, None]
  fx = np.fft.rfftfreq(n)[None, :]
  return np.exp(-2.0 * np.pi ** 2 * (fy ** 2 + fx ** 2) * sigma_px[:, None, None] ** 2)


def wiener_kernels(psfs: np.ndarray, target: np.ndarray, lam: float = 1e-4,
                   size: int | None = None, max_noise_gain: float = MAX_NOISE_GAIN,
                   max_ringing: float = MAX_RINGING):
  """Deconvolution kernels of a PSF field to a target.

  Node ``n`` deconvolves to ``T_n = T ⊛ Gaussian(σ_n)``, ``σ_n`` from ``BROADENING_PX``: the
  smallest whose kernel amplifies white noise by at most ``max_noise_gain`` and whose
  effective PSF ``K_n ⊛ P_n`` dips below zero by at most ``max_ringing`` of its peak; then,
  half-way between neighbouring nodes, where a star is deconvolved by the mean of both
  kernels and its PSF is about the mean of both PSFs, the same ringing bound must hold, or
  both nodes broaden one step more. Where the frame's PSF already is the target, ``σ_n = 0``.

  Args:
    psfs: ``(gy, gx, k, k)`` PSFs, each summing to 1, centred on pixel ``k // 2``.
    target: ``(k, k)`` target PSF, summing to 1.
    lam: Tikhonov λ (:func:`noise_lambda`), relative to ``|P(0)|² = 1``.
    size: kernel side, px, odd (default ``2k − 1``).
    max_noise_gain, max_ringing: see above.
  Returns:
    kernels ``(gy, gx, size, size) float32`` each summing to 1; ``broadening (gy, gx)`` σ_n,
    px; ``gain (gy, gx)`` the noise gains; ``effective (gy, gx, k, k)`` the node PSFs after
    deconvolution, ``K_n ⊛ P_n``.
  """
  psfs = np.asarray(psfs, np.float64)
  gy, gx, k, _ = psfs.shape
  size = size or 2 * k - 1
  if size % 2 != 1:
    raise ValueError(f"kernel size {size} must be odd")
  n = convolve.fft_size(size + k)
  t_hat = _spectrum(np.asarray(target, np.float64), n)
  taper = _gaussian_taper(n, BROADENING_PX)
  p_hat = _spectrum(psfs, n)  # (gy, gx, n, n // 2 + 1)
  last = len(BROADENING_PX) - 1
  ring = lambda e: e.min(axis=(-2, -1)) / e.max(axis=(-2, -1))

  def kernel(i, j, s):  # (…, size, size) kernels of node (i, j) for taper index/indices s
    ker = _centred(t_hat * taper[s] * np.conj(p_hat[i, j]) / (np.abs(p_hat[i, j]) ** 2 + lam),
                   n, size)
    return ker / ker.sum(axis=(-2, -1), keepdims=True)  # cropped, then flux-conserving exactly

  pick = np.zeros((gy, gx), int)
  for i in range(gy):
    for j in range(gx):
      ker = kernel(i, j, slice(None))
      g = np.sqrt((ker ** 2).sum(axis=(-2, -1)))
      ok = np.flatnonzero((g <= max_noise_gain)
                          & (ring(_centred(_spectrum(ker, n) * p_hat[i, j], n, k)) >= -max_ringing))
      pick[i, j] = ok[0] if len(ok) else last
  pairs = [((i, j), (i + di, j + dj)) for i in range(gy) for j in range(gx)
           for di, dj in ((0, 1), (1, 0)) if i + di < gy and j + dj < gx]
  for _ in range(last):  # broaden both nodes of a pair that rings half-way
    bumped = False
    for a, b in pairs:
      k_mid = 0.5 * (_spectrum(kernel(*a, pick[a]), n) + _spectrum(kernel(*b, pick[b]), n))
      if ring(_centred(k_mid * 0.5 * (p_hat[a] + p_hat[b]), n, k)) < -max_ringing:
        for node in (a, b):
          if pick[node] < last:
            pick[node] += 1
            bumped = True
    if not bumped:
      break
  kernels = np.stack([np.stack([kernel(i, j, pick[i, j]) for j in range(gx)]) for i in range(gy)])
  gain = np.sqrt((kernels ** 2).sum(axis=(-2, -1)))
  effective = _centred(_spectrum(kernels, n) * p_hat, n, k)
  return kernels.astype(np.float32), BROADENING_PX[pick], gain, effective.astype(np.float32)


def noise_lambda(noise: float, flux: float, area_px: float) -> float:
  """Tikhonov λ from the noise: ``(σ √A / F)²``, the noise power over the signal power of a
  star of flux ``F`` per Fourier coefficient of an ``A``-px region (Wiener's ratio at zero
  frequency), at least 1e-7."""
  return max((noise * math.sqrt(area_px) / max(flux, 1e-12)) ** 2, 1e-7)


def deconvolve(image: np.ndarray, kernels: np.ndarray) -> np.ndarray:
  """Applies a field of deconvolution kernels (:func:`wiener_kernels`) to a frame.

  Args:
    image: ``(H, W, C) float32`` linear, the frame whose PSF field gave the kernels (node
      positions ``convolve.node_positions`` over the whole frame).
    kernels: ``(gy, gx, K, K)`` each summing to 1.
  Returns:
    ``(H, W, C) float32``; its sum equals the input's up to the light that the
    reflect-padded border exchanges with the outside.
  """
  return np.asarray(optics.blur(jnp.asarray(image, jnp.float32), jnp.asarray(kernels)))
