"""Joint self-calibration of a dithered session: one flat on the sensor, one sky, a G per frame.

A dithered sequence sees the same sky ``T`` through the same flat ``F`` at different sensor
positions:

    observed_i(p) = a_i · T(p + d_i) · F(p) + G_i(p),

``p`` a sensor pixel, ``d_i`` frame i's offset on the sky (measured here to a fraction of a
pixel: phase correlation of the high-passed frames, no plate solving; the frames are then
resampled by the fractions), ``a_i`` its transparency, ``G_i`` a smooth additive field per frame
(a Legendre polynomial of degree ``G_DEGREE``). The ratio of two frames at the same *sky*
position is ``F(p − d_i) / F(p − d_j)`` (× ``a_i / a_j``): wherever the sky has structure — a
nebula, a galaxy, a dense field, the very scenes a single frame cannot tell from its flat — it
measures the flat's change over the dither. :func:`fit` solves it in two steps:

1. **Large scales, directly** (:func:`large_scales`): ``T`` is eliminated by pairing frames at
   the same sky position, ``(o_i − G_i)/(a_i F(p_i)) = (o_j − G_j)/(a_j F(p_j))``; linearised
   about the current estimate this is one linear least-squares problem for log F (a degree-
   ``LARGE_DEGREE`` Legendre polynomial), every frame's G and every frame's log a together
   (``LARGE_ROUNDS`` Gauss–Newton rounds, one robust pass each). The change of F is multiplied
   by the registered median sky, not by the frame itself: a frame's own pixel noise (PRNU of a
   real flat, photon noise) would correlate with the left side and pull F by ~2σ²/(d·∇F)² —
   30 % on a real master flat. Two things are not told by a sequence of shifted frames and are
   fixed here: an exponential tilt of F is exactly a set of gains ∝ exp(offset), so F gets no
   tilt (the gains take it; a tilt of F left on the frames is a gradient, which each G takes on
   the sky) — unless a meridian flip turned some frames, whose F's tilt turns with them while
   the sky's gradient does not: then the tilt is fitted (:func:`fit`, ``turned``); and a
   G common to all frames is only weakly told from the sky, so it is left to ``session`` (the
   sky surface of ``T``), as the alternating rounds below leave it.
2. **Small scales, alternating** from there, ``ITERATIONS`` rounds of three least-squares
   problems on the frames divided by their gains:

   a. ``T`` = the median over frames of ``(observed_i − G_i) / F`` registered on the sky;
   b. ``G_i`` = the polynomial fit of ``observed_i − T_i·F`` per frame, minus the mean of the
      frames' fits (a G common to every frame stays in ``T``);
   c. ``F`` = ``Σ_i T_i·(observed_i − G_i) / Σ_i T_i²`` per pixel, both sums smoothed by
      :func:`smooth_px` (normalised convolution: bright sky weighs most), with its scales above
      ``SPLIT_PX`` replaced by step 1's, median 1.

   Alternating alone passes information over one dither per round and drifts (a 30 % vignetting
   under a nebula: 6.2 % RMS left of 7.1 % after 60 rounds); with step 1 first, 2.6 %, 0.2 %
   less its tilt — and more rounds drift again (with F's tilt fitted: 0.2 % after 5 rounds,
   1.0 % after 60), hence few.

Host-side NumPy: a session is a loop over files, not a training step.
"""
from __future__ import annotations

import dataclasses
import warnings

import numpy as np
from scipy import ndimage

from flatai_jax import scores, sky_surface

ITERATIONS = 5  # alternating rounds (module docstring: more drift)
OWN_SHARE = 0.01  # a frame's own pixels weigh at most this much in F at a pixel (smooth_px)
SMOOTH_MIN_PX = 0.5  # … and F is smoothed by at least this σ, px of the fitted planes
G_DEGREE = 2  # Legendre degree of each frame's G
LARGE_DEGREE = 6  # Legendre degree of log F in the direct large-scale solve
LARGE_ROUNDS = 2  # its Gauss–Newton rounds
LARGE_ROWS = 8000  # sky positions per frame pair in it, at most (a regular subsample)
LARGE_PAIRS = 6  # frame pairs per frame in it, at most (all pairs for small sessions)
LARGE_CLIP = 4.0  # its robust pass drops pairs of pixels off by this many σ (stars, defects)
SKY_SMOOTH_PX = 1.0  # Gaussian σ of the registered sky that multiplies e in it, px
SPLIT_PX = 32.0  # F's scales above this Gaussian σ (fitted px) come from step 1 (16: dust 0.48 left, 64: 0.37)
RIDGE = 1e-4  # Tikhonov weight of its normal equations (relative to their mean diagonal): keeps a
# G common to all frames, weakly told from the sky where the sky is nearly smooth, from wandering
HIGH_PASS_PX = 8.0  # registration: frames minus their Gaussian smoothing of this σ
SAME_SKY_Z = 20.0  # two frames see the same sky when their correlation peaks this many robust σ
# above the map (measured: the same sky 55–420 on the sequence evaluation, another sky 6–9)


@dataclasses.dataclass
class JointFit:
  """The result of :func:`fit`.

  Attributes:
    F: ``(h, w) float64``, median 1, sensor coordinates.
    T: ``(h + span_y, w + span_x) float64`` sky, NaN where no frame saw it.
    G: ``(n, h, w) float64`` each frame's G (mean over frames 0).
    offsets: ``(n, 2) int`` (dy, dx): frame i's pixel p sees ``T[p + offsets[i]]`` (after
      :func:`align`; p counted on the frame turned back when it is ``turned``).
    gains: ``(n,)`` each frame's transparency (median 1): ``observed_i = gains_i·T·F + G_i``.
    turned: ``(n,) bool``: the frames whose sky is turned 180° on the sensor.
  """
  F: np.ndarray
  T: np.ndarray
  G: np.ndarray
  offsets: np.ndarray
  gains: np.ndarray
  turned: np.ndarray

  def sky_of(self, i: int) -> np.ndarray:
    """``(h, w)`` the part of ``T`` frame i sees, at its transparency (``gains[i]·T``), on the
    sensor (turned back for a turned frame)."""
    h, w = self.F.shape
    dy, dx = self.offsets[i]
    return turn(self.gains[i] * self.T[dy:dy + h, dx:dx + w], self.turned[i])


def turn(a: np.ndarray, turned) -> np.ndarray:
  """``a`` turned 180° in its last two axes where ``turned``: one frame (``turned`` a bool) or a
  stack (``(n,) bool``; ``a`` ``(n, h, w)``, or one ``(h, w)`` plane, then given per frame).
  Its own inverse; ``a`` itself when nothing is turned."""
  turned = np.asarray(turned, bool)
  if not turned.any():
    return a
  if turned.ndim == 0:
    return a[..., ::-1, ::-1]
  return np.where(turned[:, None, None], a[..., ::-1, ::-1], a)


def _high_pass(plane: np.ndarray) -> np.ndarray:
  """Registration's view of a frame: NaN → 0, less its Gaussian smoothing of ``HIGH_PASS_PX``
  (so that gradients and vignetting do not pull the correlation peak)."""
  plane = np.nan_to_num(plane)
  return plane - ndimage.gaussian_filter(plane, HIGH_PASS_PX)


def offsets(planes: np.ndarray, subpixel: bool = False) -> np.ndarray:
  """Offsets of ``(n, h, w)`` frames on the sky, ``(n, 2)`` (dy, dx) ≥ 0: frame i's pixel p
  sees the sky at ``p + offsets[i]`` (frame coordinates of the most shifted one). Phase
  correlation against the first frame, high-passed so that gradients and vignetting do not
  pull the peak to zero; integers, or with ``subpixel`` floats (a parabola through the peak
  and its neighbours, per axis)."""
  h, w = planes.shape[1:]
  reference = np.conj(np.fft.rfft2(_high_pass(planes[0])))
  out = []
  for plane in planes:
    c = np.fft.irfft2(reference * np.fft.rfft2(_high_pass(plane)), s=(h, w))
    peak = np.unravel_index(np.argmax(c), c.shape)
    shift = []
    for axis, n in enumerate((h, w)):
      k = peak[axis]
      step = np.eye(2, dtype=int)[axis]
      lo, mid, hi = (c[tuple((np.asarray(peak) + s * step) % (h, w))] for s in (-1, 0, 1))
      curve = lo - 2.0 * mid + hi
      frac = 0.5 * (lo - hi) / curve if subpixel and curve < 0 else 0.0
      shift.append(-((k - n if k > n // 2 else k) + float(np.clip(frac, -0.5, 0.5))))
    out.append(shift)
  out = np.asarray(out, np.float64 if subpixel else int)
  return out - out.min(0)


def sky_orientation(planes: np.ndarray, tries: int = 3) -> np.ndarray:
  """Which frames see the same sky, and which way up: ``(n,) int`` against a reference frame
  (below): 0 the same way up, 1 turned 180° — a meridian flip, where the
  mount turns the camera about the optical axis halfway through the night (the flat stays on
  the sensor, the sky turns on it, no shift registers the two) — and −1 another sky (a second
  target of the night).

  A frame sees the reference's sky when the cross-correlation of the two, high-passed as in
  :func:`offsets`, peaks ``SAME_SKY_Z`` robust σ above the rest of the map, the frame as it is
  (0) or turned (1, the higher peak of the two). The reference is the middle frame of the
  sequence (a sky that drifts or turns slowly through the night — field rotation — stays
  nearest to it longest), or — when it shares its sky with fewer than half the frames — the
  first frame it did not match (up to ``tries`` references), whichever matches the most.
  """
  n, h, w = planes.shape

  def z(spectrum, passed):  # the correlation peak over the map's robust spread
    c = np.fft.irfft2(spectrum * np.fft.rfft2(passed), s=(h, w))
    return (c.max() - np.median(c)) / (scores.robust_sigma(c) + 1e-30)

  def both_ways(spectrum, plane):  # the high-pass turns with the plane (a symmetric filter)
    passed = _high_pass(plane)
    return z(spectrum, passed), z(spectrum, turn(passed, True))

  best = None
  reference = n // 2
  for _ in range(tries):
    spectrum = np.conj(np.fft.rfft2(_high_pass(planes[reference])))
    peaks = np.array([both_ways(spectrum, p) for p in planes])  # (n, 2): as it is, turned
    way = np.where(peaks.max(1) >= SAME_SKY_Z, peaks.argmax(1), -1)
    if best is None or (way >= 0).sum() > (best >= 0).sum():
      best = way
    unmatched = np.flatnonzero(way < 0)
    if 2 * (way >= 0).sum() >= n or unmatched.size == 0:
      break
    reference = int(unmatched[0])
  return best


def align(planes: np.ndarray, subpixel_offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Frames resampled by their offsets' fractional parts (cubic splines), and the integer
  offsets they then have: frame i's pixel p then sees the sky at ``p + integer[i]``. F and G
  move with the frame by < ½ px, which their smooth scales do not feel; the sky's stars would
  (a half-pixel misregistration leaves ∇T/2 in every ratio of frames)."""
  integer = np.round(subpixel_offsets).astype(int)
  frac = subpixel_offsets - integer
  out = np.stack([ndimage.shift(p, f, order=3, mode="nearest") if np.any(f) else p
                  for p, f in zip(np.asarray(planes, np.float64), frac)])
  return out, integer - integer.min(0)


def smooth_px(n: int) -> float:
  """Gaussian σ (px of the fitted planes) of F's normalised convolution for ``n`` frames: the
  least at which one frame's own pixel weighs at most ``OWN_SHARE`` in F there (a Gaussian's
  peak is ``1 / (2π σ²)``, shared by ``n`` frames), at least ``SMOOTH_MIN_PX``.

  F is divided out of the very frames it was estimated from: what a frame's own noise adds to
  F at a pixel is taken back out of that frame, i.e. the correction would *denoise* it by that
  share. 1 % keeps ≥ 99 % of every frame's noise (a 10-frame nebula session: each frame's
  share of F 0.65 %, unsmoothed 9 %, ``tests/test_session.py``) and takes dust shadows back
  sharper than the fixed 4 px of the previous release did (sequence evaluation: dust left
  0.39 → 0.24 of the dip, flat error 1.93 → 1.90 %, PSNR 51.3 → 51.6 dB).
  10 frames: 1.26 px; 4: 2.0; 64 and more: 0.5.
  """
  return max(SMOOTH_MIN_PX, float(np.sqrt(1.0 / (2.0 * np.pi * OWN_SHARE * n))))


def fit(planes: np.ndarray, iterations: int = ITERATIONS, smooth: float | None = None,
        g_degree: int = G_DEGREE, frame_offsets: np.ndarray | None = None,
        turned: np.ndarray | None = None, progress=None) -> JointFit:
  """Joint F, T and G_i of a dithered sequence (module docstring).

  A meridian flip (``turned``): those frames see the sky turned 180° on the sensor. They are
  fitted turned back — the sky the same way up in every frame — with F turned for them; F and
  G stay on the sensor. The flip then also tells F's exponential tilt from the frames'
  transparencies (a tilt of F turns with the frame, a gradient of the sky does not), so step 1
  fits it (module docstring: without a flip no sequence can).

  Args:
    planes: ``(n, h, w)`` linear frames of one sensor and one channel, finite, on the sensor.
    smooth: Gaussian σ of F's normalised convolution, fitted px (:func:`smooth_px` when None).
    frame_offsets: ``(n, 2)`` from :func:`offsets` of the frames turned back where ``turned``
      (measured to subpixels when None); the frames are resampled by their fractional parts
      (:func:`align`).
    turned: ``(n,) bool`` (:func:`sky_orientation`), or None: none turned.
    progress: optional ``callable(done, total)`` per round.
  Returns:
    :class:`JointFit`.
  """
  if iterations < 1:
    raise ValueError(f"iterations={iterations}: the sky needs at least one alternating round")
  obs = np.asarray(planes, np.float64)
  n, h, w = obs.shape
  turned = np.zeros(n, bool) if turned is None else np.asarray(turned, bool)
  obs = turn(obs, turned)
  smooth = smooth_px(n) if smooth is None else smooth
  d = offsets(obs, subpixel=True) if frame_offsets is None else np.asarray(frame_offsets)
  obs, d = align(obs, d)
  basis = sky_surface.legendre_basis((h, w), g_degree)
  F, G, gains = large_scales(obs, d, g_degree=g_degree, turned=turned)
  # the alternating rounds see every frame at the same transparency; G goes back at the end
  obs, G = obs / gains[:, None, None], G / gains[:, None, None]
  large = ndimage.gaussian_filter(F, SPLIT_PX, mode="nearest")
  for it in range(iterations):
    Fi = turn(F, turned)  # each frame's F, the way the frame is fitted (F itself: none turned)
    T = _registered_median((obs - G) / Fi, d, smooth_px=0.0)
    sky = np.stack([T[dy:dy + h, dx:dx + w] for dy, dx in d])
    coef, *_ = np.linalg.lstsq(basis, (obs - sky * Fi).reshape(n, -1).T, rcond=None)
    coef -= coef.mean(axis=1, keepdims=True)
    G = (basis @ coef).T.reshape(n, h, w)
    num = ndimage.gaussian_filter(turn(sky * (obs - G), turned).sum(0), smooth)
    den = ndimage.gaussian_filter(turn(sky * sky, turned).sum(0), smooth)
    ratio = np.maximum(num / np.maximum(den, 1e-30), 1e-3)
    ratio = ratio / ndimage.gaussian_filter(ratio, SPLIT_PX, mode="nearest") * large
    F = ratio / np.median(ratio)
    if progress is not None:
      progress(it + 1, iterations)
  return JointFit(F=F, T=T, G=turn(G * gains[:, None, None], turned), offsets=d, gains=gains,
                  turned=turned)


def pairs(n: int) -> list[tuple[int, int]]:
  """Frame pairs of the large-scale solve: all of them up to ``2·LARGE_PAIRS + 1`` frames, else
  each frame with the ``LARGE_PAIRS`` frames at strides 1, 2, 4, … (mod n) — every frame is
  tied to near and far ones in the sequence, ``LARGE_PAIRS·n`` pairs in all."""
  if n <= 2 * LARGE_PAIRS + 1:
    return [(i, j) for i in range(n) for j in range(i + 1, n)]
  strides = sorted({max(1, min(n - 1, 2 ** k)) for k in range(LARGE_PAIRS)})
  return sorted({tuple(sorted((i, (i + s) % n))) for i in range(n) for s in strides})


def large_scales(obs: np.ndarray, d: np.ndarray, degree: int = LARGE_DEGREE,
                 g_degree: int = G_DEGREE, rounds: int = LARGE_ROUNDS, turned=None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """F's large scales, every frame's G and its gain by direct least squares (module docstring,
  step 1).

  For frames i, j and a sky position seen by both at sensor pixels ``p_i``, ``p_j``, with ``c =
  (o − G) / (a·F)`` the current estimate in sky units and ``t`` the registered median sky there,
  the update ``F ← F·exp(e)``, ``G ← G + ΔG``, ``a ← a·exp(α)`` must satisfy, to first order,
  ``c_i − c_j = t·(e(p_i) − e(p_j) + α_i − α_j) + ΔG_i(p_i)/(a_i F(p_i)) − ΔG_j(p_j)/(a_j F(p_j))``:
  linear in ``e`` (Legendre degree ``degree`` without its constant and tilt), the ``ΔG``
  (degree ``g_degree`` each) and the ``α`` (mean 0). The normal equations are accumulated pair
  by pair, solved, the pairs off by ``LARGE_CLIP`` σ dropped, solved again.

  Args:
    obs: ``(n, h, w) float64`` frames, linear, aligned (:func:`align`), turned back where
      ``turned``; d: ``(n, 2)`` their integer offsets.
    turned: ``(n,) bool`` or None (:func:`fit`).
  Returns:
    F ``(h, w)`` median 1 on the sensor, G ``(n, h, w)`` (the frames' units, the way they are
    fitted) and the gains ``(n,)``, median 1.
  """
  n, h, w = obs.shape
  turned = np.zeros(n, bool) if turned is None else np.asarray(turned, bool)
  bf = sky_surface.legendre_basis((h, w), degree)
  # without its constant (the sky's level) and, unless some frames are turned, its tilt (columns
  # 1 and degree + 1: an exponential tilt of F is a set of gains ∝ exp(offset), module docstring)
  bf = np.delete(bf, [0] if turned.any() else [0, 1, degree + 1], axis=1)
  # a turned frame's pixel q is the sensor's pixel h·w − 1 − q
  on_sensor = lambda i, q: h * w - 1 - q if turned[i] else q
  bg = sky_surface.legendre_basis((h, w), g_degree)
  kf, kg = bf.shape[1], bg.shape[1]
  k = kf + n * kg + n  # log F, every G, every log gain (their common part: the ridge's null)
  F, G, gains = np.ones((h, w)), np.zeros_like(obs), np.ones(n)
  for _ in range(rounds):
    c = (obs - G) / (turn(F, turned) * gains[:, None, None])  # each frame's F, as it is fitted
    sky = _registered_median(c, d)
    c = c.reshape(n, -1)
    f_flat = F.ravel()

    def systems():  # the row blocks of every pair, rebuilt per pass (kept, 100 frames: GBs)
      for i, j in pairs(n):
        # sky positions both frames see, as sensor pixel indices of each
        y0, x0 = max(d[i, 0], d[j, 0]), max(d[i, 1], d[j, 1])
        y1, x1 = min(d[i, 0], d[j, 0]) + h, min(d[i, 1], d[j, 1]) + w
        if y1 - y0 < 2 or x1 - x0 < 2:
          continue
        step = max(1, int(np.ceil(np.sqrt((y1 - y0) * (x1 - x0) / LARGE_ROWS))))
        qy, qx = np.mgrid[y0:y1:step, x0:x1:step]
        pi = ((qy - d[i, 0]) * w + qx - d[i, 1]).ravel()
        pj = ((qy - d[j, 0]) * w + qx - d[j, 1]).ravel()
        t = sky[qy, qx].ravel()
        si, sj = on_sensor(i, pi), on_sensor(j, pj)
        a = np.concatenate([t[:, None] * (bf[si] - bf[sj]),
                            bg[pi] / (gains[i] * f_flat[si, None]),
                            -bg[pj] / (gains[j] * f_flat[sj, None]),
                            t[:, None], -t[:, None]], 1)
        cols = np.r_[np.arange(kf), kf + i * kg + np.arange(kg), kf + j * kg + np.arange(kg),
                     kf + n * kg + i, kf + n * kg + j]
        yield a, c[i, pi] - c[j, pj], cols

    x = _solve(systems(), k)
    residual = np.concatenate([b - a @ x[cols] for a, b, cols in systems()])
    sigma = 1.4826 * float(np.median(np.abs(residual))) + 1e-30
    x = _solve(systems(), k, lambda a, b, cols: np.abs(b - a @ x[cols]) < LARGE_CLIP * sigma)
    F = F * np.exp(bf @ x[:kf]).reshape(h, w)
    G = G + np.stack([(bg @ x[kf + i * kg:kf + (i + 1) * kg]).reshape(h, w) for i in range(n)])
    gains = gains * np.exp(x[kf + n * kg:])
  return F / np.median(F), G, gains / np.median(gains)


def _registered_median(c: np.ndarray, d: np.ndarray, smooth_px: float = SKY_SMOOTH_PX
                       ) -> np.ndarray:
  """The sky: the median over ``(n, h, w)`` frames ``c`` registered by offsets ``d``, smoothed
  by ``smooth_px`` (0: not), NaN where no frame saw it."""
  n, h, w = c.shape
  stack = np.full((n, h + int(d[:, 0].max()), w + int(d[:, 1].max())), np.nan)
  for i, (dy, dx) in enumerate(d):
    stack[i, dy:dy + h, dx:dx + w] = c[i]
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # sky corners no frame saw: NaN
    sky = np.nanmedian(stack, axis=0)
  if smooth_px <= 0:
    return sky
  seen = np.isfinite(sky)
  smooth = ndimage.gaussian_filter(np.where(seen, sky, 0.0), smooth_px)
  weight = ndimage.gaussian_filter(seen.astype(np.float64), smooth_px)
  return np.where(seen, smooth / np.maximum(weight, 1e-12), np.nan)


def _solve(systems, k: int, keep=None) -> np.ndarray:
  """Least squares of stacked ``(a, b, cols)`` row blocks over ``k`` unknowns (a block touches
  only ``cols``), rows chosen by ``keep(a, b, cols)``; ridge ``RIDGE``."""
  ata, atb = np.zeros((k, k)), np.zeros(k)
  for a, b, cols in systems:
    if keep is not None:
      rows = keep(a, b, cols)
      a, b = a[rows], b[rows]
    ata[np.ix_(cols, cols)] += a.T @ a
    atb[cols] += a.T @ b
  ridge = RIDGE * max(float(np.trace(ata)) / k, 1e-30)
  return np.linalg.solve(ata + ridge * np.eye(k), atb)
