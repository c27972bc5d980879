"""Issue 15's aberration evaluation from the command line of the benchmarks: every correction
method on the synthetic star field with a known PSF field, per zone (``evaluation.aberration``:
the one definition of the scene, the methods and the metrics; ``flatai evaluate --task=psf``
runs the same, with the shipped model's row). Other seeds draw other stars and noise: the
spread of the numbers.

  PYTHONPATH=. python benchmarks/psf_field.py [SIZE] [OUTPUT_DIR] [SEED] [CASE,CASE...]
  # defaults: 256, eval_psf, 0, every case (aberration.CASES); the shipped model scored too
"""
import sys

from flatai_jax import correct
from flatai_jax.evaluation import aberration


def main(argv):
  size = int(argv[0]) if argv else 256
  seed = int(argv[2]) if len(argv) > 2 else 0
  cases = tuple(argv[3].split(",")) if len(argv) > 3 else tuple(aberration.CASES)
  report = aberration.evaluate(size, seed, cases, corrector=correct.load(task="psf"))
  print(aberration.markdown(report))
  for k, v in aberration.write(report, argv[1] if len(argv) > 1 else "eval_psf").items():
    print(f"wrote {k}: {v}")


if __name__ == "__main__":
  main(sys.argv[1:])
