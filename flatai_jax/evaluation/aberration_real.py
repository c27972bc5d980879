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
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from flatai_jax import correct_psf
from flatai_jax.evaluation import real, stars
from flatai_jax.physics import deconvolve, star_detect

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
  on_axis = phys.field.psfs[phys.field.psfs.shape[0] // 2, phys.field.psfs.shape[1] // 2]
  one_psf = deconvolve.sharpen(plane[..., None], on_axis[None, None], phys.target)[0][..., 0]
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
    methods[key]["noise_ratio"] = star_detect.background(out)[1] / star_detect.background(plane)[1]
  return {"stars": int(len(xy)), "zone_stars": {k: int(v.sum()) for k, v in masks.items()},
          "fit": {"stars_used": int(len(phys.field.stars)),
                  "residual_rms_sigma": float(phys.field.rms),
                  "rl_iterations": int(phys.iterations)},
          "guard": correct_psf.harm(plane, phys.deconvolved[..., 0], phys.field.stars),
          "methods": methods, "seconds": round(time.perf_counter() - start, 1)}


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


def markdown(results: dict) -> str:
  """A table per scored frame (a row per method), then one line per frame the fit refused."""
  f = lambda v, d: "" if v is None or not np.isfinite(v) else f"{v:.{d}f}"
  lines, refused = [], []
  for name, r in results.items():
    if "failed" in r:
      refused.append(f"- {name}: {r['failed']}")
      continue
    verdict = ("**applied** (the guard finds no harm)" if r["guard"] is None
               else f"**not applied**: {r['guard']}")
    lines += [f"#### {name}", "",
              f"{r['stars']} stars measured ({r['zone_stars']['centre']} centre, "
              f"{r['zone_stars']['corner']} corner); fit on {r['fit']['stars_used']} stars, "
              f"residual {r['fit']['residual_rms_sigma']:.1f} σ; {verdict}", "",
              "| method | size centre px | size corner px | ellipticity all | flux after/before "
              "| ringing σ | noise after/before |", "|---|---|---|---|---|---|---|"]
    for key, label in METHODS.items():
      m = r["methods"][key]
      lines.append(f"| {label} | {f(m['centre']['size_px'], 2)} | {f(m['corner']['size_px'], 2)} "
                   f"| {f(m['all']['ellipticity'], 3)} | {f(m['all']['flux_ratio'], 3)} | "
                   f"{f(m['all']['ringing_sigma'], 1)} | {f(m['noise_ratio'], 2)} |")
    lines.append("")
  if refused:
    lines += ["Frames the PSF-field fit refuses (the model's message):", "", *refused]
  return "\n".join(lines)


def evaluate(corrector, root=real.DEFAULT_DIR, names=None, progress=print) -> dict:
  """:func:`score_frame` on every frame of :func:`frames` (or those named)."""
  results = {}
  for name, content in frames(root):
    if names and Path(name).stem not in names and name not in names:
      continue
    plane = real.read_plane(Path(root) / name)
    plane = plane[..., 0] if plane.ndim == 3 else plane
    results[name] = {"content": content, **score_frame(plane, corrector)}
    if progress:
      r = results[name]
      progress(f"  {name}: " + (r["failed"] if "failed" in r else
                                f"{r['stars']} stars, guard: {r['guard'] or 'applied'}"))
  return results
