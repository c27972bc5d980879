"""Issue 15's aberration evaluation from the command line of the benchmarks: every correction
method on the synthetic star field with a known PSF field, per zone (``evaluation.aberration``:
the one definition of the scene, the methods and the metrics; ``flatai evaluate --task=psf``
runs the same).

  PYTHONPATH=. python benchmarks/psf_field.py [SIZE] [OUTPUT_DIR]   # default 256, eval_psf
"""
import sys

from flatai_jax.evaluation import aberration


def main(argv):
  size = int(argv[0]) if argv else 256
  report = aberration.evaluate(size)
  print(aberration.markdown(report))
  for k, v in aberration.write(report, argv[1] if len(argv) > 1 else "eval_psf").items():
    print(f"wrote {k}: {v}")


if __name__ == "__main__":
  main(sys.argv[1:])
