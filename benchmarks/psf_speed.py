"""Speed of the aberration correction (``correct_psf.correct_physics``: the PSF-field fit, then the
tiled Richardson–Lucy of ``physics.deconvolve``, then the shipped model's learned cleanup where
installed) on synthetic star fields of growing size, against reading + writing the same frame as
FITS, measured in the same run.

  PYTHONPATH=. python benchmarks/psf_speed.py 512 1024 6000x4000   # sizes: side or WxH, px
                                                                 # (default 512 1024)

Results and the machine: BENCHMARKS.md "Physics PSF correction at scale".

Each size runs in its own process (its peak RSS is its own): a frame with stars every 32 px
(jittered ±2 px, fluxes 1e4–5e4, σ = 1 noise on a sky of 10) seen through the test's PSF field
(``evaluation.star_field.TRUTH``, scaled to the frame: corners at ~3× the centre's FWHM), the
shipped node grid (``correct_psf.DEFAULT_GRID``). Seconds are wall-clock and include the JIT
compilations a fresh process pays.
"""
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def one(w: int, h: int) -> dict:
  """Times one ``w × h`` frame: I/O, fit + deconvolution; peak RSS of this process."""
  from flatai_jax import correct_psf
  from flatai_jax.evaluation import star_field as scene  # the optics and field: one definition
  from flatai_jax.io import images
  from flatai_jax.physics import psf_fit
  rng = np.random.default_rng(0)
  gx, gy = np.arange(16, w, 32), np.arange(16, h, 32)
  xy = np.stack(np.meshgrid(gx, gy), -1).reshape(-1, 2)
  xy = xy + rng.uniform(-2, 2, xy.shape)
  flux = np.exp(rng.uniform(np.log(1e4), np.log(5e4), len(xy)))
  frame = np.zeros((h, w))
  for chunk in np.array_split(np.arange(len(xy)), max(1, len(xy) // 1024)):
    frame += psf_fit.render_stars((h, w), xy[chunk], flux[chunk], scene.TRUTH, scene.optics_cfg())
  frame = (frame + scene.SKY + rng.normal(0.0, scene.NOISE, frame.shape)).astype(np.float32)
  with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "frame.fits"
    t = time.perf_counter()
    images.write_image(path, frame)
    read, _ = images.read_image(path)
    io_s = time.perf_counter() - t
  cleanup = _cleanup()
  t = time.perf_counter()
  out = correct_psf.correct_physics(read, scene.optics_cfg(), cleanup=cleanup)
  total = time.perf_counter() - t
  return {"size": f"{w}×{h}", "stars": len(xy), "stars_fitted": len(out.field.stars), "io_s": io_s,
          "correct_s": total,
          "fit_s": out.seconds["fit"], "deconvolve_s": out.seconds["deconvolve"],
          "cleanup_s": out.seconds.get("cleanup"),
          "rl_iterations_max": out.iterations,
          "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _cleanup():
  """The shipped aberration model's learned cleanup (``correct.Corrector.cleanup``), or None
  where this install has none (then the physics correction alone is timed)."""
  from flatai_jax import correct
  try:
    return correct.load(task="psf").cleanup
  except FileNotFoundError:
    return None


def size(arg: str) -> tuple[int, int]:
  """``"1024"`` → (1024, 1024); ``"6000x4000"`` → (6000, 4000): width, height in px."""
  w, _, h = arg.partition("x")
  return int(w), int(h or w)


def main(argv):
  if argv[:1] == ["--one"]:
    print(json.dumps(one(*size(argv[1]))))
    return
  print("| frame | stars | correction s (fit + RL + learned cleanup) | read + write FITS s | ratio "
        "| RL iterations (most of a tile) | peak RSS MiB |")
  print("|---|---|---|---|---|---|---|")
  for arg in argv or ["512", "1024"]:
    res = subprocess.run([sys.executable, __file__, "--one", arg], capture_output=True,
                         text=True, check=True)
    r = json.loads(res.stdout.strip().splitlines()[-1])
    print(f"| {r['size']} | {r['stars']} ({r['stars_fitted']} fitted) | {r['correct_s']:.1f} "
          f"({r['fit_s']:.1f} + {r['deconvolve_s']:.1f} + "
          f"{'none' if r['cleanup_s'] is None else format(r['cleanup_s'], '.1f')}) | "
          f"{r['io_s']:.3f} | {r['correct_s'] / r['io_s']:.0f} | {r['rl_iterations_max']} | "
          f"{r['peak_rss_mib']:.0f} |", flush=True)


if __name__ == "__main__":
  main(sys.argv[1:])
