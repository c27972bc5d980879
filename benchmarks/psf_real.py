"""Issue 15 on real frames, truth-free: the shipped aberration model, its physics part and one-PSF
Richardson–Lucy against doing nothing on the real evaluation frames (``evaluation.aberration_real``).

  PYTHONPATH=. python benchmarks/psf_real.py [--real_dir evaluation_data/real] [--frames a,b]
      [--output runs/psf_real.json] [--rendered]

Prints a table per frame the PSF-field fit accepts (sizes and ellipticity by adaptive moments,
flux after/before, ringing, noise after/before) with the guard's verdict, and the reason for each
frame it refuses. ``--rendered``: each frame is first seen through a known field-dependent
aberration (the synthetic evaluation's, ``aberration_real.score_rendered``) and every method is
scored against the frame through the target PSF: real stars, a known truth.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--real_dir", default="evaluation_data/real")
  parser.add_argument("--frames", default="", help="comma-separated stems (default: all)")
  parser.add_argument("--output", default="")
  parser.add_argument("--rendered", action="store_true",
                      help="add a known aberration to each frame and score against its truth")
  args = parser.parse_args()
  from flatai_jax import correct
  from flatai_jax.evaluation import aberration_real
  from flatai_jax.evaluation.report import clean_json
  names = [n for n in args.frames.split(",") if n] or None
  results = aberration_real.evaluate(correct.load(task="psf"), args.real_dir, names,
                                     rendered=args.rendered)
  print((aberration_real.markdown_rendered if args.rendered else aberration_real.markdown)(results))
  if args.output:
    Path(args.output).write_text(json.dumps(clean_json(results), indent=1))


if __name__ == "__main__":
  main()
