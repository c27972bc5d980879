"""Issue 15's aberration evaluation (``flatai evaluate --task=psf``, ``benchmarks/psf_field.py``):
every correction method scored on the synthetic star field with a known field-dependent PSF
(``evaluation.star_field``), per zone, in one run.

Cases (:data:`CASES`): the field's PSFs made by the project's optics, and by an independent optics
code (``evaluation.hcipy_optics``, the same Zernike coefficients; skipped with a one-line reason
when hcipy is not installed), each at two strengths — ``star_field.TRUTH`` (corners at ~3× the
centre's FWHM) and ``star_field.STRONG`` (the field terms × 1.5: ~3.8×; issue 15 asks for
3–6×). Methods (:data:`METHODS`), all to the same diffraction-limited target: uncorrected; the
physics correction (``correct_psf.correct_physics``: PSF field fitted to the frame's stars,
spatially varying Richardson–Lucy); Wiener and Richardson–Lucy with one PSF, the
fitted on-axis one, for the whole frame; and, as an upper reference, Richardson–Lucy and Wiener
with the TRUE varying PSF field (the true PSFs at the same ``GRID`` nodes); the truth through the
target PSF (``ideal``) last.

Metrics (``stars.zone_metrics`` on the stars at least ``BORDER`` px inside the frame, zones
``stars.zones``: centre < 0.3, corner > 0.7 of the field radius): median FWHM (px), corner/centre
FWHM ratio, median ellipticity, median aperture flux ratio corrected / true, ringing (the lowest
star's minimum of the radial profile, noise σ); noise gain (``quality.noise_gain``: each method
run again on the frame plus a second, independent noise draw, σ of the difference of the outputs /
of the inputs) over the inner frame (``INNER_MARGIN`` px from the border, stars included) and its
empty sky (``quality.empty_sky``: the noise-free stars through the aberrated field and through the
target both below 0.5 σ). The physics method's second run reuses the field fitted on the first.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from flatai_jax import correct_psf
from flatai_jax.evaluation import hcipy_optics, quality, star_field, stars
from flatai_jax.evaluation.report import clean_json
from flatai_jax.io.atomic import write_text_atomic
from flatai_jax.physics import deconvolve, psf_fit

GRID = correct_psf.DEFAULT_GRID  # PSF nodes of the fitted and of the true field
WIENER_LAM = 1e-4  # Tikhonov λ of the Wiener references, relative to |P(0)|² = 1
INNER_MARGIN = 32  # px: the outer ~K/2 px exchange light with the reflected margin
BORDER = 18  # px: stars measured at least this far inside the frame (25-px box, 12-px profile)
SECOND_NOISE_SEED = 99  # the noise draw of the noise-gain run
METHODS = {  # key → row label; the order of the table
    "uncorrected": "uncorrected",
    "physics": "physics: fitted field + RL (`--method=physics`)",
    "model": "shipped model: physics + learned cleanup (`--task=psf`)",
    "wiener_one_psf": "Wiener, one PSF (fitted on-axis)",
    "rl_one_psf": "Richardson–Lucy, one PSF (fitted on-axis)",
    "rl_true_field": "Richardson–Lucy, TRUE field (reference)",
    "wiener_true_field": "Wiener, TRUE field (reference)",
    "ideal": "ideal (the stars through the target PSF)",
}


class Case(NamedTuple):
  """One star field of the evaluation: its table heading, the optics code that renders its
  PSFs (``"flatai"`` the project's, ``"hcipy"`` the independent one) and its true field."""
  description: str
  optics: str
  params: psf_fit.FieldParams


_OURS = "PSFs by the project's optics (physics/psf.py)"
_HCIPY = "PSFs by hcipy (independent optics code), same Zernike coefficients"
_STRONG = "; aberrations × 1.5 (corners at ~3.8× the centre's FWHM)"
CASES = {"flatai": Case(_OURS, "flatai", star_field.TRUTH),
         "hcipy": Case(_HCIPY, "hcipy", star_field.TRUTH),
         "flatai_strong": Case(_OURS + _STRONG, "flatai", star_field.STRONG),
         "hcipy_strong": Case(_HCIPY + _STRONG, "hcipy", star_field.STRONG)}


def _methods(phys: correct_psf.PhysicsCorrection, true_psfs: np.ndarray, cleanup=None) -> dict:
  """Key → the method as a function ``(H, W) -> (H, W)`` of an observed frame (``ideal``
  excluded); ``phys`` gives the fitted field and the target, ``true_psfs`` ``(gy, gx, k, k)``;
  ``cleanup`` (``correct.Corrector.cleanup``) adds ``model``."""
  on_axis, target, compensation, retain = phys.on_axis()  # what RL deconvolved, on-axis
  one_wiener, _ = deconvolve.wiener_kernels(on_axis, target, lam=WIENER_LAM)
  true_wiener, _ = deconvolve.wiener_kernels(true_psfs, target, lam=WIENER_LAM)
  rl = lambda psfs, t, c, r, b=0.0: lambda im: deconvolve.sharpen(
      im[..., None], psfs, t, compensation=c, retain=r, round_blur=b)[0][..., 0]
  wiener = lambda k: lambda im: deconvolve.deconvolve(im[..., None], k)[..., 0]
  methods = {"uncorrected": lambda im: im,
             "physics": rl(phys.psfs, phys.target, phys.compensation, phys.retain,
                           phys.round_blur)}
  if cleanup is not None:
    methods["model"] = lambda im: cleanup(methods["physics"](im)[..., None])[..., 0]
  return {**methods, "wiener_one_psf": wiener(one_wiener),
          "rl_one_psf": rl(on_axis, target, compensation, retain),
          # the true field through RL as the physics row runs it on-axis (its target, its
          # pixel compensation and retained blur at the centre), its corners rounded by the
          # same rule (deconvolve.rounding)
          "rl_true_field": rl(true_psfs, target, compensation, retain,
                              deconvolve.rounding(true_psfs)),
          "wiener_true_field": wiener(true_wiener)}


def measured_stars(field: star_field.StarField) -> tuple[np.ndarray, dict]:
  """The stars the metrics are taken on: ``(n, 2)`` (x, y) of those at least ``BORDER`` px
  inside the frame, and their zones (``stars.zones``: name → ``(n,)`` bool)."""
  hw = field.observed.shape
  inside = np.all((field.xy > BORDER - 1) & (field.xy < np.asarray(hw[::-1]) - BORDER), axis=1)
  return field.xy[inside], stars.zones(field.xy[inside], hw)


def score_case(field: star_field.StarField, cfg, renderer=None, grid=GRID, cleanup=None,
               params: psf_fit.FieldParams = star_field.TRUTH) -> dict:
  """Every method of :data:`METHODS` on one star field.

  Args:
    field: the frame and its truth (``star_field.make``).
    cfg: ``config.degrade.psf`` of the frame's optics (the fit's and the target's).
    renderer: the ``star_field.Renderer`` that made ``field`` (None: the project's); it makes
      the true node PSFs of the references.
    grid: PSF nodes ``(gy, gx)`` of the fitted and of the true field.
    cleanup: the learned cleanup of an aberration model (``correct.Corrector.cleanup``), or
      None (no ``model`` row).
    params: the true PSF field that made ``field`` (the references' node PSFs).
  Returns:
    ``methods``: key → ``label``, ``zones`` (``stars.zone_metrics``), ``fwhm_ratio`` (corner /
    centre median FWHM), ``noise_gain_inner``, ``noise_gain_sky`` (None for ``ideal``);
    ``physics_fit``: stars used, residual (σ), RL iterations, seconds; ``stars``, zone counts,
    ``empty_sky_px``.
  Raises:
    ValueError: one line when the PSF-field fit finds too few stars.
  """
  observed, hw = field.observed, field.observed.shape
  xy, masks = measured_stars(field)
  inner = np.zeros(hw, bool)
  inner[INNER_MARGIN:-INNER_MARGIN, INNER_MARGIN:-INNER_MARGIN] = True
  sky = inner & quality.empty_sky([field.light, field.ideal - star_field.SKY], star_field.NOISE)
  second = observed + np.random.default_rng(SECOND_NOISE_SEED).normal(0.0, star_field.NOISE, hw)
  phys = correct_psf.correct_physics(observed, cfg, grid=grid)
  true_psfs = star_field.node_psfs(hw, grid, params, cfg, renderer)
  outputs = {}
  for key, fn in _methods(phys, true_psfs, cleanup).items():
    first = phys.corrected[..., 0] if key == "physics" else (
        cleanup(phys.corrected)[..., 0] if key == "model" else fn(observed))
    outputs[key] = (first, fn(second))
  outputs["ideal"] = (field.ideal, None)
  methods = {}
  for key, (out, again) in outputs.items():
    z = stars.zone_metrics(out, xy, field.ideal, masks, star_field.NOISE)
    gain = lambda m: None if again is None else quality.noise_gain(out, again, observed, second, m)
    methods[key] = {"label": METHODS[key], "zones": z,
                    "fwhm_ratio": z["corner"]["fwhm_px"] / z["centre"]["fwhm_px"],
                    "noise_gain_inner": gain(inner), "noise_gain_sky": gain(sky)}
  return {"methods": methods,
          "physics_fit": {"stars_used": int(len(phys.field.stars)),
                          "residual_rms_sigma": float(phys.field.rms),
                          "rl_iterations": int(phys.iterations),
                          "seconds": {k: round(v, 1) for k, v in phys.seconds.items()}},
          "stars": int(len(xy)), "zone_stars": {k: int(v.sum()) for k, v in masks.items()},
          "empty_sky_px": int(sky.sum()), "inner_px": int(inner.sum())}


def evaluate(size: int = 256, seed: int = 0, cases=tuple(CASES), corrector=None,
             progress=print) -> dict:
  """The aberration evaluation: each case of :data:`CASES` on a ``size²`` star field.

  ``corrector``: an aberration model (``correct.load(task="psf")``) scored as ``model``;
  ``progress``: called with a line as each case starts (None: silent).

  Returns:
    ``size``, ``seed``, ``grid``, ``model``, ``cases``: name → :func:`score_case`'s dict plus
    ``description`` and ``seconds``; or ``{"description", "skipped": reason}`` (hcipy not
    installed), ``{"description", "failed": reason}`` (the PSF-field fit found too few stars).
  Raises:
    ValueError: one line (a frame too small, an unknown case).
  """
  unknown = set(cases) - set(CASES)
  if unknown:
    raise ValueError(f"unknown case(s) {sorted(unknown)}; known: {list(CASES)}")
  cfg = star_field.optics_cfg()
  report = {"size": size, "seed": seed, "grid": list(GRID), "cases": {},
            "model": None if corrector is None else f"{corrector.checkpoint} step {corrector.step}"}
  cleanup = None if corrector is None else corrector.cleanup
  for i, name in enumerate(cases):
    case = CASES[name]
    entry = {"description": case.description}
    hcipy = case.optics == "hcipy"
    reason = hcipy_optics.missing() if hcipy else None
    if reason:
      report["cases"][name] = {**entry, "skipped": reason}
      continue
    renderer = hcipy_optics.renderer(cfg) if hcipy else None
    if progress:
      progress(f"  aberration case {i + 1}/{len(cases)}: {name}")
    start = time.perf_counter()
    field = star_field.make(size, seed, case.params, cfg=cfg, renderer=renderer)
    try:
      entry.update(score_case(field, cfg, renderer, cleanup=cleanup, params=case.params))
    except ValueError as e:  # the fit found too few stars on this case's frame: a result
      report["cases"][name] = {**entry, "failed": str(e)}
      continue
    entry["seconds"] = round(time.perf_counter() - start, 1)
    report["cases"][name] = entry
  return report


def _f(v, digits: int) -> str:
  """A table cell: ``v`` to ``digits`` decimals, blank for None/NaN."""
  return "" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def markdown(report: dict) -> str:
  """One table per case: a row per method, the columns of issue 15."""
  lines = []
  for name, case in report["cases"].items():
    lines.append(f"### {name}: {case['description']}")
    if "skipped" in case or "failed" in case:
      lines += [f"{'skipped' if 'skipped' in case else 'failed'}: "
                f"{case.get('skipped') or case['failed']}", ""]
      continue
    fit = case["physics_fit"]
    lines += [f"{report['size']}² px, {case['stars']} stars measured ({case['zone_stars']['centre']}"
              f" centre, {case['zone_stars']['corner']} corner); physics fit on "
              f"{fit['stars_used']} stars, residual {fit['residual_rms_sigma']:.2f} σ, "
              f"{fit['rl_iterations']} RL iterations; empty sky {case['empty_sky_px']} px of the "
              f"inner {case['inner_px']}; {case['seconds']:.0f} s", "",
              "| method | FWHM centre px | FWHM corner px | corner/centre | ellipticity centre "
              "| ellipticity corner | flux ratio centre | flux ratio corner | ringing σ "
              "| noise gain, inner | noise gain, empty sky |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in case["methods"].values():
      c, k, a = m["zones"]["centre"], m["zones"]["corner"], m["zones"]["all"]
      lines.append(f"| {m['label']} | {_f(c['fwhm_px'], 2)} | {_f(k['fwhm_px'], 2)} | "
                   f"{_f(m['fwhm_ratio'], 2)} | {_f(c['ellipticity'], 3)} | "
                   f"{_f(k['ellipticity'], 3)} | {_f(c['flux_ratio'], 3)} | "
                   f"{_f(k['flux_ratio'], 3)} | {_f(a['ringing_sigma'], 1)} | "
                   f"{_f(m['noise_gain_inner'], 2)} | {_f(m['noise_gain_sky'], 2)} |")
    lines.append("")
  return "\n".join(lines)


def write(report: dict, output_dir) -> dict[str, Path]:
  """Writes ``psf_eval.json`` (NaN → null) and ``psf_eval.md`` into ``output_dir`` (atomic)."""
  out = Path(output_dir)
  out.mkdir(parents=True, exist_ok=True)
  return {"json": write_text_atomic(out / "psf_eval.json",
                                    json.dumps(clean_json(report), indent=1)),
          "markdown": write_text_atomic(out / "psf_eval.md", markdown(report))}
