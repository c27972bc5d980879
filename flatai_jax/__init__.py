"""FlatAI-JAX: neural removal of flat-field artifacts and optical aberrations.

Python API (the same code path as the ``flatai`` command)::

  import flatai_jax
  corrector = flatai_jax.load("runs/quickstart")   # latest checkpoint of a run
  out = corrector.correct(pixels)                   # NumPy (H, W[, C]) linear
  out.corrected, out.F, out.G

Imports are lazy so ``import flatai_jax`` stays light.
"""


def load(checkpoint_dir, step=None):
  """A :class:`flatai_jax.predict.Corrector` for a run directory's checkpoint."""
  from flatai_jax import predict
  return predict.load(checkpoint_dir, step)
