"""Session mode: one flat F for a sequence of dithered frames of one sensor, each frame with its G.

A night gives many frames of one target, dithered by tens of pixels. The flat
(vignetting, dust shadows) is fixed on the sensor; stars, galaxies and nebulae
move with the dither; the sky gradients change from frame to frame. So:

``observed_i = T_i(x − d_i) · F(x) + G_i(x)``.

**Pass 1 (estimate, streaming).** Each frame is read once and reduced to a fine
grid of block medians (``working_grid.bin_frame`` at ``FINE_CELLS`` cells
along the long side, ≥ ``MIN_BLOCK`` px per cell; stars mostly rejected by the
median). On that grid the frame's own sky surface (``sky_surface.fit_sky``)
marks its objects: cells more than ``KAPPA`` cell σ above it, grown by
``GROW_CELLS``. The frame is divided by its sky level (median of the object-free
cells) and split at the scale ``SPLIT_FRACTION`` of the long side:

- **small scales** (dust shadows, mechanical edges): the frame over its own
  object-masked Gaussian smoothing, ``h_i``. Objects at these scales move with
  the dither, the flat does not; ``h_i`` (NaN where masked) is kept on disk
  (a memory map of fine grids, ~1/64 of a frame each) and combined by a
  **per-cell median over frames** after the last frame. Two guards keep barely
  moving objects out of F: a cell needs object-free samples in
  ``MIN_FRACTION`` of the frames, and where the frames disagree by more than
  the cell noise (the robust spread across frames over ``CONSISTENCY`` × the
  frames' cell noise) the small-scale F is shrunk towards 1 — a flat feature
  is the same in every frame, a nebula's filament that moved is not. And small
  scales never brighten by more than ``SMALL_MAX``: dust only darkens, while the
  flank of a barely moving object just outside its mask is a brightening that
  all frames agree on.
- **large scales** (vignetting): running sums of the object-masked smoothing
  (normalised convolution: ``Σ w·blur(n·valid)`` and ``Σ w·blur(valid)``),
  weighted per frame by its structure (``sky_surface.structure`` on the
  working grid): a frame filled by a nebula or a galaxy (structure above
  ``FRAME_STRUCTURE``) says nothing about the large scales — a ±30 px dither
  does not move a 500 px object off itself — and counts 0 (the thresholds are
  single-frame mode's for its sky fit). The weighted mean is raised to the power
  ``trust`` (the total weight over ``LARGE_TRUST_FRACTION`` of the frames, ≤ 1):
  a few quiet frames in a session of a nebula cannot set the large scales
  alone. Where no frame counts, F has no large-scale part (the safe answer, as
  in single-frame mode).

**Which frames count.** Single-frame mode's own decision: a frame whose working-grid
structure (``sky_surface.structure``) is above ``correct.SKY_STRUCTURE`` — a background it
cannot tell from objects — adds nothing to F, neither scale. If the frames that count weigh
less than ``MIN_QUALIFYING`` of the session, the whole session falls back to single-frame mode
and says so in one line.

**Disjoint halves.** The sums and the medians are kept for the even (A) and the odd (B) frames
apart as well. The small scales are shrunk by how much of them both halves share (a flat
feature stays at its sensor cell after dithering, noise and moving sky do not; see
:func:`_combine_small`).

**Leave-half-out test** (:func:`choose`). Up to ``HOLDOUT_FRAMES`` frames are corrected with the
F of the half that did not see them — both scales, then the large, then the small only — and by
single-frame mode; the first whose mean flatness (``correct.background_nonuniformity``) is at
most single-frame mode's is the session's F, else every frame gets its own single-frame
correction (``mode`` in the report).

F on the fine grid is large × small scales, median 1, upsampled with
``working_grid.upsample`` (smooth, band-limited). Its confidence (0..1) is the
large-scale support times the small-scale agreement.

**Pass 2 (correct).** Each frame is read again, divided by the shared F, and
gets its own G from the single-frame pipeline's sky surface
(``correct.sky_background``: robust Legendre fit with objects rejected, ramped
down by the frame's remaining structure, median 0 so the pedestal stays):
``corrected_i = (observed_i − G_i) / F`` exactly.

**Pass 3 (the dust the correction left; scale-split sessions of ≥ ``LEFT_MIN_FRAMES`` mono or
RGB frames of a smooth sky).** Each corrected frame's ratio to its local sky, stars clipped, goes into a memory
map (:func:`left_ratio`, ≤ ``FINE_CELLS`` cells on the long side); the median over the frames
keeps what stays at one sensor place. Where it holds a significant dip seen by both halves
(:func:`left_dust`), the outputs are read again and that dip divided out too, and
``session_F.fits`` carries it. Not for joint sessions (their F already holds the small scales)
nor CFA sessions.

What the session cannot tell apart: an additive G that is the same in every
frame and the large-scale part of F (both are fixed on the sensor); it goes to
F, as in the classical sky flat. The network is not used for F: the sequence gives F,
the sky surface gives each G (single-frame mode, network included, runs for the test and the
fallback). Memory: one frame, F at full resolution, the
accumulators and the memory map of fine grids (e.g. 100 frames of 6000 × 4000:
~65 MB on disk). Frames must share size and orientation; Bayer mosaics (one pattern per session) are corrected in
CFA space: the session runs on each frame's mono plane and goes back to the colours as
`cfa.correct_mosaic` does (see `correct_files`).
"""
from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import numpy as np
from scipy import ndimage

from flatai_jax import correct, scores, selfcal, sky_surface, working_grid
from flatai_jax.io import images

FINE_CELLS = 512  # fine grid: at most this many cells along the frame's long side
MIN_BLOCK = 2  # … and at least this many px per cell side
KAPPA = 3.0  # fine cells above the frame's own sky surface by this many cell σ are objects
GROW_CELLS = 2  # the object mask grows by this many fine cells
SPLIT_FRACTION = 0.06  # Gaussian σ between the large and the small scales of F, × long side
FRAME_STRUCTURE = correct.SKY_STRUCTURE  # a frame's large scales count fully below, not above
#                   (structure): the frames whose own sky fit single-frame mode would trust
LARGE_TRUST_FRACTION = 0.5  # large scales need this share of the frames' weight to count fully
SMALL_SMOOTH_CELLS = 1.0  # Gaussian σ on the small scales of F, fine cells (median's noise)
MIN_FRACTION = 0.3  # a fine cell needs object-free samples in this share of the frames
CONSISTENCY = 1.5  # spread across frames over this × the cell noise shrinks small scales to 1
SMALL_MAX = 1.01  # the small scales of F never brighten by more (dust only darkens; 1 % for the
#                   split's own overshoot around a shadow)
CHUNK_ROWS = 32  # fine-grid rows per step of the median over frames
MIN_QUALIFYING = 0.5  # the frames' large-scale weight must reach this share of the frames, else
#                   the whole session falls back to single-frame mode
HOLDOUT_FRAMES = 4  # frames (at most) of the leave-half-out test, alternating halves
# the dust a scale-split session's correction leaves (:func:`left_dust`), on the fine grid:
LEFT_SKY_CELLS = 12  # a corrected frame's local sky: median over (2·12 + 1)² cells, then smoothed
LEFT_CLIP = 4.0  # cells this many robust σ off their local sky are stars: left out of the median
LEFT_SMOOTH_CELLS = 3.0  # Gaussian σ on the frames' median
LEFT_SIGMA = 3.0  # a dip this many robust σ deep in all frames' median (half of it in each half)
LEFT_MIN_DEPTH = 0.005  # … and at least this deep (faint stars' wings leave 0.3 % dips on a dense field)
LEFT_MIN_CELLS = 9  # … over at least this many fine cells (noise and edges give single cells)
LEFT_MIN_FRAMES = 4  # … and only in a session of at least this many frames


@dataclasses.dataclass
class SessionFlat:
  """The shared flat of a session.

  Attributes:
    F: ``(H, W, C) float32``, median 1, the frames' orientation.
    confidence: ``(H, W, C) float32`` in [0, 1].
    frames: per-frame numbers of pass 1 (``sky``, ``structure``, ``large_scale_weight``,
      ``object_fraction``), one dict per frame in input order.
    parts: fine-grid parts of F, ``{"all" | "A" | "B": (large, small)}`` per channel (lists of
      ``(gh, gw)``): all frames, the even frames (A) and the odd frames (B), for the
      leave-half-out test (:func:`choose`).
    fine: the fine grid's geometry.
    large_share: the share of the large scales that both halves agree on (:func:`_shared_share`;
      the large scales are shrunk by it in the log), the worst channel's.
    fallback: None, or one line saying why the whole session falls back to single-frame mode.
    mode: ``both`` / ``large`` / ``small`` (the parts of the session F used) or ``single``
      (each frame its own single-frame correction); set by :func:`choose`; ``joint``: F from
      the joint self-calibration (:func:`joint_estimate`).
    joint: for ``joint``, on the fitted grid (binned by ``bin``): ``coef`` ``(n, K)`` each frame's
      G as coefficients of ``basis`` (``(h'·w', K)`` Legendre, ``selfcal.G_DEGREE``), ``gains``
      ``(n,)`` its transparency, ``origins`` ``(n, 2)`` its place on the sky canvas,
      ``turned`` ``(n,)`` whether its sky is turned 180° against the canvas (a meridian flip),
      ``foreign`` ``(n,)`` whether it sees another sky (corrected by :func:`correct_with`),
      ``S`` the sky surface of T on the canvas.
    left: the dust the correction left in a scale-split session's frames that the session
      divided out too (:func:`left_dust`): ``{"cells": fine cells changed, "deepest": the
      deepest dip}``, or None (none found, or not looked for: joint sessions, CFA sessions).
  """
  F: np.ndarray
  confidence: np.ndarray
  frames: list
  parts: dict = dataclasses.field(default_factory=dict)
  fine: object = None
  fallback: str | None = None
  mode: str = "both"
  large_share: float = 1.0
  joint: dict | None = None
  left: dict | None = None

  def field(self, which: str = "all", scales: str = "both") -> np.ndarray:
    """``(H, W, C) float32`` F of the ``which`` frames (``all``, ``A``, ``B``) from its
    ``scales`` (``both``, ``large``, ``small``), median 1; ``single``: all ones."""
    planes = []
    for large, small in self.parts[which]:
      f = {"both": large * small, "large": large, "small": small}.get(scales, np.ones_like(large))
      f = f / np.median(f[working_grid.inner_cells(self.fine)])
      planes.append(working_grid.upsample(f, self.fine))
    return np.stack(planes, -1).astype(np.float32)


def working_grid_hw() -> tuple[int, int]:
  """The working grid ``(gh, gw)`` of the shipped whole-frame model (``configs/frame.py``'s
  ``data.sensor_hw``): the grid of each frame's structure and G."""
  from flatai_jax import checkpointing
  return tuple(int(v) for v in checkpointing.load_config(correct.DEFAULT_MODEL).data.sensor_hw)


@dataclasses.dataclass(frozen=True)
class SessionFile:
  """A session's frame on disk as the session sees it: the image itself, or for a Bayer mosaic
  its mono plane (``cfa.luminance``: the four sub-planes, gain-normalised, averaged).

  Attributes:
    path: the file.
    cfa: ``--cfa`` (``cfa.MODES``).
    pattern: the session's pattern at pixel (0, 0) (from its first frame), None for mono.
    gains: the colours' gains of the session's first frame (CFA), None for mono.
    hw: the session's frame size ``(H, W)`` (its first frame's), px.
  """
  path: str
  cfa: str = "auto"
  pattern: str | None = None
  gains: tuple | None = None
  hw: tuple | None = None

  def read(self) -> tuple[np.ndarray, object]:
    """``(image (H, W, C) float32 linear, meta)``, the mosaic itself for a CFA frame.

    Raises:
      images.ImageError: the frame's CFA pattern is not the session's.
    """
    from flatai_jax import cfa as bayer
    image, meta = images.read_image(self.path, allow_nan=True)
    try:
      pattern, _ = bayer.resolve(self.cfa, meta.cfa, image.shape)
    except ValueError as e:
      raise images.ImageError(self.path, str(e)) from None
    if pattern != self.pattern:
      raise images.ImageError(self.path, f"CFA {pattern or 'none (mono)'}; the session's first "
                              f"frame is {self.pattern or 'mono'} (one session = one sensor)")
    return image, meta


def session_files(paths, cfa: str = "auto", print_fn=None) -> list[SessionFile]:
  """The session's :class:`SessionFile` s; the first frame decides mono or the CFA pattern (one
  line says so)."""
  from flatai_jax import cfa as bayer
  paths = [str(p) for p in paths]
  image, meta = images.read_image(paths[0], allow_nan=True)
  try:
    pattern, note = bayer.resolve(cfa, meta.cfa, image.shape)
  except ValueError as e:
    raise images.ImageError(paths[0], str(e)) from None
  if note and print_fn:
    print_fn(f"session: {note}")
  gains = tuple(bayer.colour_gains(bayer.split(image[..., 0])).tolist()) if pattern else None
  return [SessionFile(p, cfa, pattern, gains, image.shape[:2]) for p in paths]


def _as_frame(item) -> tuple[np.ndarray, object, str]:
  """``(image (H, W, C) float32 linear, meta or None, name)`` of a :class:`SessionFile` (a
  mosaic's mono plane), a path or an array."""
  if isinstance(item, SessionFile):
    from flatai_jax import cfa as bayer
    image, meta = item.read()
    return (bayer.luminance(image, item.gains)[1] if item.pattern else image), meta, item.path
  if isinstance(item, (str, Path)):
    image, meta = images.read_image(item, allow_nan=True)
    if meta.cfa is not None:
      raise images.ImageError(item, f"a CFA mosaic ({meta.cfa[0]}): pass the session's files "
                              "through session_files() (flatai correct --session does)")
    return image, meta, str(item)
  image = np.asarray(item, np.float32)
  if image.ndim == 2:
    image = image[:, :, None]
  if image.ndim != 3 or not np.isfinite(image).any():
    raise ValueError(f"frame of shape {image.shape}: need (H, W) or (H, W, C) with finite pixels")
  return image, None, "array"


def _check_shape(image, name, shape) -> None:
  if image.shape != shape:
    raise images.ImageError(name, f"{image.shape[0]} × {image.shape[1]} px, {image.shape[2]} "
                            f"channel(s); the session's first frame is {shape[0]} × {shape[1]} "
                            f"px, {shape[2]} channel(s) (one session = one size, binning and "
                            "orientation)")


def fine_geometry(hw) -> working_grid.GridGeometry:
  """The fine grid of a session's frames (≤ ``FINE_CELLS`` cells on the long side)."""
  block = max(MIN_BLOCK, -(-max(hw) // FINE_CELLS))
  return working_grid.geometry(hw, (-(-min(hw) // block), -(-max(hw) // block)))


def _masked_blur(values, valid, sigma):
  """Normalised convolution: ``(blur(values·valid), blur(valid))``, Gaussian σ in cells."""
  v = valid.astype(np.float64)
  return (ndimage.gaussian_filter(np.where(valid, values, 0.0) * v, sigma, mode="nearest"),
          ndimage.gaussian_filter(v, sigma, mode="nearest"))


def _structure(plane, work) -> float:
  """``sky_surface.structure`` of one ``(H, W)`` plane on the working grid ``work``, its own
  cells only (not the grid's padding)."""
  return sky_surface.structure(working_grid.bin_frame(plane, work)[working_grid.inner_cells(work)])


def _frame_evidence(plane, fine, work, sigma):
  """One plane's contribution: ``(h, blurred n·valid, blurred valid, numbers)``, fine grid.

  Args:
    plane: ``(H, W)`` linear.
    fine, work: the fine and the working grid geometries.
    sigma: the scale split, fine cells.
  """
  b = working_grid.bin_frame(plane, fine).astype(np.float64)
  fit = sky_surface.fit_sky(b)
  objects = ndimage.binary_dilation(b - fit.surface > KAPPA * fit.noise, iterations=GROW_CELLS)
  objects |= ~np.isfinite(b)
  sky = float(np.median(b[~objects])) if (~objects).any() else float(np.median(b))
  sky = sky if abs(sky) > 1e-12 else 1e-12
  n = b / sky
  num, den = _masked_blur(n, ~objects, sigma)
  smooth = num / np.maximum(den, 1e-6)
  h = np.where(objects | (den < 0.05), np.nan, n / np.where(smooth != 0, smooth, 1.0))
  return h, num, den, {"sky": sky, "structure": _structure(plane, work), "noise": fit.noise / abs(sky),
                       "object_fraction": float(objects.mean())}


def estimate(frames, grid_hw, progress=None, workdir=None) -> tuple[SessionFlat, list]:
  """Pass 1: the shared F of ``frames`` (see the module docstring).

  Args:
    frames: sequence of paths or ``(H, W[, C])`` float arrays, linear, one sensor.
    grid_hw: the working grid ``(gh, gw)`` (``config.data.sensor_hw``).
    progress: optional ``callable(line)``.
    workdir: folder for the memory map of fine grids (default: a temporary one).
  Returns:
    the :class:`SessionFlat` and the frames' metadata (None for arrays), in order.
  Raises:
    images.ImageError: a frame of another size, channel count or orientation, or unreadable.
  """
  if len(frames) < 2:
    raise ValueError(f"a session needs at least 2 frames, got {len(frames)}")
  shape, metas, numbers = None, [], []
  with tempfile.TemporaryDirectory(dir=workdir, prefix="flatai_session_") as tmp:
    for i, item in enumerate(frames):
      image, meta, name = _as_frame(item)
      if shape is None:
        shape = image.shape
        fine = fine_geometry(shape[:2])
        work = working_grid.geometry(shape[:2], grid_hw)
        sigma = SPLIT_FRACTION * max(shape[:2]) / max(fine.block)
        c = shape[2]
        stack = np.lib.format.open_memmap(Path(tmp) / "h.npy", "w+", np.float32,
                                          (len(frames), c) + fine.grid_hw)
        num_sum = np.zeros((2, c) + fine.grid_hw)  # per half: even frames (A), odd frames (B)
        den_sum = np.zeros((2, c) + fine.grid_hw)
        weight_sum = np.zeros((2, c))
      _check_shape(image, name, shape)
      frame_numbers = []
      for k in range(c):
        h, num, den, nums = _frame_evidence(image[..., k], fine, work, sigma)
        w = sky_surface.ramp_down(nums["structure"], *FRAME_STRUCTURE)
        # a frame whose background single-frame mode cannot tell from objects adds nothing
        stack[i, k] = h if w > 0.0 else np.nan
        num_sum[i % 2, k] += w * num
        den_sum[i % 2, k] += w * den
        weight_sum[i % 2, k] += w
        frame_numbers.append({**nums, "large_scale_weight": w})
      metas.append(meta)
      numbers.append({"frame": name, **_merge_channels(frame_numbers)})
      if progress:
        n = numbers[-1]
        progress(f"  [{i + 1}/{len(frames)}] {Path(name).name}: sky {n['sky']:.4g}, structure "
                 f"{n['structure']:.2f}, objects {n['object_fraction']:.0%}, large-scale weight "
                 f"{n['large_scale_weight']:.2f}")
    noise = float(np.median([f["noise"] for f in numbers]))
    n = len(frames)
    halves = {"A": np.arange(0, n, 2), "B": np.arange(1, n, 2)}
    parts = {"all": [], "A": [], "B": []}
    conf_fine, large_shares = [], []
    for k in range(c):
      small_half = {}
      for j, (name, idx) in enumerate(halves.items()):
        small_half[name], _ = _combine_small(stack, k, idx, noise)
        large, _ = _combine_large(num_sum[j, k], den_sum[j, k], weight_sum[j, k], idx.size)
        parts[name].append((large, small_half[name]))
      small, agree = _combine_small(stack, k, np.arange(n), noise, small_half["A"],
                                    small_half["B"])
      large, support = _combine_large(num_sum[:, k].sum(0), den_sum[:, k].sum(0),
                                      weight_sum[:, k].sum(), n)
      share = _shared_share(parts["A"][k][0], parts["B"][k][0], fine)
      shrink = lambda f: np.exp(share * np.log(f / np.median(f)))
      for name in ("A", "B"):
        parts[name][k] = (shrink(parts[name][k][0]), parts[name][k][1])
      parts["all"].append((shrink(large), small))
      conf_fine.append(support * agree * share)
      large_shares.append(share)
    del stack
  qualifying = float(np.sum([f["large_scale_weight"] for f in numbers]))
  fallback = None
  if qualifying < MIN_QUALIFYING * n:
    fallback = (f"session: only {qualifying:.1f} of {n} frames have a background single-frame "
                "mode can tell from objects (structure below "
                f"{FRAME_STRUCTURE[1]}); every frame gets its own single-frame correction")
  flat = SessionFlat(F=np.ones((1, 1, 1), np.float32), confidence=np.ones((1, 1, 1), np.float32),
                     frames=numbers, parts=parts, fine=fine, fallback=fallback,
                     large_share=float(min(large_shares)),
                     mode="single" if fallback else "both")
  flat.F = flat.field("all", flat.mode)
  conf = np.stack([working_grid.upsample(p, fine) for p in conf_fine], -1)
  flat.confidence = np.clip(conf if not fallback else 0.0 * conf, 0.0, 1.0).astype(np.float32)
  return flat, metas


def _merge_channels(per_channel: list) -> dict:
  """Per-frame numbers over channels: sky and noise averaged, the rest the worst channel's."""
  out = {k: float(np.mean([d[k] for d in per_channel])) for k in ("sky", "noise")}
  out["structure"] = max(d["structure"] for d in per_channel)
  out["object_fraction"] = max(d["object_fraction"] for d in per_channel)
  out["large_scale_weight"] = min(d["large_scale_weight"] for d in per_channel)
  return out


def _over_frames(stack, k, idx, spread: bool = True):
  """Per cell over the frames ``idx`` of channel ``k`` of an ``(N, C, gh, gw)`` memory map,
  NaN ignored, ``CHUNK_ROWS`` rows at a time: ``(median, spread, count)``, each ``(gh, gw)``
  (``spread`` 1.4826 × the median absolute deviation, or None without ``spread``; NaN where
  every frame is NaN; ``count`` the finite samples)."""
  import warnings
  gh, gw = stack.shape[2:]
  median, count = np.empty((gh, gw)), np.empty((gh, gw))
  mad = np.empty((gh, gw)) if spread else None
  for r in range(0, gh, CHUNK_ROWS):
    block = np.asarray(stack[idx, k, r:r + CHUNK_ROWS], np.float64)
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells: NaN, for the caller
      median[r:r + CHUNK_ROWS] = m = np.nanmedian(block, 0)
      if spread:
        mad[r:r + CHUNK_ROWS] = 1.4826 * np.nanmedian(np.abs(block - m), 0)
    count[r:r + CHUNK_ROWS] = np.isfinite(block).sum(0)
  return median, mad, count


def _combine_small(stack, k, idx, noise, half_a=None, half_b=None):
  """Small scales of F and their agreement, ``(gh, gw)`` each, from the frames ``idx`` of the
  ``(N, C, gh, gw)`` stack of ``h`` (NaN where masked), channel ``k``: per-cell median over
  frames, shrunk towards 1 where too few frames are object-free or where the frames disagree
  beyond ``CONSISTENCY`` × the cell noise.

  With the small scales of disjoint halves of the frames (``half_a``, ``half_b``), also shrunk
  by how much of them the halves share (Wiener: ``c / (c + d)``, ``c`` the local mean of
  ``(a − 1)(b − 1)`` — the feature's power, the halves' noise being independent — and ``d``
  of ``((a − b) / 2)²`` — the noise of the mean of both): a flat feature sits at the same
  sensor cell in both halves, noise does not."""
  n = idx.size
  m, s, count = _over_frames(stack, k, idx)
  median = np.where(np.isfinite(m), m, 1.0)
  spread = np.where(np.isfinite(s), s, np.inf)
  # Expected spread of one frame's h about the median: the cell noise (relative) of a frame.
  agree = np.clip((CONSISTENCY * noise / np.maximum(spread, 1e-12)) ** 2, 0.0, 1.0)
  agree *= np.clip(count / max(MIN_FRACTION * n, 1.0), 0.0, 1.0)
  agree = ndimage.gaussian_filter(agree, 1.0, mode="nearest")
  if half_a is not None and half_b is not None:
    blur = lambda a: ndimage.gaussian_filter(a, 2.0 * SMALL_SMOOTH_CELLS, mode="nearest")
    shared = np.maximum(blur((half_a - 1.0) * (half_b - 1.0)), 0.0)
    apart = blur(((half_a - half_b) / 2.0) ** 2)
    agree *= shared / np.maximum(shared + apart, 1e-12)
  median = ndimage.gaussian_filter(median, SMALL_SMOOTH_CELLS, mode="nearest")
  return 1.0 + agree * (np.minimum(median, SMALL_MAX) - 1.0), agree


def _shared_share(large_a, large_b, fine) -> float:
  """The share of the large scales of F that disjoint halves of the frames agree on, in [0, 1]
  (Wiener: ``c / (c + d)``, ``c`` the covariance of the halves' log F over the frame's cells —
  the flat's power, their errors being independent — and ``d`` the mean of
  ``((log a − log b) / 2)²``, the error power of the mean of both). What is not shared is the
  frames' G that the mean over frames did not average out, not the flat."""
  inner = working_grid.inner_cells(fine)
  a, b = np.log(large_a[inner]), np.log(large_b[inner])
  a, b = a - a.mean(), b - b.mean()
  c = max(float(np.mean(a * b)), 0.0)
  d = float(np.mean(((a - b) / 2.0) ** 2))
  return c / (c + d) if c + d > 0.0 else 0.0


def _combine_large(num, den, weight_total, frames):
  """Large scales of F and their support, ``(gh, gw)`` each, from the running sums of
  ``frames`` frames: the weighted mean, raised to the power ``trust`` (the frames' total weight
  over ``LARGE_TRUST_FRACTION`` of them, at most 1), so that a few low-structure frames in a
  session of extended objects cannot set the large scales alone."""
  trust = float(np.clip(weight_total / (LARGE_TRUST_FRACTION * frames), 0.0, 1.0))
  if trust <= 0.0:
    return np.ones(num.shape), np.ones(num.shape)  # no frame tells: no large-scale part
  cover = den / weight_total  # share of the (weighted) frames object-free nearby
  large = np.where(den > 1e-6, num / np.maximum(den, 1e-6), np.nan)
  if np.isnan(large).any():
    large = np.where(np.isnan(large), np.nanmedian(large), large)
  large = np.maximum(large / np.median(large), 1e-3) ** trust
  support = np.clip(cover / 0.5, 0.0, 1.0) * trust + (1.0 - trust)
  return large, support


JOINT_COPIES = 8  # float64 copies of the binned frames the joint fit holds at its peak (measured:
#                  20 frames of 24 Mpx binned 4 × 4 peak at 3.41 GiB, 29 at 4.24: ~90 MB a frame)
JOINT_BYTES = 9 << 28  # 2.25 GiB for those copies; a 24-Mpx session peaks ≤ 4 GiB in all
JOINT_MIN_DITHER_PX = 16.0  # … and needs frames spread by this many fitted px
JOINT_MIN_FRAMES = 8  # a joint fit on a subset of the frames (a long session) needs this many
G_CLIP = 4.0  # a frame fitted to the joint sky drops pixels off by this many σ (stars, defects)


def _joint_bin(n: int, hw) -> int:
  """The integer binning that keeps ``n`` frames of ``hw`` within ``JOINT_BYTES``."""
  b = 1
  while JOINT_COPIES * 8 * n * (-(-hw[0] // b)) * (-(-hw[1] // b)) > JOINT_BYTES:
    b += 1
  return b


def _joint_frames(b: int, hw) -> int:
  """How many frames of ``hw`` binned ``b × b`` fit within ``JOINT_BYTES`` (:func:`_joint_bin`)."""
  return JOINT_BYTES // (JOINT_COPIES * 8 * (-(-hw[0] // b)) * (-(-hw[1] // b)))


def _bin_mean(plane: np.ndarray, b: int) -> np.ndarray:
  """``(⌈H/b⌉, ⌈W/b⌉) float64`` block means (the last blocks edge-padded)."""
  plane = np.asarray(plane, np.float64)
  if b == 1:
    return plane
  h, w = plane.shape
  padded = np.pad(plane, ((0, -h % b), (0, -w % b)), mode="edge")
  return padded.reshape(padded.shape[0] // b, b, padded.shape[1] // b, b).mean((1, 3))


def _unbin(a: np.ndarray, b: int, hw) -> np.ndarray:
  """Inverse of :func:`_bin_mean` for smooth fields: bilinear at the pixel centres, ``hw``,
  float32 (b > 1)."""
  if b == 1:
    return a

  def along(x: np.ndarray, n_out: int) -> np.ndarray:  # axis 0: b output rows per input row
    n = x.shape[0]
    padded = np.concatenate([x[:1], x, x[-1:]], 0)  # edges clamped
    out = np.empty((n, b) + x.shape[1:], np.float32)
    for k in range(b):  # the k-th pixel of every block sits at the same fraction: slices only
      centre = (k + 0.5) / b - 0.5
      left = int(np.floor(centre))
      frac = centre - left
      out[:, k] = (1.0 - frac) * padded[1 + left:1 + left + n] + frac * padded[2 + left:2 + left + n]
    return out.reshape((n * b,) + x.shape[1:])[:n_out]

  return along(np.ascontiguousarray(along(np.asarray(a, np.float32).T, hw[1]).T), hw[0])


def _binned_planes(frames, indices, b: int | None, shape=None):
  """The frames at ``indices`` read, checked against ``shape`` (the first one's when None) and
  binned ``b × b`` (:func:`_bin_mean`, NaN → the frame's median; None: :func:`_joint_bin` of
  all the frames at the first one's size): ``(planes (m, h', w') float64, or None for colour
  frames; metas; names; shape; b)``."""
  planes, metas, names = [], [], []
  for i in indices:
    image, meta, name = _as_frame(frames[i])
    shape = shape or image.shape
    b = b or _joint_bin(len(frames), shape[:2])
    _check_shape(image, name, shape)
    if shape[2] != 1:
      return None, metas, names, shape, b
    plane = image[..., 0]
    planes.append(_bin_mean(np.where(np.isfinite(plane), plane, np.nanmedian(plane)), b))
    metas.append(meta)
    names.append(name)
  return np.stack(planes), metas, names, shape, b


def _subset_plan(n: int, hw, spread_px: float) -> tuple[int, np.ndarray] | None:
  """For a session whose memory binning (:func:`_joint_bin`) leaves its dither of ``spread_px``
  (full-resolution px) below ``JOINT_MIN_DITHER_PX`` binned px: the coarsest
  binning that keeps it, and the frames (evenly spread over the sequence) that ``JOINT_BYTES``
  holds there — or None when that is under ``JOINT_MIN_FRAMES`` frames or no binning keeps it."""
  b = int(spread_px // JOINT_MIN_DITHER_PX)
  if b < 1:
    return None
  m = min(n, _joint_frames(b, hw))
  if m < JOINT_MIN_FRAMES or m >= n:
    return None
  return b, np.unique(np.round(np.linspace(0, n - 1, m)).astype(int))


def _fit_to_sky(plane: np.ndarray, sky: np.ndarray, F: np.ndarray, basis: np.ndarray):
  """A frame outside the joint fit, against its result: ``plane ≈ a·sky·F + basis @ c`` by least
  squares over the pixels where ``sky`` is known, twice with pixels off by ``G_CLIP`` robust σ
  dropped (stars the registration leaves, defects). Returns ``(a, c)``."""
  design = np.concatenate([(sky * F).reshape(-1, 1), basis], 1)
  values = plane.ravel()
  known = np.isfinite(design[:, 0])
  design = np.nan_to_num(design)
  keep = known
  sol, *_ = np.linalg.lstsq(design[keep], values[keep], rcond=None)
  for _ in range(2):
    residual = values - design @ sol
    sigma = float(scores.robust_sigma(residual[keep]))
    keep = known & (np.abs(residual) < G_CLIP * max(sigma, 1e-30))
    sol, *_ = np.linalg.lstsq(design[keep], values[keep], rcond=None)
  return float(sol[0]), sol[1:]


def _sky_window(canvas: np.ndarray, origin, hw) -> np.ndarray:
  """``canvas[y:y + h, x:x + w]`` at ``origin = (y, x)``, NaN where the window leaves it."""
  (y, x), (h, w) = origin, hw
  out = np.full((h, w), np.nan)
  ys, xs = max(y, 0), max(x, 0)
  ye, xe = min(y + h, canvas.shape[0]), min(x + w, canvas.shape[1])
  if ye > ys and xe > xs:
    out[ys - y:ye - y, xs - x:xs - x + (xe - xs)] = canvas[ys:ye, xs:xe]
  return out


def joint_estimate(frames, grid_hw, progress=None) -> SessionFlat | None:
  """Pass 1 by joint self-calibration (:mod:`flatai_jax.selfcal`): F, every frame's G and the
  sky, fitted together on the frames binned to ``JOINT_BYTES``; then the sky surface of the
  fitted sky (``correct.sky_background``, ramped down by its structure) decides the G common to
  all frames, which the sequence cannot tell from the sky.

  A long session whose frames that budget would bin so coarsely that the dither falls under
  ``JOINT_MIN_DITHER_PX`` binned px (100 frames of 24 Mpx binned 8 × 8 keep a
  ±40 px dither as ±5 px) is fitted on a subset (:func:`_subset_plan`: the coarsest binning
  that keeps the dither, as many frames, evenly spread over the sequence, as the budget holds
  there); every other frame is then registered on the fitted sky and fitted to it
  (:func:`_fit_to_sky`: its transparency and its G, with the fitted F and sky held), so that
  adding frames never coarsens the fit.

  The frames are sorted first (``selfcal.sky_orientation``). Frames whose sky is turned 180° on
  the sensor (a meridian flip) are fitted with the others, turned back (``selfcal.fit``'s
  ``turned``: the flip also makes F's tilt known), and their G and sky surface are turned with
  them onto the sensor (``sky_turned_180`` in the report). Frames that see another sky (a
  second target of the night) share F — it is the sensor's — and get their G from their own sky
  surface, as on the scale-split path (:func:`correct_with`; ``same_sky`` false in the report).

  Returns None — the scale-split path (:func:`estimate`, :func:`choose`) then runs — for
  colour frames, for frames dithered by less than ``JOINT_MIN_DITHER_PX`` fitted px (each
  round passes F's information over one dither: a ±4-px nebula session scored worse than
  single-frame mode), and where the sky is smooth (working-grid structure below
  ``correct.SKY_STRUCTURE[0]``: sparse star fields, whose frames single-frame mode's sky
  surface already flattens and where the ratio of frames carries little of F) — the frames'
  median structure, checked before the fit (on the ten sequence cases the fitted sky's is the
  same or higher, 1.31 → 1.34 … 3.06 → 3.5, with the same verdict on every one), and the fitted
  sky's, after it.

  Args:
    frames: paths or ``(H, W[, C])`` arrays, linear, one sensor.
    grid_hw: the working grid ``(gh, gw)``.
    progress: optional ``callable(line)``.
  """
  n = len(frames)
  if n < 2:
    raise ValueError(f"a session needs at least 2 frames, got {n}")
  planes, metas, names, shape, b = _binned_planes(frames, range(n), None)
  if planes is None:
    return None
  work = working_grid.geometry(planes.shape[1:], grid_hw)
  structure = float(np.median([_structure(p, work) for p in planes]))
  if structure < correct.SKY_STRUCTURE[0]:  # smooth frames: the fitted sky would be smooth too
    if progress:
      progress(f"session: the frames' sky is smooth (median structure {structure:.2f} < "
               f"{correct.SKY_STRUCTURE[0]}): no joint fit; per-frame sky surfaces and the "
               "scale-split flat")
    return None
  # F is fitted on the frames of one sky, those turned 180° (a meridian flip) included; frames
  # of another sky (another target) get F and their own G
  way = selfcal.sky_orientation(planes)
  group = np.flatnonzero(way >= 0)
  turned, foreign = way == 1, way < 0
  if group.size < 2:
    if progress:
      progress("session: no two frames see the same sky: no joint fit; the scale-split flat")
    return None
  if progress and turned.any():
    progress(f"  joint fit: {int(turned.sum())} of {n} frames have the sky turned 180° "
             f"(meridian flip): fitted turned back; the flip also tells F's tilt")
  if group.size < n:
    planes = planes[group]
    if progress:
      progress(f"  joint fit: {int(foreign.sum())} of {n} frames do not see the sky of the others "
               f"(another target, or the field rotated — an alt-az mount?): the shared F and each "
               f"one's own sky surface")
  frame_offsets = selfcal.offsets(selfcal.turn(planes, turned[group]), subpixel=True)
  spread = float(np.ptp(frame_offsets, 0).max())
  fitted = group
  if spread < JOINT_MIN_DITHER_PX:
    plan = _subset_plan(group.size, shape[:2], spread * b)
    if plan is None:
      if progress:
        progress(f"session: the frames are dithered by {int(round(spread * b))} px at most: too "
                 "little for the joint fit; the scale-split flat")
      return None
    b, picked = plan
    fitted = group[picked]
    del planes
    planes = _binned_planes(frames, fitted, b, shape)[0]
    frame_offsets = selfcal.offsets(selfcal.turn(planes, turned[fitted]), subpixel=True)
    spread = float(np.ptp(frame_offsets, 0).max())
    if spread < JOINT_MIN_DITHER_PX:
      if progress:
        progress(f"session: the {len(fitted)} frames the joint fit can hold are dithered by "
                 f"{int(round(spread * b))} px at most: too little; the scale-split flat")
      return None
    if progress:
      progress(f"  joint fit: {len(fitted)} of {n} frames, binned {b}×{b} (the memory budget "
               f"holds no more at a binning that keeps the dither)")
  if progress:
    progress(f"  joint fit: large scales by least squares over {len(selfcal.pairs(len(planes)))} "
             f"frame pairs ({planes.shape[1]} × {planes.shape[2]} px each, binned {b}×{b})")
  report = (lambda done, total: progress(f"  joint fit: small scales, round {done}/{total}")
            if progress else None)
  fit = selfcal.fit(planes, frame_offsets=frame_offsets, turned=turned[fitted], progress=report)
  sky = np.where(np.isfinite(fit.T), fit.T, np.nanmedian(fit.T))
  work = working_grid.geometry(sky.shape, grid_hw)
  inner = working_grid.inner_cells(work)
  grid = working_grid.bin_frame(sky.astype(np.float32), work).astype(np.float64)
  structure = sky_surface.structure(grid[inner])
  if structure < correct.SKY_STRUCTURE[0]:
    if progress:
      progress(f"session: the sky is smooth (structure {structure:.2f} < "
               f"{correct.SKY_STRUCTURE[0]}): per-frame sky surfaces and the scale-split flat")
    return None
  surface, weight, _ = correct.sky_background(grid[inner], work, structure)
  h, w = fit.F.shape
  basis = sky_surface.legendre_basis((h, w), selfcal.G_DEGREE)
  # every frame as (transparency, origin on the sky canvas, G's Legendre coefficients)
  gains, origins = np.ones(n), np.zeros((n, 2), int)
  coefs = np.zeros((n, basis.shape[1]))
  for k, i in enumerate(fitted):
    gains[i], origins[i] = fit.gains[k], fit.offsets[k]
    coefs[i] = np.linalg.lstsq(basis, fit.G[k].ravel(), rcond=None)[0]
  others = np.setdiff1d(np.arange(n), fitted)
  if others.size:
    reference = selfcal.turn(planes[0], turned[fitted[0]])
    shift0 = frame_offsets[0]  # subset frame 0 in the subset's offsets
    base = np.round(frame_offsets).astype(int).min(0)  # selfcal.align's integer origin
    del planes
    for count, i in enumerate(others):
      if foreign[i]:
        continue
      # on the sky the way the fitted frames are
      plane = selfcal.turn(_binned_planes(frames, [i], b, shape)[0][0], turned[i])
      pair = selfcal.offsets(np.stack([reference, plane]), subpixel=True)
      offset = shift0 + pair[1] - pair[0]
      whole = np.round(offset).astype(int)
      aligned = ndimage.shift(plane, offset - whole, order=3, mode="nearest")
      origins[i] = whole - base
      sky_i = _sky_window(fit.T, origins[i], (h, w))
      gains[i], coefs[i] = _fit_to_sky(selfcal.turn(aligned, turned[i]),
                                       selfcal.turn(sky_i, turned[i]), fit.F, basis)
      if progress and ((count + 1) % 10 == 0 or count + 1 == others.size):
        progress(f"  joint fit: frames outside it fitted to its sky, {count + 1}/{others.size}")
  f_full = _unbin(fit.F, b, shape[:2])
  f_full = f_full / np.median(f_full)
  info = ndimage.gaussian_filter(sum(fit.sky_of(k) ** 2 for k in range(len(fitted))),
                                 selfcal.smooth_px(len(fitted)))
  confidence = np.clip(_unbin(info / np.median(info), b, shape[:2]), 0.0, 1.0)
  in_fit = set(fitted.tolist())
  numbers = [{"frame": name,
              "offset_px": None if foreign[i] else [int(dy * b), int(dx * b)],
              "transparency": float(gains[i]), "in_joint_fit": i in in_fit,
              "sky_turned_180": bool(turned[i]), "same_sky": not foreign[i],
              "g_range": float(np.ptp(basis @ coefs[i])), "sky_structure": structure}
             for i, (name, (dy, dx)) in enumerate(zip(names, origins))]
  subset = f", F from {len(fitted)} of them" if others.size else ""
  subset += f", {int(turned.sum())} with the sky turned 180°" if turned.any() else ""
  subset += f", {int(foreign.sum())} of another sky" if foreign.any() else ""
  line = (f"session: joint self-calibration of {n} frames (binned {b}×{b}{subset}, offsets up "
          f"to {int(round(spread * b))} px, sky structure {structure:.1f}, sky "
          f"surface at {weight:.0%})")
  if progress:
    progress(line)
  return SessionFlat(F=f_full[..., None].astype(np.float32),
                     confidence=confidence[..., None].astype(np.float32), frames=numbers,
                     mode="joint", joint={"coef": coefs, "basis": basis, "gains": gains,
                                          "origins": origins, "turned": turned,
                                          "foreign": foreign,
                                          "S": working_grid.upsample(weight * surface, work),
                                          "bin": b, "metas": metas, "line": line})


def _correct_joint(image: np.ndarray, flat: SessionFlat, index: int) -> correct.Correction:
  """Pass 2 of frame ``index`` after :func:`joint_estimate`: its G is its fitted G plus its
  part of the sky surface times its transparency and F, and ``corrected = (observed − G) / F``
  exactly."""
  joint, hw = flat.joint, image.shape[:2]
  b = joint["bin"]
  h, w = -(-hw[0] // b), -(-hw[1] // b)
  s_sky = joint["S"]
  # a frame outside the joint fit may reach past the sky its frames saw: the smooth surface
  # is taken at the nearest place inside
  origin = np.clip(joint["origins"][index], 0, np.subtract(s_sky.shape, (h, w)))
  s_frame = joint["gains"][index] * s_sky[origin[0]:origin[0] + h, origin[1]:origin[1] + w]
  s_frame = selfcal.turn(s_frame, joint["turned"][index])  # on the sky: it turns with it
  g_frame = (joint["basis"] @ joint["coef"][index]).reshape(h, w)
  f_plane = flat.F[..., 0]
  g_full = _unbin(s_frame, b, hw) * f_plane
  g_full += _unbin(g_frame, b, hw)
  corrected = (image[..., 0] - g_full) / f_plane
  return correct.Correction(corrected=corrected[..., None].astype(np.float32, copy=False),
                            F=flat.F, G=g_full[..., None].astype(np.float32, copy=False),
                            confidence=flat.confidence, notes=())


def single_frame():
  """The shipped model's single-frame correction, ``callable(image) -> correct.Correction``
  (loaded once)."""
  global _SINGLE
  if _SINGLE is None:
    _SINGLE = correct.load().correct
  return _SINGLE


_SINGLE = None


def _flatness(image: np.ndarray) -> float:
  """The single-frame pipeline's flatness number of a corrected frame (lower is flatter)."""
  return correct.background_nonuniformity(correct._nan_to_median(image))


def _fine_flatness(image: np.ndarray, flat: SessionFlat, grid_hw) -> float:
  """Small-scale flatness of a corrected frame (lower is flatter): the robust σ of its
  small-scale ratio ``h`` (:func:`_frame_evidence`, objects masked) over the fine grid, the
  worst channel's — what dust left in it or noise brought into it by F raise."""
  hw = image.shape[:2]
  work = working_grid.geometry(hw, grid_hw)
  sigma = SPLIT_FRACTION * max(hw) / max(flat.fine.block)
  out = 0.0
  for k in range(image.shape[2]):
    h = _frame_evidence(correct._nan_to_median(image[..., k]), flat.fine, work, sigma)[0]
    out = max(out, float(scores.robust_sigma(h[np.isfinite(h)])))
  return out


def choose(flat: SessionFlat, frame_at, single, grid_hw, print_fn=None) -> str:
  """Leave-half-out test, per scale: which parts of the session F flatten frames they did not
  see at least as well as each frame's own single-frame correction. Sets ``flat.mode``
  (``both``, ``large``, ``small`` or ``single``), ``flat.F`` (all ones for ``single``) and
  returns one line saying what was chosen.

  Up to ``HOLDOUT_FRAMES`` qualifying frames (large-scale weight > 0), alternating between the
  even (A) and the odd (B) frames, are corrected by ``single`` and with the other half's F —
  both scales, the large, the small scales only. The first of these whose mean flatness
  (``correct.background_nonuniformity``) *and* mean small-scale flatness
  (:func:`_fine_flatness`, less the noise the half's F has beyond all frames') are both at
  most single-frame mode's is used (the large scales only
  if the halves share any, ``large_share`` > 0); none: single-frame mode.

  Args:
    frame_at: ``callable(i) -> (H, W, C) float32``, frame ``i`` read again.
    single: ``callable(image) -> correct.Correction``, single-frame mode.
  """
  if flat.fallback:
    flat.mode, flat.F = "single", flat.field("all", "single")
    line = flat.fallback
  else:
    ok = [i for i, f in enumerate(flat.frames) if f["large_scale_weight"] > 0.0]
    evens, odds = [i for i in ok if i % 2 == 0], [i for i in ok if i % 2 == 1]
    picks = [i for pair in zip(evens, odds) for i in pair][:HOLDOUT_FRAMES] or ok[:1]
    candidates = ("both", "large", "small") if flat.large_share > 0.0 else ("small",)
    rows = {name: [] for name in ("single",) + candidates}
    for i in picks:
      image = frame_at(i)
      other = "B" if i % 2 == 0 else "A"
      out = single(image).corrected
      rows["single"].append((_flatness(out), _fine_flatness(out, flat, grid_hw)))
      for name in candidates:
        out = correct_with(image, flat, grid_hw, flat.field(other, name)).corrected
        rows[name].append((_flatness(out), _fine_flatness(out, flat, grid_hw)))
    means = {name: np.mean(v, 0) for name, v in rows.items()}
    # A half's small scales carry twice the noise variance of all frames' (e² per cell, from
    # the halves' difference: var(a − b) = 2 e²); the full F adds e²/2 less to h than the half.
    inner = working_grid.inner_cells(flat.fine)
    e2 = max(float(scores.robust_sigma((flat.parts["A"][k][1] - flat.parts["B"][k][1])[inner]))
             ** 2 / 2.0 for k in range(len(flat.parts["A"])))
    for name in candidates:
      means[name][1] = np.sqrt(max(means[name][1] ** 2 - e2 / 2.0, 0.0))
    flat.mode = next((name for name in candidates
                      if (means[name] <= means["single"]).all()), "single")
    flat.F = flat.field("all", flat.mode)
    line = (f"session: held-out on {len(picks)} frames (flatness / small-scale flatness): "
            + ", ".join(f"{k} {v[0]:.4f} / {v[1]:.5f}" for k, v in means.items())
            + f", large-scale share {flat.large_share:.2f} → {flat.mode}"
            + (" (each frame its own single-frame correction)" if flat.mode == "single" else ""))
  if flat.mode == "single":
    flat.confidence = np.zeros_like(flat.F)
  if print_fn:
    print_fn(line)
  return line


def left_geometry(hw) -> working_grid.GridGeometry:
  """The grid of :func:`left_ratio`: ≤ ``FINE_CELLS`` cells on the long side, full resolution
  where the frame is no larger."""
  block = -(-max(hw) // FINE_CELLS)
  return working_grid.geometry(hw, (-(-min(hw) // block), -(-max(hw) // block)))


def _local_sky(b: np.ndarray, cells: int) -> np.ndarray:
  """A ``(gh, gw)`` grid's local sky: the median over about ``2·cells + 1`` cells (medians of
  ``cells // 3``-cell blocks, their median over the blocks around — 1/100 of a full median
  filter's time), smoothed by a Gaussian of ``cells / 2``."""
  s = max(1, cells // 3)
  h, w = b.shape
  pad = np.pad(b, ((0, -h % s), (0, -w % s)), mode="edge")
  coarse = np.median(pad.reshape(pad.shape[0] // s, s, pad.shape[1] // s, s), axis=(1, 3))
  coarse = ndimage.median_filter(coarse, size=2 * (cells // s) + 1, mode="nearest")
  sky = np.repeat(np.repeat(coarse, s, 0), s, 1)[:h, :w]
  return ndimage.gaussian_filter(sky, cells / 2.0, mode="nearest")


def left_ratio(image: np.ndarray) -> np.ndarray:
  """``(C, gh, gw) float32``: a corrected ``(H, W, C)`` frame on :func:`left_geometry`'s grid
  over its local sky (median over about ``2·LEFT_SKY_CELLS + 1`` cells, smoothed), NaN where a
  star or a defect lies (``LEFT_CLIP`` robust σ off) — what :func:`left_dust` takes the median
  of, frame by frame."""
  fine = left_geometry(image.shape[:2])
  out = []
  for k in range(image.shape[2]):
    b = working_grid.bin_frame(correct._nan_to_median(image[..., k]), fine).astype(np.float64)
    sky = _local_sky(b, LEFT_SKY_CELLS)
    r = b / np.where(sky != 0, sky, 1.0)
    r[~(np.abs(r - 1.0) <= LEFT_CLIP * scores.robust_sigma(r - 1.0))] = np.nan
    out.append(r)
  return np.stack(out).astype(np.float32)


def left_dust(stack) -> np.ndarray:
  """The dust shadows a scale-split session's correction left in its frames, ``(C, gh, gw)``
  (1 = none).

  Single-frame mode keeps part of a shadow the network did not see whole, and the session F's
  large scales keep all of it (the sequence evaluation's sparse Spitzer field: 0.55 of the
  dips, 2.7 % of the sky at the deepest). The shadow is on the sensor, the sky moves between
  frames: the median over frames of each corrected frame's ratio to its local sky (``stack
  (N, C, gh, gw)`` of :func:`left_ratio`, stars masked), over its own median, smoothed by
  ``LEFT_SMOOTH_CELLS``, holds it. A dip is divided out where that median is ``LEFT_SIGMA``
  robust σ (of its cells) and ``LEFT_MIN_DEPTH`` deep, and the medians of the even and of the
  odd frames each half as many σ — noise is not at one sensor cell in both halves —, over at
  least ``LEFT_MIN_CELLS`` cells (a single deep cell is noise or the frame's edge), grown by 2
  cells and feathered; everything else stays 1. (Reaching further, to where the median is 2 σ
  deep, removed more of the Spitzer dust but cost 0.2 dB of PSNR: noise divided into the frames.)
  """
  n, c = stack.shape[:2]
  out = np.ones(stack.shape[1:])
  for k in range(c):
    medians = []
    for idx in (np.arange(n), np.arange(0, n, 2), np.arange(1, n, 2)):
      m = _over_frames(stack, k, idx, spread=False)[0]
      m = np.where(np.isfinite(m), m, np.nanmedian(m))
      # over its own median: faint stars the clip leaves lift every local sky a little
      medians.append(ndimage.gaussian_filter(m / np.median(m), LEFT_SMOOTH_CELLS, mode="nearest"))
    every, even, odd = medians
    sigma = float(scores.robust_sigma(every))
    deep = ((every < 1.0 - max(LEFT_SIGMA * sigma, LEFT_MIN_DEPTH))
            & (even < 1.0 - LEFT_SIGMA * sigma / 2.0)
            & (odd < 1.0 - LEFT_SIGMA * sigma / 2.0))
    labels, count = ndimage.label(deep)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    deep = (sizes >= LEFT_MIN_CELLS)[labels] & deep
    soft = ndimage.gaussian_filter(ndimage.binary_dilation(deep, iterations=2).astype(np.float64),
                                   1.0, mode="nearest")
    dip = np.minimum(every - 1.0, 0.0)
    out[k] = 1.0 + soft * dip
  return out


def with_left_dust(out: correct.Correction, dust: np.ndarray) -> correct.Correction:
  """A frame's correction with the dust ``dust (H, W, C)`` (:func:`settle_left_dust`) divided
  out too: ``corrected / dust``, F times it, G as it was."""
  F = dust if out.F is None else np.broadcast_to(out.F, dust.shape) * dust
  return dataclasses.replace(out, corrected=(out.corrected / dust).astype(np.float32),
                             F=F.astype(np.float32))


def settle_left_dust(flat: SessionFlat, stack, print_fn=None) -> np.ndarray | None:
  """After pass 2 of a scale-split session of a smooth sky: :func:`left_dust` of the
  ``(N, C, gh, gw)`` stack of :func:`left_ratio`; where it found dips, ``(H, W, C) float32`` at
  full resolution, by which ``flat.F`` is multiplied (``flat.left`` says how much); else None.
  Only where the frames' median working-grid structure is below ``correct.SKY_STRUCTURE[0]``
  (the joint fit's smooth-sky rule): a nebula that barely moves stays at one sensor place too
  (the ±4-px nebula session of the tests: flat error 5.08 → 5.11 % without this rule)."""
  structure = float(np.median([f["structure"] for f in flat.frames]))
  if flat.mode == "joint" or stack.shape[0] < LEFT_MIN_FRAMES:
    return None
  if structure >= correct.SKY_STRUCTURE[0]:  # a barely moving object would stay at one place too
    if print_fn:
      print_fn(f"session: no search for the dust the correction left (the frames' structure "
               f"{structure:.2f} ≥ {correct.SKY_STRUCTURE[0]}: not a smooth sky)")
    return None
  dust = left_dust(stack)
  changed = int((dust < 1.0 - 1e-4).sum())
  line = "session: no dust left in the corrected frames"
  full = None
  if changed:
    geo = left_geometry(flat.F.shape[:2])
    full = np.stack([working_grid.upsample(d, geo) for d in dust], -1).astype(np.float32)
    flat.F, flat.left = flat.F * full, {"cells": changed, "deepest": float(1.0 - dust.min())}
    line = (f"session: the dust the correction left divided out ({changed} fine cells, deepest "
            f"{100 * flat.left['deepest']:.1f} % of the sky; in session_F.fits)")
  if print_fn:
    print_fn(line)
  return full


def correct_with(image: np.ndarray, flat: SessionFlat, grid_hw, F=None) -> correct.Correction:
  """Pass 2 for one frame: the shared F and the frame's own G (``correct.sky_background``).

  Args:
    image: ``(H, W, C) float32`` linear, the session's size.
    flat: from :func:`estimate`.
    grid_hw: the working grid ``(gh, gw)``.
    F: another F to use instead of ``flat.F`` (the leave-half-out test).
  Returns:
    :class:`correct.Correction` (``F`` is the shared one, ``confidence`` F's times the sky's).
  """
  h, w, c = image.shape
  work = working_grid.geometry((h, w), grid_hw)
  inner = working_grid.inner_cells(work)
  F = flat.F if F is None else F
  remaining = image / F
  g_full = np.empty_like(image)
  sky_conf = np.empty_like(image)
  notes = []
  for k in range(c):
    grid = working_grid.bin_frame(remaining[..., k], work).astype(np.float64)
    surface, weight, support = correct.sky_background(grid[inner], work)
    g_full[..., k] = working_grid.upsample(weight * surface, work) * F[..., k]
    sky_conf[..., k] = working_grid.upsample(weight * support, work)
    if weight < 1.0:
      notes.append(f"remaining structure too high for a smooth sky: sky surface at {weight:.0%}")
  corrected = (image - g_full) / F
  return correct.Correction(corrected=corrected.astype(np.float32), F=F,
                            G=g_full.astype(np.float32),
                            confidence=(flat.confidence * np.clip(sky_conf, 0, 1)
                                        ).astype(np.float32), notes=tuple(notes))


def _correct_one(image, flat, grid_hw, single, index: int) -> correct.Correction:
  """Pass 2 for frame ``index`` in the mode :func:`choose` or :func:`joint_estimate` set."""
  if flat.mode == "joint":
    if flat.joint["foreign"][index]:  # another sky: the shared F, its own sky surface
      return correct_with(image, flat, grid_hw)
    return _correct_joint(image, flat, index)
  return single(image) if flat.mode == "single" else correct_with(image, flat, grid_hw)


def correct_arrays(frames, grid_hw, progress=None, single=None) -> tuple[SessionFlat, list]:
  """The session of in-memory ``(H, W[, C])`` frames: the shared flat and every frame's
  :class:`correct.Correction` (all kept in memory; :func:`correct_files` streams).

  Args:
    single: single-frame mode, ``callable(image) -> correct.Correction`` (default: the shipped
      model's, :func:`single_frame`), for the leave-half-out test and the fallback.
  """
  single = single or single_frame()
  flat = joint_estimate(frames, grid_hw, progress)
  if flat is None:
    flat, _ = estimate(frames, grid_hw, progress)
    choose(flat, lambda i: _as_frame(frames[i])[0], single, grid_hw, progress)
  outs = [_correct_one(_as_frame(f)[0], flat, grid_hw, single, i) for i, f in enumerate(frames)]
  if flat.mode != "joint":
    stack = np.stack([left_ratio(o.corrected) for o in outs])
    dust = settle_left_dust(flat, stack, progress)
    if dust is not None:
      outs = [with_left_dust(o, dust) for o in outs]
  return flat, outs


def correct_files(paths, out_dir, grid_hw, print_fn=print, history="flatai correct --session",
                  single=None, cfa: str = "auto") -> dict:
  """Corrects a session of files; writes (atomically, never over an input) each frame's
  corrected image and G as in single-frame mode (``correct.output_paths``), the shared F once
  as ``session_F.fits`` with ``session_F_confidence.fits``, and ``session_report.json``.

  Nothing is written until every frame has been read and checked (pass 1) and the
  leave-half-out test (:func:`choose`, up to ``HOLDOUT_FRAMES`` frames read again) has chosen
  the session F's parts or single-frame mode (``single``, default :func:`single_frame`).
  Bayer mosaics (``cfa``, as ``flatai correct --cfa``; the first frame decides, the others must
  match) are corrected in CFA space: the session runs on every frame's mono plane
  (``cfa.luminance``), and each frame's correction goes back to its four colours with one shared
  F and a G per colour (``cfa.from_luminance``); the outputs, ``session_F.fits`` included, are
  mosaics of the input's size.
  Returns:
    the report: ``frames`` (per-frame numbers and outputs), ``outputs`` (the session's files).
  """
  import json

  from flatai_jax import cfa as bayer
  from flatai_jax.io.atomic import write_text_atomic
  paths = [str(p) for p in paths]
  out_dir = Path(out_dir)
  for p in paths:
    for target in correct.output_paths(p, None, out_dir).values():
      if target.resolve() == Path(p).resolve():
        raise images.ImageError(p, "refusing to overwrite the input file; choose another --out")
  print_fn(f"session: {len(paths)} frames, pass 1 (one shared flat)")
  files = session_files(paths, cfa, print_fn)
  pattern = files[0].pattern
  single = single or single_frame()
  flat = joint_estimate(files, grid_hw, print_fn)
  if flat is None:
    flat, metas = estimate(files, grid_hw, print_fn)
    chosen = choose(flat, lambda i: _as_frame(files[i])[0], single, grid_hw, print_fn)
  else:
    metas, chosen = flat.joint["metas"], flat.joint["line"]
  out_dir.mkdir(parents=True, exist_ok=True)
  outputs = {"F": out_dir / "session_F.fits", "confidence": out_dir / "session_F_confidence.fits",
             "report": out_dir / "session_report.json"}
  names = " ".join(Path(p).name for p in paths[:3]) + (" …" if len(paths) > 3 else "")
  if pattern:
    as_mosaic = lambda a: bayer.merge(np.stack([a[..., 0]] * 4), files[0].hw)[..., None]
  else:
    as_mosaic = lambda a: a
  images.write_image(outputs["F"], as_mosaic(flat.F), None, history=f"{history}: shared flat F "
                     f"of {len(paths)} frames ({names})", protect=paths)
  images.write_image(outputs["confidence"], as_mosaic(flat.confidence), None,
                     history=f"{history}: confidence of F, 0..1", protect=paths)
  print_fn("session: pass 2 (" + ("each frame its own single-frame correction)"
                                   if flat.mode == "single" else
                                   f"each frame with the shared F ({flat.mode}) and its own G)"))
  flat.joint = flat.joint and {k: v for k, v in flat.joint.items() if k != "metas"}
  rows = []
  look_for_dust = flat.mode != "joint" and not pattern and len(paths) >= LEFT_MIN_FRAMES
  tmp = tempfile.TemporaryDirectory(prefix="flatai_session_left_") if look_for_dust else None
  for i, (path, meta, numbers) in enumerate(zip(paths, metas, flat.frames)):
    image, _ = files[i].read()
    if pattern:
      planes, mono = bayer.luminance(image, files[i].gains)
      _check_shape(mono, path, flat.F.shape)
      out = bayer.from_luminance(planes, _correct_one(mono, flat, grid_hw, single, i),
                                 image.shape[:2])
    else:
      _check_shape(image, path, flat.F.shape)
      out = _correct_one(image, flat, grid_hw, single, i)
    targets = correct.output_paths(path, None, out_dir)
    line = f"{history} input={Path(path).name} (shared F: session_F.fits)"
    images.write_image(targets["corrected"], out.corrected, meta, history=line, protect=paths)
    images.write_image(targets["G"], out.G, meta, history=line + " (additive field G)",
                       protect=paths, carry_hdus=False)
    before = correct.background_nonuniformity(correct._nan_to_median(image))
    after = correct.background_nonuniformity(correct._nan_to_median(out.corrected))
    rows.append({**numbers, "background_nonuniformity_before": before,
                 "background_nonuniformity_after": after, "notes": list(out.notes),
                 "outputs": {"corrected": str(targets["corrected"]), "G": str(targets["G"])}})
    print_fn(f"  [{i + 1}/{len(paths)}] {Path(path).name}: background non-uniformity "
             f"{before:.4f} → {after:.4f}" + "".join(f"; {n}" for n in out.notes))
    if look_for_dust:
      ratio = left_ratio(out.corrected)
      if i == 0:
        stack = np.lib.format.open_memmap(Path(tmp.name) / "left.npy", "w+", np.float32,
                                          (len(paths),) + ratio.shape)
      stack[i] = ratio
  if look_for_dust:
    dust = settle_left_dust(flat, stack, print_fn)
    del stack
    tmp.cleanup()
    if dust is not None:  # pass 3: the corrected frames written again, the dust divided out
      images.write_image(outputs["F"], flat.F, None, history=f"{history}: shared flat F of "
                         f"{len(paths)} frames ({names}), the dust the correction left in them "
                         "included", protect=paths)
      for path, meta, row in zip(paths, metas, rows):
        target = Path(row["outputs"]["corrected"])
        corrected = images.read_image(target, allow_nan=True)[0] / dust
        line = (f"{history} input={Path(path).name} (shared F, the dust the correction left "
                "included: session_F.fits)")
        images.write_image(target, corrected, meta, history=line, protect=paths)
        row["background_nonuniformity_after"] = correct.background_nonuniformity(
            correct._nan_to_median(corrected))
  report = {"mode": flat.mode, "left_dust": flat.left, "chosen": chosen, "cfa": pattern, "frames": rows, "flat": {"median": float(np.median(flat.F)),
                                     "min": float(flat.F.min()), "max": float(flat.F.max()),
                                     "mean_confidence": float(flat.confidence.mean())},
            "outputs": {k: str(v) for k, v in outputs.items()}}
  write_text_atomic(outputs["report"], json.dumps(report, indent=2))
  return report


def rms_pct(estimate_f: np.ndarray, truth_f: np.ndarray, sigma: float = 8.0) -> float:
  """RMS of ``smooth(F̂) / smooth(F) − 1`` over ``(H, W[, C])`` fields, %, both median-normalised,
  Gaussian ``sigma`` px (how well a session recovered a known flat)."""
  a = ndimage.gaussian_filter(np.asarray(estimate_f, np.float64).reshape(truth_f.shape[:2] + (-1,)),
                              (sigma, sigma, 0), mode="nearest")
  b = ndimage.gaussian_filter(np.asarray(truth_f, np.float64).reshape(truth_f.shape[:2] + (-1,)),
                              (sigma, sigma, 0), mode="nearest")
  ratio = (a / np.median(a)) / (b / np.median(b))
  return float(100.0 * np.sqrt(np.mean((ratio - 1.0) ** 2)))
