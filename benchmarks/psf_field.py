"""Issue 15's aberration evaluation from the command line of the benchmarks: every correction
method on the synthetic star field with a known PSF field, per zone (``evaluation.aberration``:
the one definition of the scene, the methods and the metrics; ``flatai evaluate --task=psf``
runs the same, with the shipped model's row). Other seeds draw other stars and noise: the
spread of the numbers.

  PYTHONPATH=. python benchmarks/psf_field.py [SIZE] [OUTPUT_DIR] [SEED] [CASE,CASE...] [MODEL]
  # defaults: 256, eval_psf, 0, every case (aberration.CASES); the shipped model scored too
  # (MODEL: another psf model, an exported one or a run directory)
"""
import sys

from flatai_jax import correct
from flatai_jax.evaluation import aberration


def main(argv):
  size = int(argv[0]) if argv else 256
  seed = int(argv[2]) if len(argv) > 2 else 0
  cases = tuple(argv[3].split(",")) if len(argv) > 3 and argv[3] else tuple(aberration.CASES)
  model = argv[4] if len(argv) > 4 else None
  report = aberration.evaluate(size, seed, cases, corrector=correct.load(model, task="psf"))
  print(aberration.markdown(report))
  for k, v in aberration.write(report, argv[1] if len(argv) > 1 else "eval_psf").items():
    print(f"wrote {k}: {v}")


if __name__ == "__main__":
  main(sys.argv[1:])
