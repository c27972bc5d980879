"""Real-data evaluation: the model beside doing nothing and the classical tools, on real frames.

The set is ``evaluation_data/real/`` (``manifest.json`` + FITS), built by
``data_pipelines/build_real_eval.py`` from public frames with source and licence
recorded. It is for evaluation only — never training data. Two parts:

- **with truth**: each real light frame, rescaled to sky units (its 1st
  percentile at ``SKY_PEDESTAL``, its 99.5th at 1 + that), is the truth ``T``;
  ``observed = T·F + G`` with F the real master flat (resampled to the frame)
  or a physically rendered F (``physics.flat``: vignetting and dust shadows of
  ``configs/default.py``'s distributions, drawn from ``EVAL_SEED``), and G
  rendered from the same distributions (gradients, domes, glow). Scores, each
  after the affine alignment of ``quality.affine_align``: ``flat_err_pct``
  (RMS of the ratio of the smoothed output to the smoothed truth, %),
  ``dust_residual`` (rendered dust), ``psnr`` and ``scale`` (the gain of the
  output against the truth: below 1 where a method removed part of an object).
- **truth-free**: raw (not flat-fielded) frames; background flatness with
  sources masked: robust RMS and 5–95 % range of box medians, in units of the
  pixel noise σ (``bg_rms_sigma``, ``bg_range_sigma``). The mask
  (:func:`source_mask`) is made once from the raw frame and used for every
  method (stars *and* faint extended light: a method that removes a galaxy's
  halo must not be scored flatter for it), and the boxes sit halfway between
  the ``BOXES``² sample nodes of the polynomial/RBF baselines (a method is not
  scored at its own fit nodes).
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
from scipy import ndimage

from flatai_jax.evaluation import quality

SKY_PEDESTAL = 0.1  # sky level given to a light frame's faint end, sky units (1 = bright end)
EVAL_SEED = 20261201  # rendered F/G of the real-data cases (never a training key)
RENDERED_PER_LIGHT = 2  # rendered F/G cases per light frame (besides the real flat)
SMOOTH_FRACTION = 0.02  # smoothing σ of the flat error, fraction of the frame's long side
BOXES = 16  # the baselines' sample grid; flatness boxes are offset from it by half a box
MASK_SMOOTH_PX = 8.0  # source mask: faint extended light found on the frame smoothed by this σ
MASK_KAPPA = 3.0  # … above this many σ of the smoothed frame's noise
MASK_GROW_PX = 8  # … grown by this many px
MASK_POLY_DEGREE = 4  # … against the frame's robust polynomial background of this degree
DEFAULT_DIR = Path("evaluation_data/real")


def load_manifest(root=DEFAULT_DIR) -> dict:
  """The set's manifest; raises FileNotFoundError with the builder command when missing."""
  path = Path(root) / "manifest.json"
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no real-data evaluation set; build it with "
                            "python data_pipelines/build_real_eval.py")
  manifest = json.loads(path.read_text())
  missing = [f["name"] for f in manifest["files"] if not (Path(root) / f["name"]).is_file()]
  if missing:
    raise FileNotFoundError(f"{root}: {len(missing)} file(s) of the manifest missing "
                            f"(e.g. {missing[0]}); rebuild with data_pipelines/build_real_eval.py")
  return manifest


def read_plane(path) -> np.ndarray:
  """``(H, W, 1) float32`` pixels of a set file (the trimmed section when the header says
  ``TRIMSEC``/``DATASEC``, so over- and prescans are not scored)."""
  from flatai_jax.io import images
  image, meta = images.read_image(path)
  header = meta.get("header") if isinstance(meta, dict) else None
  section = None
  if header is not None:
    section = header.get("TRIMSEC") or header.get("DATASEC")
  if section:
    (x0, x1), (y0, y1) = [tuple(int(v) for v in part.split(":"))
                          for part in section.strip("[]").split(",")]
    image = image[y0 - 1:y1, x0 - 1:x1]
  return image.mean(-1, keepdims=True).astype(np.float32) if image.shape[-1] > 1 else image


def to_sky_units(light: np.ndarray) -> np.ndarray:
  """A light frame as truth: 1st percentile → ``SKY_PEDESTAL``, 99.5th → 1 + ``SKY_PEDESTAL``."""
  lo, hi = np.percentile(light, [1.0, 99.5])
  return ((light - lo) / max(hi - lo, 1e-12) + SKY_PEDESTAL).astype(np.float32)


def resample(field: np.ndarray, hw) -> np.ndarray:
  """``(h, w, 1)`` field → ``(H, W, 1)`` by linear interpolation of pixel centres."""
  h, w = field.shape[:2]
  ys = (np.arange(hw[0]) + 0.5) * h / hw[0] - 0.5
  xs = (np.arange(hw[1]) + 0.5) * w / hw[1] - 0.5
  yy, xx = np.meshgrid(ys, xs, indexing="ij")
  return ndimage.map_coordinates(field[..., 0], [yy, xx], order=1, mode="nearest")[..., None]


RENDER_HW = (768, 768)  # rendered fields are drawn on this sensor, then resampled to the frame


def rendered_fields(hw, index: int) -> dict:
  """Physically rendered ``F`` (median 1), ``G`` and ``dust`` (the shadows alone) for a frame
  of ``hw``, from ``configs/default.py:flat`` distributions (real pixel scale) and
  ``EVAL_SEED``: drawn on a ``RENDER_HW`` sensor (one compilation for every frame) and
  resampled to ``hw``."""
  import jax
  fields = jax.device_get(_render_fn(RENDER_HW)(jax.random.fold_in(jax.random.key(EVAL_SEED),
                                                                   index)))
  f_field, g_field, f_bare = (resample(np.asarray(a), hw) for a in fields)
  # median 1, as the real flat: F's overall level is not identifiable from a frame (every
  # method keeps the frame's level), so it must not enter the scale corrected/truth
  return {"F": f_field / np.median(f_field), "G": g_field, "dust": f_field / f_bare}


@functools.lru_cache(maxsize=16)
def _render_fn(hw):
  """Jitted ``key -> (F, G, F without dust)`` for frames of ``hw`` (compiled once per size)."""
  import jax
  import jax.numpy as jnp

  from flatai_jax.config_args import default_config
  from flatai_jax.physics import flat, geometry
  cfg = default_config("flat").degrade.flat  # configs/default.py: real pixel scale
  bare = cfg.copy_and_resolve_references()
  bare.dust = False

  @jax.jit
  def fn(key):
    coords = geometry.frame_coords(jnp.zeros(2), hw, jnp.asarray(hw, jnp.float32))
    f_field, g_field = flat.draw_flat_fields(key, coords, 1, cfg, hw)
    f_bare, _ = flat.draw_flat_fields(key, coords, 1, bare, hw)
    return f_field, g_field, f_bare

  return fn


def truth_cases(root=DEFAULT_DIR, manifest=None) -> list[dict]:
  """Every with-truth case: ``name``, ``content``, ``clean`` (T), ``observed``, ``F``, ``G``,
  ``dust`` (None for the real flat), ``(H, W, 1) float32`` each."""
  manifest = manifest or load_manifest(root)
  files = manifest["files"]
  flats = [f for f in files if f["kind"] == "flat"]
  cases, index = [], 0
  for light in (f for f in files if f["kind"] == "light"):
    clean = to_sky_units(read_plane(Path(root) / light["name"]))
    hw = clean.shape[:2]
    for flat_file in flats:
      rendered = rendered_fields(hw, index)
      index += 1
      real_f = resample(read_plane(Path(root) / flat_file["name"]), hw)
      real_f = real_f / np.median(real_f)
      cases.append(_case(f"{Path(light['name']).stem} × {Path(flat_file['name']).stem}",
                         light["content"], clean, real_f, rendered["G"], None))
    for _ in range(RENDERED_PER_LIGHT):
      rendered = rendered_fields(hw, index)
      index += 1
      cases.append(_case(f"{Path(light['name']).stem} × rendered {index}", light["content"],
                         clean, rendered["F"], rendered["G"], rendered["dust"]))
  return cases


def _case(name, content, clean, f_field, g_field, dust):
  return {"name": name, "content": content, "clean": clean, "F": f_field, "G": g_field,
          "dust": dust, "observed": (clean * f_field + g_field).astype(np.float32)}


def affine_scale(image: np.ndarray, reference: np.ndarray, mask=None) -> float:
  """Gain of ``image`` against ``reference``: ``1 / a`` of ``quality.affine_fit`` (1 = the
  output keeps every object's contrast; < 1 where part of an object was removed)."""
  a, _ = quality.affine_fit(image, reference, mask)
  return float(1.0 / a) if a != 0 else float("inf")


def flat_error_pct(aligned: np.ndarray, reference: np.ndarray) -> float:
  """RMS of ``smooth(aligned) / smooth(reference) − 1`` (median ratio divided out), %, with a
  Gaussian of ``SMOOTH_FRACTION`` of the long side: what is left of F and G at large scales."""
  sigma = SMOOTH_FRACTION * max(reference.shape[:2])
  a = ndimage.gaussian_filter(aligned[..., 0].astype(np.float64), sigma, mode="reflect")
  r = ndimage.gaussian_filter(reference[..., 0].astype(np.float64), sigma, mode="reflect")
  ratio = a / np.maximum(r, 1e-12)
  return float(100.0 * np.sqrt(np.mean((ratio / np.median(ratio) - 1.0) ** 2)))


def score_truth(cases: list[dict], methods: dict, progress=print) -> dict:
  """``{method: {metric: mean over cases}}`` and the per-case rows (see module docstring)."""
  rows = {name: [] for name in methods}
  for i, case in enumerate(cases):
    valid = np.isfinite(case["observed"])
    for name, fn in methods.items():
      out = fn(case["observed"])
      aligned = quality.affine_align(out["corrected"], case["clean"], valid)
      row = {"case": case["name"], "content": case["content"],
             "flat_err_pct": flat_error_pct(aligned, case["clean"]),
             "psnr": quality.psnr(aligned, case["clean"], valid),
             "scale": affine_scale(out["corrected"], case["clean"], valid),
             "dust_residual": None}
      if case["dust"] is not None:
        row["dust_residual"] = quality.dust_residual(
            quality.dust_depths(aligned, case["clean"], case["dust"], valid))
      rows[name].append(row)
    if progress:
      progress(f"  real-data case {i + 1}/{len(cases)}: {case['name']}")
  return {"methods": {name: _means(r) for name, r in rows.items()}, "cases": rows}


def _means(rows: list[dict]) -> dict:
  keys = [k for k in rows[0] if k not in ("case", "content")]
  out = {}
  for k in keys:
    v = [r[k] for r in rows if r[k] is not None and np.isfinite(r[k])]
    out[k] = float(np.mean(v)) if v else None
  return out


def source_mask(plane: np.ndarray) -> np.ndarray:
  """``(H, W) bool`` sources of a raw frame's plane, found on the frame minus its robust
  polynomial background (``baselines.poly_background`` of degree ``MASK_POLY_DEGREE``: so
  vignetting and gradients are not sources, and a galaxy's halo is not absorbed): pixels above
  3 robust σ grown by 3 px, and faint extended light — smoothed by ``MASK_SMOOTH_PX``, above
  ``MASK_KAPPA`` of its robust σ, grown by ``MASK_GROW_PX``; non-finite pixels too."""
  from flatai_jax.evaluation import baselines
  plane = plane.astype(np.float64)
  finite = np.isfinite(plane)
  filled = np.where(finite, plane, np.nanmedian(plane))
  above = filled - baselines.poly_background(filled, MASK_POLY_DEGREE, BOXES)
  bright = ndimage.binary_dilation(above > 3.0 * quality.robust_sigma(above), iterations=3)
  smooth = ndimage.gaussian_filter(above, MASK_SMOOTH_PX)
  extended = ndimage.binary_dilation(smooth > MASK_KAPPA * quality.robust_sigma(smooth),
                                     iterations=MASK_GROW_PX)
  return bright | extended | ~finite


def background_flatness(image: np.ndarray, mask: np.ndarray) -> dict:
  """Flatness of a frame's background with sources masked, in units of the pixel noise σ.

  Args:
    image: ``(H, W, C)``, the first plane is scored.
    mask: ``(H, W) bool`` sources (:func:`source_mask` of the raw frame).
  Returns:
    ``bg_rms_sigma`` (robust RMS of the box medians / σ) and ``bg_range_sigma`` (their
    5–95 % range / σ); a box is ``1/BOXES`` of each side, centred on the corners between the
    ``BOXES``² baseline sample boxes (``(BOXES − 1)``² boxes), its median over unmasked pixels.
  """
  plane = image[..., 0].astype(np.float64)
  finite = np.isfinite(plane)
  sigma = quality.noise_sigma(np.where(finite, plane, np.nanmedian(plane)))
  mask = mask | ~finite
  h, w = plane.shape
  ys = ((np.arange(BOXES) + 0.5) * h / BOXES).astype(int)
  xs = ((np.arange(BOXES) + 0.5) * w / BOXES).astype(int)
  med = []
  for i in range(BOXES - 1):
    for j in range(BOXES - 1):
      sel = (slice(ys[i], ys[i + 1]), slice(xs[j], xs[j + 1]))
      box = plane[sel][~mask[sel]]
      if box.size > 16:
        med.append(np.median(box))
  med = np.asarray(med)
  p5, p95 = np.percentile(med, [5, 95])
  return {"bg_rms_sigma": float(quality.robust_sigma(med - np.median(med)) / max(sigma, 1e-12)),
          "bg_range_sigma": float((p95 - p5) / max(sigma, 1e-12))}


def score_raw(root, manifest, methods: dict, progress=print) -> dict:
  """Truth-free part: :func:`background_flatness` of every method's output on the raw frames."""
  rows = {name: [] for name in methods}
  raws = [f for f in manifest["files"] if f["kind"] == "raw"]
  for i, f in enumerate(raws):
    observed = read_plane(Path(root) / f["name"])
    mask = source_mask(observed[..., 0])
    for name, fn in methods.items():
      rows[name].append({"case": f["name"], "content": f["content"],
                         **background_flatness(fn(observed)["corrected"], mask)})
    if progress:
      progress(f"  raw frame {i + 1}/{len(raws)}: {f['name']}")
  return {"methods": {name: _means(r) for name, r in rows.items()}, "cases": rows}


def evaluate_real(methods: dict, root=DEFAULT_DIR, progress=print) -> dict:
  """Both parts for ``methods`` (name → ``fn(observed (H, W, 1)) -> {corrected, F, G}``)."""
  manifest = load_manifest(root)
  return {"truth": score_truth(truth_cases(root, manifest), methods, progress),
          "raw": score_raw(root, manifest, methods, progress),
          "set": {"root": str(root), "files": len(manifest["files"])}}


TABLE = (("truth", "flat_err_pct", "residual flat error (%)", "lower"),
         ("truth", "dust_residual", "dust dip remaining (fraction)", "lower"),
         ("truth", "psnr", "PSNR (dB)", "higher"),
         ("truth", "scale", "scale corrected/truth", "1"),
         ("raw", "bg_rms_sigma", "raw: background RMS / σ", "lower"),
         ("raw", "bg_range_sigma", "raw: background range / σ", "lower"))


def markdown(result: dict) -> str:
  """The table: a row per metric, a column per method."""
  names = list(result["truth"]["methods"])
  fmt = lambda v: "—" if v is None else f"{v:.4g}"
  lines = ["| metric | best | " + " | ".join(names) + " |",
           "|---|---|" + "---|" * len(names)]
  for part, key, label, best in TABLE:
    vals = [result[part]["methods"][n].get(key) for n in names]
    lines.append(f"| {label} | {best} | " + " | ".join(fmt(v) for v in vals) + " |")
  return "\n".join(lines)


def run(checkpoint=None, root=DEFAULT_DIR, output_dir=None, step=None, progress=print) -> dict:
  """``flatai evaluate --real``: the model (``correct.load``, the shipped one by default)
  beside ``uncorrected`` and the classical baselines on the real-data set; writes
  ``real_<step>.json`` and ``.md`` under ``output_dir`` when given."""
  from flatai_jax import correct
  from flatai_jax.evaluation.frames import baseline_methods
  from flatai_jax.io.atomic import write_text_atomic
  corrector = correct.load(checkpoint, step)

  def model(observed):
    out = corrector.correct(observed)
    return {"corrected": out.corrected, "F": out.F, "G": out.G}

  result = evaluate_real({"model": model, **baseline_methods(corrector.config)}, root, progress)
  result.update({"checkpoint": corrector.checkpoint, "step": corrector.step})
  if output_dir is not None:
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / f"real_{corrector.step}.json", json.dumps(result, indent=2))
    write_text_atomic(out / f"real_{corrector.step}.md", markdown(result) + "\n")
  return result
