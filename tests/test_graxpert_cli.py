"""``flatai-graxpert``: GraXpert's command line as Siril builds it, its stderr protocol, the
files it writes, and the background model's Subtraction / Division."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from flatai_jax import background_model, correct, graxpert_cli

ROOT = Path(__file__).resolve().parents[1]
H, W = 300, 400


def siril_bge_argv(exe, path, smoothing=0.5, mode="Subtraction", keep_bg=True):
  """The argument vector of Siril's ``do_graxpert`` (``src/filters/graxpert.c``, Siril 1.4,
  lock042/siril@f0e5c150) for AI background extraction, in its order::

    my_argv[nb++] = g_strdup(com.pref.graxpert_path);
    my_argv[nb++] = g_strdup("-cli");
    my_argv[nb++] = g_strdup("-cmd");
    my_argv[nb++] = g_strdup("background-extraction");
    my_argv[nb++] = g_strdup("-correction");
    my_argv[nb++] = g_strdup_printf("%s", args->bg_mode == GRAXPERT_SUBTRACTION ? "Subtraction" : "Division");
    my_argv[nb++] = g_strdup("-smoothing");
    my_argv[nb++] = g_strdup_printf("%f", args->bg_smoothing);
    my_argv[nb++] = g_strdup("-gpu");
    my_argv[nb++] = g_strdup(args->use_gpu ? "true" : "false");
    if (args->keep_bg) my_argv[nb++] = g_strdup("-bg");
    my_argv[nb++] = g_strdup("-output");
    my_argv[nb++] = g_strdup_printf("%s", outpath);   // path without its extension
    my_argv[nb++] = g_strdup_printf("%s", path);      // com.wd/graxpert_<name>.fits

  so the output Siril reads back is the input path itself.
  """
  outpath = os.path.splitext(str(path))[0]
  return [*exe, "-cli", "-cmd", "background-extraction", "-correction", mode, "-smoothing",
          f"{smoothing:f}", "-gpu", "false", *(["-bg"] if keep_bg else []), "-output", outpath,
          str(path)]


def siril_deconv_argv(exe, path, command="deconv-obj"):
  """Siril's ``do_graxpert`` for ``GRAXPERT_DECONV`` / ``GRAXPERT_DECONV_STELLAR``: ``-cli -cmd
  deconv-obj|deconv-stellar -output OUTPATH -gpu BOOL -strength %.2f -psfsize %.2f PATH``."""
  outpath = os.path.splitext(str(path))[0]
  return [*exe, "-cli", "-cmd", command, "-output", outpath, "-gpu", "false", "-strength",
          "0.50", "-psfsize", "0.30", str(path)]


EXE = [sys.executable, "-m", "flatai_jax.graxpert_cli"]


def run(argv):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("FLATAI_CHECKPOINT", None)
  return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)


def siril_reads(stderr: str) -> dict:
  """What Siril's ``exec_prog_graxpert`` takes from stderr: the ``Progress: `` values
  (``g_ascii_strtod``), whether a line holds ``ERROR`` / ``Finished``, the INFO messages
  (9 characters after ``INFO``)."""
  lines = stderr.splitlines()
  progress = [float(re.match(r"[-+0-9.]*", l.split("Progress: ", 1)[1]).group(0))
              for l in lines if "Progress: " in l]
  return {"progress": progress, "error": [l.split("ERROR", 1)[1][4:] for l in lines if "ERROR" in l],
          "finished": any("Finished" in l or "finished" in l for l in lines),
          "info": [l.split("INFO", 1)[1][5:] for l in lines if "INFO" in l]}


def _vignetted_frame(seed=0):
  """``(H, W)`` sky 0.2 with 30 % vignetting and a few stars, in [0, 1]."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:H, 0:W]
  r2 = ((xx - W / 2) / (W / 2)) ** 2 + ((yy - H / 2) / (W / 2)) ** 2
  sky = 0.2 + rng.normal(0, 0.002, (H, W))
  for x, y in rng.uniform(20, 280, (12, 2)):
    sky += 0.3 * np.exp(-0.5 * ((xx - x) ** 2 + (yy - y) ** 2) / 1.5 ** 2)
  return sky * (1.0 - 0.3 * r2)


def test_log_lines_parse_as_siril_parses_them():
  line = graxpert_cli.log_line("INFO", "Progress: 42%")
  assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} MainProcess root INFO     "
                      r"Progress: 42%", line)
  assert siril_reads(line)["progress"] == [42.0]
  assert siril_reads(graxpert_cli.log_line("ERROR", "bad.fits: file not found"))["error"] == [
      "bad.fits: file not found"]
  assert siril_reads(graxpert_cli.log_line("INFO", "hello"))["info"] == ["hello"]


def test_file_names_are_graxperts(tmp_path):
  path = str(tmp_path / "graxpert_m31.fits")
  argv = siril_bge_argv([], path)
  args = graxpert_cli.parser().parse_args(argv)
  assert (args.cli, args.command, args.correction, args.smoothing, args.bg) == (
      True, "background-extraction", "Subtraction", 0.5, True)
  assert graxpert_cli.save_paths(args.filename, args.output, args.bg) == {
      "image": Path(path), "background": tmp_path / "graxpert_m31_background.fits"}
  assert graxpert_cli.save_paths("a/b.xisf", "out", False) == {"image": Path("a/out.xisf")}
  assert graxpert_cli.save_paths("a/b.tif", None, False) == {"image": Path("a/b_GraXpert.fits")}


def test_division_and_subtraction_are_exact_for_their_own_artifact():
  rng = np.random.default_rng(1)
  clean = (0.2 + rng.normal(0, 0.01, (H, W, 1))).astype(np.float32)
  f = np.linspace(0.7, 1.1, W, dtype=np.float32)[None, :, None] * np.ones((H, 1, 1), np.float32)
  g = np.linspace(0.0, 0.05, H, dtype=np.float32)[:, None, None] * np.ones((1, W, 1), np.float32)
  one, zero = np.ones_like(f), np.zeros_like(g)
  b = background_model.background_model(clean, f, zero)
  out = background_model.apply_background(clean * f, b, "Division")
  np.testing.assert_allclose(out / out.mean(), clean / clean.mean(), rtol=1e-5)
  b = background_model.background_model(clean, one, g)
  out = background_model.apply_background(clean + g, b, "Subtraction")
  np.testing.assert_allclose(out - out.mean(), clean - clean.mean(), atol=1e-5)
  with pytest.raises(ValueError, match="Subtraction, Division"):
    background_model.apply_background(clean, b, "Median")


def test_smoothing_keeps_a_plane_and_blurs_a_step():
  plane = np.broadcast_to(np.linspace(1.0, 2.0, W, dtype=np.float32)[None, :, None],
                          (H, W, 1)).copy()
  assert background_model.smooth_background(plane, 0.0) is plane
  np.testing.assert_allclose(background_model.smooth_background(plane, 0.5)[40:-40, 40:-40],
                             plane[40:-40, 40:-40], rtol=2e-3)
  step = np.where(np.arange(W) < W // 2, 1.0, 2.0).astype(np.float32)[None, :, None] * \
      np.ones((H, 1, 1), np.float32)
  smooth = background_model.smooth_background(step, 1.0)
  # σ = 20 px on the 256-px image = 31 px here: 1 σ left of the step is ~84 % of the way down.
  assert 1.1 < smooth[H // 2, W // 2 - 31, 0] < 1.25, smooth[H // 2, W // 2 - 31, 0]


def test_siril_background_extraction_argv_end_to_end(tmp_path):
  """16-bit FITS as Siril saves it, the exact argv: exit 0, Progress lines, no ERROR, the input
  path replaced by a float32 image in [0, 1] of the same shape with a flatter background, and
  the background model beside it."""
  frame = _vignetted_frame()
  path = tmp_path / "graxpert_m31.fits"
  header = fits.Header({"OBJECT": "M31", "EXPTIME": 120.0})
  fits.PrimaryHDU(np.round(frame * 65535).astype(np.uint16), header=header).writeto(path)
  out = run(siril_bge_argv(EXE, path, mode="Division"))
  assert out.returncode == 0, out.stderr
  seen = siril_reads(out.stderr)
  assert seen["error"] == [] and seen["finished"], out.stderr
  assert seen["progress"][-1] == 100 and all(p > 0 for p in seen["progress"])
  assert any(m.startswith("correction type Division, smoothing 0.5") for m in seen["info"])
  with fits.open(path) as hdul:
    result, head = hdul[0].data, hdul[0].header
  assert result.dtype == np.dtype(">f4") and result.shape == (H, W)
  assert head["OBJECT"] == "M31" and "flatai-graxpert" in str(head["HISTORY"])
  before = correct.background_nonuniformity(frame[..., None])
  after = correct.background_nonuniformity(result[..., None])
  assert after < 0.5 * before, (before, after)
  assert 0.15 < float(np.median(result)) < 0.25  # [0, 1] units, GraXpert's scale
  bg = fits.getdata(tmp_path / "graxpert_m31_background.fits")
  assert bg.shape == (H, W) and bg.min() < 0.8 * bg.max()  # the vignetting, not a constant
  assert sorted(p.name for p in tmp_path.iterdir()) == ["graxpert_m31.fits",
                                                        "graxpert_m31_background.fits"]


def test_version_help_and_errors_as_siril_sees_them(tmp_path):
  out = run([*EXE, "-v"])
  assert out.returncode == 0
  # Siril: strstr("version: "), then up to the next space.
  version = out.stderr.split("version: ", 1)[1].split(" ", 1)[0]
  assert version == "3.1.0"
  out = run([*EXE, "-cmd", "background-extraction", "--help"])
  assert out.returncode == 0 and "available remotely: [" in out.stderr
  frame = tmp_path / "graxpert_x.fits"
  fits.PrimaryHDU(_vignetted_frame().astype(np.float32)).writeto(frame)
  original = frame.read_bytes()
  out = run(siril_deconv_argv(EXE, frame, "deconv-stellar"))  # the shipped model is flat-only
  seen = siril_reads(out.stderr)
  assert out.returncode == 1 and not seen["finished"]
  assert len(seen["error"]) == 1 and "needs a psf or combined model" in seen["error"][0]
  assert frame.read_bytes() == original
  out = run([*EXE, "-cli", str(tmp_path / "missing.fits")])
  assert out.returncode == 1 and siril_reads(out.stderr)["error"] == [
      f"{tmp_path / 'missing.fits'}: file not found"]
  out = run([*EXE, "-cli", "-correction", "Median", str(frame)])
  assert out.returncode == 2 and "invalid choice: 'Median'" in siril_reads(out.stderr)["error"][0]


def test_deconvolution_blends_a_psf_model_by_strength(tiny):
  """deconv-obj through a tiny psf model: strength 0 is the input, 1 the model's correction."""
  from flatai_jax.train_step import split_model
  config = tiny("psf")
  graphdef, params = split_model(config)
  corrector = correct.Corrector(config, graphdef, params, 0, "tiny-psf")
  image = _vignetted_frame()[:64, :96, None].astype(np.float32)
  full = corrector.correct(image).corrected
  for strength, expected in ((0.0, image), (1.0, full), (0.5, 0.5 * (image + full))):
    args = graxpert_cli.parser().parse_args(["-cli", "-cmd", "deconv-obj", "-strength",
                                             str(strength), "x.fits"])
    got = graxpert_cli.run_deconvolution(args, corrector, image)["image"]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
