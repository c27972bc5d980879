"""Spatially varying, flux-conserving deconvolution of a frame to a target PSF, given its PSF
field (``psf_fit``).

The correction (:func:`sharpen`) is Richardson–Lucy with the whole field, then a convolution
with the target:

    x ← x · Hᵀ( y / H x ),        out = T' ⊛ x,

``H`` the forward blur of the field (``optics.blur`` → ``convolve.spatially_varying_convolve``:
bilinear tent weights, a partition of unity, on the source pixels, then each node's PSF) and
``Hᵀ`` the same blur with the PSFs point-reflected (the adjoint up to the tent weights' variation
over a PSF; it keeps ``Hᵀ 1 = 1``). RL is flux-conserving (``Σ H x = Σ x``), keeps ``x ≥ 0`` and
restores each star towards a point however wide and asymmetric its PSF is, so every node
reaches the same round target ``T`` (one kernel for the whole frame; ``T'`` is ``T`` compensated
for the pixel grid, below): no per-node compromise
between noise gain and ringing, hence no broadened target spreading over the frame. RL needs a
positive frame: it runs on the frame minus its sky surface (``sep``'s background, smooth on
an eighth of the frame) plus ``PEDESTAL_SIGMA`` noise σ, floored at 0, and the sky, and what
the floor took off, go back afterwards (a region darker than the floor comes out as it went in;
an isolated pixel keeps its depth beyond the floor under what RL restored around it). The pedestal is also how far below
the sky RL's ``x ≥ 0`` lets a restored pixel go — how deep a dark moat can be: the synthetic
evaluation's ringing −1.3 σ with 10 σ, −0.4 σ with 3 σ, corner flux 1.024 → 1.013, empty-sky
noise 0.72 → 0.68 (shipped model; README, "A 3-σ pedestal"). Under the sky *level* (one number,
the previous release) a 10-σ pedestal was also what kept a frame's darker side above the floor
— a gradient of more than 10 σ was lifted there. Early stop (the discrepancy principle, made robust to
PSF-model error): RL stops when χ² per signal pixel of ``y − H x`` reaches the noise (≤ 1) or
stops falling (its least value so far by less than ``STALL`` over ``STALL_WINDOW`` iterations:
what is left is model error, more iterations would only amplify noise), or after ``max_iter``.
The least value, not the last: the extrapolation below can make χ² rise for a step or two, and
comparing the last values stopped one noise draw of the synthetic 3.8× frame (seed 2) after 19
iterations at χ² 1671 where the other ran 46 to 137 (README "Rounding the corners").

The update is damped where the data are already fitted to the noise (after White 1994, "Image
restoration using the damped Richardson–Lucy method"): with ``q`` the local χ² per pixel of
``y − H x`` (its mean over ``DAMP_BOX`` × ``DAMP_BOX`` px, in σ²), the ratio ``y / H x`` becomes
``1 + d · (y − H x) / H x`` with ``d = clip((q − 1) / (DAMP_CHI2 − 1), 0, 1)``: no update where
the residual is noise (q ≤ 1, the empty sky: its noise is not "restored"), plain RL where it is
not (q ≥ ``DAMP_CHI2``, the stars). White damps each pixel on its own residual; then the
few-σ outliers of pure noise keep being fitted and the empty-sky noise gain stays as it was
(``benchmarks/psf_field.py``: 1.40 undamped, 1.40–1.48 per pixel, 0.90 with the 9-px local
χ²). The damped update does not conserve the sum by itself (``Σ x' = Σ y − Σ (1 − d)(y − H x)``,
the noise left in the sky), so ``x`` is rescaled to ``Σ x = Σ y`` after each update.

Accelerated (Biggs & Andrews 1997, "Acceleration of iterative image restoration algorithms"):
each step starts from ``u = x_k + α d (x_k − x_{k−1})`` instead of ``x_k``, with ``α`` the
correlation of the last two RL steps ``g = x − u`` (``Σ g_k g_{k−1} / Σ g_{k−1}²``, clipped to
``[0, ACCEL_MAX]``), ``d`` the last step's damping (no extrapolation where it did not update:
undamped extrapolation raised the empty-sky noise gain to 1.59) and ``u`` kept ≥ 0 (``x_k``
where it would cross 0). The early stop reads the χ² of ``H u`` (one step behind ``x``).
``benchmarks/psf_field.py`` (fitted field): 57 steps instead of 118; FWHM centre / corner
2.12 / 2.26 px (2.12 / 2.28 plain), corner ellipticity 0.041 (0.057), flux 0.996 (0.997),
ringing −2.4 σ (−2.1), noise gain 0.95 in the empty sky (0.96) and 3.42 with the stars (3.03:
it sharpens the faint wings a little further). ``ACCEL_MAX`` 0.9: 41 steps, but 1.01 and 3.85.

RL restores each star to pixels: a star between pixel centres ends up split over its
neighbours, about the linear-interpolation (tent) weights, an extra blur of ``f (1 − f)`` px²
per axis at sub-pixel offset ``f`` (1/6 px² on average) that the target would add to. So ``x``
is convolved with the target divided by ``sinc(ν)^PIXEL_COMPENSATION`` per axis
(:func:`pixel_compensated`; sinc² is the tent's MTF, sinc the pixel box's): on the benchmark's
centre stars (2.10 px uncorrected, the target 2.00) the output FWHM is 2.23 px without it,
2.12 px with sinc and 2.02 px with sinc², but a full sinc² also sharpens stars along an axis on
which they sit on a pixel centre, and the split's per-star asymmetry shows as ellipticity
(corner 0.061 > issue 15's 0.06; 0.057 with sinc).

With the exact PSFs that split set the ellipticity floor: the synthetic evaluation's centre stars
came out at 1 − b/a 0.06 and its corners at 0.08, and more RL iterations made it worse (0.10 at
200, the true field's RL too) — a star between pixels restored to a point is split in proportion
to its offset, a per-star asymmetry no target removes. So RL need not restore stars to points:
``retain`` leaves a round Gaussian ``G_σ`` in the restored frame, taken out of the PSFs and of the
target beforehand (:func:`retained`: ``P_r ⊛ G_σ ≈ P``, ``T_r ⊛ G_σ ≈ T``, both ≥ 0; RL of the
kernels by the Gaussian, as a plain spectral division needs negative lobes that, clipped, made
the corners' stars 4 % too bright), so RL restores each star to a well-sampled blob of ``G_σ``
and ``T_r`` makes it the target. ``RETAIN_SIGMA`` 0.45 px (:func:`restoration`: the part of it
that the seeing kept in the frame does not already give is left, and the pixel compensation fades
as that seeing grows; ``correct_psf`` per PSF node, the training's in-step RL with the crop's
seeing): the synthetic evaluation's physics row FWHM 2.13 / 2.07 → 1.99 / 1.97 px (ideal 1.99 /
2.01), ellipticity centre / corner 0.061 / 0.082 → 0.051 / 0.063, ringing −3.4 → −2.2 σ, noise
gain with the stars 3.18 → 2.64; σ = 0.5 px sharpened beyond the target (1.92 / 1.90 px).

Where the field widens a node's PSF, RL cannot give back what the aberration took along the
PSF's narrow axis, and the restored stars keep a little of its anisotropy: at issue 15's 3.8×
the corner stars came out at 1 − b/a 0.07–0.10, RL with the *true* field too, whatever the
nodes, iterations or noise (README "The evaluation at issue 15's 3–6×"). So RL also leaves a
round blur at each node, of variance ``ROUNDING`` × the node's excess effective variance over
the field's best (:func:`rounding`; none at the sharpest node): taken out of the PSFs but not
put back by the target, it widens the corners a little and rounds them. ``ROUNDING`` 0.01 on the
3.8× frame (seed 0, fitted field): corner 1 − b/a 0.073 → 0.026, corner / centre FWHM 0.98 →
1.04; 0.005: 0.044, 1.01; 0.02: 0.028, 1.09 (README "Rounding the corners").

Large frames are deconvolved tile by tile (:func:`tile_plan`): cores of at most ``TILE`` px
with ``TILE_HALO`` px of the frame around them (reflected beyond its border), each tile with its
own node grid (the field's PSFs bilinearly interpolated at the tile's nodes, no farther apart
than the field's), its own RL and early stop, and its own target convolution; the tiles are
blended with a partition of unity (linear ramps ``TILE_RAMP`` px wide across the core
boundaries). The FFTs are sized by the tile, a tile without stars stops at once, and one
compiled RL (static shapes, compiled once) serves every tile; the tiles run on as many host
threads as there are CPU cores (``host_threads``: XLA runs one CPU computation on one core).
A frame of at most ``TILE`` px per side is one tile: the whole-frame RL, unchanged. Inside the
RL the PSFs' spectra are computed once (``optics.blurrer``), not at every iteration, and the
local χ² of the damping is a separable box mean (``noise.box_mean``), not an FFT convolution.

:func:`wiener_kernels` + :func:`deconvolve` is the linear reference (one Wiener/Tikhonov kernel
``T · conj(P_n) / (|P_n|² + λ)`` per node, blended like the forward blur): it keeps flux, but
where ``P_n`` is much wider than ``T`` the restored frequencies amplify white noise many times
and each MTF notch rings (``benchmarks/psf_field.py``).
"""
from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np

from flatai_jax.physics import convolve, host_threads, noise, optics, psf, star_detect

PEDESTAL_SIGMA = 3.0  # RL runs on the frame minus its sky plus this many noise σ (docstring)
SIGNAL_SIGMA = 5.0  # χ² of the early stop counts pixels this far above the sky
STALL, STALL_WINDOW = 0.005, 10  # stop when χ² falls by < 0.5 % over 10 iterations
ACCEL_MAX = 0.7  # cap on the extrapolation factor α of the accelerated RL (module docstring)
MAX_ITER = 200
DAMP_BOX = 9  # side (odd) of the window of the local χ² that damps the RL update, px (~ a PSF core)
DAMP_CHI2 = 4.0  # local χ² per pixel (σ²) from which RL runs undamped; none at ≤ 1 (noise)
PIXEL_COMPENSATION = 1.0  # the target is divided by sinc(ν)^this per axis (module docstring)
RETAIN_SIGMA = 0.45  # px: RL restores to blobs at least this σ wide, not to points (docstring)
SPLIT_VARIANCE = 1.0 / 6.0  # px², per axis: RL's split of a point over pixels, mean over offsets
KERNEL_RL_ITER = 300  # RL iterations that take the retained blur out of the PSFs and the target
ROUNDING = 0.01  # share of a node's excess PSF variance RL leaves as a round blur (docstring)
TRACED_BLOB = 1.0  # px: cap on the blob σ RL leaves inside a trace (a static padding of 4 σ)
TILE = 512  # tile core side, px (a frame larger than this on a side is tiled)
TILE_HALO = 64  # frame px around each core, ≥ 2 PSF kernels (31 px): RL's edge effects stay out
TILE_RAMP = 32  # width of the blending ramps across core boundaries, px (inside the halo)


def gaussian_psf(fwhm_px: float, size: int) -> np.ndarray:
  """``(size, size) float32`` round Gaussian of ``fwhm_px``, integrated over each pixel, centred
  on pixel ``size // 2``, summing to 1."""
  from scipy.special import erf
  s = fwhm_px / star_detect.FWHM_PER_SIGMA
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
  with jax.ensure_compile_time_eval():  # a constant also when called inside a trace
    if target == "diffraction":
      return np.asarray(optics.render_psfs(jnp.zeros(spec.num_modes), spec))
    if target == "centre":
      return np.asarray(optics.render_psfs(jnp.asarray(centre_coeffs), spec))
  return gaussian_psf(float(target), spec.kernel_size)


def _spectrum(kernel, n: int, xp=np):
  """rfft2 of a centred ``(..., k, k)`` kernel on an ``n × n`` grid, its centre at the origin
  (``xp``: NumPy, float64, or ``jax.numpy`` inside a trace)."""
  k = kernel.shape[-1]
  pad = xp.pad(kernel, [(0, 0)] * (kernel.ndim - 2) + [(0, n - k), (0, n - k)])
  return xp.fft.rfft2(xp.roll(pad, (-(k // 2), -(k // 2)), axis=(-2, -1)))


def _centred(spectrum, n: int, size: int, xp=np):
  """The central ``size × size`` of the inverse rfft2 on ``n × n`` (origin moved to the centre)."""
  full = xp.fft.irfft2(spectrum, s=(n, n))
  full = xp.roll(full, (size // 2, size // 2), axis=(-2, -1))
  return full[..., :size, :size]


def _traced(*arrays) -> bool:
  """Whether any of ``arrays`` is a JAX tracer (the function runs inside a trace)."""
  return any(isinstance(a, jax.core.Tracer) for a in arrays)


def pixel_compensated(target, power=PIXEL_COMPENSATION):
  """The target divided by ``sinc(ν_y)^power · sinc(ν_x)^power`` (``ν`` in cycles per px, at
  most 1/2: a gain of at most ``(π/2)^power``), so that it and the sub-pixel split of RL's
  restored stars together come nearer to the target (module docstring).

  Args:
    target: ``(..., k, k)`` centred on pixel ``k // 2``, each summing to 1.
    power: 0 = the target unchanged, 2 = the tent's MTF fully divided out; one, or one per
      target ``(...)``. Either may be traced (then computed in float32 JAX, else float64 NumPy).
  Returns:
    ``(..., k, k) float32``, each summing to 1 (flux kept).
  """
  xp = jnp if _traced(target, power) else np
  t = xp.asarray(target, xp.float32 if xp is jnp else np.float64)
  k = t.shape[-1]
  n = convolve.fft_size(2 * k)
  mtf = np.abs(np.sinc(np.fft.fftfreq(n)))[:, None] * np.abs(np.sinc(np.fft.rfftfreq(n)))[None, :]
  power = xp.asarray(power, t.dtype)[..., None, None]
  out = _centred(_spectrum(t, n, xp) / xp.asarray(mtf, t.dtype) ** power, n, k, xp)
  return (out / out.sum(axis=(-2, -1), keepdims=True)).astype(xp.float32)


def restoration(kept):
  """How RL restores a frame that keeps a blur of variance ``kept`` px² per axis (the seeing RL
  does not undo; 0: none): the σ of the round Gaussian it leaves besides, up to
  ``RETAIN_SIGMA`` (``retain``: the part of that blob the kept blur does not already give),
  and the power of the target's pixel compensation, which fades as the split's share of a
  restored star's variance (``SPLIT_VARIANCE / (SPLIT_VARIANCE + kept)``) and with the retained
  blob (none where all of ``RETAIN_SIGMA`` is left). One rule for the correction
  (``correct_psf``, ``kept`` per PSF node) and the training's in-step RL (:func:`sharpen_traced`,
  ``kept`` the crop's seeing).

  Args:
    kept: px², a float or an array (NumPy, or JAX inside a trace).
  Returns:
    ``(retain, compensation)``: px and the power of :func:`pixel_compensated`, ``kept``'s shape.
  """
  xp = jnp if isinstance(kept, jax.Array) else np
  r2 = xp.maximum(RETAIN_SIGMA ** 2 - kept, 0.0)
  split = SPLIT_VARIANCE / (SPLIT_VARIANCE + kept)
  return xp.sqrt(r2), PIXEL_COMPENSATION * split * (1.0 - r2 / RETAIN_SIGMA ** 2)


def effective_variance(psfs):
  """``1 / (4π Σ p²)`` per kernel, px² per axis: a Gaussian's σ² for a Gaussian, a width that
  counts an aberrated PSF's core and halo by its light (``psfs (..., k, k)`` each summing to 1;
  NumPy float64, or JAX inside a trace)."""
  xp = jnp if _traced(psfs) else np
  p = xp.asarray(psfs, xp.float32 if xp is jnp else np.float64)
  return 1.0 / (4.0 * math.pi * (p ** 2).sum(axis=(-2, -1)))


def rounding(psfs):
  """σ of the round blur RL leaves at each node of a PSF field besides :func:`restoration`'s
  (module docstring): ``√(ROUNDING · (v − min v))`` px, ``v`` the nodes'
  :func:`effective_variance` — none at the field's sharpest node, more where the field widens
  the PSF. ``psfs (gy, gx, k, k)`` → ``(gy, gx)`` (NumPy, or JAX inside a trace)."""
  v = effective_variance(psfs)
  xp = jnp if _traced(v) else np
  return xp.sqrt(ROUNDING * (v - v.min()))


def retained(kernels, sigma):
  """Kernels with a round Gaussian of ``sigma`` px taken out, ``K_r ⊛ G_σ ≈ K`` with
  ``K_r ≥ 0``: :data:`KERNEL_RL_ITER` Richardson–Lucy iterations of each kernel by the Gaussian
  (a plain division of the spectra would need negative lobes — a diffraction pattern is
  sharper than anything convolved with a Gaussian — and clipping them made the corrected stars
  3–4 % too bright in their aperture). RL with ``K_r`` restores stars to blobs of
  ``G_σ``; the target with ``G_σ`` taken out puts the rest of the target back (module docstring).

  Args:
    kernels: ``(..., k, k)`` centred on pixel ``k // 2``, each summing to 1.
    sigma: the Gaussian's σ, px, one or one per kernel (broadcast against ``kernels[..., 0, 0]``);
      0 leaves a kernel as it is. Either may be traced (the training step), ``sigma`` then at
      most ``TRACED_BLOB``.
  Returns:
    ``(broadcast shape, k, k) float32``, each summing to 1 (a NumPy array unless traced).
  """
  if _traced(kernels, sigma):
    return _retained(jnp.asarray(kernels, jnp.float32), jnp.asarray(sigma, jnp.float32),
                     reach=math.ceil(4.0 * TRACED_BLOB))
  kern = np.asarray(kernels, np.float32)
  sigma = np.asarray(sigma, np.float32)
  if not np.any(sigma > 0):
    return np.broadcast_to(kern, np.broadcast_shapes(kern.shape[:-2], sigma.shape)
                           + kern.shape[-2:]).astype(np.float32)
  return np.asarray(_retained(kern, sigma, reach=math.ceil(4.0 * float(sigma.max()))))


@functools.partial(jax.jit, static_argnames=("reach",))
def _retained(kern, sigma, reach: int):
  """:func:`retained` with the kernels padded by ``reach`` px (≥ 4 σ: no wrap-around)."""
  lead = jnp.broadcast_shapes(kern.shape[:-2], sigma.shape)
  k = kern.shape[-1]
  n = k + 2 * reach
  edge = [(0, 0)] * len(lead) + [(reach, reach)] * 2
  pad = jnp.pad(jnp.maximum(jnp.broadcast_to(kern, lead + (k, k)), 0.0), edge)
  g = _gaussian_mtf(jnp.broadcast_to(sigma, lead), n)
  blur = lambda v: jnp.fft.irfft2(jnp.fft.rfft2(v) * g, s=(n, n))  # G_σ, its own adjoint
  floor = 1e-6 * pad.max()  # below: round-off, which RL would amplify

  def step(_, x):
    gx = blur(x)
    return x * jnp.maximum(blur(jnp.where(gx > floor, pad / jnp.maximum(gx, floor), 1.0)), 0.0)

  x = jax.lax.fori_loop(0, KERNEL_RL_ITER, step, pad)[..., reach:reach + k, reach:reach + k]
  return x / x.sum(axis=(-2, -1), keepdims=True)


def _gaussian_mtf(sigma, n: int):
  """``(..., n, n // 2 + 1)`` rfft2 of round Gaussians of ``sigma (...)`` px on an ``n × n`` grid."""
  nu2 = np.fft.fftfreq(n)[:, None] ** 2 + np.fft.rfftfreq(n)[None, :] ** 2
  return jnp.exp(-2.0 * np.pi ** 2 * jnp.asarray(sigma, jnp.float32)[..., None, None] ** 2
                 * jnp.asarray(nu2, jnp.float32))


def widened(kernels, sigma):
  """Kernels convolved with a round Gaussian of ``sigma`` px, in JAX (the training's truth
  where RL leaves :func:`rounding`'s blur: ``data.synthetic.deconvolved_pair``).

  Args:
    kernels: ``(..., k, k)`` centred on pixel ``k // 2``, each summing to 1.
    sigma: px, at most ``TRACED_BLOB``, broadcast against ``kernels[..., 0, 0]``.
  Returns:
    ``(broadcast shape, k, k) float32``, each summing to 1 (what falls outside ``k`` dropped).
  """
  kern = jnp.asarray(kernels, jnp.float32)
  sigma = jnp.asarray(sigma, jnp.float32)
  lead = jnp.broadcast_shapes(kern.shape[:-2], sigma.shape)
  k, reach = kern.shape[-1], math.ceil(4.0 * TRACED_BLOB)
  n = k + 2 * reach
  pad = jnp.pad(jnp.broadcast_to(kern, lead + (k, k)),
                [(0, 0)] * len(lead) + [(reach, reach)] * 2)
  out = jnp.fft.irfft2(jnp.fft.rfft2(pad) * _gaussian_mtf(jnp.broadcast_to(sigma, lead), n),
                       s=(n, n))[..., reach:reach + k, reach:reach + k]
  return out / out.sum(axis=(-2, -1), keepdims=True)


def compensated_targets(target, compensation=PIXEL_COMPENSATION):
  """:func:`pixel_compensated` of one target or of one per PSF node.

  Args:
    target: ``(kt, kt)``, or ``(gy, gx, kt, kt)`` one per node of the PSF field.
    compensation: the power, a float or ``(gy, gx)`` one per node. Either may be traced.
  Returns:
    ``(1, 1, kt, kt)`` or ``(gy, gx, kt, kt) float32``, each summing to 1.
  """
  t = target if _traced(target) else np.asarray(target, np.float32)
  return pixel_compensated(t.reshape((1, 1) + t.shape) if t.ndim == 2 else t, compensation)


def wiener_kernels(psfs: np.ndarray, target: np.ndarray, lam: float = 1e-4,
                   size: int | None = None):
  """Linear deconvolution kernels of a PSF field to a target (the reference method).

  Node ``n``: ``K_n = T · conj(P_n) / (|P_n|² + λ)`` in Fourier space, cropped to ``size`` and
  scaled to sum to 1 (flux kept exactly); the node's PSF becomes ``T · |P_n|² / (|P_n|² + λ)``.

  Args:
    psfs: ``(gy, gx, k, k)`` PSFs, each summing to 1, centred on pixel ``k // 2``.
    target: ``(k, k)`` target PSF, summing to 1.
    lam: Tikhonov λ, relative to ``|P(0)|² = 1``.
    size: kernel side, px, odd (default ``2k − 1``).
  Returns:
    kernels ``(gy, gx, size, size) float32`` each summing to 1; ``gain (gy, gx)`` their
    white-noise gains ``√(Σ K²)``.
  """
  psfs = np.asarray(psfs, np.float64)
  k = psfs.shape[-1]
  size = size or 2 * k - 1
  if size % 2 != 1:
    raise ValueError(f"kernel size {size} must be odd")
  n = convolve.fft_size(size + k)
  p_hat = _spectrum(psfs, n)
  ker = _centred(_spectrum(np.asarray(target, np.float64), n) * np.conj(p_hat)
                 / (np.abs(p_hat) ** 2 + lam), n, size)
  ker = ker / ker.sum(axis=(-2, -1), keepdims=True)
  return ker.astype(np.float32), np.sqrt((ker ** 2).sum(axis=(-2, -1)))


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


@functools.partial(jax.jit, static_argnames=("max_iter",))
def richardson_lucy(y, psfs, sigma, signal, max_iter: int = MAX_ITER):
  """Spatially varying, damped, accelerated Richardson–Lucy with the early stop of the module
  docstring.

  Args:
    y: ``(H, W, C) float32`` positive frame (sky removed, pedestal added).
    psfs: ``(gy, gx, k, k)`` the PSF field (nodes over the whole frame), each summing to 1.
    sigma: ``(C,)`` pixel noise σ, ``y``'s unit.
    signal: ``(H, W, C) bool`` the pixels whose χ² decides the stop (at least one).
    max_iter: static cap on the iterations.
  Returns:
    ``x (H, W, C) float32`` the restored frame (the PSF removed), ``iterations ()`` int32,
    ``chi2 ()`` the least χ² per signal pixel of the steps' starts ``u`` (one step behind
    ``x``; that of ``y`` when no step ran), in σ².
  """
  blur = optics.blurrer(psfs, y.shape[:2])  # H: the PSF spectra once, not per iteration
  blur_t = optics.blurrer(psfs[..., ::-1, ::-1], y.shape[:2])  # Hᵀ
  count = jnp.maximum(jnp.sum(signal), 1)
  total = jnp.sum(y)
  w = STALL_WINDOW

  def chi2(hx):
    return jnp.sum(jnp.where(signal, ((y - hx) / sigma) ** 2, 0.0)) / count

  def damping(hx):  # (H, W, C) in [0, 1]: 0 where the local residual is noise, 1 where not
    q = noise.box_mean(((y - hx) / sigma) ** 2, DAMP_BOX // 2)
    return jnp.clip((q - 1.0) / (DAMP_CHI2 - 1.0), 0.0, 1.0)

  def cond(carry):  # hist[(i − 1) % w]: the least χ² of the steps' starts u so far; hist[i % w]
    # that of w − 1 steps back
    i, hist = carry[0], carry[-1]
    now, then = hist[(i - 1) % w], hist[i % w]
    stalled = (i >= w) & (then - now < STALL * then)
    return (i < max_iter) & (now > 1.0) & ~stalled

  def body(carry):
    i, x, x_prev, g, g_prev, d, hist = carry  # g: the last RL step x − u; d: its damping
    alpha = jnp.clip(jnp.sum(g * g_prev) / jnp.maximum(jnp.sum(g_prev * g_prev), 1e-30),
                     0.0, ACCEL_MAX)
    u = x + jnp.where(i >= 2, alpha, 0.0) * d * (x - x_prev)  # the extrapolated start
    u = jnp.where(u > 0.0, u, x)  # RL needs u ≥ 0: no extrapolation where it would cross 0
    hu = blur(u)
    d = damping(hu)
    x_new = u * blur_t(1.0 + d * (y - hu) / jnp.maximum(hu, 1e-12))
    x_new = x_new * (total / jnp.sum(x_new))  # the damped update alone does not keep the sum
    # the lowest χ² so far: a transient rise under the extrapolation is not a stall
    best = jnp.minimum(chi2(hu), hist[(i - 1) % w])
    return i + 1, x_new, x, x_new - u, g, d, hist.at[i % w].set(best)

  hist = jnp.full(w, jnp.inf).at[w - 1].set(chi2(blur(y)))
  zero = jnp.zeros_like(y)
  i, x, *_, hist = jax.lax.while_loop(cond, body, (jnp.int32(0), y, y, zero, zero, zero, hist))
  return x, i, hist[(i - 1) % w]


def tile_plan(n: int, tile: int = TILE, halo: int = TILE_HALO, ramp: int = TILE_RAMP):
  """Tiles along one axis of ``n`` px.

  Returns:
    ``origins (count,)`` int, each tile's first pixel in frame coordinates (negative or past
    the frame: reflected pixels); ``length`` the tile side, px (core + 2·halo, the same for
    every tile); ``weights (count, length) float32`` the blending weights at the tiles'
    pixels: ramps ``r(p − b) = clip((p − b)/ramp + ½, 0, 1)`` across each core boundary ``b``,
    ``w_i = r(p − b_i) − r(p − b_{i+1})``, so that they sum to 1 on every frame pixel.
  """
  if ramp > 2 * halo:
    raise ValueError(f"ramp {ramp} px must lie inside the halo ({halo} px each side)")
  count = max(1, math.ceil(n / tile))
  core = math.ceil(n / count)
  starts = np.arange(count) * core
  length = core + 2 * halo
  ramp_at = lambda p, b: np.clip((p - b) / ramp + 0.5, 0.0, 1.0)  # 0 → 1 across b
  w = np.empty((count, length))
  for i, s in enumerate(starts):
    p = s - halo + np.arange(length)  # frame coordinates of the tile's pixels
    w[i] = ((ramp_at(p, s) if i > 0 else 1.0)
            - (ramp_at(p, starts[i + 1]) if i < count - 1 else 0.0))
  return starts - halo, length, w.astype(np.float32)


def _tile_psfs(psfs: np.ndarray, n: tuple[int, int], origins, length: tuple[int, int]):
  """``(ty, tx, gty, gtx, k, k) float32`` each tile's node PSFs: the field's ``(gy, gx, k, k)``
  PSFs (nodes ``convolve.node_positions`` over the ``n = (H, W)`` frame) bilinearly
  interpolated (clamped outside the frame) at the tile's nodes, no farther apart than the
  field's."""
  mats = []
  for axis in (0, 1):
    g = psfs.shape[axis]
    nodes = convolve.node_positions(n[axis], g)
    if g == 1:
      mats.append(np.ones((len(origins[axis]), 1, 1)))
      continue
    gt = max(2, math.ceil((length[axis] - 1) / (nodes[1] - nodes[0])) + 1)
    pos = origins[axis][:, None] + convolve.node_positions(length[axis], gt)[None, :]
    eye = np.eye(g)
    mats.append(np.stack([np.interp(pos, nodes, eye[j]) for j in range(g)], -1))  # (t, gt, g)
  return np.einsum("yab,xcd,bdkl->yxackl", mats[0], mats[1],
                   np.asarray(psfs, np.float64)).astype(np.float32)


def _rl_frame(image, sky, sigma):
  """What RL runs on (module docstring): ``y`` the frame minus its sky plus ``PEDESTAL_SIGMA``
  σ, kept ≥ 1e-3 σ; ``signal`` the pixels ``SIGNAL_SIGMA`` σ above the pedestal; and σ itself,
  kept above 1e-12 of the frame's largest value (a noise-free frame). RL's result goes back
  onto ``image − y``: the sky less the pedestal, and what the floor took off where the frame is
  darker than the sky by more than the pedestal (so that no dark region is lifted).
  ``image (H, W, C)``, ``sky (C,)`` or ``(H, W, C)``, ``sigma (C,)``; NumPy or JAX arrays."""
  xp = jnp if isinstance(image, jax.Array) else np
  sigma = xp.maximum(sigma, 1e-12 * xp.maximum(xp.abs(image).max(), 1e-30))
  pedestal = PEDESTAL_SIGMA * sigma
  y = xp.maximum(image - sky + pedestal, 1e-3 * sigma)
  return y, y > pedestal + SIGNAL_SIGMA * sigma, sigma


def sharpen_traced(image, psfs, target, max_iter: int, kept=0.0):
  """:func:`sharpen` of one crop inside a trace (the training step's deconvolved model
  input, ``data.synthetic``): the same RL, target and restoration rule (:func:`restoration`),
  the crop's sky its median and its noise σ ``noise.second_difference_sigma`` against that
  median (``sharpen`` takes both from ``sep``'s background on the host), never tiled.

  Args:
    image: ``(H, W, C) float32`` linear, finite.
    psfs: ``(gy, gx, k, k)`` the crop's PSF field, each summing to 1.
    target: ``(kt, kt)`` the target PSF (:func:`target_psf`), summing to 1.
    max_iter: static cap on the RL iterations.
    kept: variance of the blur the crop keeps besides ``psfs`` (its seeing), px² per axis,
      maybe traced: RL leaves ``restoration(kept)``'s blob and the target is compensated by its
      power, as ``correct_psf`` does with the seeing it keeps in a frame; and :func:`rounding`'s
      blur of ``psfs``, which the target does not put back.
  Returns:
    ``(H, W, C) float32`` the crop with PSF ``target`` (widened by :func:`rounding`'s blur
    where the field is wider than at its sharpest node), its sky level kept.
  """
  planes = jnp.moveaxis(image, -1, 0)
  sky = jnp.median(planes.reshape(planes.shape[0], -1), axis=1)
  sigma = jnp.stack([noise.second_difference_sigma(p, p - s) for p, s in zip(planes, sky)])
  y, signal, sigma = _rl_frame(image, sky, sigma)
  retain, compensation = restoration(jnp.asarray(kept, jnp.float32))
  blob = jnp.minimum(jnp.sqrt(retain ** 2 + rounding(jnp.asarray(psfs)) ** 2), TRACED_BLOB)
  psfs, target = retained(psfs, blob), retained(jnp.asarray(target), retain)
  out, _, _ = _sharpen_tile(y, psfs, sigma, signal, compensated_targets(target, compensation),
                            max_iter=max_iter)
  return out + (image - y)


@functools.partial(jax.jit, static_argnames=("max_iter",))
def _sharpen_tile(y, psfs, sigma, signal, target, max_iter: int):
  """:func:`richardson_lucy` then the target, on one tile (or the whole frame).

  Args: ``y (L, L', C)``, ``psfs (gty, gtx, k, k)``, ``signal (L, L', C)``, ``sigma (C,)``,
  ``target (1, 1, kt, kt)`` or one per node ``(gty, gtx, kt, kt)`` (:func:`compensated_targets`).
  Returns ``T' ⊛ x (L, L', C)``, the iterations ``()`` and the last χ² ``()``.
  """
  x, i, c = richardson_lucy(y, psfs, sigma, signal, max_iter=max_iter)
  return optics.blur(x, target), i, c


def sharpen(image: np.ndarray, psfs: np.ndarray, target: np.ndarray,
            max_iter: int = MAX_ITER, tile: int = TILE, workers: int | None = None,
            compensation: float = PIXEL_COMPENSATION, retain=0.0, round_blur=0.0
            ) -> tuple[np.ndarray, int, float]:
  """Deconvolves a frame with its PSF field to a round target (module docstring).

  Args:
    image: ``(H, W, C) float32`` linear, finite; the frame whose PSF field is ``psfs``
      (nodes ``convolve.node_positions`` over the whole frame).
    psfs: ``(gy, gx, k, k)`` each summing to 1 (e.g. ``psf_fit.PSFField.psfs``).
    target: ``(kt, kt)`` the target PSF, summing to 1 (:func:`target_psf`), or one per node of
      ``psfs`` ``(gy, gx, kt, kt)``; RL's result is convolved with its
      :func:`pixel_compensated` version (:func:`compensated_targets`).
    max_iter: cap on the RL iterations.
    tile: tile core side, px (module docstring); a frame no larger is one whole-frame RL.
    workers: tiles deconvolved at once, on threads (default: the CPU cores,
      ``host_threads.cpu_workers``); the result does not depend on it.
    compensation: the power of :func:`pixel_compensated`, a float or one per node ``(gy, gx)``
      (RL restoring stars to points splits them over pixels; a restored frame that keeps a
      seeing wider than that split needs less).
    retain: σ of the round Gaussian blur RL leaves in the restored frame, px, a float or one per
      node ``(gy, gx)`` (:func:`retained`, taken out of ``psfs`` and ``target``): 0 restores
      stars to points, split over pixels by their sub-pixel offsets.
    round_blur: σ of a round blur RL leaves besides, taken out of ``psfs`` but not put back by
      the target, px, a float or one per node (:func:`rounding`: the field's wide nodes come
      out rounder and a little wider).
  Returns:
    ``(H, W, C) float32`` the frame with PSF ``target`` everywhere, widened by ``round_blur``
    (the sky and its level kept; the sum kept up to the light the reflect-padded border
    exchanges with the outside); the RL iterations run (tiled: the most of any tile); the last χ² per signal
    pixel (σ²; tiled: the largest of any tile).
  """
  image = np.asarray(image, np.float32)
  sky = np.empty_like(image)
  sigma = np.empty(image.shape[-1], np.float32)
  for c in range(image.shape[-1]):  # the sky surface and the noise σ per channel
    data, _ = star_detect.background(image[..., c])
    sky[..., c] = image[..., c] - data
    # second differences, not the fit's σ off the sources: on correlated noise (plates, mosaics)
    # they read low and RL runs longer, which restored a plate's corners closer to the truth
    # (README "RL's noise σ off the sources: measured, not kept")
    sigma[c] = star_detect.sky_noise(image[..., c], data)
  y, signal, sigma = _rl_frame(image, sky, sigma)
  h, w, c = image.shape
  blob = np.hypot(retain, round_blur)
  if np.any(blob > 0):
    psfs = retained(psfs, blob)
  if np.any(np.asarray(retain) > 0):
    target = retained(target, retain)
  target = compensated_targets(target, compensation)
  sigma = jnp.asarray(sigma)
  if max(h, w) <= tile:
    out, iters, chi2 = jax.device_get(_sharpen_tile(
        jnp.asarray(y), jnp.asarray(psfs, jnp.float32), sigma, jnp.asarray(signal),
        jnp.asarray(target), max_iter=int(max_iter)))
    return out + (image - y), int(iters), float(chi2)
  (oy, ly, wy), (ox, lx, wx) = tile_plan(h, tile), tile_plan(w, tile)
  padded_y, padded_signal = (np.pad(a, ((-oy[0], oy[-1] + ly - h), (-ox[0], ox[-1] + lx - w),
                                        (0, 0)), mode="reflect") for a in (y, signal))
  tile_psfs = _tile_psfs(psfs, (h, w), (oy, ox), (ly, lx))
  tile_targets = (_tile_psfs(target, (h, w), (oy, ox), (ly, lx)) if target.shape[:2] != (1, 1)
                  else np.broadcast_to(target, (len(oy), len(ox)) + target.shape))
  cells = list(itertools.product(range(len(oy)), range(len(ox))))
  crop = lambda a, i, j: a[oy[i] - oy[0]:oy[i] - oy[0] + ly, ox[j] - ox[0]:ox[j] - ox[0] + lx]
  tiles = [(crop(padded_y, i, j), tile_psfs[i, j], sigma, crop(padded_signal, i, j),
            tile_targets[i, j]) for i, j in cells]  # host views: each goes to the device in turn
  fn = _sharpen_tile.lower(*tiles[0], max_iter=int(max_iter)).compile()
  results = host_threads.map_compiled(fn, tiles, workers)
  out = np.zeros((oy[-1] - oy[0] + ly, ox[-1] - ox[0] + lx, c), np.float32)
  for (a, b), (tile_out, _, _) in zip(cells, results):
    sy, sx = oy[a] - oy[0], ox[b] - ox[0]
    out[sy:sy + ly, sx:sx + lx] += tile_out * (wy[a][:, None, None] * wx[b][None, :, None])
  out = out[-oy[0]:-oy[0] + h, -ox[0]:-ox[0] + w]
  iters = max(int(r[1]) for r in results)
  return out + (image - y), iters, max(float(r[2]) for r in results)
