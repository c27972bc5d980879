"""Parameter distributions written in the config, drawn with JAX keys.

A distribution spec is a tuple:

- ``(low, high)`` or ``("uniform", low, high)``: uniform on [low, high);
- ``("loguniform", low, high)``: ``log x`` uniform, ``0 < low ≤ high``;
- ``("normal", mean, sd)``: Gaussian;
- ``("fixed", value)`` or a bare number: always ``value``.

Every random physical parameter of the generators (``physics.flat``,
``physics.noise``, ``physics.sky``) is drawn through :func:`sample`, so what a
config says is what the data follow (tests check this with KS tests).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

KINDS = ("uniform", "loguniform", "normal", "fixed")


def parse(spec) -> tuple[str, tuple[float, ...]]:
  """``spec`` → ``(kind, numeric arguments)``; raises ValueError on a malformed spec."""
  if isinstance(spec, (int, float)):
    return "fixed", (float(spec),)
  spec = tuple(spec)
  if spec and isinstance(spec[0], str):
    kind, args = spec[0], tuple(float(a) for a in spec[1:])
  else:
    kind, args = "uniform", tuple(float(a) for a in spec)
  want = 1 if kind == "fixed" else 2
  if kind not in KINDS or len(args) != want:
    raise ValueError(f"bad distribution spec {spec!r}: expected (low, high) or one of "
                     f"('uniform'|'loguniform'|'normal', a, b), ('fixed', v)")
  if kind == "loguniform" and not 0.0 < args[0] <= args[1]:
    raise ValueError(f"loguniform needs 0 < low <= high, got {spec!r}")
  return kind, args


def sample(key, spec, shape=()) -> jnp.ndarray:
  """Draws ``shape`` float32 values from ``spec`` (static, from the config)."""
  kind, args = parse(spec)
  if kind == "fixed":
    return jnp.full(shape, args[0], jnp.float32)
  if kind == "normal":
    return args[0] + args[1] * jax.random.normal(key, shape, jnp.float32)
  if kind == "loguniform":
    lo, hi = jnp.log(args[0]), jnp.log(args[1])
    return jnp.exp(jax.random.uniform(key, shape, jnp.float32, lo, hi))
  return jax.random.uniform(key, shape, jnp.float32, args[0], args[1])


def bernoulli(key, p: float, shape=()) -> jnp.ndarray:
  """``shape`` booleans, True with probability ``p``."""
  return jax.random.uniform(key, shape) < p
