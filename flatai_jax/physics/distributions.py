"""Parameter distributions written in the config, drawn with JAX keys.

A distribution spec is a tuple:

- ``(low, high)`` or ``("uniform", low, high)``: uniform on [low, high);
- ``("loguniform", low, high)``: ``log x`` uniform, ``0 < low ≤ high``;
- ``("normal", mean, sd)``: Gaussian;
- ``("fixed", value)`` or a bare number: always ``value``.

Every random physical parameter of the generators (``physics.flat``,
``physics.noise``, ``physics.sky``) is drawn through :func:`from_uniform`, so
what a config says is what the data follow (tests check this with KS tests).
A generator takes all its scalars from one :class:`Uniforms` vector: one
threefry call per frame instead of one per parameter (each call costs ~0.2 s
of XLA compile time on CPU).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import ndtri

from flatai_jax.physics.distribution_specs import KINDS, parse  # noqa: F401 (re-exported)


def from_uniform(u, spec) -> jnp.ndarray:
  """Inverse CDF of ``spec`` (static) applied to uniforms ``u`` in (0, 1), float32."""
  kind, args = parse(spec)
  u = jnp.asarray(u, jnp.float32)
  if kind == "fixed":
    return jnp.full(u.shape, args[0], jnp.float32)
  if kind == "normal":
    return args[0] + args[1] * ndtri(jnp.clip(u, 1e-7, 1.0 - 1e-7))
  if kind == "loguniform":
    lo, hi = math.log(args[0]), math.log(args[1])
    return jnp.exp(lo + (hi - lo) * u)
  return args[0] + (args[1] - args[0]) * u


def sample(key, spec, shape=()) -> jnp.ndarray:
  """Draws ``shape`` float32 values from ``spec`` (static, from the config)."""
  return from_uniform(jax.random.uniform(key, shape, jnp.float32), spec)


def bernoulli(key, p: float, shape=()) -> jnp.ndarray:
  """``shape`` booleans, True with probability ``p``."""
  return jax.random.uniform(key, shape) < p


class Uniforms:
  """One pre-drawn vector of uniforms handed out in order (a trace-time helper).

  ``size`` is a static upper bound of what will be taken; taking more raises.
  """

  def __init__(self, key, size: int):
    self._u = jax.random.uniform(key, (size,), jnp.float32)
    self._i = 0

  def take(self, shape=()) -> jnp.ndarray:
    shape = tuple(shape)
    k = math.prod(shape)
    if self._i + k > self._u.shape[0]:
      raise ValueError(f"Uniforms: {self._i + k} values needed, only {self._u.shape[0]} drawn")
    out = self._u[self._i:self._i + k].reshape(shape)
    self._i += k
    return out

  def sample(self, spec, shape=()) -> jnp.ndarray:
    return from_uniform(self.take(shape), spec)

  def bernoulli(self, p: float, shape=()) -> jnp.ndarray:
    return self.take(shape) < p

  def normal(self, shape=()) -> jnp.ndarray:
    return from_uniform(self.take(shape), ("normal", 0.0, 1.0))

  def angle(self, shape=()) -> jnp.ndarray:
    return (2.0 * math.pi) * self.take(shape)


def materialize(tree):
  """The float32 leaves of ``tree`` computed once, as they are.

  XLA on CPU fuses cheap per-frame parameter arithmetic into the per-pixel loops
  that use it; those loops then stop vectorising (25× slower dust shadows at
  256²). A dot with the identity is not fusible, so the parameters are
  materialised first; it is exact for finite values and costs K² for K floats.
  """
  leaves, treedef = jax.tree.flatten(tree)
  floats = [i for i, x in enumerate(leaves) if x.dtype == jnp.float32]
  if not floats:
    return tree
  packed = jnp.concatenate([leaves[i].ravel() for i in floats])
  packed = jnp.dot(packed[None], jnp.eye(packed.shape[0], dtype=jnp.float32),
                   precision=jax.lax.Precision.HIGHEST)[0]
  start = 0
  for i in floats:
    size = leaves[i].size
    leaves[i] = packed[start:start + size].reshape(leaves[i].shape)
    start += size
  return jax.tree.unflatten(treedef, leaves)

