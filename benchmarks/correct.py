"""Full-frame correction: seconds and peak memory for a large frame, against I/O in the same run.

  PYTHONPATH=. python benchmarks/correct.py [--size quickstart|base] [--height 4000 --width 6000]
      [--batch 16] [--frame]

Writes a synthetic float32 FITS frame, then times ``flatai_jax.correct.Corrector.correct_file``
(read → tiles → model → blend → tile matching → write corrected, F, G and preview) with an
untrained model of the given size (the speed does not depend on the weights) — with
``--frame`` the whole-frame model of ``configs/frame.py`` (bin → one pass on the working grid →
upsample) instead of tiles — and, as the
reference measured in the same run, reading + writing the same frame alone. Peak memory is the
process's maximum resident set size (``resource.getrusage``), compared with the frame's size.
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from astropy.io import fits

from configs import frame as frame_config
from configs.default import get_config
from flatai_jax import correct
from flatai_jax.io import images
from flatai_jax.train_step import split_model


def peak_rss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--size", default="quickstart", choices=("quickstart", "base", "large"))
  p.add_argument("--height", type=int, default=4000)
  p.add_argument("--width", type=int, default=6000)
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--frame", action="store_true", help="the whole-frame model (configs/frame.py)")
  a = p.parse_args()
  config = frame_config.get_config(a.size) if a.frame else get_config(f"flat,{a.size}")
  config.predict.batch_size = a.batch
  graphdef, params = split_model(config)
  corrector = correct.Corrector(config, graphdef, params, 0, f"untrained-{a.size}")
  tmp = Path(tempfile.mkdtemp())
  rng = np.random.default_rng(0)
  frame = (rng.gamma(4.0, 50.0, (a.height, a.width)) + 1000.0).astype(np.float32)
  fits.PrimaryHDU(frame).writeto(tmp / "frame.fits")
  frame_gb = frame.nbytes / 2 ** 30
  del frame
  base_rss = peak_rss_gb()

  t = time.perf_counter()
  pixels, meta = images.read_image(tmp / "frame.fits")
  images.write_image(tmp / "copy.fits", pixels, meta)
  io_s = time.perf_counter() - t
  del pixels

  tile, overlap = config.predict.tile, config.predict.overlap
  n_tiles = 1 if a.frame else len(correct.tile_origins(a.height + overlap, tile, tile - overlap)) * len(
      correct.tile_origins(a.width + overlap, tile, tile - overlap))
  t = time.perf_counter()  # compile once (same tile batch shape), reported on its own
  corrector.correct(np.ones((tile, tile), np.float32) + rng.random((tile, tile), np.float32))
  compile_s = time.perf_counter() - t
  t = time.perf_counter()
  corrector.correct_file(tmp / "frame.fits", out_dir=tmp / "out",
                         print_fn=lambda *x, **k: None)
  total_s = time.perf_counter() - t
  layout = (f"whole frame on a {config.data.sensor_hw} grid" if a.frame
            else f"tile {tile}, overlap {overlap}, batch {a.batch}")
  print(f"device: {jax.devices()[0].platform} x{jax.device_count()}; model {a.size} "
        f"({layout}); frame {a.width}x{a.height} mono "
        f"({frame_gb:.2f} GiB float32)" + ("" if a.frame else f", {n_tiles} tiles"))
  print(f"read+write only (reference): {io_s:.2f} s; compile (once): {compile_s:.1f} s")
  rate = "" if a.frame else f"{n_tiles / total_s:.0f} tiles/s, "
  print(f"flatai correct: {total_s:.1f} s ({rate}"
        f"{a.height * a.width / total_s / 1e6:.2f} Mpx/s) = {total_s / io_s:.0f}x the I/O time")
  print(f"peak RSS: {peak_rss_gb():.2f} GiB (before correction {base_rss:.2f} GiB; "
        f"{(peak_rss_gb() - base_rss) / frame_gb:.1f}x the frame's float32 size added)")


if __name__ == "__main__":
  main()
