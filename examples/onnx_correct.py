"""Corrects the flat field of a FITS frame with an exported model and onnxruntime — no JAX.

    flatai export --format=onnx --output=model.onnx     # once, where flatai_jax is installed
    python examples/onnx_correct.py frame.fits model.onnx [-o frame_onnx.fits]

Needs only numpy, astropy and onnxruntime. It follows the preprocessing that
``flatai export`` stores in the model's metadata (``flatai.preprocessing``):

1. each plane ``(H, W)`` is binned to the working grid ``(gh, gw)`` by block
   medians (a portrait frame is transposed first; reflect padding);
2. the grid goes through the network in its four flips ``(4, gh, gw, 1)``;
3. the outputs are un-flipped and averaged, log F and G lose their median;
4. both are upsampled to the frame (cubic convolution between cell centres)
   and ``corrected = (observed − G) / F``.

This is simpler than ``flatai correct``: it always applies the network at full
strength. It does not weigh it by the frame's structure or by the flips'
agreement, does not pick a safe strength and does not add the robust smooth sky
fit, so a frame filled by a nebula or a galaxy can be over-corrected here where
``flatai correct`` would leave it alone. NaN pixels are ignored by the binning and stay
NaN. The output is float32 with the input's header and a HISTORY line.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
from astropy.io import fits

MIN_SAMPLES = 400  # pixels per block median at least (larger blocks are subsampled)


def geometry(hw, grid_hw):
  """``(transposed, (by, bx), (pad_y, pad_x))`` of a ``(H, W)`` frame on the ``(gh, gw)`` grid."""
  h, w = hw
  transposed = h > w
  th, tw = (w, h) if transposed else (h, w)
  gh, gw = grid_hw
  by, bx = -(-th // gh), -(-tw // gw)
  return transposed, (by, bx), ((gh * by - th) // 2, (gw * bx - tw) // 2)


def bin_plane(plane, grid_hw):
  """Block medians of one ``(H, W)`` plane → ``(gh, gw) float32`` (NaN ignored)."""
  transposed, (by, bx), (py, px) = geometry(plane.shape, grid_hw)
  t = plane.T if transposed else plane
  gh, gw = grid_hw
  padded = np.pad(t, ((py, gh * by - t.shape[0] - py), (px, gw * bx - t.shape[1] - px)),
                  mode="reflect")
  step = max(1, int(np.sqrt(by * bx / MIN_SAMPLES)))
  sub = padded.reshape(gh, by, gw, bx)[:, step // 2::step, :, step // 2::step]
  blocks = sub.transpose(0, 2, 1, 3).reshape(gh, gw, -1)
  grid = np.nanmedian(blocks, axis=-1) if np.isnan(blocks).any() else np.median(blocks, -1)
  return np.where(np.isnan(grid), np.nanmedian(t), grid).astype(np.float32)


def keys_weights(n_out, n_cells, block, pad):
  """``(n_out, n_cells)`` cubic-convolution (Keys, a = −0.5) weights, cell → pixel centres.

  A copy of ``flatai_jax.working_grid._keys_weights`` on purpose: this example runs where the
  package (and JAX) is not installed; tests/test_onnx_export.py checks it against the package.
  """
  u = (np.arange(n_out) + pad + 0.5) / block - 0.5
  base = np.floor(u).astype(int)
  weights = np.zeros((n_out, n_cells))
  a = -0.5
  for k in range(-1, 3):
    idx = base + k
    s = np.abs(u - idx)
    wk = np.where(s <= 1, (a + 2) * s ** 3 - (a + 3) * s ** 2 + 1,
                  np.where(s < 2, a * s ** 3 - 5 * a * s ** 2 + 8 * a * s - 4 * a, 0.0))
    np.add.at(weights, (np.arange(n_out), np.clip(idx, 0, n_cells - 1)), wk)
  return weights


def upsample(grid, hw):
  """A ``(gh, gw)`` field → ``(H, W) float32`` on the frame (inverse geometry of :func:`bin_plane`)."""
  transposed, (by, bx), (py, px) = geometry(hw, grid.shape)
  th, tw = (hw[1], hw[0]) if transposed else hw
  full = (keys_weights(th, grid.shape[0], by, py) @ grid) @ keys_weights(tw, grid.shape[1], bx, px).T
  return np.ascontiguousarray(full.T if transposed else full).astype(np.float32)


FLIPS = (lambda a: a, lambda a: a[:, ::-1], lambda a: a[::-1], lambda a: a[::-1, ::-1])


def network_fields(session, grid):
  """``(log F, G)`` on the grid, each ``(gh, gw)`` float64: mean of the 4 flips, median 0."""
  grids = np.stack([flip(grid) for flip in FLIPS])[..., None].astype(np.float32)
  log_f, g = session.run(["log_f", "g"], {"grids": grids})
  log_f = np.mean([flip(x[..., 0]) for flip, x in zip(FLIPS, log_f)], 0, dtype=np.float64)
  g = np.mean([flip(x[..., 0]) for flip, x in zip(FLIPS, g)], 0, dtype=np.float64)
  return log_f - np.median(log_f), g - np.median(g)


def correct_plane(session, plane, grid_hw):
  """``(corrected, F, G)`` of one ``(H, W)`` linear plane, each ``(H, W) float32``."""
  log_f, g = network_fields(session, bin_plane(plane, grid_hw))
  f_full, g_full = np.exp(upsample(log_f, plane.shape)), upsample(g, plane.shape)
  return ((plane - g_full) / f_full).astype(np.float32), f_full, g_full


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("input", type=Path, help="FITS frame: (H, W) or (C, H, W), linear")
  parser.add_argument("model", type=Path, help=".onnx file written by flatai export")
  parser.add_argument("-o", "--output", type=Path, help="default: INPUT_onnx.fits")
  args = parser.parse_args()
  options = ort.SessionOptions()
  options.log_severity_level = 3  # no graph-optimiser notices
  session = ort.InferenceSession(str(args.model), options, providers=["CPUExecutionProvider"])
  meta = session.get_modelmeta().custom_metadata_map
  if "flatai.preprocessing" not in meta:
    parser.error(f"{args.model}: no flatai.preprocessing metadata (not written by flatai export)")
  prep = json.loads(meta["flatai.preprocessing"])
  grid_hw = tuple(prep["grid_hw"])
  if prep["channels"] != 1:
    parser.error(f"{args.model}: a {prep['channels']}-channel model; this example runs mono models")
  with fits.open(args.input) as hdul:
    hdu = next(h for h in hdul if h.data is not None)
    data, header = np.asarray(hdu.data, np.float32), hdu.header.copy()
  planes = data[None] if data.ndim == 2 else data
  corrected = np.stack([correct_plane(session, p, grid_hw)[0] for p in planes])
  out = args.output or args.input.with_name(args.input.stem + "_onnx.fits")
  for key in ("XTENSION", "PCOUNT", "GCOUNT", "BZERO", "BSCALE", "BLANK", "EXTNAME"):
    header.remove(key, ignore_missing=True)  # float32 primary HDU, unscaled
  header["HISTORY"] = f"flat corrected by examples/onnx_correct.py with {args.model.name}"
  # Atomic: write beside the target, then rename (a reader never sees half a file).
  fd, tmp = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=".fits", dir=out.parent or ".")
  os.close(fd)
  try:
    fits.PrimaryHDU(corrected.reshape(data.shape), header).writeto(tmp, overwrite=True)
    os.replace(tmp, out)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
