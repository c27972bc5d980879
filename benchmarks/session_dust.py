"""The dust a scale-split session leaves, on the sequence evaluation's Spitzer sequences (issue 18).

  PYTHONPATH=. python benchmarks/session_dust.py [--real_dir evaluation_data/real]

The two Spitzer sequences (a sparse star field: the scale-split path, where pass 3,
``session.left_dust``, runs) through session mode, scored as ``benchmarks/session.py eval`` scores
them (flat error % / PSNR dB / scale / dust dip left), and for the rendered flat the deepest
shadow's remainder, % of the sky (the mean over the frames of ``quality.dust_depths``; issue 18
asks ≤ 2.5 %).
"""
from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--real_dir", default="evaluation_data/real")
  args = parser.parse_args()
  from flatai_jax import correct, session
  from flatai_jax.evaluation import quality, sequences
  corrector = correct.load()
  grid = tuple(corrector.config.data.sensor_hw)
  run = lambda frames: [o.corrected for o in session.correct_arrays(
      frames, grid, single=corrector.correct, progress=print)[1]]
  cases = [c for c in sequences.sequence_cases(args.real_dir) if "spitzer" in c["name"]]
  print(sequences.markdown(sequences.score_sequences(cases, {"session": run}, progress=None)))
  for case in cases:
    if case["dust"] is None:
      continue
    outs = run(case["observed"])
    d = np.asarray([quality.dust_depths(quality.affine_align(o, c), c, case["dust"])
                    for o, c in zip(outs, case["clean"])], np.float64)  # (frames, shadows, 2)
    left, true = d[..., 0].mean(0), d[..., 1].mean(0)
    keep = true >= quality.DUST_MIN_DEPTH
    j = int(np.argmax(np.abs(left[keep])))
    print(f"{case['name']}: deepest shadow's remainder {100 * abs(left[keep][j]):.2f} % of the sky "
          f"(its depth {100 * true[keep][j]:.2f} %)")


if __name__ == "__main__":
  main()
