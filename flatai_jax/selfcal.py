"""Joint self-calibration of a dithered session: one flat on the sensor, one sky, a G per frame.

A dithered sequence sees the same sky ``T`` through the same flat ``F`` at different sensor
positions:

    observed_i(p) = T(p + d_i) · F(p) + G_i(p),

``p`` a sensor pixel, ``d_i`` frame i's offset on the sky (measured here: phase correlation of
the high-passed frames, no plate solving), ``G_i`` a smooth additive field per frame (a
Legendre polynomial of degree ``G_DEGREE``). The ratio of two frames at the same *sky*
position is ``F(p − d_i) / F(p − d_j)``: wherever the sky has structure — a nebula, a galaxy, a
dense field, the very scenes a single frame cannot tell from its flat — it measures the flat's
change over the dither. :func:`fit` alternates the three least-squares problems:

1. ``T`` = the median over frames of ``(observed_i − G_i) / F`` registered on the sky;
2. ``G_i`` = the polynomial fit of ``observed_i − T_i·F`` per frame, minus the mean of the
   frames' fits (a G common to every frame cannot be told from the sky; it stays in ``T``);
3. ``F`` = ``Σ_i T_i·(observed_i − G_i) / Σ_i T_i²`` per pixel, both sums smoothed by
   ``SMOOTH_PX`` (normalised convolution: bright sky weighs most), median 1.

Each round passes information over one dither, so the scales of F well beyond the dithers
converge slowly (``ITERATIONS`` rounds, chosen on the sequence evaluation, see the README);
what a session cannot tell apart — a G common to all frames and the large scales of F, both
fixed on the sensor — is decided by the sky surface of ``T`` afterwards (``session``).
Host-side NumPy: a session is a loop over files, not a training step.
"""
from __future__ import annotations

import dataclasses
import warnings

import numpy as np
from scipy import ndimage

from flatai_jax import sky_surface

ITERATIONS = 60  # alternating rounds
SMOOTH_PX = 4.0  # Gaussian σ of F's normalised convolution, px of the fitted planes
G_DEGREE = 2  # Legendre degree of each frame's G
HIGH_PASS_PX = 8.0  # registration: frames minus their Gaussian smoothing of this σ


@dataclasses.dataclass
class JointFit:
  """The result of :func:`fit`.

  Attributes:
    F: ``(h, w) float64``, median 1, sensor coordinates.
    T: ``(h + span_y, w + span_x) float64`` sky, NaN where no frame saw it.
    G: ``(n, h, w) float64`` each frame's G (mean over frames 0).
    offsets: ``(n, 2) int`` (dy, dx): frame i's pixel p sees ``T[p + offsets[i]]``.
  """
  F: np.ndarray
  T: np.ndarray
  G: np.ndarray
  offsets: np.ndarray

  def sky_of(self, i: int) -> np.ndarray:
    """``(h, w)`` the part of ``T`` frame i sees."""
    h, w = self.F.shape
    dy, dx = self.offsets[i]
    return self.T[dy:dy + h, dx:dx + w]


def offsets(planes: np.ndarray) -> np.ndarray:
  """Integer offsets of ``(n, h, w)`` frames on the sky, ``(n, 2)`` (dy, dx) ≥ 0: frame i's
  pixel p sees the sky at ``p + offsets[i]`` (frame coordinates of the most shifted one).
  Phase correlation against the first frame, high-passed so that gradients and vignetting do
  not pull the peak to zero."""
  high = lambda a: a - ndimage.gaussian_filter(a, HIGH_PASS_PX)
  h, w = planes.shape[1:]
  reference = np.conj(np.fft.rfft2(high(np.nan_to_num(planes[0]))))
  out = []
  for plane in planes:
    c = np.fft.irfft2(reference * np.fft.rfft2(high(np.nan_to_num(plane))), s=(h, w))
    dy, dx = np.unravel_index(np.argmax(c), c.shape)
    out.append((-(dy - h if dy > h // 2 else dy), -(dx - w if dx > w // 2 else dx)))
  out = np.asarray(out, int)
  return out - out.min(0)


def fit(planes: np.ndarray, iterations: int = ITERATIONS, smooth_px: float = SMOOTH_PX,
        g_degree: int = G_DEGREE, frame_offsets: np.ndarray | None = None,
        progress=None) -> JointFit:
  """Joint F, T and G_i of a dithered sequence (module docstring).

  Args:
    planes: ``(n, h, w)`` linear frames of one sensor and one channel, finite.
    frame_offsets: ``(n, 2)`` from :func:`offsets` (measured when None).
    progress: optional ``callable(done, total)`` per round.
  Returns:
    :class:`JointFit`.
  """
  obs = np.asarray(planes, np.float64)
  n, h, w = obs.shape
  d = offsets(obs) if frame_offsets is None else np.asarray(frame_offsets, int)
  sky_hw = (h + int(d[:, 0].max()), w + int(d[:, 1].max()))
  basis = sky_surface.legendre_basis((h, w), g_degree)
  F, G = np.ones((h, w)), np.zeros_like(obs)
  stack = np.empty((n,) + sky_hw)
  for it in range(iterations):
    stack.fill(np.nan)
    for i, (dy, dx) in enumerate(d):
      stack[i, dy:dy + h, dx:dx + w] = (obs[i] - G[i]) / F
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", RuntimeWarning)  # sky corners no frame saw: NaN
      T = np.nanmedian(stack, axis=0)
    sky = np.stack([T[dy:dy + h, dx:dx + w] for dy, dx in d])
    coef, *_ = np.linalg.lstsq(basis, (obs - sky * F).reshape(n, -1).T, rcond=None)
    coef -= coef.mean(axis=1, keepdims=True)
    G = (basis @ coef).T.reshape(n, h, w)
    num = ndimage.gaussian_filter((sky * (obs - G)).sum(0), smooth_px)
    den = ndimage.gaussian_filter((sky * sky).sum(0), smooth_px)
    F = np.maximum(num / np.maximum(den, 1e-30), 1e-3)
    F /= np.median(F)
    if progress is not None:
      progress(it + 1, iterations)
  return JointFit(F=F, T=T, G=G, offsets=d)
