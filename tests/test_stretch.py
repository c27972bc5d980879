"""Stretched inputs: the sRGB and MTF curves, the decision of ``auto``, and corrections of a
stretched frame that equal the linear frame's correction re-stretched."""
import numpy as np
import pytest
from PIL import Image

from flatai_jax import correct, stretch
from flatai_jax.io import images

H, W = 300, 400


def test_curves_invert_exactly_and_mtf_maps_m_to_one_half():
  x = np.linspace(0.0, 1.0, 1001)
  np.testing.assert_allclose(stretch.srgb_to_linear(stretch.linear_to_srgb(x)), x, atol=1e-12)
  for m in (0.02, 0.25, 0.8):
    np.testing.assert_allclose(stretch.mtf(1 - m, stretch.mtf(m, x)), x, atol=1e-12)
    assert stretch.mtf(m, m) == pytest.approx(0.5)
  assert stretch.linear_to_srgb(0.18) == pytest.approx(0.4614, abs=1e-4)  # 18 % grey


def test_auto_decides_from_the_file_in_one_line():
  assert stretch.resolve("auto", "fits", ">f4") == ("linear", None, None)
  assert stretch.resolve("auto", "png", "uint16")[:2] == ("linear", None)
  kind, m, line = stretch.resolve("auto", "jpeg", "uint8")
  assert (kind, m) == ("srgb", None) and line.startswith("input stretch: srgb (auto: an 8-bit JPEG")
  assert stretch.resolve("mtf:0.05", "tiff", "float32")[:2] == ("mtf", 0.05)
  for bad in ("mtf", "mtf:1.5", "gamma", "srgb:2"):
    with pytest.raises(ValueError, match="input_stretch"):
      stretch.parse(bad)


def _linear_frame(seed=0):
  """``(H, W, 1)`` linear sky 0.05 with 30 % vignetting and stars, in [0, 1]."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:H, 0:W]
  f_true = 1.0 - 0.3 * (((xx - W / 2) / (W / 2)) ** 2 + ((yy - H / 2) / (W / 2)) ** 2)
  sky = 0.05 + rng.normal(0, 0.0015, (H, W))
  for x, y in rng.uniform(20, 280, (12, 2)):
    sky += 0.6 * np.exp(-0.5 * ((xx - x) ** 2 + (yy - y) ** 2) / 1.5 ** 2)
  return (sky * f_true)[..., None].astype(np.float32)


@pytest.fixture(scope="module")
def corrector():
  import flatai_jax
  return flatai_jax.load()


def test_8bit_srgb_png_is_corrected_in_linear_light(corrector, tmp_path):
  """An sRGB-encoded 8-bit PNG with auto: one line says so; the output decoded to linear equals
  the linear correction of the same 8-bit data (within 1 % of the range), F that of the linear
  frame (within 0.01); the PNG read as linear is corrected wrongly."""
  linear = _linear_frame()
  encoded = np.clip(np.rint(stretch.linear_to_srgb(linear[..., 0]) * 255), 0, 255)
  Image.fromarray(encoded.astype(np.uint8)).save(tmp_path / "frame.png")
  # The linear frame as 8 bits can carry it (quantisation alone moves star cores by ~1 %).
  decoded = stretch.srgb_to_linear(encoded / 255.0)[..., None].astype(np.float32)
  reference = corrector.correct(decoded).corrected[..., 0]
  f_linear = corrector.correct(linear).F[..., 0]
  results = {}
  for mode in ("auto", "linear"):
    lines = []
    report = corrector.correct_file(tmp_path / "frame.png", output=tmp_path / f"{mode}.tif",
                                    input_stretch=mode,
                                    print_fn=lambda *a, **k: lines.append(" ".join(a)))
    out, _ = images.read_image(report["outputs"]["corrected"])
    results[mode] = out[..., 0]
    if mode == "auto":  # F is written in linear units: the flat of the unquantised linear frame
      f_out, _ = images.read_image(report["outputs"]["F"])
      assert np.abs(f_out[..., 0] - f_linear).max() <= 0.01
    if mode == "auto":
      assert any("frame.png: input stretch: srgb (auto: an 8-bit PNG is a display image)" in l
                 for l in lines), lines
  span = float(np.percentile(linear, 99.9) - np.percentile(linear, 0.1))
  auto_error = np.abs(stretch.srgb_to_linear(results["auto"]) - reference).max() / span
  as_linear = np.abs(stretch.srgb_to_linear(results["linear"]) - reference).max() / span
  assert auto_error <= 0.01, auto_error
  assert as_linear > 3 * auto_error, (auto_error, as_linear)


def test_mtf_stretched_frame_equals_the_linear_correction_restretched(corrector, tmp_path):
  """A float TIFF stretched with MTF (midtones 0.05) and --input_stretch=mtf:0.05: the result
  equals mtf(0.05, linear correction) within 1 % of the range."""
  m = 0.05
  linear = _linear_frame(seed=1)
  images.write_image(tmp_path / "stretched.tif", stretch.mtf(m, linear))
  report = corrector.correct_file(tmp_path / "stretched.tif", out_dir=tmp_path,
                                  input_stretch=f"mtf:{m}", print_fn=lambda *a, **k: None)
  out, _ = images.read_image(report["outputs"]["corrected"])
  expected = stretch.mtf(m, corrector.correct(linear).corrected)
  assert np.abs(out - expected).max() <= 0.01, np.abs(out - expected).max()
  flat_before = correct.background_nonuniformity(stretch.mtf(m, linear))
  assert correct.background_nonuniformity(out) < 0.5 * flat_before


def _starry_linear_frame(seed=0):
  """``(300, 300, 1)`` linear sky 0.05, 30 % vignetting, 60 stars of FWHM 3 px with peaks from
  0.02 to 0.8 (a real field's brightness range), in [0, 1]."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:H, 0:W]
  f_true = 1.0 - 0.3 * (((xx - W / 2) / (W / 2)) ** 2 + ((yy - H / 2) / (W / 2)) ** 2)
  sky = 0.05 + rng.normal(0, 0.0015, (H, W))
  for (x, y), peak in zip(rng.uniform(10, 290, (60, 2)), 10 ** rng.uniform(-1.7, -0.1, 60)):
    sky += peak * np.exp(-0.5 * ((xx - x) ** 2 + (yy - y) ** 2) / (3.0 / 2.355) ** 2)
  return (sky * f_true)[..., None].astype(np.float32)


@pytest.mark.parametrize("m", [0.2, 0.05, 0.01])
def test_midtones_measured_on_the_stars(m):
  """The balance of a known MTF stretch is recovered from the stars within 30 % (the
  correction needs far less, next test); the linear frame itself reads as ≈ 0.5 (identity)."""
  linear = _starry_linear_frame(seed=3)
  estimated, n = stretch.estimate_midtones(stretch.mtf(m, linear[..., 0]))
  assert n >= stretch.MIN_STARS and abs(estimated / m - 1) <= 0.3, (estimated, n)
  identity, _ = stretch.estimate_midtones(linear[..., 0])
  assert abs(identity - 0.5) <= 0.1, identity


def test_auto_keeps_linear_frames_linear():
  """Integer frames, float frames outside [0, 1] or with a dark median, and float frames whose
  stars show no stretch all stay linear without a note."""
  linear = _starry_linear_frame(seed=4)
  assert stretch.resolve("auto", "fits", ">f4", linear) == ("linear", None, None)
  assert stretch.resolve("auto", "fits", ">f4", 1000 * linear) == ("linear", None, None)
  assert stretch.resolve("auto", "fits", "uint16", stretch.mtf(0.05, linear)) == (
      "linear", None, None)
  lifted = (linear + 0.2) / 1.2   # bright linear sky: display level, but stars unstretched
  assert stretch.resolve("auto", "fits", ">f4", lifted)[:2] == ("linear", None)


def test_auto_mtf_frame_equals_the_linear_correction_restretched(corrector, tmp_path):
  """Done-when of the workflow issue: a float TIFF stretched with MTF (midtones 0.05),
  corrected with --input_stretch=auto, equals mtf(0.05, linear correction) within 1 % of the
  range, and one line names the measured balance."""
  m = 0.05
  linear = _starry_linear_frame(seed=5)
  images.write_image(tmp_path / "stretched.tif", stretch.mtf(m, linear))
  lines = []
  report = corrector.correct_file(tmp_path / "stretched.tif", out_dir=tmp_path,
                                  input_stretch="auto",
                                  print_fn=lambda *a, **k: lines.append(" ".join(a)))
  assert any("input stretch: mtf:" in line and "(auto: bright stars are wider" in line
             for line in lines), lines
  out, _ = images.read_image(report["outputs"]["corrected"])
  expected = stretch.mtf(m, corrector.correct(linear).corrected)
  assert np.abs(out - expected).max() <= 0.01, np.abs(out - expected).max()
