"""The shipped whole-frame model (configs/frame.py) on the frames that must not be harmed.

The ``flat`` correction must never denoise, never invent structure and never eat the
sky pedestal: a plain noise frame comes out with its noise σ and its sky level, the
background no less flat than it came in, and the correction carries no periodic
(tile) pattern.
"""
from pathlib import Path

import numpy as np
import pytest

import flatai_jax
from flatai_jax import correct
from flatai_jax.evaluation import quality


@pytest.fixture(scope="module")
def model():
  return flatai_jax.load()


def test_the_default_model_is_the_whole_frame_model(model):
  assert model.config.data.whole_frame and model.config.task == "flat"
  assert Path(model.checkpoint).name == "frame_model"


def test_noise_frame_keeps_its_noise_and_sky(model):
  rng = np.random.default_rng(0)
  image = (1000.0 + rng.normal(0.0, 50.0, (2000, 3000))).astype(np.float32)[..., None]
  out = model.correct(image)
  ratio = quality.noise_sigma(out.corrected[..., 0]) / quality.noise_sigma(image[..., 0])
  assert abs(ratio - 1.0) <= 0.02, ratio
  sky = float(np.median(out.corrected)) / float(np.median(image))
  assert abs(sky - 1.0) <= 0.01, sky
  before = correct.background_nonuniformity(image)
  after = correct.background_nonuniformity(out.corrected)
  assert after <= before * 1.5 + 1e-3, (before, after)
  # G carries no pixel noise: its pixel-to-pixel σ is far below the frame's
  assert quality.noise_sigma(out.G[..., 0]) < 0.01 * 50.0


def test_correction_has_no_periodic_pattern(model):
  """Neither F nor the corrected frame shows the grid's cell period (or any tile period): the
  power at the cell frequency and its harmonics is not above the spectrum's local floor."""
  rng = np.random.default_rng(1)
  h, w = 960, 1280
  yy, xx = np.mgrid[0:h, 0:w]
  f_true = 1.0 - 0.25 * (((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (w / 2)) ** 2)
  image = ((200.0 + rng.normal(0, 5.0, (h, w))) * f_true).astype(np.float32)[..., None]
  out = model.correct(image)
  cell = w // 128  # 10 px per grid cell
  for plane in (out.F[..., 0], out.corrected[..., 0]):
    for axis in (0, 1):
      a = np.moveaxis(plane, axis, -1).astype(np.float64)
      a = (a - a.mean(-1, keepdims=True)) * np.hanning(a.shape[-1])
      power = (np.abs(np.fft.rfft(a, axis=-1)) ** 2).mean(0)
      n = a.shape[-1]
      for k in (1, 2, 3, 4):
        b = int(round(k * n / cell))
        if b + 12 >= power.size:
          continue
        floor = np.median(np.r_[power[b - 12:b - 2], power[b + 3:b + 13]])
        assert power[b - 1:b + 2].max() <= 3.0 * floor, (axis, k, power[b - 1:b + 2], floor)


def test_strength_blends_towards_no_correction(model):
  rng = np.random.default_rng(2)
  h, w = 240, 320
  yy, xx = np.mgrid[0:h, 0:w]
  image = (100.0 + 0.05 * xx + rng.normal(0, 1.0, (h, w))).astype(np.float32)[..., None]
  none = model.correct(image, strength=0.0)
  np.testing.assert_allclose(none.corrected, image, rtol=1e-6)
  full = model.correct(image)
  half = model.correct(image, strength=0.5)
  np.testing.assert_allclose(half.F, np.sqrt(full.F), rtol=1e-5)
  np.testing.assert_allclose(half.G, 0.5 * full.G, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="strength"):
    model.correct(image, strength=1.5)


def test_confidence_is_written_beside_f_and_g(model, tmp_path):
  from astropy.io import fits
  path = tmp_path / "frame.fits"
  rng = np.random.default_rng(3)
  fits.PrimaryHDU((500.0 + rng.normal(0, 10.0, (300, 400))).astype(np.float32)).writeto(path)
  report = model.correct_file(path, out_dir=tmp_path / "out", print_fn=lambda *a, **k: None)
  conf = fits.getdata(report["outputs"]["confidence"])
  assert conf.shape == (300, 400) and 0.0 <= conf.min() and conf.max() <= 1.0


REAL = Path(__file__).resolve().parents[1] / "evaluation_data" / "real"


@pytest.mark.skipif(not (REAL / "flat_huntsman_asi183_g.fits").is_file(),
                    reason="real-data set not built (python data_pipelines/build_real_eval.py)")
def test_real_master_flat_keeps_its_noise_and_gets_flatter(model):
  from flatai_jax.evaluation import real
  flat = real.read_plane(REAL / "flat_huntsman_asi183_g.fits")
  out = model.correct(flat)
  ratio = quality.noise_sigma(out.corrected[..., 0]) / quality.noise_sigma(flat[..., 0])
  assert abs(ratio - 1.0) <= 0.02, ratio
  assert correct.background_nonuniformity(out.corrected) <= correct.background_nonuniformity(flat)
