"""Checkpoint evaluation on a fixed held-out set, against the uncorrected input and classical baselines.

Two parts: held-out *crops* (``evaluate_params``, jitted, also run by training:
``eval_final.json``) and the report on held-out full sensor *frames*
(:func:`evaluate`, = ``flatai evaluate`` = ``flatai_jax.evaluate``): the model's
tiled correction beside ``baselines`` scored by ``quality`` and ``stars``,
written by ``eval_report``.

The held-out set is procedural, drawn from ``config.eval.seed`` (never a
training key), so every checkpoint of every run is scored on the same images.
Errors are in normalised units after removing each image's median difference
(a constant pedestal is trivial to remove and would otherwise dominate).
"""
from __future__ import annotations

import hashlib
import json
import sys
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from flatai_jax import checkpointing, sharding
from flatai_jax.data import synthetic
from flatai_jax.train_step import abstract_train_state, forward, make_optimizer


def eval_key(config):
  return jax.random.key(config.eval.seed)


def _centred_abs(x, y):
  d = (x - y).reshape(x.shape[0], -1)
  return jnp.abs(d - jnp.median(d, axis=-1, keepdims=True))


def batch_metrics(batch: dict, pred: dict) -> dict:
  """Per-example metrics, each ``(B,) float32``.

  ``mae``/``psnr``: corrected image vs truth; ``*_identity``: the observed
  image itself vs truth (the baseline a model must beat); ``f_mae``: F error,
  ``f_mae_identity``: error of assuming F = 1.
  """
  peak = jnp.quantile(batch["clean"].reshape(batch["clean"].shape[0], -1), 0.999, axis=-1)
  out = {}
  for name, img in (("", pred["clean"]), ("_identity", batch["observed"])):
    err = _centred_abs(img, batch["clean"])
    out["mae" + name] = err.mean(-1)
    mse = (err ** 2).mean(-1)
    out["psnr" + name] = 10.0 * jnp.log10(peak ** 2 / jnp.maximum(mse, 1e-12))
  if "F" in pred:
    b = batch["F"].shape[0]
    out["f_mae"] = jnp.abs(pred["F"] - batch["F"]).reshape(b, -1).mean(-1)
    out["f_mae_identity"] = jnp.abs(1.0 - batch["F"]).reshape(b, -1).mean(-1)
  return out


def make_eval_fn(graphdef, config, mesh=None, with_images=False):
  """Jitted ``(params, indices) -> metrics`` on held-out examples.

  With ``with_images`` it returns ``(batch, predictions, metrics)``. On a
  mesh the outputs are replicated, so every process can read them (all
  processes must call it).
  """
  key = eval_key(config)

  def fn(params, indices):
    batch = synthetic.make_batch(key, jnp.int32(0), indices, config)
    pred = forward(graphdef, params, batch)
    m = batch_metrics(batch, pred)
    return (batch, pred, m) if with_images else m

  if mesh is None:
    return jax.jit(fn)
  return jax.jit(fn, out_shardings=sharding.replicated(mesh))


def eval_indices(start: int, size: int, mesh=None):
  """Held-out example indices ``[start, start + size)``, sharded over the batch axes."""
  indices = np.arange(start, start + size, dtype=np.int32)
  return indices if mesh is None else jax.device_put(indices, sharding.batch_sharding(mesh))


def evaluate_params(graphdef, params, config, mesh=None) -> dict:
  """Mean metrics over the held-out set: the stored set ``config.eval.set_path`` if given
  (checksum verified), else ``config.eval.num_examples`` examples generated from
  ``config.eval.seed``."""
  bs = config.eval.batch_size
  sums, n = {}, 0
  if config.eval.get("set_path"):
    data = load_eval_set(config.eval.set_path)
    total = next(iter(data.values())).shape[0]
    fn = jax.jit(lambda p, b: batch_metrics(b, forward(graphdef, p, b)),
                 out_shardings=None if mesh is None else sharding.replicated(mesh))
    batches = ({k: v[s:s + bs] for k, v in data.items()} for s in range(0, total - bs + 1, bs))
    run = lambda b: fn(params, b if mesh is None else jax.device_put(b, sharding.batch_sharding(mesh)))
  else:
    fn = make_eval_fn(graphdef, config, mesh)
    total = config.eval.num_examples
    batches = (eval_indices(s, bs, mesh) for s in range(0, total - bs + 1, bs))
    run = lambda i: fn(params, i)
  for b in batches:
    for k, v in jax.device_get(run(b)).items():
      sums[k] = sums.get(k, 0.0) + float(np.sum(v))
    n += bs
  if n == 0:
    raise ValueError(f"held-out set of {total} examples is smaller than eval.batch_size={bs}")
  return {k: v / n for k, v in sums.items()}


def make_eval_set(config) -> dict[str, np.ndarray]:
  """The held-out set as arrays: every input and target of ``data.synthetic.make_batch``
  (observed, noise map, coordinates, clean, F, G, PSF grid, offset, scale, saturation)."""
  fn = jax.jit(lambda i: synthetic.make_batch(eval_key(config), jnp.int32(0), i, config))
  parts = [jax.device_get(fn(np.arange(s, s + config.eval.batch_size, dtype=np.int32)))
           for s in range(0, config.eval.num_examples, config.eval.batch_size)]
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def eval_set_checksum(data: dict[str, np.ndarray]) -> str:
  """SHA-256 over the arrays' names, shapes, dtypes and bytes (sorted by name)."""
  h = hashlib.sha256()
  for k in sorted(data):
    a = np.ascontiguousarray(data[k])
    h.update(f"{k}{a.shape}{a.dtype}".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def save_eval_set(data: dict[str, np.ndarray], path) -> str:
  """Writes ``path`` (.npz) and ``path.sha256``; returns the checksum."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  digest = eval_set_checksum(data)
  tmp = path.with_name(f".{path.name}.tmp.npz")
  np.savez(tmp, **data)
  tmp.replace(path)
  path.with_name(path.name + ".sha256").write_text(digest + "\n")
  return digest


def load_eval_set(path) -> dict[str, np.ndarray]:
  """Loads a stored held-out set and checks it against its recorded checksum."""
  path = Path(path)
  with np.load(path, allow_pickle=False) as f:
    data = {k: f[k] for k in f.files}
  recorded = path.with_name(path.name + ".sha256")
  if recorded.exists() and recorded.read_text().strip() != eval_set_checksum(data):
    raise ValueError(f"{path}: checksum does not match {recorded}; the file was changed")
  return data


def restore_params(workdir, step=None, mesh=None):
  """``(config, graphdef, params, step)`` of a checkpoint, replicated on ``mesh``."""
  config = checkpointing.load_config(workdir, step)
  mesh = mesh or sharding.make_mesh(config.mesh)
  tx = make_optimizer(config)
  graphdef, abstract = abstract_train_state(config, tx)
  shardings = sharding.state_shardings(abstract, mesh, config.mesh.rules)
  target = checkpointing.abstract_with_shardings(abstract, shardings)
  with checkpointing.create_manager(workdir, read_only=True, async_save=False) as m:
    restored = checkpointing.restore(m, target, step)
  if restored is None:
    raise FileNotFoundError(f"{checkpointing.checkpoint_dir(workdir)}: no checkpoint found")
  state, _ = restored
  return config, graphdef, state.eval_params(), int(jax.device_get(state.step))


def save_metric_chart(path, result: dict) -> None:
  """Bar chart: model vs identity baseline for each metric that has one."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  pairs = [k for k in result if f"{k}_identity" in result]
  fig, axes = plt.subplots(1, len(pairs), figsize=(3.2 * len(pairs), 3), squeeze=False)
  for ax, k in zip(axes[0], pairs):
    ax.bar(["model", "uncorrected"], [result[k], result[f"{k}_identity"]],
           color=["tab:blue", "tab:gray"])
    ax.set_title(k)
  fig.suptitle(f"held-out evaluation, step {result.get('step')}")
  fig.tight_layout()
  tmp = Path(path).with_name(f".{Path(path).name}.tmp.png")
  fig.savefig(tmp, dpi=100)
  tmp.replace(path)
  plt.close(fig)


# --- Full-frame report: the model beside classical baselines -----------------

FRAME_STREAM = 7  # fold_in of the eval key for full frames (crops use the eval key itself)


def frame_config(config):
  """The config of evaluation frames: the whole virtual sensor at the training crops' star
  density, with ``eval.frame_psf_grid`` PSF nodes across the frame."""
  import ml_collections
  c = ml_collections.ConfigDict(config.to_dict())
  h, w = c.data.sensor_hw
  c.sky.max_stars = int(round(c.sky.max_stars * h * w / c.data.crop_size ** 2))
  c.degrade.psf.grid = tuple(config.eval.get("frame_psf_grid", (5, 5)))
  return c


def make_eval_frames(config, num_frames: int | None = None) -> dict[str, np.ndarray]:
  """Held-out full sensor frames drawn from ``config.eval.seed``.

  Returns:
    dict of ``(N, H, W, C) float32`` linear (1.0 = saturation), ``(H, W)`` =
    ``config.data.sensor_hw``: ``observed``, ``clean``, ``F``, ``G`` and
    ``dust`` (the true dust shadows alone; 1 where there is none).
  """
  n = int(num_frames if num_frames is not None else config.eval.get("num_frames", 2))
  c = frame_config(config)
  bare = frame_config(config)  # same keys, F without dust (no blur, no noise)
  bare.degrade.flat.dust = False
  bare.degrade.apply_psf = False
  bare.degrade.noise.enabled = False
  hw = tuple(c.data.sensor_hw)
  with_dust = bool(c.degrade.apply_flat and c.degrade.flat.dust)

  @jax.jit
  def one(key):
    clean, coords = synthetic.procedural_example(key, c, hw, jnp.zeros(2, jnp.float32))
    deg = synthetic.degrade_example(key, clean, coords, c)
    dust = jnp.ones_like(clean)
    if with_dust:
      dust = deg["F"] / synthetic.degrade_example(key, clean, coords, bare)["F"]
    return {"observed": deg["observed"], "clean": clean, "F": deg["F"], "G": deg["G"], "dust": dust}

  keys = synthetic.example_keys(jax.random.fold_in(eval_key(config), FRAME_STREAM), 0,
                                np.arange(n, dtype=np.int32))
  outs = [jax.device_get(one(keys[i])) for i in range(n)]
  return {k: np.stack([o[k] for o in outs]) for k in outs[0]}


def default_lpips():
  """LPIPS scorer ``(image, reference) -> float`` on linear ``(H, W, C)`` frames, or None when
  ``flatai_jax.losses.lpips`` or its weights are not available (the report then shows null)."""
  try:
    from flatai_jax.losses import lpips
    return lpips.frame_scorer()
  except (ImportError, AttributeError, FileNotFoundError, OSError):
    return None


def _noise_sigma(plane: np.ndarray) -> float:
  """Pixel noise σ from neighbouring-pixel differences (robust to stars and gradients)."""
  d = np.diff(plane.astype(np.float64), axis=1).ravel()
  return float(1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2.0))


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
  from flatai_jax import quality, stars
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
    peak = quality.data_range(fr["clean"], valid)
    sky = float(np.median(fr["clean"]))
    xy = None
    if psf:
      clean_plane = fr["clean"].mean(-1)
      xy = stars.find_stars(clean_plane, _noise_sigma(fr["observed"].mean(-1)), valid.all(-1),
                            max_stars=int(config.eval.get("max_stars", 200)))
      ref_stars.append(stars.measure(clean_plane, xy))
      radii.append(stars.field_radius_px(xy, clean_plane.shape))
    for name, fn in methods.items():
      out = fn(fr["observed"])
      corr = quality.affine_align(out["corrected"], fr["clean"], valid)
      row = {"psnr": quality.psnr(corr, fr["clean"], peak, valid),
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
    depths = np.asarray(p["dust"]).reshape(-1, 2)
    m["dust_residual"] = (float(depths[:, 0].sum() / depths[:, 1].sum())
                          if depths.size and depths[:, 1].sum() > 0 else None)
    if psf:
      s = stars.summarize(pool(p["stars"]), pool(ref_stars), radius)
      m.update({k: (v if np.isfinite(v) else None) for k, v in s.items()})
    result[name] = m
  if psf:
    s = stars.summarize(pool(ref_stars), pool(ref_stars), radius)
    reference = {k: (v if np.isfinite(v) else None) for k, v in s.items()}
  return {"methods": result, "reference": reference}


def model_method(graphdef, params, config):
  """The model as a method for :func:`score_frames`: ``predict.correct_image`` (tiles, blending,
  global coordinates), exactly what ``flatai correct`` runs."""
  from flatai_jax import predict

  def fn(observed):
    c = predict.correct_image(graphdef, params, config, observed)
    return {"corrected": c.corrected, "F": c.F, "G": c.G}

  return fn


def baseline_methods(config) -> dict:
  """The classical baselines of ``flatai_jax.baselines`` with the config's settings."""
  from flatai_jax import baselines
  e = config.eval
  return baselines.methods(int(e.get("baseline_degree", 3)), int(e.get("baseline_grid", 16)),
                           float(e.get("median_size", 0.125)))


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
  from flatai_jax import eval_report
  config, graphdef, params, step = restore_params(checkpoint_dir, step)
  mesh = sharding.make_mesh(config.mesh)
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
  eval_report.write_text_atomic(out / f"metrics_{step}.json",
                                json.dumps({"step": step, **crops}, indent=2))
  if plot:
    save_metric_chart(out / f"metrics_{step}.png", {"step": step, **crops})
  return report


class _CallableModule(types.ModuleType):
  """Lets ``flatai_jax.evaluate(checkpoint_dir, ...)`` call :func:`evaluate` although
  ``flatai_jax.evaluate`` is also this module's name."""

  def __call__(self, *args, **kwargs):
    return evaluate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
