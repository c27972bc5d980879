"""The ``flatai`` command end to end on a tiny config: train → evaluate → synth → correct,
resume, and the bad-input contract (one message naming the file, non-zero exit)."""
import contextlib
import json
import os
import re
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
def trained(tmp_path_factory):
  """``(workdir, completed process)`` of a 120-step tiny training."""
  workdir = tmp_path_factory.mktemp("run")
  out = flatai("train", CONFIG, *TINY, "--config.train.steps=120", f"--workdir={workdir}")
  return workdir, out


@pytest.fixture(scope="module")
def run_dir(trained):
  return trained[0]


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
  from flatai_jax.evaluation import graxpert
  assert list(report["methods"]) == ["model", "uncorrected", "poly_sub", "poly_div", "rbf_div",
                                     "median_flat"] + (
      ["graxpert_sub", "graxpert_div"] if graxpert.available() else [])
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
  # another command's flag is refused, not ignored (`--output_dir` wrote beside the input)
  out = flatai("correct", tmp_path / "ok.fits", f"--checkpoint={run_dir}",
               f"--output_dir={tmp_path / 'elsewhere'}", check=False)
  assert out.returncode == 2 and out.stderr.splitlines() == [
      "flatai correct: error: --output_dir is not a flag of this command "
      "(flatai correct --help lists its flags)"], out.stderr
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
      ["empty.fits", "junk.fits", "nan.fits", "ok.fits"])


ABSL_RECORD = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d")  # absl's log line: I1201 20:30:34.678 …


def test_help_lists_the_commands_and_each_commands_own_flags():
  from flatai_jax.main import COMMANDS
  overview = flatai("--help")
  assert overview.returncode == 0 and flatai("-h").stdout == overview.stdout
  for name, command in COMMANDS.items():  # one line each: name, then its description
    assert re.search(rf"^  {name} +{re.escape(command.summary)}$", overview.stdout, re.M), name
  assert "--helpfull" not in overview.stdout and "absl.app" not in overview.stdout
  bare = flatai(check=False)
  assert bare.returncode == 2 and bare.stderr == overview.stdout and bare.stdout == ""
  own = {"correct": {"checkpoint", "step", "output", "out", "task", "reference", "tile", "overlap",
                     "strength", "cfa", "input_stretch", "method", "target", "config", "session",
                     "seeing_share"},
         "train": {"config", "workdir", "coordinator_address", "num_processes", "process_id"},
         "build_dataset": {"input_dir", "output_dir", "min_size", "val_percent"},
         "gui": {"port", "checkpoint"},
         "evaluate": {"checkpoint", "workdir", "step", "output_dir", "real_dir", "task", "size",
                      "cases"}}
  for name, expected in own.items():
    for flag in ("--help", "-h"):
      out = flatai(name, flag)
      assert out.returncode == 0 and out.stdout.startswith(f"usage: flatai {name} ")
      section = out.stdout.split("\nflags:\n")[1].split("\n\n")[0]
      listed = set(re.findall(r"^  --(?:\[no\])?(\w+)", section, re.M))
      assert listed == expected == set(COMMANDS[name].flags), (name, listed)
  out = flatai("build_dataset", "--help").stdout
  assert re.search(r"^  --val_percent=INT .*\(default: 10\)$", out, re.M), out
  assert re.search(r"^  --min_size=INT .*\(default: 128\)$", out, re.M), out


def test_version_and_a_bad_flag():
  from importlib import metadata
  out = flatai("--version")
  assert out.stdout == f"flatai {metadata.version('flatai-jax')}\n"
  assert re.fullmatch(r"flatai \d+\.\d+\.\d+\n", out.stdout)
  bad = flatai("train", "--bogus=1", check=False)
  assert bad.returncode == 2 and bad.stdout == ""
  assert bad.stderr.splitlines() == ["flatai train: error: Unknown command line flag 'bogus'"]
  # flag names with dashes are the same flags (--input-stretch as the issue and GraXpert write it)
  dashed = flatai("correct", "frame.fits", "--input-stretch=gamma", check=False)
  assert dashed.returncode == 2 and dashed.stderr.splitlines() == [
      "flatai correct: error: --input_stretch=gamma must be auto, linear, srgb or mtf:M "
      "(flatai correct --help lists its flags)"]


def test_training_prints_progress_and_results_not_library_records(trained):
  _, out = trained
  assert not [l for l in out.stderr.splitlines() if ABSL_RECORD.match(l)], out.stderr
  assert "Sharding info" not in out.stderr
  lines = out.stdout.splitlines()
  assert len(lines) == 10, out.stdout  # mesh, model, 6 progress lines, 2 result lines
  assert lines[0].startswith("mesh {'data': 8, 'fsdp': 1} over 8 cpu devices")
  assert lines[1].startswith("model: flat task")
  steps = [int(re.fullmatch(r"step (\d+)/120  [\d.]+ steps/s  ETA \d+s  loss=\S+ lr=\S+", l)[1])
           for l in lines[2:8]]
  assert steps == [20, 40, 60, 80, 100, 120]
  assert lines[8].startswith("step 120: ") and " learning_rate " in lines[8]
  assert re.fullmatch(r"held-out crops: .*mae \S+ \(uncorrected \S+\).*", lines[9])


def test_metrics_log_the_scheduled_learning_rate_and_steps_per_sec(trained):
  """``learning_rate`` at report step s is the schedule's value for update s − 1
  (TINY: 5 warmup steps to 0.003, cosine to 1 % of it at step 120)."""
  import math

  import ml_collections

  from flatai_jax import metrics
  from flatai_jax.train_step import learning_rate_schedule
  workdir, out = trained
  rows = metrics.read_jsonl(workdir / "metrics.jsonl")
  config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
  schedule = learning_rate_schedule(config)
  printed = [l for l in out.stdout.splitlines() if re.match(r"step \d+/", l)]
  assert [r["step"] for r in rows] == [20, 40, 60, 80, 100, 120] and len(printed) == 6
  for row, line in zip(rows, printed):
    i = row["step"] - 1
    cosine = 0.5 * (1 + math.cos(math.pi * (i - 5) / (120 - 5)))
    assert row["learning_rate"] == pytest.approx(0.003 * (0.01 + 0.99 * cosine), rel=1e-5)
    assert row["learning_rate"] == float(schedule(i))
    assert f" lr={row['learning_rate']:.4g}" in line
    assert row["steps_per_sec"] > 0 and f"  {row['steps_per_sec']:.2f} steps/s  " in line


def test_verbosity_1_shows_library_records(run_dir, tmp_path):
  out = flatai("export", f"--checkpoint={run_dir}", f"--output={tmp_path / 'model'}",
               "--verbosity=1")
  records = [l for l in out.stderr.splitlines() if ABSL_RECORD.match(l)]
  assert any("checkpoint" in l and l.startswith("I") for l in records), out.stderr
  assert (tmp_path / "model" / "model.json").is_file()
  assert out.stdout.splitlines()[-1].startswith("exported step 120 of ")


def test_correct_takes_any_file_name_the_os_allows(tmp_path):
  """A non-ASCII name in a folder with spaces, corrected by the shipped model; HISTORY is
  ASCII with the name escaped."""
  from astropy.io import fits
  folder = tmp_path / "dir with spaces"
  folder.mkdir()
  rng = np.random.default_rng(3)
  fits.PrimaryHDU((rng.gamma(3.0, 20.0, (64, 96)) + 500).astype(np.float32)).writeto(
      folder / "my frame é.fits")
  out = flatai("correct", folder / "my frame é.fits")
  assert not [l for l in out.stderr.splitlines() if ABSL_RECORD.match(l)], out.stderr
  for suffix in ("_corrected.fits", "_corrected_F.fits", "_corrected_G.fits",
                 "_corrected_confidence.fits", "_corrected_preview.png"):
    assert (folder / f"my frame é{suffix}").is_file(), suffix
    assert f": {folder / f'my frame é{suffix}'}" in out.stdout
  history = " ".join(fits.getheader(folder / "my frame é_corrected.fits")["HISTORY"])
  assert re.fullmatch(r"flatai correct: model=frame_model step=\d+ task=flat grid=96x128 "
                      r"input=my frame \\xe9\.fits", history), history


def test_a_workdir_in_use_refuses_a_second_run_and_kill_9_frees_it(tmp_path):
  import signal
  import socket
  import time
  workdir = tmp_path / "run"
  train = ["train", CONFIG, *TINY, "--config.train.checkpoint_every=2", f"--workdir={workdir}"]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  first = subprocess.Popen([sys.executable, "-m", "flatai_jax.main", *train,
                            "--config.train.steps=100000"], cwd=ROOT, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    saved = lambda: sorted(int(p.name) for p in (workdir / "checkpoints").glob("*")
                           if p.name.isdigit())
    deadline = time.time() + 600
    while not ((workdir / "checkpoints").is_dir() and saved()):
      assert first.poll() is None and time.time() < deadline, "the first run did not save"
      time.sleep(1)
    second = flatai(*train, "--config.train.steps=100000", check=False)
    assert second.returncode == 2 and second.stdout == ""
    assert second.stderr.splitlines() == [
        f"flatai train: error: {workdir} is in use by process {first.pid} on host "
        f"{socket.gethostname()} (a running flatai train); wait for it to finish, stop it, "
        "or choose another --workdir"]
  finally:
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
  last = saved()[-1]  # the third start resumes there and, at its last step, stops at once
  third = flatai(*train, f"--config.train.steps={last}")
  assert f"resumed from step {last}" in third.stdout and last > 0
  assert f"training steps {last}..{last}" in third.stdout


@pytest.mark.parametrize("state", ["missing", "unfinished"])
def test_training_on_a_missing_or_unfinished_dataset_is_one_line(tmp_path, state):
  data = tmp_path / "data"
  if state == "unfinished":  # what a build stopped before its end leaves
    (data / "flatai_images" / "incomplete.1234_1.0.0").mkdir(parents=True)
  out = flatai("train", CONFIG, *TINY, "--config.data.source=images",
               f"--config.data.tfds_dir={data}", f"--workdir={tmp_path / 'run'}", check=False)
  build = f"build one with `flatai build_dataset --input_dir=IMAGES --output_dir={data}`"
  problem = {"missing": "dataset folder not found",
             "unfinished": "no finished dataset in this folder (its build did not complete, "
                           "or it is not a dataset folder)"}[state]
  assert out.returncode == 2 and out.stdout == ""
  assert out.stderr.splitlines() == [f"flatai train: error: {data}: {problem}; {build}"]


def test_build_dataset_of_one_image_notes_the_empty_validation_split(tmp_path):
  from astropy.io import fits
  (tmp_path / "in").mkdir()
  fits.PrimaryHDU(np.random.default_rng(0).random((80, 96)).astype(np.float32)).writeto(
      tmp_path / "in" / "img3.fits")  # its hash puts it in the validation share
  out = flatai("build_dataset", f"--input_dir={tmp_path / 'in'}",
               f"--output_dir={tmp_path / 'data'}", "--val_percent=25", "--min_size=32")
  assert out.stdout.splitlines()[:2] == [
      "examples: {'train': 1, 'validation': 0}",
      "note: all 1 image(s) fell in the 25 % validation share; they all train and the "
      "validation split is empty"]
  assert out.stderr == ""
