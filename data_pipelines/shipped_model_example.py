"""Run-once job: the README's shipped-model example (its numbers and docs/correct_before_after.png).

  python data_pipelines/shipped_model_example.py [--workdir=/tmp/shipped_model_example]

Runs, exactly as a user would (the shipped model: no ``--checkpoint``)::

  flatai synth --config=configs/default.py:flat,quickstart --num=1 --full_frame --config.seed=5 \\
      --output_dir=WORKDIR/synth
  flatai correct WORKDIR/synth/0000_observed.fits --reference=WORKDIR/synth/0000_clean.fits \\
      --out=WORKDIR/corrected

prints what ``correct`` prints (background non-uniformity, MAE and PSNR against the clean frame)
and draws the picture: observed, corrected, the true clean sky; estimated and true F and G.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from flatai_jax import metrics  # noqa: E402
from flatai_jax.io import images  # noqa: E402

PICTURE = ROOT / "docs" / "correct_before_after.png"


def flatai(*args) -> str:
  """Runs the ``flatai`` command of this Python with this checkout first on the path; its stdout."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
             XLA_FLAGS="")
  cmd = [str(Path(sys.executable).parent / "flatai"), *map(str, args)]
  return subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout


def main(argv=None) -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--workdir", type=Path, default=Path("/tmp/shipped_model_example"))
  p.add_argument("--picture", type=Path, default=PICTURE)
  a = p.parse_args(argv)
  synth, out = a.workdir / "synth", a.workdir / "corrected"
  flatai("synth", "--config=configs/default.py:flat,quickstart", "--num=1", "--full_frame",
         "--config.seed=5", f"--output_dir={synth}")
  printed = flatai("correct", synth / "0000_observed.fits",
                   f"--reference={synth / '0000_clean.fits'}", f"--out={out}")
  print("\n".join(line for line in printed.splitlines() if "tiles/s" not in line))
  read = lambda path: images.read_image(path)[0]
  stem = out / "0000_observed_corrected"
  panels = {"observed (input)": (read(synth / "0000_observed.fits"), "image"),
            "corrected by the shipped model": (read(f"{stem}.fits"), "image"),
            "true clean sky": (read(synth / "0000_clean.fits"), "image"),
            "estimated F": (read(f"{stem}_F.fits"), "field"),
            "true F": (read(synth / "0000_F.fits"), "field"),
            "estimated G": (read(f"{stem}_G.fits"), "field"),
            "true G": (read(synth / "0000_G.fits"), "field")}
  metrics.save_panel_grid(a.picture, panels, cols=4)
  print(f"wrote {a.picture}")


if __name__ == "__main__":
  main()
