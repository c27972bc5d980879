"""FlatAI-JAX: neural flat-field and aberration correction of astronomical images.

Python API (the same code paths as the ``flatai`` command)::

  import flatai_jax
  corrector = flatai_jax.load("runs/quickstart")   # latest checkpoint of a run
  out = corrector.correct(pixels)                   # NumPy (H, W[, C]) linear
  out.corrected, out.F, out.G
  report = flatai_jax.evaluate("runs/quickstart")  # the evaluation report dict

Submodules load on first use, so ``import flatai_jax`` stays light (no JAX import).
"""
import importlib

_LAZY = ("evaluate",)


def load(checkpoint_dir=None, step=None):
  """A :class:`flatai_jax.predict.Corrector` for a run directory's checkpoint
  (``None``: the small model shipped with the package)."""
  from flatai_jax import predict
  return predict.load(checkpoint_dir, step)


def __getattr__(name):
  if name in _LAZY:
    return importlib.import_module(f"flatai_jax.{name}")
  raise AttributeError(f"module 'flatai_jax' has no attribute {name!r}")
