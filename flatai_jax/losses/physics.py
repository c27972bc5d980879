"""Physics losses that use the *known* truth of the forward model.

All inputs are in the model's normalised units (``data.synthetic.make_batch``):
``observed_n = min((clean_n ⊛ PSF)·F + G_n, saturation_n) + noise``. Every
term is zero for a perfect prediction of noise-free data and grows with the
error; none compares a prediction only with itself (PyTorch FlatAI's circular loss).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from flatai_jax.physics import forward, normalize, optics

SATURATION_MARGIN = 0.98  # pixels above this fraction of full well carry no flat information


def unsaturated_mask(batch) -> jnp.ndarray:
  """``(B, H, W, C) float32``: 1 where the observed pixel is below saturation."""
  raw = lambda x: normalize.denormalize(x, batch["offset"], batch["scale"])
  return (raw(batch["observed"]) < SATURATION_MARGIN * raw(batch["saturation"])).astype(
      jnp.float32)


def masked_mean(x, mask):
  return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _centred(d, mask):
  """``d`` minus its masked mean per example (removes the sky/G pedestal)."""
  mean = jnp.sum(d * mask, axis=(1, 2, 3), keepdims=True) / jnp.maximum(
      jnp.sum(mask, axis=(1, 2, 3), keepdims=True), 1.0)
  return d - mean


def flat_supervision(pred, batch, mask) -> dict:
  """L1 of log F and of G against the known fields, saturated pixels masked.

  ``g_l1`` ignores each example's mean difference (a pedestal that a crop can
  hardly attribute to sky or G); ``pedestal_l1`` penalises that mean apart.
  """
  d_g = pred["G"] - batch["G"]
  return {
      "log_f_l1": masked_mean(jnp.abs(jnp.log(pred["F"]) - jnp.log(batch["F"])), mask),
      "g_l1": masked_mean(jnp.abs(_centred(d_g, mask)), mask),
      "pedestal_l1": jnp.mean(jnp.abs(jnp.mean(d_g, axis=(1, 2, 3)))),
  }


def rerender(clean_n, batch):
  """The forward model with the *true* F, G and PSF applied to a clean image, noise-free."""
  blurred = clean_n
  if "psf" in batch:  # blur in linear units, exactly as the forward model did
    off, scale = batch["offset"], batch["scale"]
    linear = normalize.denormalize(clean_n, off, scale)
    blurred = normalize.normalize(jax.vmap(optics.blur)(linear, batch["psf"]), off, scale)
  return forward.expected_signal(blurred, batch["F"], batch["G"], batch["saturation"])


def consistency(pred, batch, mask) -> jnp.ndarray:
  """L1 between the observed image and the predicted clean image re-rendered with the true
  F, G and PSF field (re-convolution for the psf task). Its floor is the noise level."""
  return masked_mean(jnp.abs(rerender(pred["clean"], batch) - batch["observed"]), mask)


def flux_error(pred, batch) -> jnp.ndarray:
  """Relative error of each example's total flux above its median background, averaged."""
  def flux(x):
    x = x.reshape(x.shape[0], -1)
    return jnp.sum(x - jnp.median(x, axis=-1, keepdims=True), axis=-1)
  true = flux(batch["clean"])
  return jnp.mean(jnp.abs(flux(pred["clean"]) - true) / jnp.maximum(jnp.abs(true), 1.0))


def laplacian_energy(field) -> jnp.ndarray:
  """Mean |∇²field| (5-point stencil, interior pixels): zero for planes, large for noise."""
  lap = (field[:, 2:, 1:-1] + field[:, :-2, 1:-1] + field[:, 1:-1, 2:] + field[:, 1:-1, :-2]
         - 4.0 * field[:, 1:-1, 1:-1])
  return jnp.mean(jnp.abs(lap))


def smoothness(pred, batch) -> dict:
  """Smoothness prior on the predicted fields, relative to the truth's own roughness
  (so a perfect prediction scores zero even though PRNU and dust are not smooth)."""
  return {
      "smooth_f": jnp.maximum(laplacian_energy(jnp.log(pred["F"]))
                              - laplacian_energy(jnp.log(batch["F"])), 0.0),
      "smooth_g": jnp.maximum(laplacian_energy(pred["G"]) - laplacian_energy(batch["G"]), 0.0),
  }


def zernike_psf_l1(pred, batch, psf_cfg) -> jnp.ndarray:
  """The Zernike head's coefficients re-rendered by the optics forward model vs the true PSFs.

  Args:
    pred: with ``zernike`` ``(B, gy, gx, J)`` Noll coefficients, waves RMS.
    batch: with ``psf`` ``(B, gy, gx, k, k)``, the true PSF field.
    psf_cfg: ``config.degrade.psf`` (the same optics that made ``psf``).
  Returns:
    float32 scalar: ``Σ_kk |PSF(ĉ) − PSF|`` averaged over nodes and examples,
    in [0, 2] (both sum to 1); zero when the coefficients match the truth. It
    compares PSFs, not coefficients, so wavefronts that image alike are not
    told apart: piston, and the sign of a purely even wavefront (defocus,
    astigmatism, spherical: ±W give the same PSF through a symmetric pupil).
  """
  rendered = optics.render_psfs(pred["zernike"], psf_cfg)
  return jnp.mean(jnp.sum(jnp.abs(rendered - batch["psf"]), axis=(-1, -2)))
