"""Metric writers (TensorBoard event files + JSONL), progress reports, sample grids and loss curves.

TF-free: event files come from tensorboardX; clu's TF-backed writers are not
imported. All functions run on the host, on process 0 only where noted.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from flatai_jax.io.atomic import save_figure_atomic
from flatai_jax.io.display import asinh_stretch, linear_levels


class MetricWriter:
  """Writes scalar dicts to ``<workdir>/metrics.jsonl`` and TensorBoard event files."""

  def __init__(self, workdir, enabled: bool = True):
    self.enabled = enabled
    self.jsonl_path = Path(workdir) / "metrics.jsonl"
    self._tb = None
    if enabled:
      from tensorboardX import SummaryWriter
      Path(workdir).mkdir(parents=True, exist_ok=True)
      self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"))

  def write_scalars(self, step: int, scalars: dict, prefix: str = "train") -> None:
    if not self.enabled:
      return
    clean = {k: float(v) for k, v in scalars.items()}
    with open(self.jsonl_path, "a") as f:
      f.write(json.dumps({"step": int(step), "split": prefix, **clean}) + "\n")
    for k, v in clean.items():
      self._tb.add_scalar(f"{prefix}/{k}", v, int(step))
    self._tb.flush()

  def close(self):
    if self._tb is not None:
      self._tb.close()


def read_jsonl(path, split: str = "train") -> list[dict]:
  """Rows of a metrics.jsonl file for one split; a truncated last line is skipped."""
  rows = []
  if not Path(path).exists():
    return rows
  with open(path) as f:
    for line in f:
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        continue
      if row.get("split") == split:
        rows.append(row)
  return rows


class ProgressReporter:
  """Prints steps/s and ETA every ``every`` steps (a TF-free stand-in for clu's ReportProgress)."""

  def __init__(self, total_steps: int, every: int, print_fn=print):
    self.total, self.every, self.print = total_steps, every, print_fn
    self._t0 = self._t = time.perf_counter()
    self._last_step = None

  def __call__(self, step: int, scalars: dict | None = None) -> float | None:
    """Prints a line at report steps; returns its steps/s (since the previous line), or None
    on the first call (which starts the clock) and between report steps."""
    now = time.perf_counter()
    if self._last_step is None:
      self._last_step, self._t = step, now
      return None
    if step - self._last_step < self.every and step != self.total:
      return None
    rate = (step - self._last_step) / max(now - self._t, 1e-9)
    eta = (self.total - step) / max(rate, 1e-9)
    text = " ".join(f"{k}={float(v):.4g}" for k, v in (scalars or {}).items())
    self.print(f"step {step}/{self.total}  {rate:.2f} steps/s  ETA {eta:.0f}s  {text}",
               flush=True)
    self._last_step, self._t = step, now
    return rate


def save_sample_grid(path, columns: dict[str, np.ndarray], max_rows: int = 4) -> None:
  """One PNG: a row per example, a column per named image.

  Args:
    path: output PNG.
    columns: name → ``(N, H, W, C)`` arrays (C = 1 or 3). Images (observed,
      prediction, truth) share an asinh stretch per row so they compare; fields
      (names starting with 'F' or 'G') are shown with linear levels.
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  names = list(columns)
  n = min(max_rows, next(iter(columns.values())).shape[0])
  fig, axes = plt.subplots(n, len(names), figsize=(2.2 * len(names), 2.2 * n), squeeze=False)
  for r in range(n):
    ref = np.asarray(columns[names[0]][r])
    black, white = np.percentile(ref, 0.5), np.percentile(ref, 99.9)
    for c, name in enumerate(names):
      img = np.asarray(columns[name][r], dtype=np.float32)
      if name.startswith("PSF"):
        shown = asinh_stretch(img, 0.0, float(img.max()), softening=0.01)
      elif name.startswith(("F", "G")):
        shown = linear_levels(img)
      else:
        shown = asinh_stretch(img, black, white)
      ax = axes[r, c]
      ax.imshow(shown[..., 0] if shown.shape[-1] == 1 else shown, cmap="gray",
                vmin=0, vmax=1, interpolation="nearest")
      ax.set_xticks([]), ax.set_yticks([])
      if r == 0:
        ax.set_title(name, fontsize=9)
  fig.tight_layout()
  save_figure_atomic(fig, path, dpi=100, bbox_inches="tight")
  plt.close(fig)


def save_panel_grid(path, panels: dict[str, tuple[np.ndarray, str]], cols: int = 5) -> None:
  """One PNG of titled panels, ``cols`` per row.

  Args:
    path: output PNG.
    panels: title → (``(H, W, C)`` array, ``"field"`` for linear levels or
      ``"image"`` for an asinh stretch); panels may differ in size.
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rows = -(-len(panels) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(2.0 * cols, 1.6 * rows), squeeze=False)
  for ax in axes.ravel():
    ax.axis("off")
  for ax, (title, (img, kind)) in zip(axes.ravel(), panels.items()):
    img = np.asarray(img, dtype=np.float32)
    shown = linear_levels(img) if kind == "field" else asinh_stretch(img)
    ax.imshow(shown[..., 0] if shown.shape[-1] == 1 else shown, cmap="gray", vmin=0, vmax=1,
              interpolation="nearest")
    ax.set_title(title, fontsize=8)
  fig.tight_layout()
  save_figure_atomic(fig, path, dpi=100, bbox_inches="tight")
  plt.close(fig)


def psf_mosaic(psf: np.ndarray) -> np.ndarray:
  """PSF grids ``(N, gy, gx, k, k)`` → ``(N, gy·k, gx·k, 1)`` images for sample grids."""
  n, gy, gx, k, _ = psf.shape
  return np.asarray(psf).transpose(0, 1, 3, 2, 4).reshape(n, gy * k, gx * k, 1)


NOT_LOSSES = ("step", "split", "grad_norm", "skipped", "learning_rate", "steps_per_sec")


def save_loss_curve(path, jsonl_path, keys=None) -> None:
  """Loss-curve PNG (log scale) of the train rows of a metrics.jsonl, and eval rows if any."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rows = read_jsonl(jsonl_path, "train")
  if not rows:
    return
  keys = keys or [k for k in rows[-1] if k not in NOT_LOSSES]
  fig, ax = plt.subplots(figsize=(7, 4))
  steps = [r["step"] for r in rows]
  for k in keys:
    ax.plot(steps, [r.get(k, np.nan) for r in rows], label=k)
  evals = read_jsonl(jsonl_path, "eval")
  if evals and "loss" in evals[0]:
    ax.plot([r["step"] for r in evals], [r["loss"] for r in evals], "ko--", label="eval loss")
  ax.set_yscale("log")
  ax.set_xlabel("step")
  ax.set_ylabel("loss (normalised units)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  save_figure_atomic(fig, path, dpi=100, bbox_inches="tight")
  plt.close(fig)
