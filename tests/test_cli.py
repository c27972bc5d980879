"""The ``flatai`` command end to end on a tiny config: train → evaluate → synth → correct,
resume, and the bad-input contract (one message naming the file, non-zero exit)."""
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flatai_jax.io import images

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "--config=configs/default.py:flat,tiny"
TINY = [  # 120 steps that learn: strong vignetting only, a higher learning rate
    "--config.train.log_every=20", "--config.train.sample_every=120",
    "--config.train.checkpoint_every=60",
    "--config.degrade.flat.vignetting_strength=(0.3,0.5)", "--config.degrade.flat.dust=False",
    "--config.degrade.flat.prnu=False", "--config.optim.warmup_steps=5",
    "--config.optim.learning_rate=0.003",
]


def flatai(*args, check=True, env=None):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
             **(env or {}))
  out = subprocess.run([sys.executable, "-m", "flatai_jax.main", *map(str, args)], cwd=ROOT,
                       capture_output=True, text=True, env=env, timeout=900)
  if check and out.returncode != 0:
    raise AssertionError(f"flatai {args[0]} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
  return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("run")
  flatai("train", CONFIG, *TINY, "--config.train.steps=120", f"--workdir={workdir}")
  return workdir


def test_training_writes_everything_and_the_loss_falls(run_dir):
  for name in ("config.json", "metrics.jsonl", "samples.png", "loss_curve.png",
               "eval_final.json"):
    assert (run_dir / name).is_file(), name
  assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
  assert sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()) == [60, 120]
  rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
  train = [r["loss"] for r in rows if r["split"] == "train"]
  assert len(train) == 6 and train[-1] < 0.8 * train[0], train
  saved = json.loads((run_dir / "config.json").read_text())
  assert saved["train"]["steps"] == 120 and saved["model"]["base_width"] == 8
  ev = json.loads((run_dir / "eval_final.json").read_text())
  assert ev["mae"] < ev["mae_identity"] and ev["f_mae"] < ev["f_mae_identity"]


@contextlib.contextmanager
def compilation_cache(path):
  """JAX's persistent compilation cache in ``path`` for this process, restored afterwards."""
  import jax
  from jax._src import compilation_cache as cc
  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_min_entry_size_bytes")
  old = {n: getattr(jax.config, n) for n in names}
  for n, v in zip(names, (str(path), 0, 0)):
    jax.config.update(n, v)
  cc.reset_cache()
  try:
    yield
  finally:
    for n, v in old.items():
      jax.config.update(n, v)
    cc.reset_cache()


def test_evaluate_command_scores_the_checkpoint(run_dir, tmp_path):
  cache = {"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),  # the API call below reuses
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",  # the CLI's compiled programs
           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
  out = flatai("evaluate", f"--checkpoint={run_dir}", f"--output_dir={tmp_path / 'cli'}", env=cache)
  result = json.loads((tmp_path / "cli" / "metrics_120.json").read_text())
  assert result["step"] == 120 and (tmp_path / "cli" / "metrics_120.png").is_file()
  final = json.loads((run_dir / "eval_final.json").read_text())
  np.testing.assert_allclose(result["mae"], final["mae"], rtol=1e-5)  # same held-out set
  assert '"step": 120' in out.stdout and "| metric | best | model | uncorrected |" in out.stdout
  report = json.loads((tmp_path / "cli" / "eval_120.json").read_text())
  assert (tmp_path / "cli" / "eval_120.md").is_file() and (tmp_path / "cli" / "eval_120.png").is_file()
  assert list(report["methods"]) == ["model", "uncorrected", "poly_sub", "poly_div", "rbf_div",
                                     "median_flat"]
  assert report["frames"]["count"] == 2 and report["frames"]["shape"] == [96, 128, 1]
  model, raw = report["methods"]["model"], report["methods"]["uncorrected"]
  assert model["lpips"] is not None and 0 <= model["lpips"] < 1  # weights converted by make setup
  assert model["f_rms_pct"] < raw["f_rms_pct"] and abs(model["corner_centre_pct"]) < abs(
      raw["corner_centre_pct"]), report["methods"]
  import flatai_jax  # the Python API: same code path, same numbers
  with compilation_cache(tmp_path / "jax_cache"):
    api = flatai_jax.evaluate(run_dir, output_dir=tmp_path / "api", plot=False)
  assert json.loads((tmp_path / "api" / "eval_120.json").read_text()) == report
  assert api["methods"]["model"]["psnr"] == model["psnr"]


def test_synth_and_correct_improve_a_full_frame(run_dir, tmp_path):
  flatai("synth", CONFIG, *TINY, f"--output_dir={tmp_path}", "--num=2", "--full_frame")
  observed, _ = images.read_image(tmp_path / "0000_observed.fits")
  clean, _ = images.read_image(tmp_path / "0000_clean.fits")
  f_true, _ = images.read_image(tmp_path / "0000_F.fits")
  assert observed.shape == clean.shape == (96, 128, 1)
  assert (tmp_path / "contact_sheet.png").is_file()
  before = observed.tobytes()
  out = flatai("correct", tmp_path / "0000_observed.fits", f"--checkpoint={run_dir}",
               f"--output={tmp_path / 'fixed.fits'}", f"--reference={tmp_path / '0000_clean.fits'}")
  assert "error vs reference" in out.stdout
  corrected, meta = images.read_image(tmp_path / "fixed.fits")
  f_pred, _ = images.read_image(tmp_path / "fixed_F.fits")
  assert (tmp_path / "fixed_G.fits").is_file() and (tmp_path / "fixed_preview.png").is_file()
  assert any("flatai correct" in str(h) for h in meta.fits_header["HISTORY"])
  from flatai_jax.correct import error_vs_reference
  assert error_vs_reference(corrected, clean)["mae"] < error_vs_reference(observed, clean)["mae"]
  assert np.abs(f_pred - f_true).mean() < np.abs(1.0 - f_true).mean()
  assert images.read_image(tmp_path / "0000_observed.fits")[0].tobytes() == before  # input untouched
  import flatai_jax
  api = flatai_jax.load(run_dir).correct(observed)  # the Python API: the same code path
  np.testing.assert_allclose(api.corrected, corrected, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(api.F, f_pred, rtol=1e-6)


def test_correct_several_files_survives_a_corrupt_one(run_dir, tmp_path):
  from astropy.io import fits
  rng = np.random.default_rng(0)
  for name in ("a.fits", "c.fits"):
    fits.PrimaryHDU((rng.gamma(3.0, 20.0, (40, 56)) + 500).astype(np.float32)).writeto(tmp_path / name)
  (tmp_path / "b.fits").write_bytes(os.urandom(3000))
  out = flatai("correct", tmp_path / "a.fits", tmp_path / "b.fits", tmp_path / "c.fits",
               f"--checkpoint={run_dir}", f"--out={tmp_path / 'out'}", check=False)
  assert out.returncode == 2
  errors = [l for l in out.stderr.splitlines() if "error:" in l]
  assert len(errors) == 1 and "b.fits" in errors[0] and "truncated or corrupt" in errors[0]
  assert "1 of 3 file(s) failed" in out.stderr
  names = sorted(p.name for p in (tmp_path / "out").iterdir())
  assert names == sorted(f"{s}_corrected{x}" for s in "ac" for x in
                         (".fits", "_F.fits", "_G.fits", "_preview.png"))


def test_rerun_resumes_from_the_workdir(run_dir, tmp_path):
  import shutil
  copy = tmp_path / "run"
  shutil.copytree(run_dir, copy)
  out = flatai("train", CONFIG, *TINY, "--config.train.steps=122", f"--workdir={copy}")
  assert "resumed from step 120" in out.stdout
  assert sorted(int(p.name) for p in (copy / "checkpoints").iterdir() if p.name.isdigit())[-1] == 122


def test_bad_inputs_fail_with_one_clear_message(run_dir, tmp_path):
  cases = {
      "missing.fits": (None, "file not found"),
      "empty.fits": (b"", "file is empty"),
      "junk.fits": (os.urandom(4000), "truncated or corrupt"),
  }
  for name, (content, fragment) in cases.items():
    path = tmp_path / name
    if content is not None:
      path.write_bytes(content)
    out = flatai("correct", path, f"--checkpoint={run_dir}", check=False)
    assert out.returncode == 2, out.stderr
    lines = [l for l in out.stderr.splitlines() if "error:" in l]
    assert len(lines) == 1 and str(path) in lines[0] and fragment in lines[0], out.stderr
  from astropy.io import fits
  nan = np.full((40, 40), np.nan, np.float32)
  fits.PrimaryHDU(nan).writeto(tmp_path / "nan.fits")
  out = flatai("correct", tmp_path / "nan.fits", f"--checkpoint={run_dir}", check=False)
  assert out.returncode == 2 and "all pixels are NaN" in out.stderr
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
      ["empty.fits", "junk.fits", "nan.fits"])  # nothing half-written
  fits.PrimaryHDU(np.ones((40, 40), np.float32)).writeto(tmp_path / "ok.fits")
  out = flatai("correct", tmp_path / "ok.fits", f"--checkpoint={run_dir}",
               f"--output={tmp_path / 'ok.fits'}", check=False)
  assert out.returncode == 2 and "refusing to overwrite the input" in out.stderr
  out = flatai("correct", tmp_path / "ok.fits", f"--checkpoint={tmp_path / 'nothing'}", check=False)
  assert out.returncode == 2 and "no checkpoint" in out.stderr
  out = flatai("frobnicate", check=False)
  assert out.returncode != 0 and "usage: flatai" in out.stderr
