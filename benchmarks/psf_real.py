"""Issue 15 on real frames, truth-free: the shipped aberration model, its physics part and one-PSF
Richardson–Lucy against doing nothing on the real evaluation frames (``evaluation.aberration_real``).

  PYTHONPATH=. python benchmarks/psf_real.py [--real_dir evaluation_data/real] [--frames a,b]
      [--output runs/psf_real.json] [--rendered [--picture docs/psf_rendered.png]]
      [--checkpoint DIR]

Prints a table per frame the PSF-field fit accepts (sizes and ellipticity by adaptive moments,
flux after/before, ringing, noise after/before) with the guard's verdict, and the reason for each
frame it refuses. ``--rendered``: each frame is first seen through a known field-dependent
aberration (the synthetic evaluation's, ``aberration_real.score_rendered``) and every method is
scored against the frame through the target PSF: real stars, a known truth; ``--picture``: the
first scored frame's brightest corner star and the centre, original / aberrated / model / RL with
the true field / truth, as one PNG. ``--checkpoint``: an aberration model other than the shipped
one (an exported model or a run directory), e.g. to score two side by side.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

PANELS = {"original": "real frame", "uncorrected": "+ known aberration", "model": "shipped model",
          "rl_true_field": "RL, true field", "ideal": "truth"}
CROP = 64  # px


def write_picture(path, results, real_dir, corrector) -> None:
  """The first frame scored (re-run keeping its images): a ``CROP``-px cut around its brightest
  corner-zone star and one at the frame's centre, each method a column (``PANELS``)."""
  import numpy as np

  from flatai_jax import metrics
  from flatai_jax.evaluation import aberration_real, real
  name = next(n for n, r in results.items() if "failed" not in r and r["zone_stars"]["corner"])
  plane = real.read_plane(Path(real_dir) / name)[..., 0]
  r = aberration_real.score_rendered(plane, corrector, keep_images=True)
  h, w = plane.shape
  corner_xy = r["xy"][r["corner"]][0]  # brightest first
  cuts = {"corner": np.rint(corner_xy[::-1]).astype(int) - CROP // 2,
          "centre": np.array([h, w]) // 2 - CROP // 2}
  panels = {}
  for zone, (y, x) in cuts.items():
    y, x = int(np.clip(y, 0, h - CROP)), int(np.clip(x, 0, w - CROP))
    for key, title in PANELS.items():
      panels[f"{zone}: {title}"] = (r["images"][key][y:y + CROP, x:x + CROP, None], "image")
  metrics.save_panel_grid(path, panels, cols=len(PANELS))
  print(f"wrote {path} ({Path(name).stem})")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--real_dir", default="evaluation_data/real")
  parser.add_argument("--frames", default="", help="comma-separated stems (default: all)")
  parser.add_argument("--output", default="")
  parser.add_argument("--rendered", action="store_true",
                      help="add a known aberration to each frame and score against its truth")
  parser.add_argument("--picture", default="", help="with --rendered: a PNG of one frame")
  parser.add_argument("--checkpoint", default=None, help="a psf model (default: the shipped one)")
  args = parser.parse_args()
  from flatai_jax import correct
  from flatai_jax.evaluation import aberration_real
  from flatai_jax.evaluation.report import clean_json
  names = [n for n in args.frames.split(",") if n] or None
  corrector = correct.load(args.checkpoint, task="psf")
  results = aberration_real.evaluate(corrector, args.real_dir, names, rendered=args.rendered)
  if args.rendered and args.picture:
    write_picture(args.picture, results, args.real_dir, corrector)
  print((aberration_real.markdown_rendered if args.rendered else aberration_real.markdown)(results))
  if args.output:
    Path(args.output).write_text(json.dumps(clean_json(results), indent=1))


if __name__ == "__main__":
  main()
