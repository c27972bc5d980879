"""The full-frame report: the model's correction beside doing nothing and the classical baselines.

:func:`evaluate` (= ``flatai evaluate`` = ``flatai_jax.evaluate``) restores a
checkpoint's parameters, scores its held-out crops (``crops``), draws held-out
full sensor frames, corrects them exactly as ``flatai correct`` does, runs the
``baselines`` on the same frames, scores everything with ``quality`` and
``stars`` and writes the report with ``report``.
"""
from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np

from flatai_jax import checkpointing, rng, sharding
from flatai_jax.data import synthetic
from flatai_jax.evaluation.crops import (
  eval_key,
  eval_set_checksum,
  evaluate_params,
  save_metric_chart,
)
from flatai_jax.io.atomic import write_text_atomic
from flatai_jax.models import abstract_params


def restore_params(workdir, step=None, mesh=None, config=None):
  """``(config, graphdef, params, step)`` of a checkpoint (training or inference), parameters
  only (no optimizer is built), replicated on ``mesh`` when given; ``config``: the checkpoint's
  config when the caller has read it already."""
  config = config or checkpointing.load_config(workdir, step)
  graphdef, abstract = abstract_params(config)
  if mesh is not None:
    rep = sharding.replicated(mesh)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep),
                            abstract)
  params, step = checkpointing.restore_params(workdir, abstract, step)
  return config, graphdef, params, step


# --- Full-frame report: the model beside classical baselines -----------------

FRAME_KEYS = ("observed", "clean", "F", "G", "dust")  # what a report scores (and checksums)


def make_eval_frames(config, num_frames: int | None = None) -> dict[str, np.ndarray]:
  """Held-out full sensor frames drawn from ``config.eval.seed`` by the one full-frame generator
  (``data.synthetic.make_full_frames``, as ``flatai synth --full_frame``).

  Returns:
    dict of ``(N, H, W, C) float32`` linear (1.0 = saturation), ``(H, W)`` =
    ``config.data.sensor_hw``: ``observed``, ``clean``, ``F``, ``G`` and
    ``dust`` (the true dust shadows alone; 1 where there is none).
  """
  n = int(num_frames if num_frames is not None else config.eval.num_frames)
  frames = synthetic.make_full_frames(jax.random.fold_in(eval_key(config), rng.EVAL_FRAMES),
                                      config, n)
  return {k: frames[k] for k in FRAME_KEYS}


def default_lpips():
  """LPIPS scorer ``(image, reference) -> float`` on linear ``(H, W, C)`` frames, or None when
  ``flatai_jax.losses.lpips`` or its weights are not available (the report then shows null)."""
  try:
    from flatai_jax.losses import lpips
    return lpips.frame_scorer()
  except (ImportError, AttributeError, FileNotFoundError, OSError):
    return None


def _mean_or_none(values):
  v = [x for x in values if x is not None and np.isfinite(x)]
  return float(np.mean(v)) if v else None


def score_frames(frames: dict, methods: dict, config, lpips=None) -> dict:
  """Scores every method on every frame.

  Args:
    frames: from :func:`make_eval_frames`.
    methods: name → ``fn(observed (H, W, C)) -> {corrected, F, G}`` (F/G may be None).
    config: full config (saturation, task).
    lpips: optional scorer (see :func:`default_lpips`).
  Returns:
    ``{"methods": {name: {metric: float | None}}, "reference": {star metrics of the truth}}``;
    metrics are described in ``METRICS``. Each output is affinely aligned to the
    truth (``quality.affine_align``) and saturated cores are skipped.
  """
  from flatai_jax.evaluation import quality, stars
  sat = float(config.degrade.saturation)
  psf = bool(config.degrade.apply_psf)
  per = {name: {"rows": [], "dust": [], "stars": []} for name in methods}
  ref_stars, radii = [], []
  for i in range(frames["observed"].shape[0]):
    fr = {k: v[i] for k, v in frames.items()}
    valid = quality.valid_mask(fr["observed"], sat)
    # blur moves star flux by up to a kernel radius: dust dips are measured away from stars
    dust_valid = valid & quality.away_from_sources(
        fr["clean"], config.degrade.psf.kernel_size // 2 if psf else 2)
    peak = quality.data_range(fr["clean"], valid)  # SSIM's L
    sky = float(np.median(fr["clean"]))
    xy = None
    if psf:
      clean_plane = fr["clean"].mean(-1)
      xy = stars.find_stars(clean_plane, quality.noise_sigma(fr["observed"].mean(-1)),
                            valid.all(-1), max_stars=int(config.eval.max_stars))
      ref_stars.append(stars.measure(clean_plane, xy))
      radii.append(stars.field_radius_px(xy, clean_plane.shape))
    for name, fn in methods.items():
      out = fn(fr["observed"])
      corr = quality.affine_align(out["corrected"], fr["clean"], valid)
      row = {"psnr": quality.psnr(corr, fr["clean"], valid),
             "ssim": quality.ssim(corr, fr["clean"], peak, valid),
             "lpips": None if lpips is None else float(lpips(corr, fr["clean"])),
             "f_rms_pct": None if out.get("F") is None else quality.f_rms_pct(out["F"], fr["F"], valid),
             "g_rms_pct": None if out.get("G") is None else
             quality.g_rms_pct(out["G"], fr["G"], sky, valid),
             "corner_centre_pct": quality.corner_centre_pct(corr, fr["clean"], valid)}
      per[name]["rows"].append(row)
      per[name]["dust"] += quality.dust_depths(corr, fr["clean"], fr["dust"], dust_valid)
      if psf:
        per[name]["stars"].append(stars.measure(corr.mean(-1), xy))
  pool = lambda tables: {k: np.concatenate([t[k] for t in tables]) for k in tables[0]}
  result, reference = {}, {}
  radius = np.concatenate(radii) if psf else None
  for name, p in per.items():
    m = {k: _mean_or_none([r[k] for r in p["rows"]]) for k in p["rows"][0]}
    m["dust_residual"] = quality.dust_residual(p["dust"])
    if psf:
      s = stars.summarize(pool(p["stars"]), pool(ref_stars), radius)
      m.update({k: (v if np.isfinite(v) else None) for k, v in s.items()})
    result[name] = m
  if psf:
    s = stars.summarize(pool(ref_stars), pool(ref_stars), radius)
    reference = {k: (v if np.isfinite(v) else None) for k, v in s.items()}
  return {"methods": result, "reference": reference}


def model_method(graphdef, params, config):
  """The model as a method for :func:`score_frames`: ``correct.correct_image`` (tiles, blending,
  global coordinates), exactly what ``flatai correct`` runs."""
  from flatai_jax import correct

  def fn(observed):
    c = correct.correct_image(graphdef, params, config, observed)
    return {"corrected": c.corrected, "F": c.F, "G": c.G}

  return fn


def baseline_methods(config) -> dict:
  """The classical baselines of ``flatai_jax.baselines`` with the config's settings."""
  from flatai_jax.evaluation import baselines
  e = config.eval
  return baselines.methods(int(e.baseline_degree), int(e.baseline_grid), float(e.median_size))


def evaluate(checkpoint_dir, step: int | None = None, output_dir=None, num_frames=None,
             lpips="auto", plot: bool = True) -> dict:
  """Scores a checkpoint and the classical baselines on the fixed evaluation set.

  The same function runs ``flatai evaluate --checkpoint=DIR`` and
  ``flatai_jax.evaluate(DIR)``. Writes under ``output_dir`` (default
  ``DIR/eval``): ``eval_<step>.json`` (the returned dict), ``eval_<step>.md``
  (the table), ``eval_<step>.png`` (one panel per metric), and the held-out crop
  metrics ``metrics_<step>.json``/``.png`` (the numbers training logs as ``eval_final.json``).

  Args:
    checkpoint_dir: run directory (``--workdir`` of ``flatai train``).
    step: checkpoint step; default the latest.
    output_dir: where the report goes.
    num_frames: full frames to score; default ``config.eval.num_frames``.
    lpips: ``"auto"`` (:func:`default_lpips`), None (no LPIPS), or a scorer.
    plot: write the PNGs.
  Returns:
    dict: ``step``, ``checkpoint``, ``task``, ``frames`` (count, shape, seed,
    sha256), ``methods`` (name → metric → value or None; ``model`` first),
    ``reference`` (star metrics of the truth), ``crops`` (held-out crop metrics).
  """
  from flatai_jax.evaluation import report as eval_report
  config = checkpointing.load_config(checkpoint_dir, step)
  mesh = sharding.make_mesh(config.mesh)
  config, graphdef, params, step = restore_params(checkpoint_dir, step, mesh, config)
  crops = evaluate_params(graphdef, params, config, mesh)
  frames = make_eval_frames(config, num_frames)
  methods = {"model": model_method(graphdef, params, config), **baseline_methods(config)}
  scorer = default_lpips() if lpips == "auto" else lpips
  scores = score_frames(frames, methods, config, scorer)
  report = {"step": step, "checkpoint": str(checkpoint_dir), "task": config.task,
            "frames": {"count": int(frames["observed"].shape[0]),
                       "shape": list(frames["observed"].shape[1:]),
                       "seed": int(config.eval.seed), "sha256": eval_set_checksum(frames)},
            **scores, "crops": crops}
  out = Path(output_dir or Path(checkpoint_dir) / "eval")
  eval_report.write(out, report, plot)
  write_text_atomic(out / f"metrics_{step}.json", json.dumps({"step": step, **crops}, indent=2))
  if plot:
    save_metric_chart(out / f"metrics_{step}.png", {"step": step, **crops})
  return report
