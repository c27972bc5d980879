"""``flatai export --format=onnx``: the shipped whole-frame model as ONNX, onnxruntime vs JAX
within 1e-4 on a binned frame, its preprocessing metadata, the example script, a bad format."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("jax2onnx", reason="jax2onnx not installed (pip install .[onnx])")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install .[onnx])")

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4  # absolute, on log F and on G / sky


def _run(*args, timeout=600):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True,
                        text=True, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
  """The shipped model exported by the command line (its own process: jax2onnx patches JAX)."""
  from flatai_jax import correct
  out = tmp_path_factory.mktemp("onnx") / "model.onnx"
  res = _run("-m", "flatai_jax.main", "export", f"--checkpoint={correct.DEFAULT_MODEL}",
             "--format=onnx", f"--output={out}")
  assert res.returncode == 0, res.stderr
  assert res.stdout.splitlines()[-1].startswith("exported step "), res.stdout
  assert out.is_file() and not list(out.parent.glob(".*")), "atomic write left a temporary"
  return out


def _frame(h=240, w=320, sky=0.05, seed=0):
  """``(H, W) float32``: a vignetted, tilted sky with a few stars and noise."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[:h, :w] / np.float32(max(h, w))
  r2 = (y - 0.35) ** 2 + (x - 0.5) ** 2
  frame = sky * (1.0 - 0.8 * r2) + 0.004 * x
  for _ in range(15):
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    frame += 0.5 * np.exp(-((np.mgrid[:h, :w][0] - cy) ** 2 + (np.mgrid[:h, :w][1] - cx) ** 2) / 3)
  return (frame + 0.002 * rng.standard_normal((h, w))).astype(np.float32)


def test_onnxruntime_matches_jax_on_a_binned_frame(onnx_model):
  import jax

  from flatai_jax import correct, working_grid
  model = correct.load()
  frame = _frame()
  geo = working_grid.geometry(frame.shape, tuple(model.config.data.sensor_hw))
  grid = working_grid.bin_frame(frame, geo)[..., None]
  grids = correct._flips(grid).astype(np.float32)  # (4, 96, 128, 1)
  ref_log_f, ref_g = jax.device_get(correct.make_grid_fn(model.graphdef)(model.params, grids))
  options = ort.SessionOptions()
  options.log_severity_level = 3
  session = ort.InferenceSession(str(onnx_model), options, providers=["CPUExecutionProvider"])
  log_f, g = session.run(["log_f", "g"], {"grids": grids})
  assert log_f.shape == g.shape == grids.shape and log_f.dtype == np.float32
  sky = float(np.median(grid))
  d_log_f = float(np.abs(log_f - ref_log_f).max())
  d_g = float(np.abs(g - ref_g).max()) / sky
  print(f"ONNX vs JAX: max |Δ log F| = {d_log_f:.2e}, max |Δ G| / sky = {d_g:.2e}")
  assert d_log_f <= TOLERANCE and d_g <= TOLERANCE
  assert np.abs(ref_log_f).max() > 1e-3  # the comparison is not between two zero fields

  meta = json.loads(session.get_modelmeta().custom_metadata_map["flatai.preprocessing"])
  assert meta["grid_hw"] == [96, 128] and meta["channels"] == 1 and len(meta["flips"]) == 4
  assert "median" in meta["binning"] and "median" in meta["postprocessing"]
  from flatai_jax import onnx_export
  assert onnx_export.read_preprocessing(onnx_model) == meta


def test_example_script_corrects_a_fits_file(onnx_model, tmp_path):
  from astropy.io import fits
  frame = _frame(h=320, w=240, seed=1)  # portrait: transposed onto the landscape grid
  src = tmp_path / "frame.fits"
  header = fits.Header()
  header["OBJECT"] = "synthetic"
  fits.PrimaryHDU(frame, header).writeto(src)
  res = _run(ROOT / "examples" / "onnx_correct.py", src, onnx_model, timeout=300)
  assert res.returncode == 0, res.stderr
  out = tmp_path / "frame_onnx.fits"
  with fits.open(out) as hdul:
    data, hdr = hdul[0].data, hdul[0].header
  assert data.shape == frame.shape and data.dtype == np.dtype(">f4") and np.isfinite(data).all()
  assert hdr["OBJECT"] == "synthetic" and "onnx_correct" in str(hdr["HISTORY"])
  # corrected = (observed − G) / F with F, G of median 1, 0: the sky level is kept.
  assert abs(np.median(data) / np.median(frame) - 1.0) < 0.2


def test_bad_format_is_one_line_and_exit_2(tmp_path):
  res = _run("-m", "flatai_jax.main", "export", "--checkpoint=x", "--format=tflite",
             f"--output={tmp_path / 'm'}", timeout=120)
  assert res.returncode == 2
  lines = res.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("flatai export: error:") and "format" in lines[0]
  assert not (tmp_path / "m").exists()


def test_the_example_upsamples_like_the_package():
  """examples/onnx_correct.py carries its own copy of the cubic weights (it runs without the
  package); they are the package's."""
  import importlib.util

  from flatai_jax import working_grid
  spec = importlib.util.spec_from_file_location("onnx_correct", ROOT / "examples" /
                                                "onnx_correct.py")
  example = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(example)
  for args in ((300, 96, 4, 42), (1000, 128, 8, 12), (77, 10, 8, 1)):
    np.testing.assert_allclose(example.keys_weights(*args), working_grid._keys_weights(*args),
                               rtol=0, atol=1e-12)
