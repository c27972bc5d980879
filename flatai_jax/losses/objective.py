"""The weighted training objective; every term is returned on its own for logging.

Terms (weights in ``config.loss``; a term whose weight is 0 is not computed):

- ``clean_l1``: corrected image vs the true clean image (mean difference removed);
- ``log_f_l1``, ``g_l1``, ``pedestal_l1``: supervised on the known F and G (flat/combined);
- ``consistency``: predicted clean re-rendered with the true F, G and PSF vs observed;
- ``flux``: relative total-flux error of the corrected image;
- ``smooth_f``, ``smooth_g``: roughness of predicted fields beyond the truth's own;
- ``lpips``, ``style``: LPIPS and VGG16 Gram style of the corrected vs the clean image, both
  display-transformed (``lpips.display_transform``); pretrained nets in ``nets``.
- ``zernike_psf``: the Zernike head's coefficients re-rendered into PSFs vs the true PSF field.

All are supervised on the *known* truth of the forward model, never on the
model's own predictions re-applied to themselves.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from flatai_jax.losses import lpips, physics, vgg

FLAT_TERMS = ("log_f_l1", "g_l1", "pedestal_l1", "smooth_f", "smooth_g")


def term_names(config) -> list[str]:
  """The loss terms a config computes (weight > 0 and meaningful for its task)."""
  names = [n for n, w in config.loss.items() if w > 0]
  if not config.degrade.apply_flat:
    names = [n for n in names if n not in FLAT_TERMS]
  if not (config.degrade.apply_psf and config.model.zernike_head):
    names = [n for n in names if n != "zernike_psf"]
  return names


def centred_l1(a, b):
  """L1 after removing each example's mean difference, ``(N, H, W, C)`` arrays.

  A constant pedestal can hardly be told apart between the sky and G from one
  crop, so it is penalised separately (``pedestal_l1``) and only the shape here.
  """
  d = a.astype(jnp.float32) - b.astype(jnp.float32)
  return jnp.mean(jnp.abs(d - jnp.mean(d, axis=(1, 2, 3), keepdims=True)))


def perceptual_terms(pred_clean, clean, nets, perceptual, active) -> dict:
  """``lpips`` (batch mean) and ``style`` for the active ones; one VGG pass serves both when
  ``perceptual.lpips_net == "vgg"``."""
  n, p = pred_clean.shape[0], perceptual
  both = vgg.imagenet_input(jnp.concatenate(
      [lpips.display_transform(pred_clean, p.softening),
       jax.lax.stop_gradient(lpips.display_transform(clean, p.softening))], axis=0))
  split = lambda f: ({k: v[:n] for k, v in f.items()}, {k: v[n:] for k, v in f.items()})
  dtype, terms, feats = jnp.dtype(p.dtype), {}, {}
  if "lpips" in active:
    spec = lpips.SPECS[p.lpips_net]
    wanted = vgg.taps(spec) + (tuple(p.style_layers) if p.lpips_net == "vgg" else ())
    feats[p.lpips_net] = vgg.run_backbone(spec, nets[p.lpips_net]["convs"], both, wanted, dtype)
    terms["lpips"] = jnp.mean(lpips.from_features(*split(feats[p.lpips_net]),
                                                  nets[p.lpips_net]["lin"], p.lpips_net))
  if "style" in active:
    f = feats.get("vgg") or vgg.run_backbone(vgg.VGG16, nets["vgg"]["convs"], both,
                                             p.style_layers, dtype)
    terms["style"] = vgg.style_from_features(*split(f), p.style_layers)
  return terms


def objective(pred: dict, batch: dict, weights, nets=None, perceptual=None, psf_cfg=None
              ) -> tuple[jnp.ndarray, dict]:
  """Weighted total loss.

  Args:
    pred: model outputs (``clean`` and, for flat/combined, ``F``, ``G``), float32.
    batch: targets and inputs from ``data.synthetic.make_batch`` (normalised units).
    weights: ``config.loss``; only terms with weight > 0 are computed.
    nets: pretrained loss nets ``lpips.load_nets(config.loss, config.perceptual)``, needed when
      ``lpips`` or ``style`` is on; perceptual: ``config.perceptual``.
    psf_cfg: ``config.degrade.psf``, needed by ``zernike_psf`` (computed when
      ``pred`` has ``zernike`` and ``batch`` has ``psf``).
  Returns:
    total float32 scalar; dict of the unweighted float32 terms plus ``loss``.
  """
  active = {n for n, w in weights.items() if w > 0}
  has_flat = "F" in pred
  terms = {}
  if "clean_l1" in active:
    terms["clean_l1"] = centred_l1(pred["clean"], batch["clean"])
  if has_flat and active & {"log_f_l1", "g_l1", "pedestal_l1"}:
    mask = physics.unsaturated_mask(batch)
    terms.update({k: v for k, v in physics.flat_supervision(pred, batch, mask).items()
                  if k in active})
  if "consistency" in active:
    terms["consistency"] = physics.consistency(pred, batch, physics.unsaturated_mask(batch))
  if "flux" in active:
    terms["flux"] = physics.flux_error(pred, batch)
  if has_flat and active & {"smooth_f", "smooth_g"}:
    terms.update({k: v for k, v in physics.smoothness(pred, batch).items() if k in active})
  if active & {"lpips", "style"}:
    if nets is None:
      raise ValueError("loss.lpips / loss.style > 0 need the pretrained nets: pass "
                       "nets=lpips.load_nets(config.loss, config.perceptual)")
    terms.update(perceptual_terms(pred["clean"], batch["clean"], nets, perceptual, active))
  if "zernike_psf" in active and "zernike" in pred and "psf" in batch:
    terms["zernike_psf"] = physics.zernike_psf_l1(pred, batch, psf_cfg)
  total = sum(weights[name] * value for name, value in terms.items())
  return total, {**terms, "loss": total}
