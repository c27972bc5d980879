"""Writers of the ``flatai evaluate`` report: ``eval_<step>.json``, ``.md`` (one table, a column
per method) and ``.png`` (one bar panel per metric)."""
from __future__ import annotations

import json
import math
from pathlib import Path

from flatai_jax.io.atomic import save_figure_atomic, write_text_atomic

# key, label (unit), what is best
METRICS = (
    ("psnr", "PSNR (dB)", "higher"),
    ("ssim", "SSIM", "higher"),
    ("lpips", "LPIPS", "lower"),
    ("f_rms_pct", "F RMS error (%)", "lower"),
    ("g_rms_pct", "G RMS error (% of sky)", "lower"),
    ("dust_residual", "dust dip remaining (fraction)", "0"),
    ("corner_centre_pct", "corner/centre residual (%)", "0"),
    ("fwhm_ratio", "star FWHM corner/centre", "truth"),
    ("fwhm_px", "star FWHM, median (px)", "truth"),
    ("ellipticity", "star ellipticity, median", "truth"),
    ("flux_ratio", "star flux measured/true", "1"),
)
STAR_METRICS = ("fwhm_ratio", "fwhm_px", "ellipticity", "flux_ratio")


def clean_json(obj):
  """NaN/Inf → None so the JSON is standard."""
  if isinstance(obj, dict):
    return {k: clean_json(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [clean_json(v) for v in obj]
  if isinstance(obj, float) and not math.isfinite(obj):
    return None
  return obj


def rows(report: dict) -> list[tuple[str, str, str]]:
  """Metrics present in the report (star metrics only for psf/combined)."""
  first = next(iter(report["methods"].values()))
  return [m for m in METRICS if m[0] in first]


def markdown(report: dict) -> str:
  """The table: a row per metric, a column per method (model first), ``truth`` for star metrics."""
  names = list(report["methods"])
  ref = report.get("reference") or {}
  fmt = lambda v: "—" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))
  head = ["metric", "best", *names] + (["truth"] if ref else [])
  lines = [f"# Evaluation of {report['checkpoint']}, step {report['step']} ({report['task']} task)",
           "",
           f"{report['frames']['count']} held-out frames of {report['frames']['shape']} "
           f"(seed {report['frames']['seed']}, sha256 {report['frames']['sha256'][:12]}…). "
           "Outputs are aligned to the truth by a least-squares gain and pedestal; "
           "saturated star cores are skipped. — = not estimated by the method or not available.",
           "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for key, label, best in rows(report):
    cells = [label, best, *(fmt(report["methods"][n].get(key)) for n in names)]
    if ref:
      cells.append(fmt(ref.get(key)) if key in STAR_METRICS else "")
    lines.append("| " + " | ".join(cells) + " |")
  crops = report.get("crops") or {}
  if crops:
    lines += ["", "Held-out crops (the numbers training logs): " +
              ", ".join(f"{k} {v:.4g}" for k, v in crops.items())]
  return "\n".join(lines) + "\n"


def save_chart(path: Path, report: dict) -> None:
  """One PNG, a bar panel per metric, a bar per method (truth as a dashed line for stars)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  names = list(report["methods"])
  ref = report.get("reference") or {}
  metrics = rows(report)
  cols = 4
  nrows = -(-len(metrics) // cols)
  fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 2.9 * nrows), squeeze=False)
  colors = ["tab:blue"] + ["tab:gray", "tab:orange", "tab:green", "tab:red", "tab:purple",
                           "tab:brown", "tab:olive"][:len(names) - 1]
  for ax, (key, label, best) in zip(axes.ravel(), metrics):
    vals = [report["methods"][n].get(key) for n in names]
    ax.bar(range(len(names)), [math.nan if v is None else v for v in vals], color=colors)
    if key in ref and ref[key] is not None:
      ax.axhline(ref[key], color="k", ls="--", lw=1, label="truth")
    ax.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=7)
    ax.set_title(f"{label}\n(best: {best})", fontsize=8)
  for ax in axes.ravel()[len(metrics):]:
    ax.axis("off")
  fig.suptitle(f"step {report['step']}: model vs classical baselines", fontsize=10)
  fig.tight_layout()
  save_figure_atomic(fig, path, dpi=90)
  plt.close(fig)


def write(out_dir, report: dict, plot: bool = True) -> dict[str, Path]:
  """Writes ``eval_<step>.json``, ``.md`` and (with ``plot``) ``.png``; returns their paths."""
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  step = report["step"]
  paths = {"json": out / f"eval_{step}.json", "md": out / f"eval_{step}.md"}
  write_text_atomic(paths["json"], json.dumps(clean_json(report), indent=2))
  write_text_atomic(paths["md"], markdown(report))
  if plot:
    paths["png"] = out / f"eval_{step}.png"
    save_chart(paths["png"], report)
  return paths
