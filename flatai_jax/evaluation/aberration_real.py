"""The aberration correction on real frames, truth-free (issue 15: "works on real star fields").

No truth: each frame is scored against itself, on the same stars before and after — their size
and elongation (``physics.star_detect.shapes``: adaptive moments, no PSF model, so the measure
does not share the correction's model), aperture flux after / before, dark halos
(``stars.ringing``, noise σ) and the background RMS after / before (``sep``'s, of pixel values:
a deconvolved frame's noise is correlated, which pixel differences would not see) — per
zone (``stars.zones``: centre, corner, all). Methods: doing nothing; the physics correction and
the shipped model (fitted PSF field + Richardson–Lucy [+ cleanup]) *as they would run without
their guard* (``correct_psf.harm``), with the guard's verdict beside them, so that the table
shows what the guard prevents; and Richardson–Lucy with one PSF (the fitted on-axis one), the
classical reference. A frame whose PSF-field fit finds too few stars is a result: its reason.

**With a known aberration** (:func:`score_rendered`): the real frames have no corner aberrations
of their own, so their stars are also seen through a known one — the synthetic evaluation's field
(``star_field.TRUTH``: coma, astigmatism and field curvature growing to the corners), rendered by
the project's optics and convolved into the real frame (:func:`render_aberrations`) — and the
truth is the same real frame through the correction's diffraction target: what a perfect
correction of the added field gives, the frame's own seeing kept. Real stars, real sky, real
noise (white noise added back to the level the blur took away); a rendered aberration.
"""
from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from scipy import signal

from flatai_jax import correct_psf
from flatai_jax.evaluation import real, star_field, stars
from flatai_jax.physics import convolve, deconvolve, psf_fit, star_detect

APERTURE = 10.0  # px: flux aperture radius (background from the annulus 12–16 px)
MAX_STARS = 300  # stars measured per frame, at most (the brightest)


def score_frame(plane: np.ndarray, corrector) -> dict:
  """Every method on one ``(H, W)`` linear frame.

  Returns:
    ``stars`` measured, ``zone_stars``; ``fit`` (stars used, residual σ, RL iterations) and
    ``guard`` (``correct_psf.harm``'s reason, or None: applied); ``methods``: key → zone →
    ``size_px``, ``ellipticity`` (medians), ``flux_ratio`` (median after / before), ``ringing_sigma``
    (the lowest star's), plus ``noise_ratio``; or ``{"failed": reason}`` when the fit refuses.
  """
  plane = np.asarray(plane, np.float32)
  start = time.perf_counter()
  cfg = corrector.config.degrade.psf
  try:
    phys = correct_psf.correct_physics(plane, cfg, cleanup=corrector.cleanup, guard=False)
  except ValueError as e:
    return {"failed": str(e)}
  on_axis, target, compensation, retain = phys.on_axis()  # RL's, on-axis
  one_psf = deconvolve.sharpen(plane[..., None], on_axis, target, compensation=compensation,
                               retain=retain)[0][..., 0]
  outputs = {"uncorrected": plane, "physics": phys.deconvolved[..., 0],
             "model": phys.corrected[..., 0], "rl_one_psf": one_psf}
  noise = star_detect.sky_noise(plane)
  xy = star_detect.find_stars(plane, noise, snr=10.0, max_stars=MAX_STARS,
                              box=2 * star_detect.SHAPE_RADIUS + 1, compact=False)
  h, w = plane.shape
  edge = star_detect.SHAPE_RADIUS + 4
  xy = xy[np.all((xy >= edge) & (xy < np.array([w, h]) - edge), axis=1)]
  masks = stars.zones(xy, plane.shape)
  size0, _ = star_detect.shapes(plane, xy)
  xy, masks = xy[size0 >= 0.5], {k: v[size0 >= 0.5] for k, v in masks.items()}  # hot pixels
  flux0 = _flux(plane, xy)
  rms = star_detect.background(plane)[1]
  methods = {}
  for key, out in outputs.items():
    size, ell = star_detect.shapes(out, xy)
    ratio = _flux(out, xy) / np.where(flux0 > 0, flux0, np.nan)
    ring = stars.ringing(out, xy, noise)
    med = lambda v, z: float(np.nanmedian(v[z])) if np.isfinite(v[z]).any() else float("nan")
    methods[key] = {name: {"size_px": med(size, z), "ellipticity": med(ell, z),
                           "flux_ratio": med(ratio, z),
                           "ringing_sigma": float(np.nanmin(ring[z])) if np.isfinite(ring[z]).any()
                           else float("nan")} for name, z in masks.items()}
    methods[key]["noise_ratio"] = star_detect.background(out)[1] / rms
  return {"stars": int(len(xy)), "zone_stars": {k: int(v.sum()) for k, v in masks.items()},
          "fit": {"stars_used": int(len(phys.field.stars)),
                  "residual_rms_sigma": float(phys.field.rms),
                  "rl_iterations": int(phys.iterations)},
          "guard": correct_psf.refusal(plane, phys.corrected[..., 0], phys.field, cfg.q),
          "methods": methods, "seconds": round(time.perf_counter() - start, 1)}


RENDERED_GRID = (11, 11)  # nodes of the rendered aberration's PSF field
RENDERED_NOISE_SEED = 0  # the white noise added back after the blur
RENDERED_SNR = 50.0  # stars measured: peak ≥ this × σ before the blur (the corners' blur spreads
#                      a star over ~10× the pixels; fainter ones sink into the noise there)


def render_aberrations(plane: np.ndarray, cfg, params=star_field.TRUTH, grid=RENDERED_GRID,
                       seed: int = RENDERED_NOISE_SEED) -> dict:
  """A real frame seen through a known field-dependent aberration, and its truth.

  Args:
    plane: ``(H, W)`` linear real frame (its own PSF: the seeing and its optics).
    cfg: ``config.degrade.psf`` of the correction's optics (the aberration is rendered with
      them, and the truth is taken through their diffraction target).
    params: the aberration field (``psf_fit.FieldParams``; default the synthetic evaluation's).
    grid: PSF nodes ``(gy, gx)`` of the rendered field.
    seed: of the white noise added back.
  Returns:
    ``observed`` ``(H, W) float64``: the frame convolved with the field (reflect-padded: no
    light lost at the border) plus white noise of variance ``σ² (1 − Σ p²)``, the part of the
    frame's pixel noise σ (``star_detect.sky_noise``) the blur averaged away (``Σ p²`` of the
    local PSF, bilinear between the nodes); ``ideal`` ``(H, W)``: the frame through the
    diffraction target ``target`` (``deconvolve.target_psf``); ``psfs`` ``(gy, gx, k, k)`` the
    true field.
  """
  plane = np.asarray(plane, np.float64)
  hw = plane.shape
  psfs = star_field.node_psfs(hw, grid, params, cfg)
  m = psfs.shape[-1] // 2
  padded = np.pad(plane, m, mode="reflect").astype(np.float32)[..., None]
  blur = jax.jit(convolve.spatially_varying_convolve, static_argnums=2)
  blurred = np.asarray(blur(jnp.asarray(padded), jnp.asarray(psfs), m), np.float64)
  blurred = blurred[m:-m, m:-m, 0]
  keep = (psfs.astype(np.float64) ** 2).sum(axis=(-2, -1))  # white noise's variance kept
  wy = convolve.tent_weights(hw[0], convolve.node_positions(hw[0], grid[0]))
  wx = convolve.tent_weights(hw[1], convolve.node_positions(hw[1], grid[1]))
  sigma = star_detect.sky_noise(plane) * np.sqrt(np.clip(1.0 - wy.T @ keep @ wx, 0.0, 1.0))
  observed = blurred + sigma * np.random.default_rng(seed).normal(size=hw)
  target = deconvolve.target_psf("diffraction", cfg)
  t = target.shape[0] // 2
  ideal = signal.fftconvolve(np.pad(plane, t, mode="reflect"), target.astype(np.float64),
                             mode="valid")
  return {"observed": observed, "ideal": ideal, "psfs": psfs, "target": target}


def score_rendered(plane: np.ndarray, corrector, params=star_field.TRUTH,
                   keep_images: bool = False) -> dict:
  """Every method on one real frame seen through a known aberration (:func:`render_aberrations`),
  against its truth, per zone (``stars.zone_metrics``: Moffat FWHM, ellipticity, aperture flux
  corrected / true, ringing) and the corner / centre FWHM ratio; methods as :func:`score_frame`'s
  plus Richardson–Lucy with the TRUE field (the added aberration, to the same target: an upper
  reference) and ``ideal``.

  Returns:
    ``stars``, ``zone_stars``, ``fit``, ``guard``, ``methods``: key → zone metrics +
    ``fwhm_ratio``, ``noise_ratio`` (background RMS after / before); with ``keep_images`` also
    ``images`` (key → ``(H, W)``, ``original`` added) and ``xy``, ``corner`` (the stars, and which
    are in the corner zone); or ``{"failed": reason}``.
  """
  cfg = corrector.config.degrade.psf
  start = time.perf_counter()
  case = render_aberrations(plane, cfg, params)
  observed, ideal = case["observed"].astype(np.float32), case["ideal"]
  try:
    phys = correct_psf.correct_physics(observed, cfg, cleanup=corrector.cleanup, guard=False)
  except ValueError as e:
    return {"failed": str(e)}
  rl = lambda psfs, target, c=deconvolve.PIXEL_COMPENSATION, r=0.0, b=0.0: deconvolve.sharpen(
      observed[..., None], psfs, target, compensation=c, retain=r, round_blur=b)[0][..., 0]
  outputs = {"uncorrected": observed, "physics": phys.deconvolved[..., 0],
             "model": phys.corrected[..., 0], "rl_one_psf": rl(*phys.on_axis()),
             # the true field, its corners rounded as the correction rounds a field's
             "rl_true_field": rl(case["psfs"], case["target"],
                                 b=deconvolve.rounding(case["psfs"])), "ideal": ideal}
  noise = star_detect.sky_noise(plane)
  border = max(stars.MEASURE_BOX // 2, 12) + 4
  xy = star_detect.find_stars(plane, noise, snr=RENDERED_SNR, max_stars=MAX_STARS,
                              box=stars.MEASURE_BOX, compact=False)
  xy = xy[np.all((xy >= border) & (xy < np.array(plane.shape[::-1]) - border), axis=1)]
  size0, _ = star_detect.shapes(plane, xy)
  xy = xy[size0 >= psf_fit.NARROWEST * cfg.q]  # hot pixels, cosmic rays: the fit's rule
  masks = stars.zones(xy, plane.shape)
  methods = {}
  rms = star_detect.background(observed)[1]
  for key, out in outputs.items():
    z = stars.zone_metrics(out, xy, ideal, masks, noise)
    methods[key] = {**z, "fwhm_ratio": z["corner"]["fwhm_px"] / z["centre"]["fwhm_px"],
                    "noise_ratio": star_detect.background(out)[1] / rms}
  return {"stars": int(len(xy)), "zone_stars": {k: int(v.sum()) for k, v in masks.items()},
          "fit": {"stars_used": int(len(phys.field.stars)),
                  "residual_rms_sigma": float(phys.field.rms),
                  "seeing_fwhm_px": float(phys.field.params.get("seeing_fwhm_px", 0.0)),
                  "rl_iterations": int(phys.iterations)},
          "guard": correct_psf.refusal(observed, phys.corrected[..., 0], phys.field, cfg.q),
          "methods": methods, "seconds": round(time.perf_counter() - start, 1),
          **({"images": {"original": plane, **outputs}, "xy": xy, "corner": masks["corner"]}
             if keep_images else {})}


def _flux(plane: np.ndarray, xy: np.ndarray) -> np.ndarray:
  """Aperture fluxes (``APERTURE`` px, local annulus background) of the stars ``xy``."""
  return stars.aperture_flux(star_detect.background(plane)[0], xy, APERTURE)


def frames(root=real.DEFAULT_DIR) -> list[tuple[str, str]]:
  """``(name, content)`` of the evaluation set's mono light and raw frames (the Bayer mosaics,
  whose stars are checkered by the filter pattern, are left out)."""
  files = real.load_manifest(root)["files"]
  bayer = [Path(f["name"]).stem for f in files if "Bayer" in f.get("notes", "")]
  mosaic = lambda f: any(b in f.get("notes", "") for b in ["Bayer", *bayer])  # "As <a Bayer one>"
  return [(f["name"], f["content"]) for f in files
          if f["kind"] in ("light", "raw") and not mosaic(f)]


METHODS = {"uncorrected": "uncorrected", "physics": "physics (fitted field + RL)",
           "model": "shipped model (+ cleanup)", "rl_one_psf": "RL, one PSF (fitted on-axis)"}


def _tables(results: dict, head, rows, refused_title: str) -> str:
  """The layout of :func:`markdown` and :func:`markdown_rendered`: per scored frame the lines of
  ``head(name, result)`` (heading, summary, table header) and ``rows(result)``, then one line per
  frame the fit refused under ``refused_title``."""
  lines, refused = [], []
  for name, r in results.items():
    if "failed" in r:
      refused.append(f"- {name}: {r['failed']}")
      continue
    lines += [*head(name, r), *rows(r), ""]
  if refused:
    lines += [refused_title, "", *refused]
  return "\n".join(lines)


def _fmt(v, digits: int, missing: str = "") -> str:
  return missing if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def markdown(results: dict) -> str:
  """A table per scored frame (a row per method), then one line per frame the fit refused."""
  f = _fmt

  def head(name, r):
    verdict = ("**applied** (the guard finds no harm)" if r["guard"] is None
               else f"**not applied**: {r['guard']}")
    return [f"#### {name}", "",
            f"{r['stars']} stars measured ({r['zone_stars']['centre']} centre, "
            f"{r['zone_stars']['corner']} corner); fit on {r['fit']['stars_used']} stars, "
            f"residual {r['fit']['residual_rms_sigma']:.1f} σ; {verdict}", "",
            "| method | size centre px | size corner px | ellipticity all | flux after/before "
            "| ringing σ | noise after/before |", "|---|---|---|---|---|---|---|"]

  def rows(r):
    return [f"| {label} | {f(m['centre']['size_px'], 2)} | {f(m['corner']['size_px'], 2)} "
            f"| {f(m['all']['ellipticity'], 3)} | {f(m['all']['flux_ratio'], 3)} | "
            f"{f(m['all']['ringing_sigma'], 1)} | {f(m['noise_ratio'], 2)} |"
            for key, label in METHODS.items() for m in [r["methods"][key]]]

  return _tables(results, head, rows, "Frames the PSF-field fit refuses (the model's message):")


RENDERED_METHODS = {**METHODS,
                    "rl_true_field": "RL, TRUE added field (reference)",
                    "ideal": "truth (the frame through the target)"}


def markdown_rendered(results: dict) -> str:
  """:func:`markdown` for :func:`score_rendered`'s results: a table per frame (a row per method:
  FWHM centre / corner and their ratio, ellipticity centre / corner, flux corrected / true centre
  / corner, ringing, noise after / before), then the frames the fit refuses."""
  f = lambda v, d: _fmt(v, d, "–")

  def head(name, r):
    verdict = ("applied (the guard finds no harm)" if r["guard"] is None
               else f"not applied: {r['guard']}")
    z = r["zone_stars"]
    return [f"#### {name} × the rendered aberration", "",
            f"{r['stars']} stars measured ({z['centre']} centre, {z['corner']} corner); fit on "
            f"{r['fit']['stars_used']} stars, residual {r['fit']['residual_rms_sigma']:.1f} σ, "
            f"seeing FWHM {r['fit']['seeing_fwhm_px']:.2f} px; guard: {verdict}", "",
            "| method | FWHM centre / corner px | corner/centre | ellipticity centre / corner "
            "| flux centre / corner | ringing σ | noise after/before |",
            "|---|---|---|---|---|---|---|"]

  def rows(r):
    return [f"| {label} | {f(c['fwhm_px'], 2)} / {f(k['fwhm_px'], 2)} | "
            f"{f(m['fwhm_ratio'], 2)} | {f(c['ellipticity'], 3)} / {f(k['ellipticity'], 3)} | "
            f"{f(c['flux_ratio'], 3)} / {f(k['flux_ratio'], 3)} | "
            f"{f(m['all']['ringing_sigma'], 1)} | {f(m['noise_ratio'], 2)} |"
            for key, label in RENDERED_METHODS.items()
            for m in [r["methods"][key]] for c, k in [(m["centre"], m["corner"])]]

  return _tables(results, head, rows, "Frames the PSF-field fit refuses once the aberration is "
                 "added (the model's message):")


def evaluate(corrector, root=real.DEFAULT_DIR, names=None, progress=print,
             rendered: bool = False) -> dict:
  """:func:`score_frame` (``rendered``: :func:`score_rendered`) on every frame of :func:`frames`
  (or those named)."""
  results = {}
  score = score_rendered if rendered else score_frame
  for name, content in frames(root):
    if names and Path(name).stem not in names and name not in names:
      continue
    plane = real.read_plane(Path(root) / name)
    plane = plane[..., 0] if plane.ndim == 3 else plane
    results[name] = {"content": content, **score(plane, corrector)}
    if progress:
      r = results[name]
      progress(f"  {name}: " + (r["failed"] if "failed" in r else
                                f"{r['stars']} stars, guard: {r['guard'] or 'applied'}"))
  return results
