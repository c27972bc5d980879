"""``flatai`` command line: train | evaluate | correct | synth.

  flatai train    --config=configs/default.py:flat,quickstart --workdir=runs/x [--config.train.steps=200]
  flatai evaluate --checkpoint=runs/x [--step=N] [--output_dir=runs/x/eval]   (--workdir: same)
  flatai correct  IMAGE... --checkpoint=runs/x [--out=DIR | --output=out.fits] [--task=flat]
                  [--reference=clean.fits]
  flatai synth    --config=configs/default.py:flat,quickstart --output_dir=synth [--num=8] [--full_frame]
  flatai export   --checkpoint=runs/x --output=models/x   (parameters + config only)
  flatai build_dataset --input_dir=my_clean_images --output_dir=data/mine [--min_size=128] [--val_percent=10]

Only parsing and dispatch live here.
"""
from __future__ import annotations

import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

COMMANDS = ("train", "evaluate", "correct", "synth", "build_dataset", "export")

config_flags.DEFINE_config_file("config", None, "Config file with optional ':arguments'.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, samples (train, evaluate).")
flags.DEFINE_string("checkpoint", None, "Run directory of the checkpoint to use (evaluate, "
                    "correct); correct defaults to the small flat model shipped with the package.")
flags.DEFINE_integer("step", None, "Checkpoint step (evaluate, correct); default: the latest.")
flags.DEFINE_string("output", None, "Output image path (correct, one input); default: "
                    "<input>_corrected.<ext>.")
flags.DEFINE_string("out", None, "Output folder (correct); default: beside each input.")
flags.DEFINE_enum("task", None, ["flat", "psf", "combined"], "Correction to apply (correct); "
                  "default: the model's task; 'flat' applies only the flat part of a combined model.")
flags.DEFINE_string("output_dir", None, "Output folder (synth, evaluate).")
flags.DEFINE_string("reference", None, "Known clean image to score the correction against (correct).")
flags.DEFINE_integer("tile", None, "Tile side in px (correct); default: config.predict.tile.")
flags.DEFINE_integer("overlap", None, "Tile overlap in px (correct); default: config.predict.overlap.")
flags.DEFINE_string("input_dir", None, "Folder tree of clean images (build_dataset).")
flags.DEFINE_integer("min_size", 128, "Images smaller than this per side are skipped (build_dataset).")
flags.DEFINE_integer("val_percent", 10, "Share of images in the validation split (build_dataset).")
flags.DEFINE_integer("num", 8, "Number of examples (synth).")
flags.DEFINE_bool("full_frame", False, "Synthesise whole sensor frames instead of crops (synth).")
flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0.")
flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-host: index of this process.")
FLAGS = flags.FLAGS


def _require(name: str, command: str):
  value = FLAGS[name].value
  if value is None:
    raise app.UsageError(f"flatai {command} needs --{name}")
  return value


def _init_distributed():
  """Multi-host JAX when asked for or when a cluster environment says so (TPU pods, SLURM)."""
  import os
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
  config = _require("config", "train")
  workdir = _require("workdir", "train")
  _init_distributed()
  import jax
  logging.info("JAX %s: process %d/%d, %d local / %d global devices (%s)", jax.__version__,
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count(), jax.devices()[0].platform)
  result = train.train_and_evaluate(config, workdir)
  if jax.process_index() == 0:
    print(json.dumps(result, indent=2))


def _evaluate():
  from flatai_jax.evaluation import frames, report as eval_report
  checkpoint = FLAGS.checkpoint or FLAGS.workdir
  if checkpoint is None:
    raise app.UsageError("flatai evaluate needs --checkpoint (or --workdir)")
  report = frames.evaluate(checkpoint, FLAGS.step, FLAGS.output_dir)
  print(eval_report.markdown(report))
  print(json.dumps(eval_report.clean_json(report), indent=2))


def _correct(argv):
  from flatai_jax import correct
  from flatai_jax.io.images import ImageError
  inputs = argv[2:]
  if not inputs:
    raise app.UsageError("usage: flatai correct IMAGE... [--checkpoint=RUN_DIR] [--out=DIR]")
  if FLAGS.output and len(inputs) > 1:
    raise app.UsageError("--output names one file; use --out=DIR for several inputs")
  corrector = correct.load(FLAGS.checkpoint, FLAGS.step)
  checkpoint = corrector.checkpoint
  try:
    task = correct.resolve_task(corrector.config.task, FLAGS.task)
  except ValueError as e:
    raise app.UsageError(str(e))
  print(f"model: {corrector.config.task} task, step {corrector.step}, from {checkpoint}; "
        f"applying {task}")
  failed = []
  for path in inputs:
    try:
      report = corrector.correct_file(path, FLAGS.output, FLAGS.out, FLAGS.reference, task,
                                      FLAGS.tile, FLAGS.overlap)
    except ImageError as e:  # one bad file does not stop the others
      print(f"flatai correct: error: {e}", file=sys.stderr)
      failed.append(path)
      continue
    print(f"{path}: background non-uniformity: before "
          f"{report['background_nonuniformity_before']:.4f}"
          f"  after {report['background_nonuniformity_after']:.4f}")
    if "mae_before" in report:
      print(f"error vs reference: MAE {report['mae_before']:.5f} → {report['mae_after']:.5f}"
            f"   PSNR {report['psnr_before']:.2f} → {report['psnr_after']:.2f} dB")
    for k, v in report["outputs"].items():
      print(f"wrote {k}: {v}")
  if failed:
    print(f"flatai correct: {len(failed)} of {len(inputs)} file(s) failed", file=sys.stderr)
    sys.exit(2)


def _synth():
  from flatai_jax import synth
  config = _require("config", "synth")
  out = _require("output_dir", "synth")
  if FLAGS.num < 1:
    raise app.UsageError("--num must be at least 1")
  paths = synth.write_examples(config, out, FLAGS.num, FLAGS.full_frame)
  print(f"wrote {len(paths)} FITS files and {out}/contact_sheet.png")


def _export():
  from flatai_jax import checkpointing
  from flatai_jax.evaluation.frames import restore_params
  source = FLAGS.checkpoint or FLAGS.workdir
  if source is None:
    raise app.UsageError("flatai export needs --checkpoint (a run directory)")
  out = _require("output", "export")
  config, _, params, step = restore_params(source, FLAGS.step)
  path = checkpointing.export_inference(out, params, config, step)
  print(f"exported step {step} of {source} (parameters and config only) to {path}")


def _build_dataset():
  from flatai_jax.data import image_dataset
  src = _require("input_dir", "build_dataset")
  out = _require("output_dir", "build_dataset")
  summary = image_dataset.build_dataset(src, out, FLAGS.min_size, FLAGS.val_percent)
  print(f"examples: {summary['examples']}")
  for s in summary["skipped"]:
    print(f"skipped {s['path']}: {s['reason']}")
  print(f"summary: {out}/build_summary.json — train with "
        f"--config.data.source=images --config.data.tfds_dir={out}")


def main(argv):
  if len(argv) < 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f"usage: flatai {{{'|'.join(COMMANDS)}}} [flags]  (see flatai --help)")
  from flatai_jax.config_validate import ConfigError, validate
  from flatai_jax.io.images import ImageError
  command = argv[1]
  if command != "correct" and len(argv) > 2:
    raise app.UsageError(f"flatai {command}: unexpected arguments {argv[2:]}")
  try:
    if FLAGS.config is not None:
      validate(FLAGS.config)  # before anything is built; train adds the device checks
    if command == "train":
      _train()
    elif command == "evaluate":
      _evaluate()
    elif command == "correct":
      _correct(argv)
    elif command == "synth":
      _synth()
    elif command == "export":
      _export()
    else:
      _build_dataset()
  except (ImageError, ConfigError) as e:
    print(f"flatai {command}: error: {e}", file=sys.stderr)
    sys.exit(2)
  except FileNotFoundError as e:
    print(f"flatai {command}: error: {e}", file=sys.stderr)
    sys.exit(2)


def run():
  """Console-script entry point."""
  app.run(main)


if __name__ == "__main__":
  run()
