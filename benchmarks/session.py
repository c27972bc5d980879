"""Session mode (issue 18): the sequence evaluation, and time / peak memory of a large session.

  PYTHONPATH=. python benchmarks/session.py eval [--height 300 --width 400] [--frames 10]
      [--real_dir evaluation_data/real] [--output runs/session_eval.json] [--turned K]
  PYTHONPATH=. python benchmarks/session.py speed [--height 2000 --width 3000] [--frames 10]

``eval``: the sequence cases of ``flatai_jax.evaluation.sequences`` (dithered crops of the real
light frames × one real or rendered flat + a rendered G per frame) scored for doing nothing,
single-frame mode (the shipped model, each frame alone), session mode, and the classical sky flat
with and without a per-frame polynomial background; prints ``flat error % / PSNR dB / scale`` per
case and method. ``speed``: writes ``--frames`` synthetic float32 FITS frames, then times
single-frame correction (``Corrector.correct_file``, no preview excluded) and the session
(``session.correct_files``), each in a fresh process with the model loaded and compiled before
the clock starts, and reports each one's peak resident memory.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_eval(args) -> None:
  import numpy as np

  from flatai_jax import correct, session
  from flatai_jax.evaluation import baselines, sequences
  corrector = correct.load()
  grid = tuple(corrector.config.data.sensor_hw)
  methods = {
      "uncorrected": lambda frames: frames,
      "single-frame": lambda frames: [corrector.correct(x).corrected for x in frames],
      "session": lambda frames: [o.corrected for o in session.correct_arrays(
          frames, grid, single=corrector.correct)[1]],
      **baselines.sequence_methods(),
  }
  cases = sequences.sequence_cases(args.real_dir, (args.height, args.width), args.frames,
                                   turned=args.turned)
  result = sequences.score_sequences(cases, methods)
  print(sequences.markdown(result))
  seconds = {n: float(np.mean([r["seconds_per_frame"] for r in rows]))
             for n, rows in result["cases"].items()}
  print("seconds per frame: " + ", ".join(f"{n} {s:.2f}" for n, s in seconds.items()))
  if args.output:
    Path(args.output).write_text(json.dumps(result, indent=2))


def _write_frames(folder: Path, n: int, hw) -> list[Path]:
  import numpy as np

  from flatai_jax.io import images
  rng = np.random.default_rng(0)
  y, x = np.mgrid[:hw[0], :hw[1]].astype(np.float32)
  f = 1.0 - 0.2 * (((y - hw[0] / 2) ** 2 + (x - hw[1] / 2) ** 2) / (max(hw) / 2) ** 2)
  paths = []
  for i in range(n):
    frame = 1000.0 * f + 30.0 * rng.standard_normal(hw, np.float32)
    paths.append(folder / f"light_{i:03d}.fits")
    images.write_image(paths[-1], frame.astype(np.float32))
  return paths


def _child(mode: str, paths: list[str], out: str) -> None:
  """One measurement in this process: ``single`` or ``session``; prints JSON."""
  import numpy as np

  from flatai_jax import session
  single = session.single_frame()  # the model loaded and compiled outside the timing, both modes
  single(np.ones((256, 256), "float32"))
  start = time.perf_counter()
  if mode == "single":
    corrector = single.__self__
    for p in paths:
      corrector.correct_file(p, out_dir=out, print_fn=lambda *a, **k: None)
  else:
    session.correct_files(paths, out, session.working_grid_hw(), print_fn=lambda *a, **k: None)
  seconds = time.perf_counter() - start
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # GiB (Linux: KiB)
  print(json.dumps({"mode": mode, "seconds_per_frame": seconds / len(paths), "peak_gib": peak}))


def run_speed(args) -> None:
  hw = (args.height, args.width)
  with tempfile.TemporaryDirectory() as tmp:
    paths = _write_frames(Path(tmp), args.frames, hw)
    frame_gib = hw[0] * hw[1] * 4 / 2 ** 30
    for mode in ("single", "session"):
      out = subprocess.run([sys.executable, __file__, "_child", mode, str(Path(tmp) / mode),
                            *map(str, paths)], capture_output=True, text=True, check=True)
      r = json.loads(out.stdout.strip().splitlines()[-1])
      print(f"{mode}: {args.frames} frames of {hw[0]} × {hw[1]} ({frame_gib:.3f} GiB each as "
            f"float32): {r['seconds_per_frame']:.2f} s per frame, peak memory "
            f"{r['peak_gib']:.2f} GiB")


def main() -> None:
  if len(sys.argv) > 1 and sys.argv[1] == "_child":
    return _child(sys.argv[2], sys.argv[4:], sys.argv[3])
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("what", choices=["eval", "speed"])
  parser.add_argument("--height", type=int, default=None)
  parser.add_argument("--width", type=int, default=None)
  parser.add_argument("--frames", type=int, default=10)
  parser.add_argument("--real_dir", default="evaluation_data/real")
  parser.add_argument("--output", default=None)
  parser.add_argument("--turned", type=int, default=0,
                      help="eval: the last K frames of each sequence see the sky turned 180° "
                           "(a meridian flip)")
  args = parser.parse_args()
  default_hw = (300, 400) if args.what == "eval" else (2000, 3000)
  args.height, args.width = args.height or default_hw[0], args.width or default_hw[1]
  (run_eval if args.what == "eval" else run_speed)(args)


if __name__ == "__main__":
  main()
