"""On-device examples: keys, procedural clean crops, degradation, model inputs and targets, and
the one generator of whole-sensor frames (``flatai synth --full_frame``, ``flatai evaluate``).

Keys follow the design: ``key = fold_in(fold_in(base_key, step), example_index)``,
so the same config gives the same run on any number of devices; the streams
below an example key are named in ``flatai_jax.rng``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from flatai_jax import rng
from flatai_jax.data.augment import augment_clean
from flatai_jax.models.forward import model_inputs
from flatai_jax.physics import deconvolve, forward, geometry, normalize, optics, sky, star_detect


def example_keys(base_key, step, indices):
  """``(B,)`` keys for examples ``indices (B,) int32`` at ``step``."""
  step_key = jax.random.fold_in(base_key, step)
  return jax.vmap(lambda i: jax.random.fold_in(step_key, i))(indices)


def procedural_example(key, config, crop_hw=None, offset_yx=None, with_seeing: bool = False):
  """One clean sky crop and its global coordinates.

  Args:
    key: example key.
    config: full config.
    crop_hw: static crop size; default ``(crop_size, crop_size)``, or the whole
      sensor ``sensor_hw`` when ``config.data.whole_frame``.
    offset_yx: top-left on the sensor; default uniformly random.
    with_seeing: also return the FWHM of the crop's seeing, px ``()`` (``sky.render_sky``).
  Returns:
    clean ``(h, w, C) float32`` linear; coords ``(h, w, 2) float32``; with ``with_seeing``
    the seeing's FWHM.
  """
  k_sky, k_pos = jax.random.split(key)
  if crop_hw is None:
    crop_hw = (tuple(config.data.sensor_hw) if config.data.whole_frame
               else (config.data.crop_size, config.data.crop_size))
  sensor_hw = jnp.asarray(config.data.sensor_hw, jnp.float32)
  if offset_yx is None:
    span = jnp.asarray(config.data.sensor_hw, jnp.float32) - jnp.asarray(crop_hw, jnp.float32)
    offset_yx = jnp.floor(jax.random.uniform(k_pos, (2,)) * (span + 1.0))
  clean, fwhm = sky.render_sky(k_sky, crop_hw, config.data.channels, config.sky, with_seeing=True)
  coords = geometry.frame_coords(offset_yx, crop_hw, sensor_hw)
  return (clean, coords, fwhm) if with_seeing else (clean, coords)


def degrade_example(key, clean, coords, config):
  """The forward model applied to one example (see physics.forward.degrade)."""
  return forward.degrade(jax.random.fold_in(key, rng.DEGRADE), clean, coords, config.degrade,
                         tuple(config.data.sensor_hw))


def full_frame_config(config) -> ml_collections.ConfigDict:
  """A copy of ``config`` for whole-sensor frames (``config.data.sensor_hw``).

  ``sky.max_stars`` (and so the star count) is scaled from a training crop to the
  sensor's area, so a frame has the training crops' star density;
  ``degrade.psf.grid`` becomes ``eval.frame_psf_grid`` (the training grid spans one crop).
  """
  c = ml_collections.ConfigDict(config.to_dict())
  h, w = c.data.sensor_hw
  c.sky.max_stars = int(round(c.sky.max_stars * h * w / c.data.crop_size ** 2))
  c.degrade.psf.grid = tuple(config.eval.frame_psf_grid)
  return c


def _dust_alone(key, clean, coords, config, f_field):
  """``(H, W, C)`` the dust shadows of ``f_field`` alone (1 = none): F over the same key's F
  drawn without dust."""
  if not (config.degrade.apply_flat and config.degrade.flat.dust):
    return jnp.ones_like(clean)
  bare = ml_collections.ConfigDict(config.to_dict())
  bare.degrade.flat.dust = False
  bare.degrade.apply_psf = False  # neither changes F; skipped for speed
  bare.degrade.noise.enabled = False
  return f_field / degrade_example(key, clean, coords, bare)["F"]


def full_frame(key, config, with_dust: bool = True) -> dict:
  """One whole-sensor frame (jittable).

  Args:
    key: example key.
    config: from :func:`full_frame_config`.
    with_dust: also return ``dust`` (costs a second flat field).
  Returns:
    dict of ``(H, W, C) float32`` linear, ``(H, W)`` = ``config.data.sensor_hw``:
    ``observed``, ``clean``, ``F``, ``G``, with ``with_dust`` ``dust`` (the true
    dust shadows alone, 1 where there is none) and, for the psf/combined tasks,
    ``psf`` ``(gy, gx, k, k)`` (the true PSFs at the ``eval.frame_psf_grid`` nodes).
  """
  hw = tuple(config.data.sensor_hw)
  clean, coords = procedural_example(key, config, hw, jnp.zeros(2, jnp.float32))
  deg = degrade_example(key, clean, coords, config)
  out = {"observed": deg["observed"], "clean": clean, "F": deg["F"], "G": deg["G"]}
  if "psf" in deg:
    out["psf"] = deg["psf"]
  if with_dust:
    out["dust"] = _dust_alone(key, clean, coords, config, deg["F"])
  return out


def make_full_frames(base_key, config, num: int, with_dust: bool = True) -> dict[str, np.ndarray]:
  """``num`` whole-sensor frames of ``full_frame_config(config)``, frame ``i`` from
  ``example_keys(base_key, 0, i)``; dict of :func:`full_frame`'s arrays stacked to ``(num, …)``
  NumPy (made one at a time: full frames are large)."""
  c = full_frame_config(config)
  fn = jax.jit(lambda key: full_frame(key, c, with_dust))
  keys = example_keys(base_key, 0, np.arange(num, dtype=np.int32))
  outs = [jax.device_get(fn(keys[i])) for i in range(num)]
  return {k: np.stack([o[k] for o in outs]) for k in outs[0]}


def normalized_targets(clean, f_field, g_field, offset, scale):
  """Truth in the units of the model's input (``normalize.fields_to_normalized``)."""
  clean_n, f_field, g_n = normalize.fields_to_normalized(clean, f_field, g_field, offset, scale)
  return {"clean": clean_n, "F": f_field, "G": g_n}


def deconvolved_pair(observed, clean, psfs, seeing_fwhm, config):
  """What a ``model.input = 'deconvolved'`` model sees and learns (``configs/psf.py``).

  Args:
    observed: ``(B, H, W, C) float32`` linear, degraded.
    clean: ``(B, H, W, C)`` the clean crops.
    psfs: ``(B, gy, gx, k, k)`` their true PSF fields (the optics; the seeing is in ``clean``).
    seeing_fwhm: ``(B,)`` px, the seeing each clean crop keeps (0 where unknown): RL leaves it
      in the restored crop, as ``correct_psf`` leaves the seeing it keeps, so the restoration
      rule (``deconvolve.restoration``: the retained blob, the target's pixel compensation) is
      the correction's.
  Returns:
    ``observed`` deconvolved to the diffraction-limited target
    (``deconvolve.sharpen_traced``, at most ``model.deconvolve_iterations`` RL steps) and
    ``clean`` seen through that target, widened at each node by the round blur RL leaves there
    (``deconvolve.rounding``): the input and the truth, both ``(B, H, W, C)``.
  """
  target = deconvolve.target_psf("diffraction", config.degrade.psf)
  iters = int(config.model.deconvolve_iterations)
  kept = (seeing_fwhm / star_detect.FWHM_PER_SIGMA) ** 2
  seen = jax.vmap(lambda o, p, v: deconvolve.sharpen_traced(o, p, target, iters, v))(
      observed, psfs, kept)
  # the target widened where RL leaves its round blur (deconvolve.rounding), node by node
  truth = lambda x, p: optics.blur(x, deconvolve.widened(
      target, jnp.minimum(deconvolve.rounding(p), deconvolve.TRACED_BLOB)))
  return seen, jax.vmap(truth)(clean, psfs)


def make_batch(base_key, step, inputs, config, augment: bool = False):
  """A full training/eval batch made on device.

  Args:
    base_key: PRNG key from the config seed.
    step: int32 scalar.
    inputs: ``(B,) int32`` global example indices, or a dict from
      ``data.pipeline.Pipeline.next_batch``: ``index`` and, for image data,
      ``clean (B, h, w, C)``, ``offset (B, 2)``, ``sensor_hw (B, 2)``, ``real (B,)``.
    config: full config.
    augment: apply ``config.augment`` to the clean crops (training only).
  Returns:
    dict of ``(B, H, W, ·) float32``: ``observed``/``noise`` (normalised model
    inputs; for ``model.input = 'deconvolved'`` the observed crop deconvolved, and
    ``clean`` the truth through the target PSF: :func:`deconvolved_pair`),
    ``coords``, targets ``clean``/``F``/``G`` (normalised units),
    ``offset``/``scale``/``saturation`` ``(B, 1, 1, 1)`` and, for the psf and
    combined tasks, the true PSF grid ``psf`` ``(B, gy, gx, k, k)``.
  """
  if not isinstance(inputs, dict):
    inputs = {"index": inputs}
  keys = example_keys(base_key, step, inputs["index"])
  has_files = "clean" in inputs
  mixes = has_files and config.data.procedural_fraction > 0

  def one(key, inp):
    seeing = jnp.float32(0.0)  # a real crop's seeing is not known
    if has_files:
      crop = inp["clean"].shape[:2]
      clean = inp["clean"]
      coords = geometry.frame_coords(inp["offset"], crop, inp["sensor_hw"])
      if mixes:
        p_clean, p_coords, p_seeing = procedural_example(key, config, with_seeing=True)
        clean = jnp.where(inp["real"], clean, p_clean)
        coords = jnp.where(inp["real"], coords, p_coords)
        seeing = jnp.where(inp["real"], seeing, p_seeing)
    else:
      clean, coords, seeing = procedural_example(key, config, with_seeing=True)
    if augment:
      clean = augment_clean(jax.random.fold_in(key, rng.AUGMENT), clean, config.augment)
    deg = degrade_example(key, clean, coords, config)
    return clean, coords, seeing, deg

  clean, coords, seeing, deg = jax.vmap(one)(keys, inputs)
  seen = deg["observed"]
  if config.model.input == "deconvolved":
    seen, clean = deconvolved_pair(seen, clean, deg["psf"], seeing, config)
  inputs_n = model_inputs(seen)
  targets = normalized_targets(clean, deg["F"], deg["G"], inputs_n["offset"], inputs_n["scale"])
  extra = {"psf": deg["psf"]} if "psf" in deg else {}
  return {**inputs_n, "coords": coords, **targets, **extra,
          "saturation": normalize.normalize(config.degrade.saturation, inputs_n["offset"],
                                            inputs_n["scale"])}
