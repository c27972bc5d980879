"""Distribution specs of the config, parsed without JAX (``physics.distributions`` draws them).

A spec is ``(low, high)`` or ``("uniform", low, high)``, ``("loguniform", low, high)``,
``("normal", mean, sd)``, ``("fixed", value)`` or a bare number. Free of JAX so that
``flatai_jax.config_validate`` checks every spec of a config within the first second.
"""
from __future__ import annotations

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
