"""Sequence cases of the real-data evaluation: dithered frames cut from the real light frames,
one flat for the sequence, a G per frame (issue 18, session mode).

Each light frame of ``evaluation_data/real`` (in sky units, ``real.to_sky_units``) gives
sequences of ``FRAMES`` crops of ``crop_hw`` px around its centre, shifted by up to ±``DITHER``
px in each axis (drawn from ``real.EVAL_SEED``): the truth of frame i is its crop ``T_i``,
``observed_i = T_i · F + G_i`` with F the real master flat (resampled to the crop) or a
rendered flat (``real.rendered_fields``: vignetting and dust), the same for every frame, and
G_i rendered for each frame. Methods map the list of observed frames to the list of corrected
ones; the scores (``real.flat_error_pct`` after ``quality.affine_align``, ``quality.psnr``,
``real.affine_scale``) are means over the frames of a sequence.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from flatai_jax.evaluation import quality, real

FRAMES = 10  # frames per sequence
DITHER = 35  # px, the largest shift in each axis
CROP_HW = (300, 400)  # default crop, px (small: the 2-core CPU)
G_INDEX = 10_000  # rendered G of the sequences are drawn from real.EVAL_SEED at this index on


def sequence_cases(root=real.DEFAULT_DIR, crop_hw=CROP_HW, frames: int = FRAMES,
                   manifest=None, turned: int = 0) -> list[dict]:
  """Every sequence case: ``name``, ``content``, ``clean`` and ``observed`` (lists of ``frames``
  ``(h, w, 1) float32``), ``F`` ``(h, w, 1)`` and ``dust`` (its dust shadows alone, None for the
  real flat); two per light frame (real flat, rendered flat). ``turned``: the last so many
  frames of each sequence see the sky turned 180° (a meridian flip: their truth is the turned
  crop, F and G stay on the sensor); the draws are the same as without."""
  manifest = manifest or real.load_manifest(root)
  files = manifest["files"]
  flat_file = next(f for f in files if f["kind"] == "flat")
  rng = np.random.default_rng(real.EVAL_SEED)
  cases, index = [], 0
  h, w = crop_hw
  for light in (f for f in files if f["kind"] == "light"):
    truth = real.to_sky_units(real.read_plane(Path(root) / light["name"]))
    big_h, big_w = truth.shape[:2]
    if big_h < h + 2 * DITHER or big_w < w + 2 * DITHER:
      raise ValueError(f"{light['name']}: {big_h} × {big_w} px is too small for {h} × {w} crops "
                       f"dithered by ±{DITHER} px")
    real_f = real.resample(real.read_plane(Path(root) / flat_file["name"]), crop_hw)
    rendered = real.rendered_fields(crop_hw, index)
    fields = {"real flat": (real_f / np.median(real_f), None),
              "rendered flat": (rendered["F"], rendered["dust"])}
    for label, (f_field, dust) in fields.items():
      y0, x0 = (big_h - h) // 2, (big_w - w) // 2
      clean, observed = [], []
      for _ in range(frames):
        dy, dx = rng.integers(-DITHER, DITHER + 1, 2)
        crop = truth[y0 + dy:y0 + dy + h, x0 + dx:x0 + dx + w]
        if len(clean) >= frames - turned:
          crop = crop[::-1, ::-1]
        g_field = real.rendered_fields(crop_hw, G_INDEX + index)["G"]
        index += 1
        clean.append(crop)
        observed.append((crop * f_field + g_field).astype(np.float32))
      cases.append({"name": f"{Path(light['name']).stem} × {label}", "content": light["content"],
                    "clean": clean, "observed": observed, "F": f_field, "dust": dust})
  return cases


def score_sequences(cases: list[dict], methods: dict, progress=print) -> dict:
  """``{"cases": {method: [row per case]}}``; a row holds the means over the sequence's frames of
  ``flat_err_pct``, ``psnr`` (dB) and ``scale``, the dust residual over all its frames' shadows
  (``quality.dust_residual``; rendered flats only) and the method's time per frame (s)."""
  import time
  rows = {name: [] for name in methods}
  for i, case in enumerate(cases):
    for name, fn in methods.items():
      start = time.perf_counter()
      outs = fn(case["observed"])
      seconds = (time.perf_counter() - start) / len(outs)
      scores, depths = [], []
      for out, clean in zip(outs, case["clean"]):
        aligned = quality.affine_align(out, clean)
        scores.append((real.flat_error_pct(aligned, clean), quality.psnr(aligned, clean),
                       real.affine_scale(out, clean)))
        if case.get("dust") is not None:
          depths += quality.dust_depths(aligned, clean, case["dust"])
      err, psnr, scale = np.mean(scores, 0)
      rows[name].append({"case": case["name"], "content": case["content"],
                         "flat_err_pct": float(err), "psnr": float(psnr), "scale": float(scale),
                         "dust_residual": quality.dust_residual(depths) if depths else None,
                         "seconds_per_frame": seconds})
    if progress:
      progress(f"  sequence {i + 1}/{len(cases)}: {case['name']}")
  return {"cases": rows}


def markdown(result: dict) -> str:
  """A row per case, a column per method: ``flat error % / PSNR dB / scale`` (``/ dust`` where
  the flat has rendered dust); the means, and the mean dust residual over those cases."""
  names = list(result["cases"])
  lines = ["| case | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
  dust = lambda c: "" if c.get("dust_residual") is None else f" / {c['dust_residual']:.2f}"
  for i, row in enumerate(result["cases"][names[0]]):
    cells = [result["cases"][n][i] for n in names]
    lines.append(f"| {row['case']} ({row['content']}) | " + " | ".join(
        f"{c['flat_err_pct']:.2f} / {c['psnr']:.1f} / {c['scale']:.3f}{dust(c)}" for c in cells)
        + " |")
  means = [np.mean([[r["flat_err_pct"], r["psnr"], r["scale"]] for r in result["cases"][n]], 0)
           for n in names]
  lines.append("| **mean** | " + " | ".join(f"{m[0]:.2f} / {m[1]:.1f} / {m[2]:.3f}"
                                           for m in means) + " |")
  dusts = [[r["dust_residual"] for r in result["cases"][n] if r.get("dust_residual") is not None]
           for n in names]
  if any(dusts):
    lines.append("| **mean dust dip left (rendered flats)** | " + " | ".join(
        f"{np.mean(d):.2f}" if d else "—" for d in dusts) + " |")
  return "\n".join(lines)
