"""FlatAI-JAX: neural flat-field and aberration correction of astronomical images.

Scripts and notebooks: ``flatai_jax.evaluate(checkpoint_dir, ...)`` returns the
evaluation report (see ``flatai_jax/evaluate.py``). Submodules load on first use,
so ``import flatai_jax`` stays light (no JAX import).
"""
import importlib

_LAZY = ("evaluate",)


def __getattr__(name):
  if name in _LAZY:
    return importlib.import_module(f"flatai_jax.{name}")
  raise AttributeError(f"module 'flatai_jax' has no attribute {name!r}")
