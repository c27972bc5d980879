"""FlatAI-JAX: neural flat-field and aberration correction of astronomical images.

Python API (the same code paths as the ``flatai`` command)::

  import flatai_jax
  corrector = flatai_jax.load("runs/quickstart")   # latest checkpoint of a run
  out = corrector.correct(pixels)                   # NumPy (H, W[, C]) linear
  out.corrected, out.F, out.G
  report = flatai_jax.evaluate("runs/quickstart")  # the evaluation report dict

Submodules load on first use, so ``import flatai_jax`` stays light (no JAX import).
"""


def load(checkpoint_dir=None, step=None, task=None):
  """A :class:`flatai_jax.correct.Corrector` for an exported model or a run directory's
  checkpoint (``None``: a model shipped with the package — ``task`` None/``flat`` the
  whole-frame flat model, ``psf`` the aberration model, ``combined`` both chained)."""
  from flatai_jax import correct
  return correct.load(checkpoint_dir, step, task)


def evaluate(checkpoint_dir, step=None, output_dir=None, **kwargs):
  """The evaluation report of a checkpoint (``flatai_jax.evaluation.frames.evaluate``)."""
  from flatai_jax.evaluation import frames
  return frames.evaluate(checkpoint_dir, step, output_dir, **kwargs)
