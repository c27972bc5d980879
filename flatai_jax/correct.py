"""Full-frame correction (the ``correct`` verb and the API's corrector): overlapping tiles with
global coordinates, blended back. Needs nothing of training or evaluation.

Each tile is normalised on its own (exactly as training crops are), run
through the model, mapped back to linear units, and blended with a smooth
window. Borders are handled by reflection padding, so every output pixel is
covered by tiles that extend past it; nothing is clipped.
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from flatai_jax import checkpointing, local_stage, metrics, scores, sky_surface, working_grid
from flatai_jax.io import images
from flatai_jax.models import abstract_params, forward, model_inputs
from flatai_jax.physics import geometry, host_threads, noise, normalize


@dataclasses.dataclass
class Correction:
  """Outputs of :func:`correct_image`, each ``(H, W, C) float32`` linear.

  ``F`` and ``G`` are None for the psf task; ``confidence`` (in [0, 1]: 1 = the
  flipped views of the frame agree, or the sky surface is backed by sky cells
  nearby; 0 = no correction there) only comes from whole-frame models.
  """
  corrected: np.ndarray
  F: np.ndarray | None
  G: np.ndarray | None
  confidence: np.ndarray | None = None
  notes: tuple[str, ...] = ()  # one-line decisions worth telling the user
  aberration: object | None = None  # correct_psf.PhysicsCorrection of a model that deconvolves first


def tile_origins(size: int, tile: int, stride: int) -> list[int]:
  """Start positions covering ``[0, size)`` with tiles of ``tile`` px every ``stride`` px."""
  if size <= tile:
    return [0]
  starts = list(range(0, size - tile + 1, stride))
  if starts[-1] != size - tile:
    starts.append(size - tile)
  return starts


def blend_window(tile: int, overlap: int) -> np.ndarray:
  """``(tile, tile)`` weights: 1 in the core, a raised-cosine ramp over ``overlap`` px at edges."""
  w = np.ones(tile, np.float64)
  if overlap > 0:
    ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(overlap) + 0.5) / overlap)
    w[:overlap] = ramp
    w[-overlap:] = ramp[::-1]
  return np.outer(w, w).astype(np.float32)


@functools.lru_cache(maxsize=8)
def make_tile_fn(graphdef, drop_residual: bool = False):
  """Jitted ``(params, tiles, coords) -> dict`` of linear-unit predictions for a tile batch.

  ``drop_residual``: a combined model applies only its flat correction
  (``--task flat``), i.e. ``(observed − G) / F`` without the aberration residual.
  """

  @jax.jit
  def fn(params, tiles, coords):
    inputs = model_inputs(tiles)
    pred = forward(graphdef, params, {**inputs, "coords": coords})
    if drop_residual:
      pred = {**pred, "clean": pred["clean"] - pred["residual"]}
    f_field = pred.get("F", jnp.ones_like(tiles))
    g_n = pred.get("G", jnp.zeros_like(tiles))
    clean, f_field, g_field = normalize.fields_from_normalized(
        pred["clean"], f_field, g_n, inputs["offset"], inputs["scale"])
    return {"clean": clean, "F": f_field, "G": g_field}

  return fn


@functools.partial(jax.jit, static_argnums=1)
def _tile_coords(offsets, tile: int, sensor_hw):
  """``(B, tile, tile, 2)`` global coordinates of tiles at ``(B, 2)`` offsets."""
  return jax.vmap(lambda o: geometry.frame_coords(o, (tile, tile), sensor_hw))(offsets)


# --- Whole-frame (global stage) models: configs/frame.py ---------------------

CONFIDENCE_LOG_F = 0.02  # flipped views disagreeing by 2 % in F → confidence e⁻¹
CONFIDENCE_G = 0.02  # … or by 2 % of the sky level in G
CONFIDENCE_SMOOTH_CELLS = 3.0  # Gaussian σ of the confidence on the working grid, cells
# sky_surface structure (σ about a smooth fit / cell noise; ≈ 1 for sky and noise) over which a
# frame stops being smooth sky (the sky fit alone corrects below, the network joins above) …
SKY_STRUCTURE = (1.4, 1.8)
# … and over which extended objects fill it (network and sky fit ramped down to nothing).
NETWORK_STRUCTURE = (3.0, 3.5)


def grid_fields(graphdef, params, grids):
  """``(log F, G)`` of the whole-frame model on the working grid, not jitted (:func:`make_grid_fn`
  jits it; ``flatai export --format=onnx`` traces it).

  Args:
    grids: ``(4, gh, gw, C) float32`` linear, the binned frame in its four flips.
  Returns:
    log F, G: each ``(4, gh, gw, C) float32``, G linear (still flipped as the input).
  """
  gh, gw = grids.shape[1:3]
  inputs = model_inputs(grids)
  coords = jnp.broadcast_to(geometry.frame_coords(jnp.zeros(2), (gh, gw),
                                                  jnp.asarray((gh, gw), jnp.float32)),
                            grids.shape[:3] + (2,))
  pred = forward(graphdef, params, {**inputs, "coords": coords})
  _, f_field, g_field = normalize.fields_from_normalized(
      pred["clean"], pred["F"], pred["G"], inputs["offset"], inputs["scale"])
  return jnp.log(f_field), g_field


@functools.lru_cache(maxsize=8)
def make_grid_fn(graphdef):
  """Jitted ``(params, grids (4, gh, gw, C)) -> (log F, G)`` on the working grid, each
  ``(4, gh, gw, C)`` linear, for the frame seen in its four flips (see :func:`grid_fields`)."""
  return jax.jit(functools.partial(grid_fields, graphdef))


FLIPS = (lambda a: a, lambda a: a[:, ::-1], lambda a: a[::-1], lambda a: a[::-1, ::-1])


def _flips(a):
  """The four flips of ``(gh, gw, C)`` (identity, left-right, up-down, both) as ``(4, …)``."""
  return np.stack([flip(a) for flip in FLIPS])


def _flips_undone(stack):
  """Inverse of :func:`_flips` on model outputs ``(4, gh, gw, C)`` (each flip is its own
  inverse)."""
  return np.stack([flip(x) for flip, x in zip(FLIPS, stack)])


def correct_frame(graphdef, params, config, image: np.ndarray, progress=None) -> Correction:
  """Corrects a whole frame with a whole-frame model (``config.data.whole_frame``).

  On the working grid (``working_grid.bin_frame``), the frame's ``structure``
  (``sky_surface.structure``: σ about a smooth fit over the cell noise) decides:

  - **smooth sky** (below ``SKY_STRUCTURE``: sky, gradients, vignetting, stars):
    a robust smooth sky fit (``sky_surface.fit_sky``: objects rejected, refined
    between them) is the correction; the network is not needed.
  - **in between** (dense fields, objects over part of the frame): the network
    predicts log F and G for the whole frame at once, in its four flips,
    averaged, scaled by the flips' agreement (confidence) and by
    :func:`auto_strength`; the sky fit then corrects what it left, ramped down
    as the remaining structure rises above ``SKY_STRUCTURE``.
  - **extended objects** (above ``NETWORK_STRUCTURE``: a nebula or a galaxy fills
    the frame): nothing; no smooth fit and not the network can tell the object's
    light from background there. A note says so.

  The fields are upsampled smoothly to full resolution and ``corrected =
  (observed − G) / F`` exactly, so noise, stars and galaxies pass through; F
  keeps median 1 and G median 0 on the grid (the frame keeps its sky pedestal).

  Args:
    image: ``(H, W, C) float32`` linear, C = the model's channels, no NaN.
  Returns:
    :class:`Correction` with ``confidence`` and ``notes``.
  """
  h, w, c = image.shape
  geo = working_grid.geometry((h, w), tuple(config.data.sensor_hw))
  grid = np.stack([working_grid.bin_frame(image[..., k], geo) for k in range(c)], -1)
  inner = working_grid.inner_cells(geo)  # cells of the frame itself, not of its padding
  structures = [sky_surface.structure(grid[inner][..., k]) for k in range(c)]
  structure = max(structures)
  use_network = (sky_surface.ramp_down(structure, *NETWORK_STRUCTURE)
                 * (1.0 - sky_surface.ramp_down(structure, *SKY_STRUCTURE)))
  if use_network > 0.0:
    log_f, g_field, confidence_grid = _network_fields(graphdef, params, config, grid)
    log_f, g_field = use_network * log_f, use_network * g_field
    confidence_grid = use_network * confidence_grid
  else:
    log_f, g_field = np.zeros(grid.shape), np.zeros(grid.shape)
    confidence_grid = np.zeros(grid.shape)
  remaining = ((grid - g_field) / np.exp(log_f))[inner]
  notes, sky_weights = [], []
  for k in range(c):
    # without the network, what is left is the binned frame itself: its structure is known
    surface, weight, support = sky_background(
        remaining[..., k], geo, structures[k] if use_network == 0.0 else None)
    sky_weights.append(weight)
    g_field[..., k] += weight * surface * np.exp(log_f[..., k])
    g_field[..., k] -= np.median(g_field[inner][..., k])
    sky_confidence = weight * support
    confidence_grid[..., k] = 1.0 - (1.0 - confidence_grid[..., k]) * (1.0 - sky_confidence)
    if weight < 1.0:
      notes.append(f"frame structure {structure:.1f}× the cell noise (extended objects): "
                   f"network at {use_network:.0%}, sky surface at {weight:.0%}"
                   + (" — left as it is" if use_network == 0.0 and weight == 0.0 else ""))
  up = lambda a: np.stack([working_grid.upsample(a[..., k], geo) for k in range(c)], -1)
  f_full, g_full = np.exp(up(log_f)), up(g_field)
  confidence = np.clip(up(confidence_grid), 0.0, 1.0)
  if progress is not None:
    progress(1, 1)
  corrected = (image - g_full) / f_full
  fine = local_stage.fine_geometry((h, w), geo.grid_hw)
  for k in range(c):
    if fine is None or sky_weights[k] == 0.0:
      continue  # small frame: the grid resolves small dust; object-filled: dark lanes aren't dust
    dust = local_stage.dust_dips(corrected[..., k], fine)
    if dust.cells:
      f_local = dust.f_local ** sky_weights[k]
      f_full[..., k] *= f_local
      corrected[..., k] /= f_local
      notes.append(f"local stage: small dust shadows over {dust.cells} fine cells, deepest "
                   f"{dust.deepest:.1%}")
  return Correction(corrected=corrected.astype(np.float32), F=f_full.astype(np.float32),
                    G=g_full.astype(np.float32), confidence=confidence.astype(np.float32),
                    notes=tuple(notes))


def sky_background(remaining: np.ndarray, geo, structure: float | None = None
                   ) -> tuple[np.ndarray, float, np.ndarray]:
  """The sky-surface part of G for one plane of a frame already divided by its F.

  Args:
    remaining: ``(gh', gw')`` inner cells of the working grid (``working_grid.inner_cells``),
      linear, the frame's units.
    geo: the working grid's ``working_grid.GridGeometry`` (its padding cells are filled by
      edge padding).
    structure: ``sky_surface.structure(remaining)`` when the caller has it already.
  Returns:
    surface: ``(gh, gw) float64``, the sky fit with its median removed (edge-padded);
    weight: in [0, 1], how much of it to apply (1 below ``SKY_STRUCTURE[0]`` of the
      remaining structure, 0 above ``SKY_STRUCTURE[1]``);
    support: ``(gh, gw) float64`` in [0, 1], sky cells backing the surface nearby.
  """
  fit = sky_surface.fit_sky(remaining)
  if structure is None:
    structure = sky_surface.structure(remaining)
  weight = sky_surface.ramp_down(structure, *SKY_STRUCTURE)
  rows, cols = working_grid.inner_cells(geo)
  pad = ((rows.start, geo.grid_hw[0] - rows.stop), (cols.start, geo.grid_hw[1] - cols.stop))
  surface = np.pad(fit.surface - np.median(fit.surface), pad, mode="edge")
  return surface, weight, np.pad(fit.support, pad, mode="edge")


def _network_fields(graphdef, params, config, grid):
  """The network's ``(log F, G, confidence)`` on the grid, each ``(gh, gw, C)`` float64:
  the mean of the four flips, F median 1 and G median 0, scaled by the smoothed flip
  confidence and by :func:`auto_strength`."""
  log_f, g_field = jax.device_get(make_grid_fn(graphdef)(params, _flips(grid)))
  log_f, g_field = _flips_undone(log_f), _flips_undone(g_field)
  sky = max(float(np.median(grid)), 1e-12)
  spread = np.maximum(log_f.std(0) / CONFIDENCE_LOG_F, g_field.std(0) / (CONFIDENCE_G * sky))
  mean_log_f, mean_g = log_f.mean(0).astype(np.float64), g_field.mean(0).astype(np.float64)
  # The overall level of F and the constant of G are not identifiable from one frame:
  # F keeps median 1 and G median 0, so the frame keeps its sky level.
  mean_log_f -= np.median(mean_log_f, axis=(0, 1), keepdims=True)
  mean_g -= np.median(mean_g, axis=(0, 1), keepdims=True)
  # Where the flipped views disagree, the correction falls back towards none (1 − confidence).
  # The confidence is smoothed over a few cells so that it cannot print cell-scale structure.
  from scipy import ndimage
  confidence = ndimage.gaussian_filter(np.exp(-spread), (CONFIDENCE_SMOOTH_CELLS,) * 2 + (0,),
                                       mode="nearest").astype(np.float64)
  mean_log_f, mean_g = confidence * mean_log_f, confidence * mean_g
  s = auto_strength(grid, mean_log_f, mean_g) if config.predict.auto_strength else 1.0
  return s * mean_log_f, s * mean_g, confidence


AUTO_STRENGTHS = np.linspace(0.0, 1.0, 21)  # strengths tried by auto_strength
AUTO_MIN_GAIN = 0.05  # a correction must flatten the background by > 5 % to be applied


def auto_strength(grid, log_f, g_field) -> float:
  """The safe fraction of a predicted correction: 0 unless the correction makes the working grid
  flatter by more than ``AUTO_MIN_GAIN`` (robust σ of ``(grid − s·G) / exp(s·log F)``
  relative to its median); then the largest ``s`` in [0, 1] within 2 % of the flattest
  background reachable. A model that would invent structure on a flat frame gets ``s = 0``
  (the frame is left as it is); a frame whose background the correction flattens keeps ``s = 1``.

  Args:
    grid, log_f, g_field: ``(gh, gw, C)`` binned frame, log F, G, linear.
  """
  def spread(s):
    c = (grid - s * g_field) / np.exp(s * log_f)
    return float(scores.robust_sigma(c)) / max(abs(float(np.median(c))), 1e-12)

  spreads = np.asarray([spread(s) for s in AUTO_STRENGTHS])
  if spreads[0] <= spreads.min() * (1.0 + AUTO_MIN_GAIN):
    return 0.0
  ok = spreads <= spreads.min() * 1.02 + 1e-6
  return float(AUTO_STRENGTHS[ok].max())


def apply_strength(observed: np.ndarray, out: Correction, strength: float) -> Correction:
  """Blends a correction towards none: ``F^s``, ``s·G`` (``s = 1`` full, ``0`` none), and
  ``corrected = (observed − s·G) / F^s``; a psf correction is blended linearly."""
  if strength == 1.0:
    return out
  if not 0.0 <= strength <= 1.0:
    raise ValueError(f"strength {strength} must be in [0, 1]")
  if out.F is None:
    return dataclasses.replace(out, corrected=(strength * out.corrected
                                               + (1.0 - strength) * observed).astype(np.float32))
  f_s = np.power(out.F, strength, dtype=np.float32)
  g_s = (strength * out.G).astype(np.float32)
  return dataclasses.replace(out, corrected=((observed - g_s) / f_s).astype(np.float32),
                             F=f_s, G=g_s)


# --- Tile models -------------------------------------------------------------


def correct_image(graphdef, params, config, image: np.ndarray, tile: int | None = None,
                  overlap: int | None = None, batch_size: int | None = None,
                  progress=None, task: str | None = None) -> Correction:
  """Corrects a full frame.

  Args:
    graphdef, params, config: the model and its config (:func:`load`).
    image: ``(H, W, C) float32`` linear, the whole sensor frame.
    tile: tile side, px, a multiple of 2**depth (default ``config.predict.tile``,
      the training crop size works best).
    overlap: overlap between neighbouring tiles, px, ≤ tile / 2
      (default ``config.predict.overlap``).
    batch_size: tiles per forward pass (static; the last batch is padded).
    progress: optional ``callable(done, total)``.
    task: which correction to apply (see :func:`resolve_task`); default the model's.
  Returns:
    :class:`Correction` with the corrected image, F and G over the frame.
  """
  if config.data.whole_frame:
    return correct_frame(graphdef, params, config, image, progress)
  tile = tile or config.predict.tile
  overlap = config.predict.overlap if overlap is None else overlap
  batch_size = batch_size or config.predict.batch_size
  if tile % 2 ** (len(config.model.width_multipliers) - 1):
    raise ValueError(f"tile {tile} must be a multiple of {2 ** (len(config.model.width_multipliers) - 1)}")
  if not 0 <= overlap <= tile // 2:
    raise ValueError(f"overlap {overlap} must be in [0, tile/2] for tile {tile}")
  h, w, c = image.shape
  pad = overlap // 2
  hp, wp = max(h + 2 * pad, tile), max(w + 2 * pad, tile)
  padded = np.pad(image, ((pad, hp - h - pad), (pad, wp - w - pad), (0, 0)), mode="reflect")
  stride = tile - overlap
  ys, xs = tile_origins(hp, tile, stride), tile_origins(wp, tile, stride)
  grid = [(gy, gx) for gy in range(len(ys)) for gx in range(len(xs))]
  window = blend_window(tile, overlap)[:, :, None]
  task = resolve_task(config.task, task)
  fn = make_tile_fn(graphdef, drop_residual=(config.task == "combined" and task == "flat"))
  sensor_hw = jnp.asarray((h, w), jnp.float32)
  acc = {k: np.zeros((hp, wp, c), np.float32) for k in ("clean", "F", "G")}
  weight = np.zeros((hp, wp, 1), np.float32)
  has_flat = task != "psf"
  match = has_flat and config.predict.match_tiles and overlap > 0 and len(grid) > 1
  matcher = TileOffsetMatcher(ys, xs, tile, c) if match else None
  def batch_args(chunk):
    chunk = chunk + [chunk[-1]] * (batch_size - len(chunk))
    tiles = np.stack([padded[ys[gy]:ys[gy] + tile, xs[gx]:xs[gx] + tile] for gy, gx in chunk])
    offsets = np.asarray([(ys[gy] - pad, xs[gx] - pad) for gy, gx in chunk], np.float32)
    return params, tiles, _tile_coords(offsets, tile, sensor_hw)

  batches = [grid[b:b + batch_size] for b in range(0, len(grid), batch_size)]
  compiled = fn.lower(*batch_args(batches[0])).compile()
  # XLA runs one CPU computation on one core: a batch per core at a time (host_threads);
  # summed in the batches' order, so the result does not depend on the number of cores
  workers, done = host_threads.cpu_workers(), 0
  for g in range(0, len(batches), workers):
    group = batches[g:g + workers]
    for chunk, out in zip(group, host_threads.map_compiled(compiled, [batch_args(c) for c in group])):
      for i, (gy, gx) in enumerate(chunk):
        y, x = ys[gy], xs[gx]
        for k in acc:
          acc[k][y:y + tile, x:x + tile] += out[k][i] * window
        weight[y:y + tile, x:x + tile] += window
        if match:
          matcher.add(gy, gx, out["G"][i])
      done += len(chunk)
    if progress is not None:
      progress(done, len(grid))
  weight = np.maximum(weight, 1e-12)
  for k in acc:  # in place: full frames are large
    acc[k] /= weight
  clean, f_field, g_field = acc["clean"], acc["F"], acc["G"]
  if match:
    # Shift each tile's G by its solved pedestal; (observed − G)/F moves by −δ/F.
    delta = matcher.solve()
    shift = np.zeros_like(g_field)
    for gy, gx in grid:
      shift[ys[gy]:ys[gy] + tile, xs[gx]:xs[gx] + tile] += delta[gy, gx] * window
    shift /= weight
    g_field = g_field + shift
    clean = clean - shift / f_field
  crop = lambda a: a[pad:pad + h, pad:pad + w].astype(np.float32)
  return Correction(corrected=crop(clean), F=crop(f_field) if has_flat else None,
                    G=crop(g_field) if has_flat else None)


def resolve_task(model_task: str, task: str | None) -> str:
  """The correction to apply: the model's task, or ``flat`` alone for a combined model."""
  task = task or model_task
  if task != model_task and not (model_task == "combined" and task == "flat"):
    raise ValueError(f"a {model_task} model cannot apply --task={task}; use --task={model_task}"
                     + (" or --task=flat" if model_task == "combined" else ""))
  return task


class TileOffsetMatcher:
  """Per-tile pedestals of G that make overlapping tiles agree.

  From one tile the model cannot tell a constant sky level from a constant
  part of G, so neighbouring tiles may predict G with different pedestals;
  left alone they print a blotchy background across the frame. Like mosaic
  background matching, the offsets ``δ`` minimise
  ``Σ_pairs (mean_overlap(G_a + δ_a) − mean_overlap(G_b + δ_b))²`` with
  ``Σ δ = 0`` (the mean pedestal the model predicted is kept). Only the
  overlap strips of the previous row are held, so memory stays bounded.

  Args:
    ys, xs: tile origins along each axis, px.
    tile: tile side, px.
    channels: C.
  """

  def __init__(self, ys, xs, tile, channels):
    self.ys, self.xs, self.tile, self.c = ys, xs, tile, channels
    self.right, self.below = {}, {}
    self.pairs, self.diffs = [], []

  def add(self, gy, gx, g_tile):
    """Registers a tile's ``(tile, tile, C)`` G prediction, in row-major order."""
    ys, xs, t = self.ys, self.xs, self.tile
    if gx > 0:
      left = self.right.pop((gy, gx - 1))
      self._pair((gy, gx - 1), (gy, gx), left, g_tile[:, :xs[gx - 1] + t - xs[gx]])
    if gy > 0:
      above = self.below.pop((gy - 1, gx))
      self._pair((gy - 1, gx), (gy, gx), above, g_tile[:ys[gy - 1] + t - ys[gy]])
    if gx + 1 < len(xs):
      self.right[(gy, gx)] = g_tile[:, xs[gx + 1] - xs[gx]:].astype(np.float64)
    if gy + 1 < len(ys):
      self.below[(gy, gx)] = g_tile[ys[gy + 1] - ys[gy]:].astype(np.float64)

  def _pair(self, a, b, g_a, g_b):
    self.pairs.append((a, b))
    self.diffs.append(g_b.mean(axis=(0, 1)) - g_a.mean(axis=(0, 1)))

  def solve(self) -> np.ndarray:
    """``(rows, cols, C)`` float64 pedestal per tile, summing to zero."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import lsqr
    nx, n = len(self.xs), len(self.ys) * len(self.xs)
    rows, cols, vals = [], [], []
    for r, ((ay, ax), (by, bx)) in enumerate(self.pairs):
      rows += [r, r]
      cols += [ay * nx + ax, by * nx + bx]
      vals += [1.0, -1.0]
    m = len(self.pairs)
    rows += [m] * n
    cols += list(range(n))
    vals += [1.0] * n
    a = coo_matrix((vals, (rows, cols)), shape=(m + 1, n)).tocsr()
    d = np.concatenate([np.asarray(self.diffs).reshape(m, self.c), np.zeros((1, self.c))])
    delta = np.stack([lsqr(a, d[:, k], atol=1e-12, btol=1e-12)[0] for k in range(self.c)], -1)
    return delta.reshape(len(self.ys), nx, self.c)


NONUNIFORMITY_SAMPLES = 65536  # pixels per cell, at least, in background_nonuniformity


def background_nonuniformity(image: np.ndarray, blocks: int = 8) -> float:
  """Spread of the sky background across the frame, a flatness number for reports.

  The frame is cut into ``blocks × blocks`` cells; the median of each cell (of a regular
  subsample of at least ``NONUNIFORMITY_SAMPLES`` pixels in large cells: as robust, and
  a 24-Mpx frame in 0.3 s instead of 2 s) estimates the local background. Returns
  (max − min) / median of those medians — 0 for a perfectly flat background.
  """
  h, w = image.shape[:2]
  step = max(1, int(np.sqrt(h * w / blocks ** 2 / NONUNIFORMITY_SAMPLES)))
  ys = np.linspace(0, h, blocks + 1).astype(int)
  xs = np.linspace(0, w, blocks + 1).astype(int)
  med = np.array([[np.median(image[ys[i]:ys[i + 1]:step, xs[j]:xs[j + 1]:step])
                   for j in range(blocks)] for i in range(blocks)])
  return float((med.max() - med.min()) / max(abs(np.median(med)), 1e-12))


def error_vs_reference(image: np.ndarray, reference: np.ndarray) -> dict:
  """MAE and PSNR of ``image`` vs a known clean frame, as defined in ``flatai_jax.scores``
  (median difference removed; the reference's 99.9th − 0.1th percentile as peak).

  Units: MAE relative to that data range (0.01 = 1 % of it); PSNR in dB.
  """
  x, y = image.astype(np.float64), reference.astype(np.float64)
  return {"mae": float(scores.mae(x, y) / scores.data_range(y)), "psnr": float(scores.psnr(x, y))}


def fill_masked(image: np.ndarray, sigma: float = 8.0) -> tuple[np.ndarray, np.ndarray | None]:
  """Replaces NaN pixels by the local background so the model sees no holes.

  Normalised convolution: ``blur(image·valid) / blur(valid)`` with a Gaussian
  of ``sigma`` px, falling back to the channel median far from valid pixels.

  Args:
    image: ``(H, W, C) float32`` linear, NaN where masked.
  Returns:
    filled image (the input itself when nothing is masked), ``(H, W, C)``
    bool mask of the NaN pixels or None.
  """
  mask = np.isnan(image)
  if not mask.any():
    return image, None
  from scipy import ndimage
  valid = (~mask).astype(np.float32)
  data = np.where(mask, 0.0, image).astype(np.float32)
  filled = image.copy()
  for ch in range(image.shape[-1]):
    num = ndimage.gaussian_filter(data[..., ch], sigma, mode="reflect")
    den = ndimage.gaussian_filter(valid[..., ch], sigma, mode="reflect")
    median = np.nanmedian(image[..., ch])
    local = np.where(den > 1e-3, num / np.maximum(den, 1e-3), median)
    filled[..., ch] = np.where(mask[..., ch], local, image[..., ch])
  return filled, mask


class ProgressBar:
  """``label [#####     ] 12/40 tiles  3.1 tiles/s  ETA 9s`` on one refreshed line (``unit``:
  tiles for tile models, planes for whole-frame models)."""

  def __init__(self, label: str, print_fn=print, width: int = 24, unit: str = "tiles"):
    import time
    self.label, self.print, self.width, self.clock = label, print_fn, width, time.perf_counter
    self.unit = unit
    self.start = self.clock()

  def __call__(self, done: int, total: int) -> None:
    rate = done / max(self.clock() - self.start, 1e-9)
    filled = int(self.width * done / max(total, 1))
    bar = "#" * filled + " " * (self.width - filled)
    self.print(f"\r{self.label} [{bar}] {done}/{total} {self.unit}  {rate:.1f} {self.unit}/s  "
               f"ETA {(total - done) / max(rate, 1e-9):.0f}s", end="", flush=True)
    if done >= total:
      self.print("")


class Corrector:
  """A trained model ready to correct frames: the Python API and the CLI's code path.

  Get one with :func:`flatai_jax.load`::

    corrector = flatai_jax.load("runs/quickstart")
    out = corrector.correct(pixels)           # (H, W[, C]) NumPy array, linear
    out.corrected, out.F, out.G                # (H, W, C) float32, linear
    corrector.correct_file("m31.fits", out_dir="corrected/")

  Attributes:
    config, graphdef, params, step: the restored model and its config.
    checkpoint: the run directory it came from.
    seeing_share: aberration models: the share of the fitted seeing RL undoes where the
      optics are at their best (``correct_psf.correct_physics``); None: ``correct_psf.RL_SEEING``.
  """

  def __init__(self, config, graphdef, params, step: int, checkpoint: str, flat=None):
    self.config, self.graphdef, self.params = config, graphdef, params
    self.step, self.checkpoint = step, str(checkpoint)
    self.flat = flat  # combined = this flat Corrector, then this (a psf model) on its output
    self.seeing_share: float | None = None
    if flat is not None and config.model.input != "deconvolved":
      raise ValueError("a flat stage chains only before a model that deconvolves first")

  @property
  def task(self) -> str:
    """``flat``, ``psf`` or ``combined`` (a model's own, or a flat model chained before it)."""
    return "combined" if self.flat is not None else self.config.task

  def correct(self, image: np.ndarray, *, task: str | None = None, tile: int | None = None,
              overlap: int | None = None, progress=None, strength: float = 1.0) -> Correction:
    """Corrects one frame held in memory.

    Args:
      image: ``(H, W)`` or ``(H, W, C) float`` linear pixels in any absolute
        scale (ADU, electrons, [0, 1]); NaN marks masked pixels and stays NaN.
        A mono model corrects each channel of an RGB frame on its own.
      task: ``None`` (the model's task) or ``flat`` for a combined model.
      tile, overlap: tiling in px (defaults from ``config.predict``).
      progress: optional ``callable(done, total)`` per channel.
      strength: in [0, 1], blends towards no correction (:func:`apply_strength`).
    Returns:
      :class:`Correction` in the input's absolute scale, nothing clipped;
      ``F`` and ``G`` are None when only the psf correction applies.
    """
    image = np.asarray(image, np.float32)
    if image.ndim == 2:
      image = image[:, :, None]
    model_c = self.config.data.channels
    if image.ndim != 3 or image.shape[-1] not in (model_c, 3 if model_c == 1 else model_c):
      raise ValueError(f"image of shape {image.shape}: this model corrects "
                       f"{model_c}-channel frames (H, W{', 3' if model_c == 3 else '[, 1|3]'})")
    if np.isnan(image).all():
      raise ValueError("all pixels are NaN")
    if self.config.model.input == "deconvolved":
      return self._correct_aberrations(image, task, tile, overlap, progress, strength)
    filled, mask = fill_masked(image)
    parts = [correct_image(self.graphdef, self.params, self.config, plane, tile, overlap,
                           progress=progress, task=task) for plane in self._planes(filled)]
    join = lambda k: None if getattr(parts[0], k) is None else np.concatenate(
        [getattr(r, k) for r in parts], axis=-1)
    out = Correction(corrected=join("corrected"), F=join("F"), G=join("G"),
                     confidence=join("confidence"),
                     notes=tuple(n for part in parts for n in part.notes))
    out = apply_strength(filled, out, strength)
    if mask is not None:
      out.corrected[mask] = np.nan
    return out

  def _planes(self, image: np.ndarray) -> list[np.ndarray]:
    """The frame as this model takes it: whole, or each RGB channel alone for a mono model."""
    if image.shape[-1] == self.config.data.channels:
      return [image]
    return [image[..., i:i + 1] for i in range(image.shape[-1])]

  def cleanup(self, deconvolved: np.ndarray, tile=None, overlap=None, progress=None):
    """The network of a ``model.input = 'deconvolved'`` model (``configs/psf.py``) on a frame
    already deconvolved to the target PSF: ``(H, W, C) float32`` in, the same out.

    Its change is made flux-neutral above ``2·CLEANUP_FLUX_RADIUS + 1`` px: the change's box
    mean (``noise.box_mean``) is taken off, so it removes noise and ringing but moves no light
    in or out of a star's aperture (the network alone added 3.5 % at the stars of the
    aberration evaluation, filling Richardson–Lucy's dark moats with light)."""
    parts = [correct_image(self.graphdef, self.params, self.config, plane, tile, overlap,
                           progress=progress, task="psf").corrected
             for plane in self._planes(deconvolved)]
    cleaned = np.concatenate(parts, axis=-1)
    change = jnp.asarray(cleaned - deconvolved, jnp.float32)
    return (cleaned - np.asarray(noise.box_mean(change, CLEANUP_FLUX_RADIUS))).astype(np.float32)

  def _correct_aberrations(self, image, task, tile, overlap, progress, strength) -> Correction:
    """A model that deconvolves first: the PSF field fitted to the frame's stars, Richardson–Lucy
    to the diffraction-limited target (``correct_psf.correct_physics``), then :meth:`cleanup`;
    with a chained flat model (``task`` combined) the flat correction first. ``strength``
    blends each stage towards none."""
    from flatai_jax import correct_psf
    task = task or self.task
    if task not in ("psf", self.task) and not (self.task == "combined" and task == "flat"):
      raise ValueError(f"a {self.task} model cannot apply --task={task}")
    flat_out = None
    if task in ("flat", "combined") and self.flat is not None:
      flat_out = self.flat.correct(image, progress=progress, strength=strength)
      if task == "flat":
        return flat_out
      image = flat_out.corrected
    filled, mask = fill_masked(image)
    cleanup = lambda x: self.cleanup(x, tile, overlap, progress)
    phys = correct_psf.correct_physics(filled, self.config.degrade.psf, cleanup=cleanup,
                                       seeing_share=self.seeing_share)
    out = Correction(corrected=phys.corrected, F=None, G=None, aberration=phys)
    out = apply_strength(filled, out, strength)
    if mask is not None:
      out.corrected[mask] = np.nan
    if flat_out is None:
      return out
    return dataclasses.replace(flat_out, corrected=out.corrected, aberration=phys)

  def correct_session(self, frames, out_dir=None, print_fn=print, cfa: str = "auto"):
    """Session mode (:mod:`flatai_jax.session`): one flat F for a dithered sequence of one
    sensor, each frame with its own G, on this model's working grid.

    Args:
      frames: paths (then ``out_dir`` is required and the outputs are written, streaming) or
        ``(H, W[, C])`` float arrays, linear (then everything is returned in memory).
    Returns:
      for paths: the session report (``session_report.json``); for arrays:
      ``(session.SessionFlat, [Correction per frame])``.
    ``cfa`` (files only): as ``flatai correct --cfa``; Bayer mosaics are corrected in CFA space.
    """
    from flatai_jax import session
    grid = tuple(self.config.data.sensor_hw) if self.config.data.whole_frame else None
    grid = grid or session.working_grid_hw()
    if all(isinstance(f, (str, Path)) for f in frames):
      if out_dir is None:
        raise ValueError("a session of files needs out_dir")
      return session.correct_files(frames, out_dir, grid, print_fn, single=self.correct,
                                   cfa=cfa)
    return session.correct_arrays(frames, grid, single=self.correct)

  def history(self, input_path, task, tile, overlap) -> str:
    """The FITS/XISF HISTORY line naming the model and settings."""
    c = self.config
    if c.data.whole_frame:
      layout = "grid={}x{}".format(*c.data.sensor_hw)
    else:
      layout = (f"tile={tile or c.predict.tile} "
                f"overlap={c.predict.overlap if overlap is None else overlap}")
    return (f"flatai correct: model={Path(self.checkpoint).name} step={self.step} "
            f"task={task or self.task} {layout} input={Path(input_path).name}")

  def correct_file(self, input_path, output=None, out_dir=None, reference=None, task=None,
                   tile=None, overlap=None, print_fn=print, strength: float = 1.0,
                   cfa: str = "auto", input_stretch: str = "auto", progress=None) -> dict:
    """Reads, corrects and writes one frame; returns before/after numbers.

    Outputs (atomic, never over the input; see :func:`output_paths`): the
    corrected image, F and G (flat/combined) in the input's format with its
    header, HDUs and metadata kept plus a HISTORY line, the confidence map
    (whole-frame models), and a preview PNG.

    ``cfa``: ``auto`` corrects a Bayer mosaic (FITS ``BAYERPAT``, XISF ``ColorFilterArray``)
    in CFA space (:mod:`flatai_jax.cfa`) and prints one line saying so; ``none`` treats it as
    mono; ``RGGB|BGGR|GRBG|GBRG`` forces that pattern at pixel (0, 0).
    ``input_stretch``: ``auto|linear|srgb|mtf:M`` (:mod:`flatai_jax.stretch`); a stretched
    input is corrected in linear light and the stretch re-applied to the corrected image (F and
    G stay linear); ``auto`` takes 8-bit PNG/JPEG as sRGB, measures a midtones stretch on the
    stars of a float frame in [0, 1] at a display level, and says what it decided in one line.
    ``progress``: ``callable(done, total)`` fed by the tiles (``flatai gui``'s progress bars);
    default: a :class:`ProgressBar` printed through ``print_fn``.
    """
    from flatai_jax import cfa as bayer
    from flatai_jax import stretch
    image, meta = images.read_image(input_path, allow_nan=True)
    try:
      pattern, cfa_note = bayer.resolve(cfa, meta.cfa, image.shape)
      kind, midtones, stretch_note = stretch.resolve(input_stretch, meta.format,
                                                     meta.source_dtype, image)
    except ValueError as e:
      raise images.ImageError(input_path, str(e)) from None
    if pattern and self.config.model.input == "deconvolved":
      raise images.ImageError(input_path, f"a {pattern} Bayer mosaic: aberrations are corrected "
                              "on debayered frames (or pass --cfa=none to treat it as mono)")
    for note in (cfa_note, stretch_note):
      if note:
        print_fn(f"{input_path}: {note}")
    ref = None
    if reference is not None:
      ref, _ = images.read_image(reference, allow_nan=True)
      if ref.shape != image.shape:
        raise images.ImageError(reference, f"shape {ref.shape} differs from the input's "
                                f"{image.shape}")
    paths = output_paths(input_path, output, out_dir)
    for p in paths.values():
      if p.resolve() == Path(input_path).resolve():
        raise images.ImageError(p, "refusing to overwrite the input file; choose another --output")
    correct_fn = functools.partial(self.correct, task=task, tile=tile, overlap=overlap,
                                   strength=strength,
                                   progress=progress or ProgressBar(
                                       f"  {Path(input_path).name}", print_fn,
                                       unit="planes" if self.config.data.whole_frame else "tiles"))
    linear = stretch.to_linear(image, kind, midtones)
    try:
      out = bayer.correct_mosaic(correct_fn, linear) if pattern else correct_fn(linear)
    except ValueError as e:
      raise images.ImageError(input_path, str(e)) from None
    for note in out.notes:
      print_fn(f"  {Path(input_path).name}: {note}")
    if kind != "linear":
      out = dataclasses.replace(out, corrected=stretch.from_linear(out.corrected, kind, midtones))
    history = self.history(input_path, task, tile, overlap) + (
        f" strength={strength:g}" if strength != 1.0 else "") + (
        f" cfa={pattern}" if pattern else "") + (
        f" input_stretch={kind}" + (f":{midtones:g}" if midtones else "") if kind != "linear"
        else "")
    images.write_image(paths["corrected"], out.corrected, meta, history=history,
                       protect=[input_path])
    if out.F is not None:
      images.write_image(paths["F"], out.F, meta, history=history + " (flat field F)",
                         protect=[input_path], carry_hdus=False)
      images.write_image(paths["G"], out.G, meta, history=history + " (additive field G)",
                         protect=[input_path], carry_hdus=False)
    if out.confidence is not None:
      images.write_image(paths["confidence"], out.confidence, meta,
                         history=history + " (confidence of F and G, 0..1)",
                         protect=[input_path], carry_hdus=False)
    written = {"corrected": True, "preview": True, "F": out.F is not None,
               "G": out.G is not None, "confidence": out.confidence is not None}
    field_report = {}
    if out.aberration is not None:
      from flatai_jax import correct_psf
      field_report = correct_psf.report(out.aberration)
      field_paths = correct_psf.output_paths(input_path, output, out_dir)
      correct_psf.write_field(field_paths, linear, out.aberration, history, [input_path],
                              {"target": "diffraction",
                               "cleanup_model": f"{Path(self.checkpoint).name} step {self.step}"})
      paths.update({k: field_paths[k] for k in ("psf", "psf_json", "psf_field")})
      written.update(psf=True, psf_json=True, psf_field=True)
    save_preview(paths["preview"], image, out)
    report = {"input": str(input_path),
              "background_nonuniformity_before": background_nonuniformity(
                  _nan_to_median(image)),
              "background_nonuniformity_after": background_nonuniformity(
                  _nan_to_median(out.corrected))}
    if ref is not None:
      before = error_vs_reference(_nan_to_median(image), _nan_to_median(ref))
      after = error_vs_reference(_nan_to_median(out.corrected), _nan_to_median(ref))
      report.update({"mae_before": before["mae"], "mae_after": after["mae"],
                     "psnr_before": before["psnr"], "psnr_after": after["psnr"]})
    report.update(field_report)
    report["outputs"] = {k: str(v) for k, v in paths.items() if written[k]}
    return report


ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULT_MODEL = ASSETS / "frame_model"  # the whole-frame flat model (configs/frame.py)
TILE_MODEL = ASSETS / "default_model"  # the earlier 64-px tile model (configs/default.py)
PSF_MODEL = ASSETS / "psf_model"  # the aberration model: deconvolution + cleanup (configs/psf.py)
CLEANUP_FLUX_RADIUS = 5  # px: the cleanup's change loses its mean over 11 × 11 px (flux-neutral)


def load(checkpoint_dir=None, step: int | None = None, task: str | None = None) -> Corrector:
  """The model of a checkpoint as a :class:`Corrector`: an exported inference checkpoint, or a
  run directory (its latest checkpoint, or ``step``). Only the parameters are read.

  ``checkpoint_dir=None`` loads a model shipped with the package: for ``task`` None or
  ``flat`` the whole-frame flat model (``data_pipelines/train_frame_model.sh``), for ``psf``
  the aberration model (``data_pipelines/train_psf_model.sh``: the physics deconvolution and
  its learned cleanup), for ``combined`` the flat model chained before the aberration model.
  """
  _persistent_compilation_cache()
  if checkpoint_dir is None:
    if task not in (None, "flat", "psf", "combined"):
      raise ValueError(f"unknown task {task!r}; expected flat, psf or combined")
    if task == "combined":
      return _chained()
    checkpoint_dir = PSF_MODEL if task == "psf" else DEFAULT_MODEL
    if not checkpointing.is_inference(checkpoint_dir):
      raise FileNotFoundError(f"{checkpoint_dir}: no shipped model in this install; pass "
                              "--checkpoint=RUN_DIR of a trained run")
  config = checkpointing.load_config(checkpoint_dir, step)
  graphdef, abstract = abstract_params(config)
  params, restored_step = checkpointing.restore_params(checkpoint_dir, abstract, step)
  return Corrector(config, graphdef, params, restored_step, checkpoint_dir)


def _chained() -> Corrector:
  """The shipped ``combined`` correction: the flat model, then the aberration model on its
  output (the forward model is ``(clean ⊛ PSF)·F + G``: F and G come off first)."""
  psf_model = load(None, None, "psf")
  return Corrector(psf_model.config, psf_model.graphdef, psf_model.params, psf_model.step,
                   psf_model.checkpoint, flat=load(None, None, "flat"))


def _persistent_compilation_cache():
  """Keeps compiled correction programs on disk (``$FLATAI_CACHE`` or ``~/.cache/flatai_jax``),
  so a second ``flatai correct`` skips XLA compilation (tens of seconds on a small CPU).
  Left alone when JAX already has a cache directory."""
  import os
  if jax.config.jax_compilation_cache_dir:
    return
  path = Path(os.environ.get("FLATAI_CACHE", Path.home() / ".cache" / "flatai_jax")) / "xla"
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError:
    return  # read-only home: compile every time
  jax.config.update("jax_compilation_cache_dir", str(path))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def output_paths(input_path, output=None, out_dir=None) -> dict[str, Path]:
  """Where ``flatai correct`` writes: the corrected image, its F and G, and a preview PNG.

  Default: ``<input stem>_corrected<ext>`` beside the input (or in ``out_dir``);
  F and G get ``_F``/``_G`` after the output's stem, in the output's format.
  PNG and JPEG inputs give float32 TIFF outputs, so nothing is clipped or quantised.
  """
  if output is None:
    stem, ext = images.split_suffix(input_path)
    if images.image_format(input_path) in ("png", "jpeg"):
      ext = ".tif"
    folder = Path(out_dir) if out_dir is not None else Path(input_path).parent
    main = folder / f"{stem}_corrected{ext}"
  else:
    main = Path(output)
  stem, ext = images.split_suffix(main)
  return {"corrected": main, "F": main.with_name(f"{stem}_F{ext}"),
          "G": main.with_name(f"{stem}_G{ext}"),
          "confidence": main.with_name(f"{stem}_confidence{ext}"),
          "preview": main.with_name(f"{stem}_preview.png")}


def _nan_to_median(a: np.ndarray) -> np.ndarray:
  """NaN (masked) pixels replaced by the median of the rest, for report numbers and previews."""
  return np.nan_to_num(a, nan=float(np.nanmedian(a)))


def _preview_size(a: np.ndarray, max_side: int = 1024) -> np.ndarray:
  """Block mean down to at most ``max_side`` px per side (previews of full frames)."""
  k = -(-max(a.shape[:2]) // max_side)
  if k <= 1:
    return a
  h, w = (a.shape[0] // k) * k, (a.shape[1] // k) * k
  return a[:h, :w].reshape(h // k, k, w // k, k, a.shape[-1]).mean(axis=(1, 3))


def save_preview(path, image, out: Correction) -> None:
  """Side-by-side PNG: input and corrected (each with its own asinh stretch, since removing G
  moves the background), and F, G if present (linear levels)."""
  fill = lambda a: _preview_size(_nan_to_median(a))
  panels = {"input": (fill(image), "image"), "corrected": (fill(out.corrected), "image")}
  if out.F is not None:
    panels.update({"estimated F": (fill(out.F), "field"), "estimated G": (fill(out.G), "field")})
  if out.confidence is not None:
    panels["confidence"] = (fill(out.confidence), "field")
  metrics.save_panel_grid(path, panels, cols=len(panels))
