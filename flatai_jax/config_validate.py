"""Config validation: the one check of a loaded config, before anything is built.

``validate(config)`` checks what the config alone decides: choices (``CHOICES``),
sizes the U-Net can halve, the correction tiling and every distribution spec.
``validate(config, device_count)`` adds what the devices decide: the mesh uses
every device and the batches split evenly. A failure raises
:class:`ConfigError` with a one-line message that names the field, e.g.
``config.model.norm='bach': must be one of group, layer, none``.

Every command that loads a config runs it: ``flatai train`` and ``synth`` (the
``--config`` file and overrides), ``evaluate`` and ``correct``
(``checkpointing.load_config``), ``make_eval_set``; ``train.train_and_evaluate``
runs the device checks once the devices are known. Imports nothing heavy (no JAX),
so a bad override fails within a second of start.
"""
from __future__ import annotations

import math

from flatai_jax.physics.distribution_specs import parse as parse_distribution

# field → allowed values (the code that reads each field accepts exactly these)
CHOICES = {
    "task": ("flat", "psf", "combined"),
    "data.source": ("procedural", "images"),
    "model.norm": ("group", "layer", "none"),
    "model.up_block": ("conv", "resblock"),
    "model.dtype": ("float32", "bfloat16"),
    "model.input": ("observed", "deconvolved"),
    "perceptual.lpips_net": ("alex", "vgg"),
    "perceptual.dtype": ("float32", "bfloat16"),
}

# fields holding a distribution spec (physics.distribution_specs), by section
DISTRIBUTIONS = {
    "sky": ("background", "star_fraction", "sparse_fraction", "cluster_radius_px",
            "star_temperature_k", "sersic_index", "galaxy_radius_px", "galaxy_axis_ratio",
            "galaxy_flux", "fwhm_px", "nebula_amplitude", "dark_lane_depth"),
    "degrade.flat": ("vignetting_strength", "mechanical_fraction", "mechanical_onset",
                     "centre_offset", "asymmetry", "focal_ratio", "exit_pupil_mm", "obstruction",
                     "dust_distance_mm", "dust_depth", "dust_softness", "dust_cluster_spread",
                     "speck_gain", "speck_sigma_px", "prnu_sigma", "prnu_blotch_sigma",
                     "gradient_level", "gradient_slope", "quadratic_amplitude", "dome_amplitude",
                     "dome_scale", "glow_amplitude", "glow_scale"),
    "degrade.noise": ("full_well_e", "read_noise_e"),
}

# fields holding a plain (low, high) uniform range
RANGES = ("degrade.psf.defocus", "degrade.psf.spherical", "degrade.psf.trefoil",
          "degrade.psf.coma", "degrade.psf.astigmatism", "degrade.psf.field_curvature",
          "augment.intensity_scale")


class ConfigError(ValueError):
  """A config value that cannot run; the message is one line naming the field."""


def _get(config, name: str):
  node = config
  for part in name.split("."):
    node = node[part]
  return node


def _choices(config) -> None:
  for name, allowed in CHOICES.items():
    value = _get(config, name)
    if value not in allowed:
      raise ConfigError(f"config.{name}={value!r}: must be one of {', '.join(allowed)}")


def _halvings(config) -> None:
  """The U-Net halves its input ``depth - 1`` times: crops and tiles must divide by 2^(depth-1)."""
  depth = len(config.model.width_multipliers)
  if depth < 1:
    raise ConfigError("config.model.width_multipliers=(): needs at least one level")
  unit = 2 ** (depth - 1)
  for name in ("data.crop_size", "predict.tile"):
    value = _get(config, name)
    if value <= 0 or value % unit:
      raise ConfigError(f"config.{name}={value}: must be a positive multiple of {unit} "
                        f"(2^(depth-1), depth = len(model.width_multipliers) = {depth})")


def _tiling(config) -> None:
  tile, overlap = config.predict.tile, config.predict.overlap
  if not 0 <= overlap <= tile // 2:
    raise ConfigError(f"config.predict.overlap={overlap}: must be in 0..{tile // 2} "
                      f"(at most half of predict.tile={tile})")


def _distributions(config) -> None:
  for section, names in DISTRIBUTIONS.items():
    for name in names:
      spec = _get(config, f"{section}.{name}")
      try:
        parse_distribution(spec)
      except (TypeError, ValueError) as e:
        raise ConfigError(f"config.{section}.{name}={spec!r}: {e}") from None
  for name in RANGES:
    spec = _get(config, name)
    ok = (isinstance(spec, (tuple, list)) and len(spec) == 2
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in spec)
          and spec[0] <= spec[1])
    if not ok:
      raise ConfigError(f"config.{name}={spec!r}: must be a (low, high) pair with low <= high")


def _mesh(config, device_count: int) -> None:
  """``mesh.data × mesh.fsdp`` must be every device; one axis may be -1 (the rest)."""
  sizes = (int(config.mesh.data), int(config.mesh.fsdp))
  fixed = [s for s in sizes if s != -1]
  ok = sizes.count(-1) <= 1 and all(s >= 1 for s in fixed)
  if ok and -1 in sizes:
    ok = device_count % math.prod(fixed) == 0
  elif ok:
    ok = math.prod(sizes) == device_count
  if not ok:
    raise ConfigError(f"config.mesh.data={sizes[0]}, config.mesh.fsdp={sizes[1]}: data × fsdp "
                      f"must equal the {device_count} devices (one of them may be -1)")


def _batches(config, device_count: int) -> None:
  batch, accum = config.train.batch_size, config.optim.grad_accum
  if accum < 1 or batch % accum:
    raise ConfigError(f"config.optim.grad_accum={accum}: must be >= 1 and divide "
                      f"train.batch_size={batch}")
  for name in ("train.batch_size", "eval.batch_size"):
    value = _get(config, name)
    if value < 1 or value % device_count:
      raise ConfigError(f"config.{name}={value}: must be a positive multiple of the "
                        f"{device_count} devices")


def validate(config, device_count: int | None = None) -> None:
  """Raises :class:`ConfigError` (one line, naming the field) if ``config`` cannot run.

  Args:
    config: the full config (``configs/default.py`` with overrides, or a saved one).
    device_count: devices of the mesh (``jax.device_count()``); None skips the mesh
      and batch checks (commands that do not train).
  """
  _choices(config)
  _halvings(config)
  _tiling(config)
  _distributions(config)
  if device_count is not None:
    _mesh(config, device_count)
    _batches(config, device_count)
