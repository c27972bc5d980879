"""``flatai`` command line: train | evaluate | correct | synth | build_dataset | export | gui.

  flatai train    --config=configs/default.py:flat,quickstart --workdir=runs/x [--config.train.steps=200]
  flatai evaluate --checkpoint=runs/x [--step=N] [--output_dir=runs/x/eval]   (--workdir: same)
  flatai evaluate --task=psf [--checkpoint=…] [--output_dir=eval_psf] [--size=256]   (aberrations)
  flatai correct  IMAGE... [--checkpoint=runs/x] [--out=DIR | --output=out.fits] [--task=flat]
                  [--reference=clean.fits] [--cfa=auto|none|RGGB|…] [--input_stretch=auto|…]
  flatai correct  --session FRAME... --out=DIR   (one flat for a dithered sequence)
  flatai correct  IMAGE... --task=psf|combined   (the shipped aberration model; combined: flat first)
  flatai correct  IMAGE... --task=psf --method=physics [--target=diffraction|centre|FWHM_PX]
                  [--seeing_share=0.7]   (psf, combined: the part of the fitted seeing RL undoes)
  flatai synth    --config=configs/default.py:flat,quickstart --output_dir=synth [--num=8] [--full_frame]
  flatai export   --checkpoint=runs/x --output=models/x   (parameters + config only)
  flatai gui      [--port=8765] [--checkpoint=runs/x]   (local web page on 127.0.0.1)
  flatai build_dataset --input_dir=my_clean_images --output_dir=data/mine [--min_size=128] [--val_percent=10]
  flatai --help | flatai COMMAND --help | flatai --version

Only parsing, help and dispatch live here. ``COMMANDS`` is the table of which
flag belongs to which command; help is printed from it (not absl's dump).
Errors are one line, ``flatai COMMAND: error: ...``, on stderr with exit status 2.
Log records of libraries (Orbax, JAX, grain, TFDS) below ERROR are hidden unless
``--verbosity`` is given (absl's flag: 0 shows INFO records, 1 DEBUG too).
"""
from __future__ import annotations

import json
import logging as std_logging
import os
import sys
import textwrap
import typing
import warnings
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file(
    "config", None, "Config file and its arguments (configs/default.py:flat,quickstart); "
    "override any field with --config.FIELD=VALUE.", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, samples.")
flags.DEFINE_string("checkpoint", None, "Run directory (or exported model) of the checkpoint.")
flags.DEFINE_integer("step", None, "Checkpoint step; default: the latest.")
flags.DEFINE_string("output", None, "Output path.")
flags.DEFINE_string("out", None, "Output folder; default: beside each input.")
flags.DEFINE_enum("task", None, ["flat", "psf", "combined"], "Correction to apply; default: the "
                  "model's task; 'flat' applies only the flat part of a combined model.")
flags.DEFINE_enum("method", "model", ["model", "physics"], "psf correction by a trained model, "
                  "or 'physics': fit the PSF field to the frame's stars and deconvolve (no model; "
                  "optics from --config's degrade.psf, default configs/default.py:psf).")
flags.DEFINE_string("target", "diffraction", "--method=physics: PSF to deconvolve to: "
                    "'diffraction', 'centre' (the fitted on-axis PSF) or a Gaussian FWHM in px.")
flags.DEFINE_float("seeing_share", None, "psf, combined: share in [0, 1] of the fitted "
                   "seeing's FWHM that Richardson–Lucy undoes and the target puts back where the "
                   "optics are at their best, less where the field widens them (default "
                   "correct_psf.RL_SEEING = 0.7; 0 = the optics alone everywhere: sharpest "
                   "aberrated corners, halos where the frame has little field-dependent aberration).")
flags.DEFINE_string("output_dir", None, "Output folder.")
flags.DEFINE_enum("format", "orbax", ["orbax", "onnx"], "export: 'orbax' = inference checkpoint "
                  "folder; 'onnx' = the whole-frame network as one .onnx file (needs jax2onnx).")
flags.DEFINE_string("reference", None, "Known clean image to score the correction against.")
flags.DEFINE_integer("tile", None, "Tile side in px; default: the model's config.predict.tile.")
flags.DEFINE_integer("overlap", None, "Tile overlap in px; default: the model's "
                     "config.predict.overlap.")
flags.DEFINE_string("real_dir", None, "Real-data evaluation set (evaluation_data/real, built by "
                    "data_pipelines/build_real_eval.py): score the model there.")
flags.DEFINE_float("strength", 1.0, "Correction strength in [0, 1]: F^s and s·G; 0 = none.")
flags.DEFINE_enum("cfa", "auto", ["auto", "none", "RGGB", "BGGR", "GRBG", "GBRG"],
                  "Bayer raw frames: auto = the file's BAYERPAT / ColorFilterArray (corrected in "
                  "CFA space, one shared F); none = as mono; a pattern forces it at pixel (0, 0).")
flags.DEFINE_string("input_stretch", "auto", "auto|linear|srgb|mtf:M: undo the input's stretch, "
                    "correct in linear light, re-apply it; auto = sRGB for 8-bit PNG/JPEG, "
                    "linear otherwise.")
flags.DEFINE_bool("session", False, "correct: the IMAGEs are one session of dithered frames of "
                  "one sensor: one shared flat F (session_F.fits) and each frame's own G; needs "
                  "--out.")
flags.DEFINE_string("input_dir", None, "Folder tree of clean images.")
flags.DEFINE_integer("min_size", 128, "Images smaller than this per side (px) are skipped.")
flags.DEFINE_integer("val_percent", 10, "Share of images in the validation split, %.")
flags.DEFINE_integer("num", 8, "Number of examples.")
flags.DEFINE_integer("size", 256, "evaluate --task=psf: side of the synthetic star field, px "
                     "(at least 192).")
flags.DEFINE_list("cases", None, "evaluate --task=psf: the star fields to score, comma-separated "
                  "(default all: flatai, hcipy, flatai_strong, hcipy_strong).")
flags.DEFINE_bool("full_frame", False, "Synthesise whole sensor frames instead of crops.")
flags.DEFINE_integer("port", 8765, "gui: port of the page on 127.0.0.1; 0 = any free port.")
flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0.")
flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-host: index of this process.")
FLAGS = flags.FLAGS


class Command(typing.NamedTuple):
  """A sub-command as its help shows it."""
  summary: str  # one line
  usage: str  # what follows ``flatai COMMAND``
  flags: dict  # flag name → its help for this command (None: the flag's own help)


COMMANDS = {
    "train": Command(
        "Train a model on procedural skies or your images; a rerun resumes from --workdir.",
        "--config=FILE[:ARGS] --workdir=DIR [--config.FIELD=VALUE ...]",
        {"config": None,
         "workdir": "Run directory: checkpoints, metrics.jsonl, samples; one run at a time.",
         "coordinator_address": None, "num_processes": None, "process_id": None}),
    "evaluate": Command(
        "Score a checkpoint on full frames against classical baselines; writes a report.",
        "--checkpoint=RUN_DIR [--step=N] [--output_dir=DIR] | --real_dir=DIR [--checkpoint=…] "
        "| --task=psf [--checkpoint=…] [--output_dir=DIR] [--size=PX] [--cases=A,B]",
        {"checkpoint": "Run directory or exported model to evaluate (with --real_dir: default "
                       "the shipped model).", "workdir": "Same as --checkpoint.",
         "step": None, "output_dir": "Report folder; default: <checkpoint>/eval (--task=psf: "
                                     "eval_psf).",
         "real_dir": None,
         "task": "psf: the aberration evaluation (issue 15) on a synthetic star field with a "
                 "known PSF field: uncorrected, --method=physics, the aberration model "
                 "(--checkpoint, default the shipped one), Richardson–Lucy / Wiener with one PSF "
                 "and with the true field; writes psf_eval.json and .md.",
         "size": None, "cases": None}),
    "correct": Command(
        "Correct FITS/XISF/TIFF/PNG/JPEG frames; writes corrected image, F, G and preview.",
        "IMAGE... [--checkpoint=RUN_DIR] [--out=DIR | --output=FILE] | --session FRAME... "
        "--out=DIR",
        {"checkpoint": "Run directory or exported model; default: the flat model shipped "
                       "with the package (--task=psf: the aberration model; --task=combined: "
                       "both, flat first).",
         "step": None,
         "output": "Output image (one input only); default: <input>_corrected.<ext>.",
         "out": None, "task": None, "reference": None, "tile": None, "overlap": None,
         "strength": None, "cfa": None, "input_stretch": None, "method": None, "target": None,
         "session": None, "seeing_share": None,
         "config": "--method=physics: config whose degrade.psf describes the optics (sampling "
                   "q, pupil, band); default configs/default.py:psf."}),
    "synth": Command(
        "Write synthetic examples (observed, clean, F, G as FITS) and a contact sheet.",
        "--config=FILE[:ARGS] --output_dir=DIR [--num=N] [--full_frame]",
        {"config": None, "output_dir": "Folder for the FITS files and PNGs.", "num": None,
         "full_frame": None}),
    "build_dataset": Command(
        "Turn a folder tree of your clean images into a training dataset.",
        "--input_dir=DIR --output_dir=DIR [--min_size=PX] [--val_percent=P]",
        {"input_dir": None,
         "output_dir": "Dataset folder (train with --config.data.tfds_dir=DIR).",
         "min_size": None, "val_percent": None}),
    "export": Command(
        "Write an inference checkpoint (no optimizer), or a whole-frame network as ONNX.",
        "--checkpoint=RUN_DIR --output=DIR|FILE.onnx [--format=orbax|onnx] [--step=N]",
        {"checkpoint": "Run directory (or, for onnx, exported model) to export.",
         "workdir": "Same as --checkpoint.", "step": None, "format": None,
         "output": "Folder of the exported model (orbax), or the .onnx file (onnx)."}),
    "gui": Command(
        "Open a local web page to correct frames and compare before/after (127.0.0.1).",
        "[--port=N] [--checkpoint=RUN_DIR]",
        {"port": None,
         "checkpoint": "The page's default model: a run directory or exported model; default: "
                       "the shipped whole-frame flat model."}),
}
GLOBAL_FLAGS = {
    "--verbosity=N": "Log records of the libraries (Orbax, JAX, TFDS): hidden by default; "
                     "0 shows INFO records, 1 DEBUG too (absl's flag).",
    "--version": "Print the version and exit.",
    "-h, --help": "This help; `flatai COMMAND --help` for a command's flags.",
}
HELP_ARGS = ("-h", "--help", "-help", "--helpshort", "-?")
METAVARS = {"config": "FILE[:ARGS]", "workdir": "DIR", "checkpoint": "DIR", "output": "PATH",
            "out": "DIR", "output_dir": "DIR", "input_dir": "DIR", "reference": "FILE",
            "coordinator_address": "HOST:PORT", "input_stretch": "auto|linear|srgb|mtf:M"}
WIDTH = 100


def _rows(rows: dict, indent: int = 2, left: int = 24) -> list[str]:
  """``{name: text}`` as a two-column list wrapped to WIDTH characters."""
  out = []
  for name, text in rows.items():
    lines = textwrap.wrap(text, WIDTH - indent - left) or [""]
    head = " " * indent + name
    if len(head) >= indent + left - 1:
      out.append(head)
      head = ""
    out.append(head.ljust(indent + left) + lines[0])
    out += [" " * (indent + left) + line for line in lines[1:]]
  return out


def _flag_text(name: str, text: str | None) -> tuple[str, str]:
  """``(--name=VALUE, help (default: D))`` of one flag."""
  flag = FLAGS[name]
  text = text or flag.help.split(">: ", 1)[-1]  # absl prefixes an enum's help with <a|b>
  if isinstance(flag.default, bool):
    return f"--[no]{name}", f"{text} (default: {str(flag.default).lower()})"
  if name in METAVARS:
    kind = METAVARS[name]
  elif getattr(flag.parser, "enum_values", None):
    kind = "|".join(flag.parser.enum_values)
  else:
    kind = "INT" if isinstance(flag.parser, flags.IntegerParser) else "TEXT"
  default = "" if flag.default is None else f" (default: {flag.default})"
  return f"--{name}={kind}", text + default


def overview() -> str:
  """What ``flatai --help`` prints: the commands and the global flags."""
  lines = ["usage: flatai COMMAND [flags]", "",
           "FlatAI-JAX: neural flat-field and aberration correction of astronomical images.", "",
           "commands:", *_rows({name: c.summary for name, c in COMMANDS.items()}, left=16), "",
           "flags of every command:", *_rows(GLOBAL_FLAGS), "",
           "`flatai COMMAND --help` lists the flags of that command."]
  return "\n".join(lines)


def command_help(name: str) -> str:
  """What ``flatai COMMAND --help`` prints: its usage and its own flags with their defaults."""
  c = COMMANDS[name]
  rows = dict(_flag_text(flag, text) for flag, text in c.flags.items())
  lines = [f"usage: flatai {name} {c.usage}", "", c.summary, "", "flags:", *_rows(rows), "",
           "flags of every command:", *_rows(GLOBAL_FLAGS)]
  return "\n".join(lines)


def version() -> str:
  """``flatai X.Y.Z`` from the installed package's metadata."""
  from importlib import metadata
  try:
    return f"flatai {metadata.version('flatai-jax')}"
  except metadata.PackageNotFoundError:
    return "flatai (version unknown: the package is not installed; pip install -e .)"


def _fail(command: str | None, message: str) -> typing.NoReturn:
  """The one-line error contract: ``flatai COMMAND: error: message`` on stderr, exit 2."""
  print(f"flatai{' ' + command if command else ''}: error: {message}", file=sys.stderr)
  sys.exit(2)


def _one_line(error: Exception) -> str:
  """A flag error as one line (a config file's traceback reduced to its last line)."""
  lines = [l.strip() for l in str(error).strip().splitlines() if l.strip()]
  if len(lines) > 1 and any(l.startswith("Traceback") for l in lines):
    return f"{lines[0].rstrip(':')}: {lines[-1]}"
  return lines[0] if lines else type(error).__name__


def _print_and_exit(text: str, status: int, stream=None) -> typing.NoReturn:
  """Prints help text and exits; a closed pipe (``flatai --help | head``) is no error."""
  stream = stream or sys.stdout
  try:
    print(text, file=stream, flush=True)
  except BrokenPipeError:
    os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
  sys.exit(status)


def parse_flags(argv: list[str]) -> list[str]:
  """absl ``flags_parser``: help, version and a missing command before absl; then the flags.

  ``flatai`` alone prints the overview to stderr and exits 2; ``--help``/``-h``
  print the overview or the command's help and exit 0; ``--version`` prints
  the version and exits 0. A bad flag is one line and exit 2. Flag names may be spelled
  with dashes (``--input-stretch``, as GraXpert and Siril users write them) or with absl's
  underscores (``--input_stretch``).
  """
  argv = [_underscored(a) for a in argv]
  args = argv[1:argv.index("--")] if "--" in argv else argv[1:]
  words = [a for a in args if not a.startswith("-")]
  command = words[0] if words and words[0] in COMMANDS else None
  if any(a in HELP_ARGS for a in args):
    _print_and_exit(command_help(command) if command else overview(), 0)
  if "--version" in args:
    _print_and_exit(version(), 0)
  if not words:
    _print_and_exit(overview(), 2, sys.stderr)
  try:
    return FLAGS(argv)
  except flags.Error as e:
    _fail(command, _one_line(e))


def _underscored(arg: str) -> str:
  """``--input-stretch=x`` → ``--input_stretch=x``; anything else as it is."""
  if not arg.startswith("--") or arg == "--":
    return arg
  name, eq, value = arg[2:].partition("=")
  return "--" + name.replace("-", "_") + eq + value


class _FlataiRecordsOnly(std_logging.Filter):
  """Passes this package's log records and every library's errors; drops library INFO and
  WARNING records (Orbax's per-save lines, absl INFO, JAX notices)."""

  PACKAGE = str(Path(__file__).resolve().parent) + os.sep

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.ERROR or record.pathname.startswith(self.PACKAGE)


LIBRARIES = r"(orbax|jax|jaxlib|flax|optax|grain|tensorflow_datasets|array_record|absl|clu)(\.|$)"


def quiet_libraries() -> None:
  """Default logging: WARNING and up from flatai, ERROR and up from libraries; library Python
  warnings (e.g. Orbax's 'Sharding info not provided') are dropped. Not called when
  ``--verbosity`` is given, so absl's meaning of it applies unchanged."""
  FLAGS.verbosity = -1  # absl WARNING (absl raised it to INFO when the flag was not given)
  keep = _FlataiRecordsOnly()
  for handler in std_logging.getLogger().handlers:
    handler.addFilter(keep)
  warnings.filterwarnings("ignore", module=LIBRARIES)


def _require(name: str):
  value = FLAGS[name].value
  if value is None:
    raise app.UsageError(f"needs --{name}")
  return value


def _init_distributed():
  """Multi-host JAX when asked for or when a cluster environment says so (TPU pods, SLURM)."""
  import jax
  explicit = FLAGS.coordinator_address or (FLAGS.num_processes or 1) > 1
  cluster = int(os.environ.get("SLURM_NTASKS", "1")) > 1 or "TPU_WORKER_HOSTNAMES" in os.environ \
      or "JAX_COORDINATOR_ADDRESS" in os.environ
  if explicit:
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  elif cluster:
    jax.distributed.initialize()


def _train():
  from flatai_jax import train
  config = _require("config")
  workdir = _require("workdir")
  _init_distributed()
  import jax
  logging.info("JAX %s: process %d/%d, %d local / %d global devices (%s)", jax.__version__,
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count(), jax.devices()[0].platform)
  result = train.train_and_evaluate(config, workdir)
  if jax.process_index() == 0:
    print("\n".join(result_lines(result)))


def result_lines(result: dict) -> list[str]:
  """The end of a training run in two lines: the last reported training scalars, and the
  held-out crop metrics beside their uncorrected (``*_identity``) values."""
  lines = [f"step {result['step']}: " + "  ".join(
      f"{k} {v:.4g}" for k, v in result["train"].items())]
  ev = result.get("eval")
  if ev:
    lines.append("held-out crops: " + "  ".join(
        f"{k} {v:.4g}" + (f" (uncorrected {ev[k + '_identity']:.4g})" if k + "_identity" in ev
                          else "")
        for k, v in ev.items() if not k.endswith("_identity")))
  return lines


def _evaluate():
  from flatai_jax.evaluation import frames
  from flatai_jax.evaluation import report as eval_report
  checkpoint = FLAGS.checkpoint or FLAGS.workdir
  if FLAGS.task is not None:
    return _evaluate_psf(checkpoint)
  if FLAGS.real_dir:
    from flatai_jax.evaluation import real
    result = real.run(checkpoint, FLAGS.real_dir, FLAGS.output_dir, FLAGS.step)
    print(real.markdown(result))
    return
  if checkpoint is None:
    raise app.UsageError("needs --checkpoint (or --workdir)")
  report = frames.evaluate(checkpoint, FLAGS.step, FLAGS.output_dir)
  print(eval_report.markdown(report))
  print(json.dumps(eval_report.clean_json(report), indent=2))


def _evaluate_psf(checkpoint):
  """``--task=psf``: the aberration evaluation (``evaluation.aberration``) of the correction
  methods and of an aberration model: ``--checkpoint`` or the shipped one."""
  from flatai_jax import correct
  if FLAGS.task != "psf":
    raise app.UsageError(f"--task={FLAGS.task}: only --task=psf has a task evaluation "
                         "(score a flat or combined model with --checkpoint)")
  if FLAGS.real_dir:
    raise app.UsageError("--task=psf scores the correction methods on a synthetic star field; "
                         "drop --real_dir")
  try:
    corrector = correct.load(checkpoint, FLAGS.step, task=None if checkpoint else "psf")
  except FileNotFoundError as e:
    if checkpoint:
      raise app.UsageError(str(e))
    print(f"no model row: {e}")
    corrector = None
  if corrector is not None and corrector.config.model.input != "deconvolved":
    raise app.UsageError(f"--checkpoint={checkpoint}: a {corrector.config.task} model that does "
                         "not deconvolve first; --task=psf scores configs/psf.py models")
  from flatai_jax.evaluation import aberration
  try:
    report = aberration.evaluate(FLAGS.size, corrector=corrector,
                                 cases=tuple(FLAGS.cases or aberration.CASES))
  except ValueError as e:
    raise app.UsageError(str(e))
  paths = aberration.write(report, FLAGS.output_dir or "eval_psf")
  print(aberration.markdown(report))
  for k, v in paths.items():
    print(f"wrote {k}: {v}")


def _correct(argv):
  from flatai_jax import correct, correct_psf
  inputs = argv[2:]
  if not inputs:
    raise app.UsageError("needs at least one IMAGE")
  if not 0.0 <= FLAGS.strength <= 1.0:
    raise app.UsageError(f"--strength={FLAGS.strength} must be in [0, 1]")
  if FLAGS.output and len(inputs) > 1:
    raise app.UsageError("--output names one file; use --out=DIR for several inputs")
  from flatai_jax import stretch
  try:
    stretch.parse(FLAGS.input_stretch)
  except ValueError as e:
    raise app.UsageError(str(e))
  if FLAGS.seeing_share is not None and not 0.0 <= FLAGS.seeing_share <= 1.0:
    raise app.UsageError(f"--seeing_share={FLAGS.seeing_share} must be in [0, 1]")
  if FLAGS.session:
    return _correct_session(inputs)
  if FLAGS.method == "physics":
    return _correct_physics(inputs)
  corrector = correct.load(FLAGS.checkpoint, FLAGS.step,
                           task=None if FLAGS.checkpoint else FLAGS.task)
  corrector.seeing_share = FLAGS.seeing_share
  checkpoint = corrector.checkpoint
  try:
    task = correct.resolve_task(corrector.task, FLAGS.task)
  except ValueError as e:
    raise app.UsageError(str(e))
  chained = f" after the flat model {corrector.flat.checkpoint}" if corrector.flat else ""
  print(f"model: {corrector.task} task, step {corrector.step}, from {checkpoint}{chained}; "
        f"applying {task}")
  def one(path):
    report = corrector.correct_file(path, FLAGS.output, FLAGS.out, FLAGS.reference, task,
                                    FLAGS.tile, FLAGS.overlap, strength=FLAGS.strength,
                                    cfa=FLAGS.cfa, input_stretch=FLAGS.input_stretch)
    print(f"{path}: background non-uniformity: before "
          f"{report['background_nonuniformity_before']:.4f}"
          f"  after {report['background_nonuniformity_after']:.4f}")
    if "stars" in report:
      print(f"{path}: {correct_psf.describe(report)}, then the learned cleanup")
    if "mae_before" in report:
      print(f"error vs reference: MAE {report['mae_before']:.5f} → {report['mae_after']:.5f}"
            f"   PSNR {report['psnr_before']:.2f} → {report['psnr_after']:.2f} dB")
    return report

  _correct_each(inputs, one)


def _correct_each(inputs, correct_one):
  """Runs ``correct_one(path) -> report`` on every input and lists the files it wrote; a bad
  file is one error line and does not stop the others; exit 2 if any failed."""
  from flatai_jax.io.images import ImageError
  failed = []
  for path in inputs:
    try:
      report = correct_one(path)
    except ImageError as e:
      print(f"flatai correct: error: {e}", file=sys.stderr)
      failed.append(path)
      continue
    for k, v in report["outputs"].items():
      print(f"wrote {k}: {v}")
  if failed:
    print(f"flatai correct: {len(failed)} of {len(inputs)} file(s) failed", file=sys.stderr)
    sys.exit(2)


SESSION_EXCLUDES = ("output", "reference", "task", "tile", "overlap", "strength", "method",
                    "target", "config", "seeing_share")  # flags of single-frame correction that --session refuses


def _correct_session(inputs):
  """``--session``: one shared F for all inputs (``session.correct_files``), streaming."""
  from flatai_jax import checkpointing, correct, session
  given = [f"--{name}" for name in SESSION_EXCLUDES if FLAGS[name].present]
  if given:
    raise app.UsageError(f"--session does not take {', '.join(given)}")
  if FLAGS.out is None:
    raise app.UsageError("--session needs --out=DIR (the outputs of all frames and the shared F)")
  if len(inputs) < 2:
    raise app.UsageError("--session needs at least 2 frames")
  if FLAGS.checkpoint:
    config = checkpointing.load_config(FLAGS.checkpoint, FLAGS.step)
    if not config.data.whole_frame:
      raise app.UsageError(f"--checkpoint={FLAGS.checkpoint} is a tile model; --session uses a "
                           "whole-frame model's working grid")
    grid = tuple(config.data.sensor_hw)
    single = correct.load(FLAGS.checkpoint, FLAGS.step).correct
  else:
    grid, single = session.working_grid_hw(), None
  report = session.correct_files(inputs, FLAGS.out, grid, single=single, cfa=FLAGS.cfa)
  for k, v in report["outputs"].items():
    print(f"wrote {k}: {v}")
  print(f"wrote corrected and G of {len(report['frames'])} frames to {FLAGS.out}")


def _correct_physics(inputs):
  """``--method=physics``: PSF field from the stars, deconvolution; no model is loaded."""
  from flatai_jax import correct_psf
  from flatai_jax.config_args import default_config
  if FLAGS.task not in (None, "psf"):
    raise app.UsageError(f"--method=physics corrects aberrations only (--task=psf), not "
                         f"--task={FLAGS.task}")
  if FLAGS.checkpoint:
    raise app.UsageError("--method=physics uses no model; drop --checkpoint")
  config = FLAGS.config or default_config("psf")
  if config is None:
    raise app.UsageError("--method=physics needs --config=FILE:psf (its degrade.psf: the optics)")
  target = FLAGS.target
  if target not in ("diffraction", "centre"):
    try:
      target = float(target)
    except ValueError:
      raise app.UsageError(f"--target={target!r}: 'diffraction', 'centre' or a FWHM in px")
    if not target > 0:
      raise app.UsageError(f"--target={target:g}: a FWHM must be > 0 px")
  def one(path):
    report = correct_psf.correct_file(path, config.degrade.psf, FLAGS.output, FLAGS.out, target,
                                      seeing_share=FLAGS.seeing_share)
    print(f"{path}: {correct_psf.describe(report)}")
    return report

  _correct_each(inputs, one)


def _synth():
  from flatai_jax import synth
  config = _require("config")
  out = _require("output_dir")
  if FLAGS.num < 1:
    raise app.UsageError("--num must be at least 1")
  paths = synth.write_examples(config, out, FLAGS.num, FLAGS.full_frame)
  print(f"wrote {len(paths)} FITS files and {out}/contact_sheet.png")


def _export():
  from flatai_jax import checkpointing
  from flatai_jax.evaluation.frames import restore_params
  source = FLAGS.checkpoint or FLAGS.workdir
  if source is None:
    raise app.UsageError("needs --checkpoint (a run directory)")
  out = _require("output")
  if FLAGS.format == "onnx":
    try:
      from flatai_jax import onnx_export
    except ImportError as e:
      raise app.UsageError(f"--format=onnx needs jax2onnx and onnx ({e}); "
                           "pip install 'flatai-jax[onnx]'") from e
    try:
      path, step = onnx_export.export_onnx(source, out, FLAGS.step)
    except ImportError as e:
      raise app.UsageError(f"--format=onnx needs jax2onnx and onnx ({e}); "
                           "pip install 'flatai-jax[onnx]'") from e
    except ValueError as e:
      _fail("export", str(e))
    print(f"exported step {step} of {source} (network on the working grid, preprocessing in "
          f"its metadata) to {path}")
    return
  config, _, params, step = restore_params(source, FLAGS.step)
  path = checkpointing.export_inference(out, params, config, step)
  print(f"exported step {step} of {source} (parameters and config only) to {path}")


def _build_dataset():
  from flatai_jax.data import image_dataset
  src = _require("input_dir")
  out = _require("output_dir")
  if not FLAGS["verbosity"].present:
    import tensorflow_datasets as tfds
    tfds.disable_progress_bar()
  summary = image_dataset.build_dataset(src, out, FLAGS.min_size, FLAGS.val_percent)
  print(f"examples: {summary['examples']}")
  for s in summary["skipped"]:
    print(f"skipped {s['path']}: {s['reason']}")
  for note in summary.get("notes", ()):  # summaries written before notes existed have none
    print(note)
  print(f"summary: {out}/build_summary.json — train with "
        f"--config.data.source=images --config.data.tfds_dir={out}")


def _gui():
  try:
    import fastapi  # noqa: F401
    import uvicorn  # noqa: F401

    from flatai_jax.gui import app as gui_app
  except ImportError as e:
    raise app.UsageError(f"needs the gui extra ({e}); pip install 'flatai-jax[gui]'") from e
  if not 0 <= FLAGS.port <= 65535:
    raise app.UsageError(f"--port={FLAGS.port} must be in [0, 65535]")
  try:
    gui_app.serve(FLAGS.port, FLAGS.checkpoint)
  except OSError as e:
    _fail("gui", f"cannot listen on 127.0.0.1:{FLAGS.port}: {e.strerror or e}")
  except KeyboardInterrupt:
    pass


def main(argv):
  if len(argv) < 2:  # only flags, e.g. `flatai --workdir x`
    _print_and_exit(overview(), 2, sys.stderr)
  command = argv[1]
  if command not in COMMANDS:
    _fail(None, f"unknown command {command!r}; usage: flatai {{{'|'.join(COMMANDS)}}} [flags] "
          "(flatai --help lists them)")
  if not FLAGS["verbosity"].present:
    quiet_libraries()
  if command != "correct" and len(argv) > 2:
    _fail(command, f"unexpected arguments {argv[2:]}")
  others = set().union(*(c.flags for c in COMMANDS.values())) - set(COMMANDS[command].flags)
  stray = sorted(name for name in others if FLAGS[name].present)
  if stray:  # another command's flag would be ignored here, silently (--output_dir for --out)
    _fail(command, f"--{stray[0]} is not a flag of this command "
          f"(flatai {command} --help lists its flags)")
  from flatai_jax.config_validate import ConfigError, validate
  from flatai_jax.data.image_dataset import DatasetError
  from flatai_jax.io.images import ImageError
  from flatai_jax.run_lock import WorkdirInUse
  try:
    if FLAGS.config is not None:
      validate(FLAGS.config)  # before anything is built; train adds the device checks
    {"train": _train, "evaluate": _evaluate, "correct": lambda: _correct(argv),
     "synth": _synth, "export": _export, "build_dataset": _build_dataset, "gui": _gui}[command]()
  except app.UsageError as e:
    _fail(command, f"{e} (flatai {command} --help lists its flags)")
  except (ImageError, ConfigError, FileNotFoundError, DatasetError, WorkdirInUse) as e:
    _fail(command, str(e))


def run():
  """Console-script entry point."""
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
