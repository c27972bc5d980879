"""A real Siril round trip: Siril converts and stacks synthetic frames, ``flatai correct``
corrects the stack, Siril loads the result, reports its statistics and saves it again.

Needs ``siril-cli`` (Debian's ``siril`` package; ``make setup`` installs it where apt-get and
root are available)."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from flatai_jax import correct

ROOT = Path(__file__).resolve().parents[1]
SIRIL = shutil.which("siril-cli")
H, W = 300, 400
pytestmark = pytest.mark.skipif(SIRIL is None, reason="siril-cli not found (apt-get install siril)")


def siril(workdir: Path, script: str) -> str:
  """Runs a Siril script (``siril-cli -d WORKDIR -s FILE``); returns its log, raises on failure."""
  path = workdir / "script.ssf"
  path.write_text("requires 1.0.0\n" + script)
  out = subprocess.run([SIRIL, "-d", str(workdir), "-s", str(path)], capture_output=True,
                       text=True, timeout=120)
  if out.returncode != 0 or "Script execution finished successfully" not in out.stdout:
    raise AssertionError(f"siril failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
  return out.stdout


def siril_stat(log: str) -> dict:
  """Mean and median of the ``stat`` line (``B&W layer: Mean: m, Median: d, …``)."""
  m = re.search(r"B&W layer: Mean: ([-0-9.e+]+), Median: ([-0-9.e+]+)", log)
  assert m, log
  return {"mean": float(m.group(1)), "median": float(m.group(2))}


def _raw_frames(folder: Path, n=3):
  """``n`` 16-bit camera frames: sky 10000 ADU, 30 % vignetting, stars, noise."""
  rng = np.random.default_rng(3)
  yy, xx = np.mgrid[0:H, 0:W]
  r2 = ((xx - W / 2) / (W / 2)) ** 2 + ((yy - H / 2) / (W / 2)) ** 2
  sky = np.full((H, W), 10000.0)
  for x, y in rng.uniform(20, 280, (15, 2)):
    sky += 20000 * np.exp(-0.5 * ((xx - x) ** 2 + (yy - y) ** 2) / 1.5 ** 2)
  folder.mkdir()
  for i in range(n):
    frame = sky * (1.0 - 0.3 * r2) + rng.normal(0, 100, (H, W))
    header = fits.Header({"OBJECT": "synthetic", "EXPTIME": 60.0})
    fits.PrimaryHDU(np.clip(np.round(frame), 0, 65535).astype(np.uint16),
                    header=header).writeto(folder / f"light_{i}.fits")


def test_siril_stacks_flatai_corrects_siril_reads(tmp_path):
  _raw_frames(tmp_path / "raw")
  siril(tmp_path, "cd raw\nconvert light -out=../proc\ncd ../proc\n"
                  "stack light rej 3 3 -nonorm -out=../stacked\n")
  stacked = tmp_path / "stacked.fit"
  assert fits.getheader(stacked)["STACKCNT"] == 3
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-m", "flatai_jax.main", "correct", str(stacked),
                        f"--output={tmp_path / 'corrected.fits'}"], cwd=ROOT, capture_output=True,
                       text=True, env=env, timeout=600)
  assert out.returncode == 0, out.stderr
  log = siril(tmp_path, "load corrected.fits\nstat\nsave resaved\nclose\n")
  assert "Reading FITS: file corrected.fits, 1 layer(s), 400x300 pixels" in log
  data = fits.getdata(tmp_path / "corrected.fits")
  assert data.dtype == np.dtype(">f4")
  stat = siril_stat(log)
  # Siril shows a float image's statistics on the 16-bit scale (× 65535).
  assert stat["mean"] == pytest.approx(65535 * float(np.mean(data)), rel=1e-4)
  assert stat["median"] == pytest.approx(65535 * float(np.median(data)), rel=1e-3)
  header = fits.getheader(tmp_path / "resaved.fit")  # what Siril writes back keeps ours
  assert header["STACKCNT"] == 3
  assert any(h.startswith("flatai correct: model=") for h in header["HISTORY"])
  before = correct.background_nonuniformity(fits.getdata(stacked)[..., None])
  after = correct.background_nonuniformity(data[..., None])
  assert after < 0.5 * before, (before, after)
