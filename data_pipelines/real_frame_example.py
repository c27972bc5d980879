"""Run-once job: the README's before/after picture of a real frame (docs/real_before_after.png).

  python data_pipelines/real_frame_example.py [--real_dir=evaluation_data/real]

The frame is the SAAO 1.0 m raw frame of the real-data set (from the ccdproc sdist on PyPI,
BSD-3-Clause; see evaluation_data/real/README.md), trimmed to its data section and used as the
truth; a physically rendered F (vignetting, dust) and G (``evaluation.real.rendered_fields``; of
its first ten cases the one whose true F varies most, chosen on the truth alone) are multiplied
and added in, and the shipped model corrects it. Panels:
observed, corrected, truth, estimated F, true F, confidence.
"""
import argparse
from pathlib import Path

import numpy as np

from flatai_jax import correct, metrics
from flatai_jax.evaluation import quality, real

FRAME = "raw_saao_1m_a8280271.fits"


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--real_dir", default=str(real.DEFAULT_DIR))
  p.add_argument("--output", default="docs/real_before_after.png")
  a = p.parse_args()
  truth = real.to_sky_units(real.read_plane(Path(a.real_dir) / FRAME))
  cases = [real.rendered_fields(truth.shape[:2], i) for i in range(10)]
  fields = max(cases, key=lambda f: float(np.ptp(f["F"])))
  observed = truth * fields["F"] + fields["G"]
  out = correct.load().correct(observed)
  ratio = lambda im: real.flat_error_pct(quality.affine_align(im, truth), truth)
  print(f"{FRAME}: residual flat error {ratio(observed):.2f} % uncorrected, "
        f"{ratio(out.corrected):.2f} % corrected")
  metrics.save_panel_grid(a.output, {
      "observed (real frame × F + G)": (observed, "image"), "corrected": (out.corrected, "image"),
      "truth": (truth, "image"),
      # the background the correction removes, sky·(F − 1) + G: F and G can trade a smooth
      # field between them, their sum at the sky level is what a correction has to get right
      "estimated background": (np.median(out.corrected) * (out.F - 1.0) + out.G, "field"),
      "true background": (np.median(truth) * (fields["F"] - 1.0) + fields["G"], "field"),
      "confidence": (out.confidence, "field")}, cols=3)
  print(f"wrote {a.output}")


if __name__ == "__main__":
  main()
