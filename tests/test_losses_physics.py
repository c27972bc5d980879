"""Physics losses: zero for perfect predictions, growing with error, never circular."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from flatai_jax.data import synthetic
from flatai_jax.losses import objective as obj
from flatai_jax.losses import physics
from flatai_jax.models import forward
from flatai_jax.train_step import base_keys, split_model

ALL = {"clean_l1": 1.0, "log_f_l1": 1.0, "g_l1": 1.0, "pedestal_l1": 1.0, "consistency": 1.0,
       "flux": 1.0, "smooth_f": 1.0, "smooth_g": 1.0}


def _batch(task, noise=False):
  c = tiny_config(task, **{"degrade.noise.enabled": noise})
  b = jax.jit(lambda i: synthetic.make_batch(base_keys(0)[0], 0, i, c))(
      jnp.arange(4, dtype=jnp.int32))  # jitted: op-by-op generation takes half a minute
  return c, b


def _perfect(b):
  return {k: b[k] for k in ("clean", "F", "G")}


@pytest.mark.parametrize("task", ["flat", "psf", "combined"])
def test_terms_vanish_for_the_truth_and_grow_with_error(task):
  c, b = _batch(task)
  pred = _perfect(b) if task != "psf" else {"clean": b["clean"]}
  _, terms = obj.objective(pred, b, ALL)
  for name, value in terms.items():
    assert abs(float(value)) < 2e-5, (name, float(value))
  expected = {"clean_l1", "consistency", "flux", "loss"} | (
      {"log_f_l1", "g_l1", "pedestal_l1", "smooth_f", "smooth_g"} if task != "psf" else set())
  assert set(terms) == expected
  bump = jax.random.normal(jax.random.key(1), b["clean"].shape)
  previous = None
  for eps in (0.01, 0.03, 0.1):
    wrong = dict(pred, clean=pred["clean"] + eps * bump)
    if "F" in pred:
      wrong.update(F=pred["F"] * jnp.exp(eps * bump), G=pred["G"] + eps * bump)
    _, t = obj.objective(wrong, b, ALL)
    current = {k: float(v) for k, v in t.items()}
    assert all(current[k] > 0 for k in ("clean_l1", "consistency", "flux")), current
    if previous is not None:
      assert all(current[k] > previous[k] for k in current if k != "pedestal_l1"), (previous, current)
    previous = current


def test_doing_nothing_is_not_rewarded():
  """The observed image passed through unchanged (F = 1, G = 0) must not satisfy the physics terms:
  PyTorch FlatAI's loss re-applied predicted fields to predictions and scored this as perfect."""
  c, b = _batch("combined")
  identity = {"clean": b["observed"], "F": jnp.ones_like(b["F"]), "G": jnp.zeros_like(b["G"])}
  _, t = obj.objective(identity, b, ALL)
  _, t0 = obj.objective({**_perfect(b)}, b, ALL)
  for name in ("consistency", "log_f_l1", "clean_l1"):
    assert float(t[name]) > 100 * max(float(t0[name]), 1e-6), name


def test_consistency_equals_a_hand_computation_for_flat():
  c, b = _batch("flat")
  clean = b["clean"] + 0.05
  mask = physics.unsaturated_mask(b)
  hand = np.abs(np.minimum(clean * b["F"] + b["G"], b["saturation"]) - b["observed"])
  m = np.asarray(mask)
  np.testing.assert_allclose(physics.consistency({"clean": clean}, b, mask),
                             (hand * m).sum() / m.sum(), rtol=1e-5)


def test_laplacian_energy_is_zero_on_planes():
  yy, xx = jnp.meshgrid(jnp.arange(8.0), jnp.arange(8.0), indexing="ij")
  plane = (0.3 * xx - 0.2 * yy + 1.0)[None, :, :, None]
  assert float(physics.laplacian_energy(plane)) < 1e-6
  bump = plane.at[0, 4, 4, 0].add(1.0)
  # one spike: |−4| at its centre and 1 at its 4 neighbours, averaged over the 6×6 interior
  np.testing.assert_allclose(physics.laplacian_energy(bump), 8.0 / 36.0, rtol=1e-5)


def test_gradients_are_finite_under_bfloat16():
  c = tiny_config("combined", **{"model.dtype": "bfloat16"})
  graphdef, params = split_model(c)
  b = jax.jit(lambda i: synthetic.make_batch(base_keys(0)[0], 0, i, c))(
      jnp.arange(4, dtype=jnp.int32))

  def loss(p):
    return obj.objective(forward(graphdef, p, b), b, dict(ALL))[0]

  g = jax.jit(jax.grad(loss))(params)
  leaves = jax.tree.leaves(g)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in leaves)
  assert sum(float(jnp.sum(jnp.abs(x))) for x in leaves) > 0
