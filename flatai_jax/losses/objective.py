"""The weighted training objective; every term is returned for logging.

All terms are supervised on the *known* truth of the forward model (clean
image, F, G), never on the model's own predictions re-applied to themselves.
"""
from __future__ import annotations

import jax.numpy as jnp


def l1(a, b):
  """Mean absolute difference, float32."""
  return jnp.mean(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)))


def centred_l1(a, b):
  """L1 after removing each example's mean difference.

  A constant pedestal can hardly be told apart between the sky and G from one
  crop, so it is penalised separately (``pedestal_l1``, small weight) and
  the shape across the crop here.
  Args: ``(N, H, W, C)`` arrays.
  """
  d = a.astype(jnp.float32) - b.astype(jnp.float32)
  return jnp.mean(jnp.abs(d - jnp.mean(d, axis=(1, 2, 3), keepdims=True)))


def objective(pred: dict, batch: dict, weights) -> tuple[jnp.ndarray, dict]:
  """Weighted total loss.

  Args:
    pred: model outputs (``clean`` and, for flat/combined, ``F``, ``G``).
    batch: targets ``clean``, ``F``, ``G`` in normalised units.
    weights: ``config.loss``.
  Returns:
    total float32 scalar, dict of float32 scalar terms (unweighted) and total.
  """
  terms = {"clean_l1": centred_l1(pred["clean"], batch["clean"])}
  if "F" in pred:
    terms["log_f_l1"] = l1(jnp.log(pred["F"]), jnp.log(batch["F"]))
    terms["g_l1"] = centred_l1(pred["G"], batch["G"])
    terms["pedestal_l1"] = jnp.mean(jnp.abs(jnp.mean(
        pred["G"].astype(jnp.float32) - batch["G"], axis=(1, 2, 3))))
  total = sum(weights[name] * value for name, value in terms.items())
  return total, {**terms, "loss": total}
