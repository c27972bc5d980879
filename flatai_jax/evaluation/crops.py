"""Held-out *crop* metrics: the jitted evaluation that training runs (``eval_final.json``).

The held-out set is procedural, drawn from ``config.eval.seed`` (never a
training key), so every checkpoint of every run is scored on the same images;
it can also be stored once (``make_eval_set``, checksummed). Errors are
``flatai_jax.scores``' (each image's median difference removed: a constant
pedestal is trivial to remove and would otherwise dominate); MAE in normalised units.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from flatai_jax import scores, sharding
from flatai_jax.data import synthetic
from flatai_jax.io.atomic import save_figure_atomic, write_atomic, write_text_atomic
from flatai_jax.models import forward


def eval_key(config):
  return jax.random.key(config.eval.seed)


def batch_metrics(batch: dict, pred: dict) -> dict:
  """Per-example metrics, each ``(B,) float32``.

  ``mae`` (normalised units) and ``psnr`` (dB): corrected image vs truth, as
  defined in ``flatai_jax.scores`` (median difference removed; PSNR's peak the
  truth's 99.9th − 0.1th percentile, so it equals the linear-unit PSNR of
  ``flatai correct --reference`` and the report); ``*_identity``: the observed
  image itself vs truth (the baseline a model must beat); ``f_mae``: F error,
  ``f_mae_identity``: error of assuming F = 1.
  """
  b = batch["clean"].shape[0]
  clean = batch["clean"].reshape(b, -1)
  out = {}
  for name, img in (("", pred["clean"]), ("_identity", batch["observed"])):
    img = img.reshape(b, -1)
    out["mae" + name] = scores.mae(img, clean, axis=-1, xp=jnp)
    out["psnr" + name] = scores.psnr(img, clean, axis=-1, xp=jnp)
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
  if config.eval.set_path:
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
  digest = eval_set_checksum(data)
  write_atomic(path, lambda p: np.savez(p, **data))
  write_text_atomic(path.with_name(path.name + ".sha256"), digest + "\n")
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
  save_figure_atomic(fig, path, dpi=100)
  plt.close(fig)


