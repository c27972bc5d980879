"""Full-frame correction: overlapping tiles with global coordinates, blended back.

Each tile is normalised on its own (exactly as training crops are), run
through the model, mapped back to linear units, and blended with a smooth
window. Borders are handled by reflection padding, so every output pixel is
covered by tiles that extend past it; nothing is clipped.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from flatai_jax import metrics
from flatai_jax.data.synthetic import model_inputs
from flatai_jax.io import images
from flatai_jax.physics import geometry, normalize
from flatai_jax.train_step import forward


@dataclasses.dataclass
class Correction:
  """Outputs of :func:`correct_image`, each ``(H, W, C) float32`` linear.

  ``F`` and ``G`` are None for the psf task.
  """
  corrected: np.ndarray
  F: np.ndarray | None
  G: np.ndarray | None


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


def make_tile_fn(graphdef):
  """Jitted ``(params, tiles, coords) -> dict`` of linear-unit predictions for a tile batch."""

  @jax.jit
  def fn(params, tiles, coords):
    inputs = model_inputs(tiles)
    pred = forward(graphdef, params, {**inputs, "coords": coords})
    f_field = pred.get("F", jnp.ones_like(tiles))
    g_n = pred.get("G", jnp.zeros_like(tiles))
    clean, f_field, g_field = normalize.fields_from_normalized(
        pred["clean"], f_field, g_n, inputs["offset"], inputs["scale"])
    return {"clean": clean, "F": f_field, "G": g_field}

  return fn


def correct_image(graphdef, params, config, image: np.ndarray, tile: int | None = None,
                  overlap: int | None = None, batch_size: int | None = None,
                  progress=None) -> Correction:
  """Corrects a full frame.

  Args:
    graphdef, params, config: the model and its config (``evaluate.restore_params``).
    image: ``(H, W, C) float32`` linear, the whole sensor frame.
    tile: tile side, px, a multiple of 2**depth (default ``config.predict.tile``,
      the training crop size works best).
    overlap: overlap between neighbouring tiles, px, ≤ tile / 2
      (default ``config.predict.overlap``).
    batch_size: tiles per forward pass (static; the last batch is padded).
    progress: optional ``callable(done, total)``.
  Returns:
    :class:`Correction` with the corrected image, F and G over the frame.
  """
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
  fn = make_tile_fn(graphdef)
  sensor_hw = jnp.asarray((h, w), jnp.float32)
  coord_fn = jax.jit(jax.vmap(lambda o: geometry.frame_coords(o, (tile, tile), sensor_hw)))
  acc = {k: np.zeros((hp, wp, c), np.float64) for k in ("clean", "F", "G")}
  weight = np.zeros((hp, wp, 1), np.float64)
  matcher = TileOffsetMatcher(ys, xs, tile, c)
  for b in range(0, len(grid), batch_size):
    chunk = grid[b:b + batch_size]
    real = len(chunk)
    chunk = chunk + [chunk[-1]] * (batch_size - real)
    tiles = np.stack([padded[ys[gy]:ys[gy] + tile, xs[gx]:xs[gx] + tile] for gy, gx in chunk])
    offsets = np.asarray([(ys[gy] - pad, xs[gx] - pad) for gy, gx in chunk], np.float32)
    out = jax.device_get(fn(params, tiles, coord_fn(offsets)))
    for i, (gy, gx) in enumerate(chunk[:real]):
      y, x = ys[gy], xs[gx]
      for k in acc:
        acc[k][y:y + tile, x:x + tile] += out[k][i] * window
      weight[y:y + tile, x:x + tile] += window
      matcher.add(gy, gx, out["G"][i])
    if progress is not None:
      progress(min(b + real, len(grid)), len(grid))
  weight = np.maximum(weight, 1e-12)
  has_flat = config.task != "psf"
  clean, f_field, g_field = acc["clean"] / weight, acc["F"] / weight, acc["G"] / weight
  if has_flat and config.predict.get("match_tiles", True) and overlap > 0 and len(grid) > 1:
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


def background_nonuniformity(image: np.ndarray, blocks: int = 8) -> float:
  """Spread of the sky background across the frame, a flatness number for reports.

  The frame is cut into ``blocks × blocks`` cells; the median of each cell
  estimates the local background. Returns (max − min) / median of those
  medians — 0 for a perfectly flat background.
  """
  h, w = image.shape[:2]
  ys = np.linspace(0, h, blocks + 1).astype(int)
  xs = np.linspace(0, w, blocks + 1).astype(int)
  med = np.array([[np.median(image[ys[i]:ys[i + 1], xs[j]:xs[j + 1]])
                   for j in range(blocks)] for i in range(blocks)])
  return float((med.max() - med.min()) / max(abs(np.median(med)), 1e-12))


def error_vs_reference(image: np.ndarray, reference: np.ndarray) -> dict:
  """MAE and PSNR of ``image`` vs a known clean frame, after removing the median offset.

  Units: MAE relative to the reference's 99.9th percentile (so 0.01 = 1 % of
  the bright end); PSNR in dB with that percentile as peak.
  """
  d = (image - reference).astype(np.float64)
  d -= np.median(d)
  peak = max(float(np.percentile(reference, 99.9)), 1e-12)
  mse = float(np.mean(d ** 2))
  return {"mae": float(np.mean(np.abs(d))) / peak,
          "psnr": 10.0 * np.log10(peak ** 2 / max(mse, 1e-30))}


def output_paths(input_path, output=None) -> dict[str, Path]:
  """Where ``flatai correct`` writes: the corrected image, its F and G, and a preview PNG.

  Default: ``<input stem>_corrected<ext>`` beside the input; F and G get
  ``_F``/``_G`` after the output's stem, in the output's format.
  """
  if output is None:
    stem, ext = images.split_suffix(input_path)
    main = Path(input_path).with_name(f"{stem}_corrected{ext}")
  else:
    main = Path(output)
  stem, ext = images.split_suffix(main)
  return {"corrected": main, "F": main.with_name(f"{stem}_F{ext}"),
          "G": main.with_name(f"{stem}_G{ext}"), "preview": main.with_name(f"{stem}_preview.png")}


def correct_file(graphdef, params, config, input_path, output=None, reference=None,
                 tile=None, overlap=None, print_fn=print) -> dict:
  """Reads, corrects and writes one frame; returns before/after numbers.

  A mono model corrects each channel of an RGB frame on its own. The input is
  never overwritten; every output is written atomically.
  """
  image, meta = images.read_image(input_path)
  ref = None
  if reference is not None:
    ref, _ = images.read_image(reference)
    if ref.shape != image.shape:
      raise images.ImageError(reference, f"shape {ref.shape} differs from the input's {image.shape}")
  model_c = config.data.channels
  if image.shape[-1] not in (model_c, 3 if model_c == 1 else model_c):
    raise images.ImageError(input_path, f"has {image.shape[-1]} channel(s); this model "
                            f"corrects {model_c}-channel images")
  paths = output_paths(input_path, output)
  for p in paths.values():
    if p.resolve() == Path(input_path).resolve():
      raise images.ImageError(p, "refusing to overwrite the input file; choose another --output")
  planes = [image] if image.shape[-1] == model_c else [image[..., i:i + 1] for i in range(3)]
  results = []
  for i, plane in enumerate(planes):
    def progress(done, total, i=i):
      print_fn(f"\r  channel {i + 1}/{len(planes)}: tile {done}/{total}", end="", flush=True)
    results.append(correct_image(graphdef, params, config, plane, tile, overlap,
                                 progress=progress))
    print_fn("")
  cat = lambda k: None if results[0].F is None and k != "corrected" else np.concatenate(
      [getattr(r, k) for r in results], axis=-1)
  out = Correction(corrected=cat("corrected"), F=cat("F"), G=cat("G"))
  history = f"flatai correct: task={config.task}, input={Path(input_path).name}"
  images.write_image(paths["corrected"], out.corrected, meta, history=history,
                     protect=[input_path])
  if out.F is not None:
    images.write_image(paths["F"], out.F, meta, history=history + " (flat field F)",
                       protect=[input_path])
    images.write_image(paths["G"], out.G, meta, history=history + " (additive field G)",
                       protect=[input_path])
  save_preview(paths["preview"], image, out)
  report = {"background_nonuniformity_before": background_nonuniformity(image),
            "background_nonuniformity_after": background_nonuniformity(out.corrected)}
  if ref is not None:
    before, after = error_vs_reference(image, ref), error_vs_reference(out.corrected, ref)
    report.update({"mae_before": before["mae"], "mae_after": after["mae"],
                   "psnr_before": before["psnr"], "psnr_after": after["psnr"]})
  report["outputs"] = {k: str(v) for k, v in paths.items() if k == "corrected" or
                       k == "preview" or out.F is not None}
  return report


def save_preview(path, image, out: Correction) -> None:
  """Side-by-side PNG: input, corrected (same stretch), and F, G if present."""
  cols = {"input": image[None], "corrected": out.corrected[None]}
  if out.F is not None:
    cols.update({"F": out.F[None], "G": out.G[None]})
  metrics.save_sample_grid(path, cols, max_rows=1)
