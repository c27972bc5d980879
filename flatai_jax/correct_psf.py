"""``flatai correct --task=psf --method=physics``: aberration correction without a trained model.

The PSF field is fitted to the frame's own stars (``physics.psf_fit``), and the frame is
deconvolved with that field to a round target PSF (``physics.deconvolve.sharpen``: spatially
varying Richardson–Lucy, early-stopped, then the target).

The optics are corrected, not the air. Real stars are the optics' PSF under the seeing, which the
fit stands in for by a Kolmogorov kernel. RL undoing optics ⊛ that whole kernel, the target
putting it back (the previous release), is the right linear map, but RL's x ≥ 0 cannot hold a
star sharper than the stand-in seeing and the wide PSF converges slowly: on real stars through a
known aberration the corners kept 34–88 % of their excess FWHM. Undoing the optics alone (the
seeing left in x, as in the training's deconvolution) removes 78–94 % — but where the fitted
optics are partly a stand-in for a non-Kolmogorov real PSF (unaberrated real frames) it digs
halos to −5.4 σ. So RL undoes the optics under ``RL_SEEING`` of the fitted seeing's FWHM and
the target puts that part back (README, "the seeing kept in the frame": every share measured) —
where the fitted optics are at their best. Where the field widens them, a star is mostly the
(well-measured) optics and the stand-in seeing matters less: there the share falls with the
optics' added variance ``e`` (:func:`seeing_shares`: ``RL_SEEING · (σ² / (σ² + e))^½``), and
the target, one per PSF node, puts back what RL undid at that node. On real stars through a
known aberration the corners then lose 66–88 % of their excess FWHM instead of 41–80 %.
Imports only what
``correct`` may (``physics``, ``io``, ``metrics``, ``correct``); nothing of training or evaluation.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from flatai_jax import correct, metrics
from flatai_jax.io import atomic, images
from flatai_jax.physics import deconvolve, psf, psf_fit, star_detect

DEFAULT_GRID = (16, 16)  # PSF nodes (rows, cols) over the frame: RL interpolates the PSFs between
#                          them, and 11 × 11 left corner stars elongated (README, "16 × 16 nodes")
RL_SEEING = 0.7  # share of the fitted seeing's FWHM that RL undoes and the target puts back …
FIELD_SHARE_POWER = 0.5  # … where the optics are at their best; less where the field widens them
GUARD_SIZE = 1.05  # deconvolved stars broader than this × before (median): not corrected
GUARD_ELLIPTICITY = 0.02  # … or more elongated by more than this (median 1 − b/a)
GUARD_HALO = -3.0  # … or a tenth of them with a dark halo below this (noise σ) …
GUARD_HALO_SHARE = 0.1  # … (that share of the stars: one star's neighbour is not a verdict)
GUARD_FLUX = 0.8  # … or their median aperture flux after / before below this (light dug out;
#                   above 1 is no harm: sharpening brings the wings' light into the aperture)
GUARD_NARROW = 0.5  # more of the fit's candidates than this share narrower than the model's
#                    optics allow (``psf_fit.NARROWEST`` × λ/D): not sharpened (:func:`unresolved`)


@dataclasses.dataclass
class PhysicsCorrection:
  """Outputs of :func:`correct_physics`.

  Attributes:
    corrected: ``(H, W, C) float32`` linear, the frame's unit; NaN where the input was NaN.
    field: the fitted :class:`psf_fit.PSFField`.
    target: ``(k, k)`` the target PSF; for a sharpening target ``(gy, gx, k, k)``, one per node
      (the diffraction target under the part of the seeing RL undid there).
    psfs: ``(gy, gx, k, k)`` the PSFs deconvolved (:func:`correct_physics`): the fitted
      field's optics under the seeing share of its seeing for a sharpening target, the whole
      fitted PSF (``field.psfs``) for a Gaussian one.
    compensation: the target's pixel compensation (``deconvolve.sharpen``'s) it was run with,
      a float or ``(gy, gx)`` one per node.
    iterations: Richardson–Lucy iterations run (the early stop).
    chi2: the last χ² per signal pixel of the RL model, in noise σ² (≫ 1: PSF-model error).
    seconds: wall-clock seconds of the steps, ``{"fit": …, "deconvolve": …[, "cleanup": …]}``
      (JIT included).
    deconvolved: with a cleanup, the frame before it (``(H, W, C)``); else None.
    rl_seeing_fwhm_px: the part of the fitted seeing RL undid and the target put back where
      the optics are at their best, px (the seeing share × its FWHM for a sharpening target; 0
      for a Gaussian one); ``rl_seeing_fwhm_px_least``: the same where they are at their worst
      (:func:`seeing_shares`).
    retain: the σ of the blur RL left in the restored frame besides the seeing it kept, px
      (``deconvolve.sharpen``'s ``retain``), a float or ``(gy, gx)`` one per node.
    round_blur: ``(gy, gx)`` σ of the round blur RL left where the field widens the PSF, px
      (``deconvolve.rounding``; not put back by the target).
  """
  corrected: np.ndarray
  field: psf_fit.PSFField
  target: np.ndarray
  psfs: np.ndarray
  compensation: float | np.ndarray
  iterations: int
  chi2: float
  seconds: dict
  deconvolved: np.ndarray | None = None
  rl_seeing_fwhm_px: float = 0.0
  rl_seeing_fwhm_px_least: float = 0.0
  retain: float | np.ndarray = 0.0
  round_blur: float | np.ndarray = 0.0

  def on_axis(self) -> tuple[np.ndarray, np.ndarray, float, float]:
    """The centre node's ``(1, 1, k, k)`` PSF deconvolved, ``(k, k)`` target, compensation and
    retained blur σ (``deconvolve.sharpen``'s): what a deconvolution with one PSF uses."""
    gy, gx = self.psfs.shape[:2]
    t = np.asarray(self.target)
    node = lambda v: float(np.asarray(v)[gy // 2, gx // 2] if np.ndim(v) == 2 else v)
    return (self.psfs[gy // 2:gy // 2 + 1, gx // 2:gx // 2 + 1],
            t[gy // 2, gx // 2] if t.ndim == 4 else t, node(self.compensation),
            node(self.retain))


def harm(before: np.ndarray, after: np.ndarray, xy: np.ndarray, sharpen: bool = True
         ) -> str | None:
  """Why a deconvolution must not be applied, or None: the same stars measured on the frame
  before and after it (``star_detect.shapes``, adaptive moments: no PSF model) came out more
  elongated (median ``1 − b/a`` up by more than ``GUARD_ELLIPTICITY``), — where the target
  is to sharpen (``sharpen``) — broader (median size × ``GUARD_SIZE``), ringed (more than
  ``GUARD_HALO_SHARE`` of them with a radial minimum below ``GUARD_HALO`` σ,
  ``star_detect.ringing``) or dimmer (median aperture flux after / before, in twice their
  median size, below ``GUARD_FLUX``). It happens where the fitted model cannot describe
  the frame's stars: stars narrower than the model's diffraction pattern (optics sampled finer
  than its λ/D), defocused or seeing-blurred far beyond it, or "stars" that are a nebula's or a
  galaxy's knots.

  Args:
    before, after: ``(H, W)`` linear planes; xy: ``(n, 2)`` (x, y) px of the fit's stars.
  """
  data_b, data_a = star_detect.background(before)[0], star_detect.background(after)[0]
  size_b, ell_b = star_detect.shapes(before, xy, data=data_b)
  size_a, ell_a = star_detect.shapes(after, xy, data=data_a)
  ok = np.isfinite(size_b) & np.isfinite(size_a)
  if ok.sum() < 3:
    return None
  size = (float(np.median(size_b[ok])), float(np.median(size_a[ok])))
  ell = (float(np.median(ell_b[ok])), float(np.median(ell_a[ok])))
  if sharpen and size[1] > GUARD_SIZE * size[0]:
    return (f"deconvolving would make its stars broader (median FWHM {size[0]:.2f} → "
            f"{size[1]:.2f} px by moments): they are sharper than the model's target")
  if ell[1] > ell[0] + GUARD_ELLIPTICITY:
    return (f"deconvolving would make its stars more elongated (median 1 − b/a {ell[0]:.3f} → "
            f"{ell[1]:.3f})")
  noise = star_detect.sky_noise(before, data_b)
  halo = star_detect.ringing(after, xy[ok], noise, data=data_a)
  halo = halo[np.isfinite(halo)]
  if halo.size and np.mean(halo < GUARD_HALO) > GUARD_HALO_SHARE:
    return (f"deconvolving would dig dark halos around its stars ({np.mean(halo < GUARD_HALO):.0%} "
            f"of them below {GUARD_HALO:g} σ, the worst {halo.min():.1f} σ)")
  aperture = max(4.0, 2.0 * size[0])
  flux = [star_detect.aperture_flux(d, xy[ok], aperture) for d in (data_b, data_a)]
  ratio = flux[1] / np.where(flux[0] > 0, flux[0], np.nan)
  median = float(np.nanmedian(ratio)) if np.isfinite(ratio).any() else 1.0
  if median < GUARD_FLUX:
    return (f"deconvolving would take light out of its stars (median {median:.2f}× in a "
            f"{aperture:.0f}-px aperture)")
  return None


def unresolved(field: psf_fit.PSFField, q: float) -> str | None:
  """Why a frame must not be sharpened, known before trying, or None: most of the compact sources
  the fit measured (more than ``GUARD_NARROW`` of them) are narrower than the model's optics allow
  (``psf_fit.NARROWEST`` × λ/D = ``q`` px), so its stars are sampled finer than the model's λ/D
  and a deconvolution to its target broadens them. The fit leaves those sources out as hot pixels
  and fits the broader rest, on which :func:`harm` sees no harm: a 2MASS K mosaic (median 0.94
  px, 32 of 58 candidates narrow) came out with its stars at 1.67 px and halos of −3.6 σ."""
  total = field.narrow + len(judged_stars(field))
  if total and field.narrow > GUARD_NARROW * total:
    return (f"most of its compact sources ({field.narrow} of {total}) are narrower than "
            f"{psf_fit.NARROWEST * q:.1f} px: its stars are sampled finer than the model's "
            f"λ/D = {q:g} px (or they are hot pixels), and deconvolving would broaden them")
  return None


def refusal(before: np.ndarray, after: np.ndarray, field: psf_fit.PSFField, q: float,
            sharpen: bool = True) -> str | None:
  """The guard's verdict on a deconvolution, or None: :func:`unresolved` where the target is to
  sharpen, then :func:`harm` on :func:`judged_stars` (``before``, ``after``: ``(H, W)`` linear
  planes; ``q``: the model's λ/D, px). What ``correct_physics`` and the evaluations judge by."""
  return ((unresolved(field, q) if sharpen else None)
          or harm(before, after, judged_stars(field), sharpen=sharpen))


def not_corrected(why: str, field: psf_fit.PSFField, q: float) -> str:
  """The one-line refusal of a guard's reason ``why`` (:func:`unresolved`, :func:`harm`)."""
  return (f"not corrected: {why}; the fitted PSF model (λ/D = {q:g} px, seeing FWHM "
          f"{field.params.get('seeing_fwhm_px', 0.0):.2f} px; residual {field.rms:.1f} σ) does not "
          f"describe them")


def judged_stars(field: psf_fit.PSFField) -> np.ndarray:
  """``(m, 2)`` (x, y) of the stars :func:`harm` judges a deconvolution by: every star the fit
  found measurable, not only those it fitted (a spread subset of at most ``psf_fit.MAX_STARS``),
  so that the verdict does not depend on the fit's cap."""
  return field.stars if field.measured is None else field.measured


def seeing_shares(coeffs, sigma: float, share: float, spec: psf.PSFSpec) -> np.ndarray:
  """``(gy, gx)`` the share of the seeing RL undoes at each PSF node: ``share`` where the fitted
  optics are at their best, less where the field's aberration widens them (module docstring).

  The optics-only PSF of a node (``coeffs (gy, gx, J)``, no seeing) has the effective variance
  ``v`` px² (``deconvolve.effective_variance``: a Gaussian's σ²); what the field adds there is ``e = v − min v``,
  and the share is ``share · (σ² / (σ² + e))^FIELD_SHARE_POWER`` for the seeing's ``sigma`` px.
  """
  if sigma <= 0:
    return np.full(coeffs.shape[:2], float(share))
  v = deconvolve.effective_variance(psf_fit.node_psfs(coeffs, 0.0, spec))
  e = v - v.min()
  return share * (sigma ** 2 / (sigma ** 2 + e)) ** FIELD_SHARE_POWER


def correct_physics(image: np.ndarray, cfg, target="diffraction", grid=DEFAULT_GRID,
                    max_iter: int = deconvolve.MAX_ITER, cleanup=None, guard: bool = True,
                    seeing_share: float | None = None, **fit_kw) -> PhysicsCorrection:
  """Fits the PSF field of a frame and deconvolves it to ``target``.

  Args:
    image: ``(H, W)`` or ``(H, W, C)`` linear pixels, any absolute scale; NaN = masked.
      The field is fitted on the channel mean; every channel is deconvolved with it.
    cfg: ``config.degrade.psf`` (the optics' sampling, pupil, band, kernel, modes).
    target: ``"diffraction"``, ``"centre"`` or a Gaussian FWHM in px
      (``deconvolve.target_psf``); the first two correct the fitted optics and keep the
      frame's own seeing (the atmosphere is not an aberration; module docstring); a Gaussian
      replaces the whole fitted PSF, seeing included.
    grid: PSF nodes ``(gy, gx)``.
    max_iter: cap on the Richardson–Lucy iterations (``deconvolve.sharpen``).
    cleanup: optional ``(H, W, C) -> (H, W, C)`` run on the deconvolved frame (the learned
      cleanup of a ``configs/psf.py`` model: ``correct.Corrector.cleanup``).
    guard: refuse a deconvolution that harms the frame's stars (:func:`harm`).
    seeing_share: the share of the fitted seeing's FWHM that RL undoes and a sharpening target
      puts back where the optics are at their best (less where the field widens them:
      :func:`seeing_shares`), in [0, 1]; None: ``RL_SEEING``.
    fit_kw: passed to ``psf_fit.fit_psf_field`` (``stamp``, ``snr``, ``steps``, …).
  Raises:
    ValueError: one line, e.g. too few measurable stars, or a deconvolution that would make
      the stars broader or more elongated (the fitted model does not describe them).
  """
  share = RL_SEEING if seeing_share is None else float(seeing_share)
  if not 0.0 <= share <= 1.0:
    raise ValueError(f"seeing share {share:g} must be in [0, 1]")
  image = np.asarray(image, np.float32)
  if image.ndim == 2:
    image = image[:, :, None]
  filled, mask = correct.fill_masked(image)
  start = time.perf_counter()
  field = psf_fit.fit_psf_field(filled.mean(-1), cfg, grid, **fit_kw)
  sharpen = target in ("diffraction", "centre")
  # known from the fit alone: refused before any deconvolution (refusal() says it again after)
  why = unresolved(field, cfg.q) if guard and sharpen else None
  if why:
    raise ValueError(not_corrected(why, field, cfg.q))
  spec_modes = field.coeffs.shape[-1]
  centre = psf_fit.field_model(psf_fit.params_from_dict(field.params), jnp.zeros(2), spec_modes)
  t = deconvolve.target_psf(target, cfg, centre_coeffs=centre)
  seeing = field.params.get("seeing_fwhm_px", 0.0)
  # the optics corrected, not the air (module docstring): RL undoes the fitted optics under
  # the seeing share × the fitted seeing's FWHM, and the target puts that part back
  keep_seeing = sharpen and seeing > 0
  sigma = seeing / psf_fit.FWHM_PER_SIGMA if keep_seeing else 0.0  # the seeing's, px
  psfs, part = field.psfs, np.zeros(1)
  kept = np.zeros(1)  # variance of the seeing RL leaves in the restored frame, px² per axis
  if keep_seeing:
    spec = psf.PSFSpec.from_config(cfg)
    shares = seeing_shares(field.coeffs, sigma, share, spec)  # (gy, gx)
    part = shares * sigma
    psfs = np.asarray(psf_fit.node_psfs(field.coeffs, part, spec))
    # the target puts back at each node what RL undid there
    t = np.asarray(psf_fit.shift_psfs(jnp.broadcast_to(jnp.asarray(t), (part.size,) + t.shape),
                                      jnp.zeros((part.size, 2)), part.reshape(-1))
                   ).reshape(part.shape + t.shape)
    kept = (1 - shares ** 2) * sigma ** 2
  # RL splits a star restored to a point over pixels (``deconvolve.pixel_compensated``); a star
  # that keeps a seeing is not a point, and where the restored frame keeps less blur than
  # deconvolve.RETAIN_SIGMA, RL leaves the rest of it (a round Gaussian): the compensation for
  # the split fades with both (``deconvolve.restoration``, the training's rule too)
  per_node = lambda a: a if a.size > 1 else float(a[0])
  retain, compensation = map(per_node, deconvolve.restoration(kept))
  # where the field widens the PSF, RL leaves a round blur the target does not put back: the
  # corners come out rounder and a little wider (deconvolve.rounding)
  round_blur = deconvolve.rounding(psfs)
  fitted = time.perf_counter()
  out, iterations, chi2 = deconvolve.sharpen(filled, psfs, t, max_iter, compensation=compensation,
                                             retain=retain, round_blur=round_blur)
  done = time.perf_counter()
  seconds = {"fit": fitted - start, "deconvolve": done - fitted}
  deconvolved = None
  if cleanup is not None:
    deconvolved, out = out, np.asarray(cleanup(out), np.float32)
    seconds["cleanup"] = time.perf_counter() - done
  # the guard judges what would be written: the cleanup's output where there is one
  why = refusal(filled.mean(-1), out.mean(-1), field, cfg.q, sharpen) if guard else None
  if why:
    raise ValueError(not_corrected(why, field, cfg.q))
  if mask is not None:
    out[mask] = np.nan
  return PhysicsCorrection(out, field, t, psfs, compensation, iterations, chi2, seconds,
                           deconvolved, float(part.max() * psf_fit.FWHM_PER_SIGMA),
                           float(part.min() * psf_fit.FWHM_PER_SIGMA), retain, round_blur)


def output_paths(input_path, output=None, out_dir=None) -> dict[str, Path]:
  """``correct.output_paths`` plus the PSF field: ``<stem>_psf.fits`` (the node PSFs as a
  mosaic), ``<stem>_psf.json`` (coefficients) and ``<stem>_psf_field.png``, ``<stem>`` the
  corrected image's."""
  paths = correct.output_paths(input_path, output, out_dir)
  stem, _ = images.split_suffix(paths["corrected"])
  main = paths["corrected"]
  return {"corrected": main, "psf": main.with_name(f"{stem}_psf.fits"),
          "psf_json": main.with_name(f"{stem}_psf.json"),
          "psf_field": main.with_name(f"{stem}_psf_field.png"), "preview": paths["preview"]}


def psf_field_panels(image: np.ndarray, out: PhysicsCorrection) -> dict:
  """The picture of the field: fitted PSFs, the target, and the frame's centre and corners
  before and after (``metrics.save_panel_grid`` panels)."""
  h, w = image.shape[:2]
  z = max(8, min(96, h // 3, w // 3))
  cut = lambda a, y, x: correct._nan_to_median(a[y:y + z, x:x + z])
  gy, gx = out.field.psfs.shape[:2]
  return {f"fitted PSFs ({gy}×{gx} nodes)": (metrics.psf_mosaic(out.field.psfs[None])[0], "image"),
          "target": (out.on_axis()[1][:, :, None], "image"),
          f"centre before ({z} px)": (cut(image, (h - z) // 2, (w - z) // 2), "image"),
          "centre after": (cut(out.corrected, (h - z) // 2, (w - z) // 2), "image"),
          "top-left before": (cut(image, 0, 0), "image"),
          "top-left after": (cut(out.corrected, 0, 0), "image"),
          "bottom-right before": (cut(image, h - z, w - z), "image"),
          "bottom-right after": (cut(out.corrected, h - z, w - z), "image")}


def write_field(paths: dict, image: np.ndarray, out: PhysicsCorrection, history: str,
                protect, extra: dict | None = None) -> None:
  """Writes the fitted PSF field beside a corrected frame (atomic, never over ``protect``):
  the node PSFs as a FITS mosaic, the JSON of the field (``extra`` added) and its picture.
  ``paths`` from :func:`output_paths`."""
  images.write_image(paths["psf"], metrics.psf_mosaic(out.field.psfs[None])[0],
                     history=history + " (fitted PSF grid, nodes as tiles)", protect=protect)
  atomic.write_text_atomic(paths["psf_json"], psf_fit.field_json(out.field, {
      "rl_iterations": out.iterations, "rl_chi2": round(out.chi2, 3),
      "rl_seeing_fwhm_px": round(out.rl_seeing_fwhm_px, 3),
      "rl_seeing_fwhm_px_least": round(out.rl_seeing_fwhm_px_least, 3),
      "target_pixel_compensation": np.round(out.compensation, 3).tolist(),
      "rl_retained_sigma_px": np.round(out.retain, 3).tolist(),
      "rl_round_blur_sigma_px": np.round(out.round_blur, 3).tolist(),
      "psf_mosaic": paths["psf"].name, **(extra or {})}))
  metrics.save_panel_grid(paths["psf_field"], psf_field_panels(image, out), cols=3)


def correct_file(input_path, cfg, output=None, out_dir=None, target="diffraction",
                 grid=DEFAULT_GRID, seeing_share: float | None = None) -> dict:
  """Reads, corrects and writes one frame (atomic writes, never over the input).

  Writes ``<name>_corrected.<ext>`` (the input's format, header and HDUs kept, a HISTORY
  line added), the PSF field (:func:`output_paths`) and a preview PNG. Returns a report:
  stars used, residual, RL iterations, seconds per step and the output paths.

  Raises:
    images.ImageError: one line naming the file (unreadable, too few stars, …).
  """
  image, meta = images.read_image(input_path, allow_nan=True)
  paths = output_paths(input_path, output, out_dir)
  for p in paths.values():
    if p.resolve() == Path(input_path).resolve():
      raise images.ImageError(p, "refusing to overwrite the input file; choose another --output")
  try:
    out = correct_physics(image, cfg, target, grid, seeing_share=seeing_share)
  except ValueError as e:
    raise images.ImageError(input_path, str(e)) from None
  history = (f"flatai correct: method=physics task=psf target={target} grid={grid[0]}x{grid[1]} "
             f"stars={len(out.field.stars)} input={Path(input_path).name}")
  images.write_image(paths["corrected"], out.corrected, meta, history=history,
                     protect=[input_path])
  write_field(paths, image, out, history, [input_path], {"target": str(target)})
  correct.save_preview(paths["preview"], image, correct.Correction(out.corrected, None, None))
  return {"input": str(input_path), **report(out), "outputs": {k: str(v) for k, v in paths.items()}}


def report(out: PhysicsCorrection) -> dict:
  """The numbers ``flatai correct`` prints of an aberration correction (:func:`describe`)."""
  return {"stars": len(out.field.stars), "residual_rms_sigma": out.field.rms,
          "seeing_fwhm_px": float(out.field.params.get("seeing_fwhm_px", 0.0)),
          "rl_iterations": out.iterations,
          "seconds": {k: round(v, 2) for k, v in out.seconds.items()}}


def describe(report: dict) -> str:
  """One line of a :func:`report`: ``PSF field from 24 stars, residual 1.97 σ, seeing FWHM
  4.87 px, 200 Richardson–Lucy iterations`` (the CLI's and the GUI's)."""
  return (f"PSF field from {report['stars']} stars, residual {report['residual_rms_sigma']:.2f} σ, "
          f"seeing FWHM {report.get('seeing_fwhm_px', 0.0):.2f} px, {report['rl_iterations']} "
          f"Richardson–Lucy iterations")
