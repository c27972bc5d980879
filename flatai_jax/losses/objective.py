"""The weighted training objective; every term is returned for logging.

All terms are supervised on the *known* truth of the forward model (clean
image, F, G), never on the model's own predictions re-applied to themselves.
"""
from __future__ import annotations

import jax.numpy as jnp


def l1(a, b):
  return jnp.mean(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)))


def objective(pred: dict, batch: dict, weights) -> tuple[jnp.ndarray, dict]:
  """Weighted total loss.

  Args:
    pred: model outputs (``clean`` and, for flat/combined, ``F``, ``G``).
    batch: targets ``clean``, ``F``, ``G`` in normalised units.
    weights: ``config.loss``.
  Returns:
    total float32 scalar, dict of float32 scalar terms (unweighted) and total.
  """
  terms = {"clean_l1": l1(pred["clean"], batch["clean"])}
  if "F" in pred:
    terms["log_f_l1"] = l1(jnp.log(pred["F"]), jnp.log(batch["F"]))
    terms["g_l1"] = l1(pred["G"], batch["G"])
  total = sum(weights[name] * value for name, value in terms.items())
  return total, {**terms, "loss": total}
