"""``flatai-graxpert``: GraXpert's command line on FlatAI-JAX models, so Siril can drive it.

Siril runs GraXpert as an external program (``src/filters/graxpert.c``, Siril 1.4,
``do_graxpert``) with this argument vector, and loads the file written under
``-output`` (the same path it gave as input) when it is done::

  GRAXPERT -cli -cmd background-extraction -correction Subtraction|Division -smoothing 0.500000
           -gpu true|false [-ai_version V] [-bg] -output WD/graxpert_NAME WD/graxpert_NAME.fits
  GRAXPERT -cli -cmd background-extraction -preferences_file WD/siril-graxpert.pref [-bg] -output …
  GRAXPERT -cli -cmd deconv-obj|deconv-stellar -output OUT -gpu true -strength 0.50 -psfsize 0.30
           [-ai_version V] IN.fits
  GRAXPERT -v                          (Siril reads "version: X.Y.Z " from stderr; ≥ 3.1.0 for deconv)
  GRAXPERT -cmd background-extraction --help   (Siril reads "available remotely: [...]")

Point Siril's GraXpert path (Preferences → Miscellaneous) at the ``flatai-graxpert`` executable.

What it does (GraXpert's ``graxpert/main.py`` and ``cmdline_tools.py``, release 3.x):

- ``background-extraction`` → the flat correction of the model (``FLATAI_CHECKPOINT`` or
  ``-checkpoint DIR``, default the shipped whole-frame model); its F and G become GraXpert's
  background model B and are removed by ``-correction`` (see :mod:`flatai_jax.background_model`);
  ``-smoothing`` blurs B as GraXpert does; ``-bg`` also writes B.
- ``deconv-obj`` / ``deconv-stellar`` → the aberration (psf) correction of a ``psf`` or
  ``combined`` model, blended by ``-strength``; ``-psfsize`` is ignored (the model estimates
  the PSF). With a flat-only model: an error line, exit 1.
- ``denoising``: an error line, exit 1 (no denoising model).
- Files as GraXpert names them: ``-output NAME`` → ``NAME.fits`` beside the input (``.xisf`` for
  XISF inputs), default ``<input>_GraXpert.fits``; ``-bg`` → ``NAME_background.fits``. Like
  GraXpert, the output may be the input itself (Siril asks for exactly that): the input is read
  whole first and replaced atomically. Integer pixels are scaled to [0, 1] and written as 32-bit
  float, as GraXpert does ("32 bit Fits"); nothing is clipped.
- stderr speaks GraXpert's log format (``DATE TIME MainProcess root LEVEL    message``): ``Progress:
  N%`` lines, ``Finished …`` at the end, ``ERROR`` lines on failure (exit 1; usage errors exit 2).
  GraXpert sends everything, ``-v`` and ``--help`` included, to stderr; so does this.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import typing
from pathlib import Path

import numpy as np

GRAXPERT_CLI_VERSION = "3.1.0"  # the GraXpert command line this implements (deconv: ≥ 3.1.0)
COMMANDS = ("background-extraction", "denoising", "deconv-obj", "deconv-stellar")
DECONV_STRENGTH = 0.5  # GraXpert's default -strength for deconvolution
BGE_SMOOTHING = 0.0  # GraXpert's stored default smoothing_option (Prefs)
BGE_CORRECTION = "Subtraction"  # GraXpert's stored default corr_type (Prefs)


def log_line(level: str, message: str, now: datetime.datetime | None = None) -> str:
  """One stderr line in GraXpert's logging format
  (``%(asctime)s %(processName)-10s %(name)s %(levelname)-8s %(message)s``); Siril prints
  what follows the level and its padding (9 characters after ``INFO`` / ``ERROR``)."""
  now = now or datetime.datetime.now()
  stamp = now.strftime("%Y-%m-%d %H:%M:%S") + f",{now.microsecond // 1000:03d}"
  return f"{stamp} {'MainProcess':<10} root {level:<8} {message}"


def emit(level: str, message: str) -> None:
  """Writes :func:`log_line` to stderr, flushed (Siril reads it line by line while we run)."""
  print(log_line(level, message), file=sys.stderr, flush=True)


def version_line() -> str:
  """What ``-v`` prints: ``version: X.Y.Z `` followed by a space, as Siril parses it."""
  from importlib import metadata
  try:
    own = metadata.version("flatai-jax")
  except metadata.PackageNotFoundError:
    own = "unknown"
  return (f"flatai-graxpert (FlatAI-JAX {own}, GraXpert-compatible command line) "
          f"version: {GRAXPERT_CLI_VERSION} release: flatai-jax-{own}")


class _Parser(argparse.ArgumentParser):
  """argparse whose usage errors are GraXpert-style ``ERROR`` lines (Siril treats a line with
  ``ERROR`` as failure), exit 2."""

  def error(self, message: str) -> typing.NoReturn:
    emit("ERROR", f"flatai-graxpert: {message}")
    sys.exit(2)


def parser() -> argparse.ArgumentParser:
  """GraXpert's options (the union of its four sub-parsers), plus ``-checkpoint``."""
  p = _Parser(prog="flatai-graxpert", add_help=False,
              description="GraXpert-compatible command line of FlatAI-JAX (for Siril).")
  p.add_argument("filename", nargs="?", help="Path of the unprocessed image")
  p.add_argument("-cli", "--cli", action="store_true", help="Command line mode (required)")
  p.add_argument("-cmd", "--command", default="background-extraction", choices=COMMANDS)
  p.add_argument("-output", "--output", nargs="?", help="Name of the processed image, no suffix")
  p.add_argument("-preferences_file", "--preferences_file", nargs="?",
                 help="GraXpert preferences JSON (corr_type, smoothing_option are used)")
  p.add_argument("-gpu", "--gpu_acceleration", choices=["true", "false"],
                 help="false: run JAX on the CPU")
  p.add_argument("-ai_version", "--ai_version", nargs="?",
                 help="Accepted and ignored: the model is -checkpoint / FLATAI_CHECKPOINT")
  p.add_argument("-correction", "--correction", nargs="?", choices=["Subtraction", "Division"])
  p.add_argument("-smoothing", "--smoothing", nargs="?", type=float,
                 help="Blur of the background model in [0, 1]")
  p.add_argument("-bg", "--bg", action="store_true", help="Also save the background model")
  p.add_argument("-strength", "--strength", nargs="?", type=float,
                 help="Deconvolution strength in [0, 1] (default 0.5)")
  p.add_argument("-psfsize", "--psfsize", nargs="?", type=float, help="Accepted and ignored")
  p.add_argument("-batch_size", "--ai_batch_size", nargs="?", type=int, help="Accepted and ignored")
  p.add_argument("-checkpoint", "--checkpoint", default=os.environ.get("FLATAI_CHECKPOINT"),
                 help="FlatAI-JAX model (run directory or exported model); default "
                      "$FLATAI_CHECKPOINT, else the shipped whole-frame model")
  p.add_argument("-v", "--version", action="store_true", help="Print the version and exit")
  p.add_argument("-h", "--help", action="store_true", help="This help")
  return p


def help_text(p: argparse.ArgumentParser) -> str:
  """``--help``: the usage plus the model line Siril parses (``available remotely: [...]``)."""
  return (p.format_help().rstrip() + "\n\nAI model versions: available locally: [], available "
          "remotely: [] (the model is -checkpoint / $FLATAI_CHECKPOINT, not a GraXpert version)")


def save_paths(filename: str, output: str | None, background: bool) -> dict[str, Path]:
  """GraXpert's ``get_save_path``/``get_background_save_path``: ``dirname(input)/OUTPUT.fits``
  (an absolute OUTPUT stands alone; ``.xisf`` for XISF inputs), default
  ``<input stem>_GraXpert.fits``; the background model ``<output stem>_background.fits``."""
  ending = ".xisf" if os.path.splitext(filename)[-1].lower() == ".xisf" else ".fits"
  if output is not None:
    main = os.path.join(os.path.dirname(filename), output + ending)
  else:
    main = os.path.splitext(filename)[0] + "_GraXpert" + ending
  paths = {"image": Path(main)}
  if background:
    paths["background"] = Path(os.path.splitext(main)[0] + "_background" + ending)
  return paths


def bge_settings(args, preferences: dict) -> tuple[str, float]:
  """``(correction, smoothing)``: the command line over the preferences file over GraXpert's
  stored defaults."""
  correction = args.correction or preferences.get("corr_type") or BGE_CORRECTION
  smoothing = args.smoothing if args.smoothing is not None else \
      float(preferences.get("smoothing_option", BGE_SMOOTHING))
  return correction, smoothing


def read_preferences(path: str | None) -> dict:
  """GraXpert's ``-preferences_file`` JSON (``{}`` without one); raises ValueError naming the
  file when it is unreadable."""
  if path is None:
    return {}
  try:
    prefs = json.loads(Path(path).read_text(encoding="utf-8"))
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: unreadable preferences file: {e}") from None
  if not isinstance(prefs, dict):
    raise ValueError(f"{path}: preferences file is not a JSON object")
  return prefs


def read_input(filename: str):
  """The image as GraXpert sees it: ``(H, W, C) float32`` with integer FITS pixels scaled to
  [0, 1] by their type's maximum (the other formats' readers already do), and its meta."""
  from flatai_jax.io import images
  image, meta = images.read_image(filename, allow_nan=True)
  dtype = np.dtype(meta.source_dtype)
  if meta.format == "fits" and dtype.kind in "ui":
    image = image / np.float32(np.iinfo(dtype).max)
  return image, meta


def _progress(start: float, stop: float):
  """A ``callable(done, total)`` printing ``Progress: N%`` between ``start`` and ``stop``."""
  return lambda done, total: emit("INFO", f"Progress: {start + (stop - start) * done / max(total, 1):.0f}%")


def run_background_extraction(args, corrector, image, preferences) -> dict[str, np.ndarray]:
  """``{"image": corrected, "background": B}``, each ``(H, W, C) float32``."""
  from flatai_jax import background_model
  correction, smoothing = bge_settings(args, preferences)
  interpolation = preferences.get("interpol_type_option", "AI")
  if interpolation != "AI":
    emit("INFO", f"interpolation type {interpolation}: replaced by the FlatAI-JAX model")
  emit("INFO", f"correction type {correction}, smoothing {smoothing:g}")
  out = corrector.correct(image, task="flat", progress=_progress(10, 80))
  if out.F is None:
    raise ValueError("the model gives no flat field (a psf model); background-extraction needs "
                     "a flat or combined model")
  background = background_model.smooth_background(
      background_model.background_model(out.corrected, out.F, out.G), smoothing)
  return {"image": background_model.apply_background(image, background, correction),
          "background": background}


def run_deconvolution(args, corrector, image) -> dict[str, np.ndarray]:
  """``{"image": s · aberration-corrected + (1 − s) · input}``; the flat part of a combined model
  is put back (``corrected · F + G``), so only the aberrations change."""
  task = corrector.config.task
  if task == "flat":
    raise ValueError(f"the model {corrector.checkpoint} only corrects flat fields; {args.command} "
                     "needs a psf or combined model (-checkpoint DIR or FLATAI_CHECKPOINT=DIR)")
  strength = DECONV_STRENGTH if args.strength is None else args.strength
  if not 0.0 <= strength <= 1.0:
    raise ValueError(f"-strength {strength} must be in [0, 1]")
  if args.psfsize is not None:
    emit("INFO", f"psfsize {args.psfsize:g} ignored: the model estimates the PSF itself")
  out = corrector.correct(image, progress=_progress(10, 80))
  sharp = out.corrected if out.F is None else out.corrected * out.F + out.G
  return {"image": (strength * sharp + (1.0 - strength) * image).astype(np.float32)}


def execute(args) -> list[Path]:
  """Runs one GraXpert command; returns the files written. Raises ValueError or ImageError."""
  from flatai_jax import correct
  from flatai_jax.io import images
  if args.command == "denoising":
    raise ValueError("denoising is not available: FlatAI-JAX has no denoising model")
  preferences = read_preferences(args.preferences_file)
  emit("INFO", f"Starting flatai-graxpert, {args.command}, {version_line()}")
  image, meta = read_input(args.filename)
  emit("INFO", "Progress: 5%")
  corrector = correct.load(args.checkpoint)
  emit("INFO", f"model: {corrector.config.task} task, step {corrector.step}, from "
       f"{corrector.checkpoint}")
  emit("INFO", "Progress: 10%")
  if args.command == "background-extraction":
    results = run_background_extraction(args, corrector, image, preferences)
  else:
    results = run_deconvolution(args, corrector, image)
  paths = save_paths(args.filename, args.output, args.command == "background-extraction"
                     and args.bg)
  history = (f"flatai-graxpert {args.command}: model={Path(corrector.checkpoint).name} "
             f"step={corrector.step} input={Path(args.filename).name}")
  for key, path in paths.items():
    images.write_image(path, results[key], meta, history=history + (
        " (background model)" if key == "background" else ""), carry_hdus=key == "image")
    emit("INFO", f"Saved {key}: {path}")
  emit("INFO", "Progress: 100%")
  return list(paths.values())


def main(argv: list[str] | None = None) -> int:
  """The command line; returns the exit status (0 done, 1 failed, 2 usage)."""
  p = parser()
  args = p.parse_args(argv)
  if args.version:
    print(version_line(), file=sys.stderr, flush=True)
    return 0
  if args.help:
    print(help_text(p), file=sys.stderr, flush=True)
    return 0
  if not args.cli:
    p.error("flatai-graxpert has no graphical interface; add -cli")
  if args.filename is None:
    p.error("the following arguments are required: filename")
  if args.gpu_acceleration == "false":
    os.environ["JAX_PLATFORMS"] = "cpu"  # before JAX is imported
  _quiet_libraries()
  from flatai_jax.io.images import ImageError
  try:
    execute(args)
  except (ValueError, ImageError, FileNotFoundError) as e:
    emit("ERROR", str(e))
    return 1
  label = {"background-extraction": "background extraction"}.get(args.command, "deconvolution")
  emit("INFO", f"Finished {label}")
  return 0


def _quiet_libraries() -> None:
  """Library log records and warnings (Orbax, JAX, absl) stay off stderr, which Siril parses."""
  import logging
  import warnings
  warnings.filterwarnings("ignore")
  logging.getLogger().setLevel(logging.ERROR)
  try:
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.ERROR)
  except ImportError:
    pass


def run() -> None:
  """Console-script entry point."""
  sys.exit(main())


if __name__ == "__main__":
  run()
