r"""Run-once job: build the real-data evaluation set from public frames, with source and licence recorded.

  python data_pipelines/build_real_eval.py --mirror_root=/work/.mirror --out=evaluation_data/real \
      --ccdproc_sdist=/path/to/ccdproc-2.5.1.tar.gz

For EVALUATION ONLY, never training data (DESIGN.md "Evaluation rules"). Three kinds of file:
- ``flat``  a real master flat, the truth F onto which frames are multiplied: (H, W) float32, unitless,
  median of the central 10 % area = 1, bad pixels filled, 3x3 median-filtered.
- ``light`` a calibrated / processed real sky frame, the clean truth for synthetic observed = light * F + G:
  (H, W) float32 in the source's own linear units (plate scans are photographic density, not linear).
- ``raw``   an uncalibrated real frame (no bias, dark or flat removed), for truth-free checks: background
  flatness with sources masked. The integers are kept exactly as stored (uint16 / int16).
Every file is one lossless GZIP_2 tile-compressed image HDU (``CompImageHDU``, ``quantize_level=0`` for floats;
the builder reads each back and asserts bit equality). ``manifest.json`` and ``README.md`` in --out list every
file with kind, content, source (repository, commit, path, git blob), licence, instrument, original shape,
processing, and ``data_sha256``: the sha256 of the pixel array's bytes (native order) as written; a rebuild
gives the same pixels, though not the same file bytes (the gzip streams carry a time stamp).

Inputs. Nothing is downloaded here. GitHub repositories are read from bare git snapshots under --mirror_root,
one per repository, at ``<mirror_root>/<owner>+<name>/repo`` (or ``repo/.git``); each file is read at the
commit below with ``git show <commit>:<path>`` and its blob id is checked. One file comes from the ccdproc 2.5.1
source distribution on PyPI (``pip download ccdproc==2.5.1 --no-deps --no-binary :all:``), given as
--ccdproc_sdist.

Sources (repository @ commit : path — licence):
- AstroHuntsman/huntsman-drp @ 56c78435e8c3b257d399a0b94616e9a6b09747bd — MIT (LICENSE.txt, (c) 2019 Huntsman
  Telescope). Huntsman Telescope test data: ZWO ASI183MM Pro behind a Canon 400 mm f/2.8 lens, g band, 800-px
  crops of the full sensor.
    tests/data/calib/2021-01-07/flat/flat_14_Huntsman_g_band_2021-01-07.fits  (LSST-stack master flat) -> flat
    tests/data/raw/science_0.fits  (300 s raw light, spiral galaxy + stars)                            -> raw
- astropy/astropy-data @ 1ec3f59aeb914092f48f32eea4d75ea92c707fe3 — no licence file in the repository; rights
  are those of each original archive (noted per file).
    tutorials/FITS-images/HorseHead.fits  (Digitized Sky Survey, UK Schmidt SERC-ER plate, STScI/MAST)  -> light
    photometry/M6707HH.fits  (Palomar 48-inch Schmidt POSS-I plate scan of M67; README: rights unchecked) -> light
    galactic_center/gc_2mass_k.fits  (2MASS K-band mosaic towards the Galactic Centre, IRSA)            -> light
    photometry/spitzer_example_image.fits  (Spitzer IRAC mosaic, MJy/sr)                                -> light
    tutorials/FITS-images/M13_blue_000{1..5}.fits  (Orion StarShoot DSI, 5 s raw lights of M13)          -> raw
- astropy/photutils-datasets @ 8c97b4fa3a6c9e6ea072faeed2d49a20585658ba — no licence file in the repository.
    data/isophote/M51.fits  (IRAF test image 'm51 B 600s', CCD, calibrated)                           -> light
- jmccormac01/Donuts @ 94e291fd8b725b5f7094776f9ce2c6febeaa2c7c — MIT (setup.cfg ``license = MIT``). The data
  were removed from the repository in 6c22edbae381a9faebc6086ddedcc0412848bd58; they are read at the commit
  that added them.
    donuts/data/J17490840-00{1,2,3}.fit  (NITES 0.4 m, FLI CCD, 20 s raw lights, with over/prescan)     -> raw
- panoptes/panoptes-utils @ 12850dae7c6e860f59628071f76aa36095e54264 — MIT (LICENSE.txt, (c) 2020 Project
  PANOPTES).
    tests/data/unsolved.fits, tests/data/solved.fits.fz  (Canon DSLR raw CFA, 120 s, 700-px crops)     -> raw
- PyPI ccdproc 2.5.1 sdist — BSD-3-Clause (the package's licence).
    ccdproc-2.5.1/ccdproc/tests/data/a8280271.fits  (SAAO 1.0 m, STE3 CCD, 150 s raw, with overscan)   -> raw
"""
import hashlib
import io
import json
import os
import subprocess
import tarfile

import numpy as np
from absl import app, flags
from astropy.io import fits
from scipy import ndimage

flags.DEFINE_string("mirror_root", "/work/.mirror", "Folder of bare git snapshots, <owner>+<name>/repo.")
flags.DEFINE_string("out", "evaluation_data/real", "Output folder (created; files are replaced).")
flags.DEFINE_string("ccdproc_sdist", None, "Path to ccdproc-2.5.1.tar.gz from PyPI; without it the SAAO "
                    "raw frame is left out (and the manifest says so).")

HUNTSMAN = ("AstroHuntsman/huntsman-drp", "56c78435e8c3b257d399a0b94616e9a6b09747bd", "MIT")
ASTROPY_DATA = ("astropy/astropy-data", "1ec3f59aeb914092f48f32eea4d75ea92c707fe3",
                "none stated in repository")
PHOTUTILS_DATA = ("astropy/photutils-datasets", "8c97b4fa3a6c9e6ea072faeed2d49a20585658ba",
                  "none stated in repository")
DONUTS = ("jmccormac01/Donuts", "94e291fd8b725b5f7094776f9ce2c6febeaa2c7c", "MIT")
PANOPTES = ("panoptes/panoptes-utils", "12850dae7c6e860f59628071f76aa36095e54264", "MIT")
CCDPROC = ("PyPI:ccdproc==2.5.1 (sdist)", None, "BSD-3-Clause")

# name, kind, content, (repo, commit, licence), path, git blob, hdu, instrument, licence note, extra notes
ENTRIES = [
    ("flat_huntsman_asi183_g", "flat", "master flat", HUNTSMAN,
     "tests/data/calib/2021-01-07/flat/flat_14_Huntsman_g_band_2021-01-07.fits",
     "6e82a64aabfdcd2444c6d350ca42e3c3266fc39c", 1,
     "Huntsman Telescope: ZWO ASI183MM Pro + Canon EF 400 mm f/2.8, g band", "",
     "801x801 crop of a 5496x3672 sensor (offset not recorded; its last row and column are 0 and are cut): weak "
     "vignetting, 101-px-smoothed range 0.978-1.004, brightest towards the upper left; no dust donuts visible. "
     "Pixel noise 3.6 % rms in the source, 1.5 % after the 3x3 median."),
    ("light_horsehead_dss", "light", "nebula fills frame", ASTROPY_DATA,
     "tutorials/FITS-images/HorseHead.fits", "70c49e0a8b6f5df5b4b904494b0dbfab754e399d", 0,
     "UK Schmidt telescope, SERC-ER photographic plate (Digitized Sky Survey scan, STScI)",
     "DSS: free for research/education with the STScI acknowledgement; no open licence",
     "Photographic plate scan: density, not linear in flux; the plate's own vignetting was not removed."),
    ("light_m67_poss1", "light", "cluster", ASTROPY_DATA, "photometry/M6707HH.fits",
     "98957ff2f5b364023ff6df602aec4fc3eb567be4", 0,
     "Palomar 48-inch Schmidt (POSS-I plate scan, STScI)",
     "source README: 'I did not check data rights'",
     "Open cluster M67. Photographic plate scan: not linear, may carry the plate's residual gradient."),
    ("light_galactic_center_2mass_k", "light", "dense star field", ASTROPY_DATA,
     "galactic_center/gc_2mass_k.fits", "56545982b65ca808db285a7ce6b44dc1e4171d01", 0,
     "2MASS K band (IRSA mosaic)", "2MASS: public, acknowledgement requested; no licence file",
     "Crowded Galactic-Centre field with dust lanes and diffuse emission; background-subtracted survey data."),
    ("light_spitzer_irac", "light", "star field", ASTROPY_DATA,
     "photometry/spitzer_example_image.fits", "804eb1a8745e90ab5d476303f75a115ac4cfba72", 0,
     "Spitzer IRAC (mosaic, MJy/sr)", "NASA/Spitzer archive data: public; no licence file",
     "3 NaN pixels filled with the local 5x5 median."),
    ("light_m51_b", "light", "galaxy fills frame", PHOTUTILS_DATA, "data/isophote/M51.fits",
     "a114c2cea1d1f92cf9c97fce1ba8a5049efed139", 0, "IRAF test image 'm51 B 600s' (CCD, telescope not recorded)",
     "", "Has a few bad rows/columns from the original CCD."),
    ("raw_huntsman_asi183_g_science", "raw", "galaxy + star field", HUNTSMAN, "tests/data/raw/science_0.fits",
     "55bc69db9e39508e4a74b06a7cf7e004a3533e76", 0,
     "Huntsman Telescope: ZWO ASI183MM Pro + Canon EF 400 mm f/2.8, g band, 300 s", "",
     "Same camera and lens as flat_huntsman_asi183_g; bias level ~32 ADU; 12-bit ADC."),
] + [
    (f"raw_m13_ssdsi_{i:04d}", "raw", "cluster (faint, 5 s)", ASTROPY_DATA,
     f"tutorials/FITS-images/M13_blue_{i:04d}.fits", blob, 0, "Orion StarShoot Deep Space Imager, 5 s", "",
     "Bias ~510 ADU; sky barely above bias; a 12 s-spaced sequence of one field (not dithered).")
    for i, blob in enumerate(["42465504b3cd987a3bffdb840ac26c76652a1b0f", "bf0aa9bf1bb0e293703ba8a6c83a753ba7b14ec4",
                              "c234c60e7382c1a5b4d83e4bcbb953b68ee87fe4", "0444ba296c5f837da1386f0b84c6d5480828badc",
                              "9925bd24ceb7c55a1d8b4de60ee0ebe194662380"], start=1)
] + [
    (f"raw_nites_j1749_{i:03d}", "raw", "star field", DONUTS, f"donuts/data/J17490840-{i:03d}.fit", blob, 0,
     "NITES 0.4 m f/10 Meade, FLI CCD (13 um pixels), Clear, 20 s, La Palma", "",
     "Full readout incl. ~32 columns of prescan at the left (bias ~2500 ADU); sky only ~5-10 ADU above bias.")
    for i, blob in enumerate(["3c84de4fb4069b86f5b65e70b497c60bf6edafbe", "1f6faeb4d8dbc5a67bc27b6847a15a15dc523bac",
                              "73c1a6655db9b05215704c449a5d188e088a7def"], start=1)
] + [
    ("raw_panoptes_canon_a", "raw", "star field", PANOPTES, "tests/data/unsolved.fits",
     "4292aa403908ce32d67b0b9333ba875d16aec64c", 0, "PANOPTES PAN001: Canon EOS DSLR + 85 mm lens, ISO 100, 120 s",
     "", "Bayer CFA mosaic, not debayered: greens at (0,0) and (1,1) of each 2x2 cell (GRBG or GBRG; pattern "
     "not in header). 700x700 crop of the sensor (offset not recorded). Field KIC 8462852."),
    ("raw_panoptes_canon_b", "raw", "star field", PANOPTES, "tests/data/solved.fits.fz",
     "ddcccec819972ccb19258cf331c159a5292413e5", 1, "PANOPTES PAN001: Canon EOS DSLR + 85 mm lens, ISO 100, 120 s",
     "", "As raw_panoptes_canon_a, 2 min later (same crop, same field)."),
    ("raw_saao_1m_a8280271", "raw", "star field", CCDPROC, "ccdproc-2.5.1/ccdproc/tests/data/a8280271.fits",
     None, 0, "SAAO 1.0 m, STE3 CCD, 150 s", "",
     "Full readout: TRIMSEC [17:528,1:520], BIASSEC [4:13,1:520] (FITS 1-based); GAIN 1.9, RDNOISE 5.0."),
]

KEEP_CARDS = ("TELESCOP", "INSTRUME", "OBJECT", "DATE-OBS", "EXPTIME", "FILTER", "IMAGETYP", "BUNIT", "EGAIN",
              "GAIN", "RDNOISE", "CAM-MOD", "LENSINFO", "ISO", "TRIMSEC", "BIASSEC", "SURVEY", "ORIGIN")


def _git_dir(mirror_root, repo):
  base = os.path.join(mirror_root, repo.replace("/", "+"), "repo")
  for cand in (os.path.join(base, ".git"), base):
    if os.path.isfile(os.path.join(cand, "HEAD")):
      return cand
  raise FileNotFoundError(f"{repo}: no git snapshot at {base} (fetch it first)")


def _read_git(mirror_root, repo, commit, path, blob):
  gd = _git_dir(mirror_root, repo)
  got = subprocess.run(["git", "--git-dir", gd, "rev-parse", f"{commit}:{path}"], check=True,
                       capture_output=True, text=True).stdout.strip()
  if blob is not None and got != blob:
    raise ValueError(f"{repo}@{commit}:{path}: blob {got}, expected {blob}")
  data = subprocess.run(["git", "--git-dir", gd, "cat-file", "blob", got], check=True,
                        capture_output=True).stdout
  if len(data) < 2880 or not data.startswith(b"SIMPLE"):
    raise ValueError(f"{repo}@{commit}:{path}: not a FITS file ({len(data)} bytes; an LFS pointer or absent?)")
  return data, got


def _read_sdist(sdist, member):
  with tarfile.open(sdist) as tar:
    return tar.extractfile(member).read()


def _central_median(a, frac=0.10):
  """Median of the central box holding `frac` of the image area."""
  h, w = a.shape
  s = np.sqrt(frac)
  dh, dw = int(round(h * s / 2)), int(round(w * s / 2))
  return float(np.nanmedian(a[h // 2 - dh:h // 2 + dh, w // 2 - dw:w // 2 + dw]))


def _fill_bad(a, bad, size=5):
  """Replace pixels where `bad` with the median of the good pixels in the size x size box around them."""
  a = a.astype(np.float64)
  r = size // 2
  h, w = a.shape
  for y, x in np.argwhere(bad):
    win = (slice(max(y - r, 0), min(y + r + 1, h)), slice(max(x - r, 0), min(x + r + 1, w)))
    vals = a[win][~bad[win]]
    if vals.size == 0:
      raise ValueError(f"bad pixel at ({y}, {x}) has no good neighbour within {r} px")
    a[y, x] = np.median(vals)
  return a


def _process(kind, hdul, hdu_index):
  hdu = hdul[hdu_index]
  raw = np.asarray(hdu.data)
  steps = []
  if kind == "raw":
    return raw.copy(), ["none: integers exactly as stored"]
  a = raw.astype(np.float64)
  bad = ~np.isfinite(a)
  if kind == "flat":
    if "MASK" in hdul:
      bad |= np.asarray(hdul["MASK"].data) != 0
    good = np.isfinite(a) & (a > 0)
    rows, cols = np.where(good.any(1))[0], np.where(good.any(0))[0]
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    if a[box].shape != a.shape:
      steps.append(f"cropped to rows {rows[0]}:{rows[-1] + 1}, cols {cols[0]}:{cols[-1] + 1} (edge rows/cols "
                   "of zeros)")
    a, bad = a[box], (bad | ~good)[box]
    steps.append(f"{int(bad.sum())} masked/non-finite/non-positive pixels filled with local 5x5 median")
    a = _fill_bad(a, bad)
    a = ndimage.median_filter(a, size=3, mode="nearest")
    steps.append("3x3 median filter")
    c = _central_median(a)
    a = a / c
    steps.append(f"divided by the median of the central 10 % area ({c:.6g})")
  else:
    if bad.any():
      steps.append(f"{int(bad.sum())} non-finite pixels filled with local 5x5 median")
    a = _fill_bad(a, bad)
    steps.append("converted to float32, original units")
  return a.astype(np.float32), steps


def _write(path, data, header_cards):
  """Lossless tile-compressed FITS; read back and assert bit equality."""
  hdr = fits.Header()
  for k, v in header_cards:
    hdr[k] = v
  kw = dict(compression_type="GZIP_2", dither_seed=1)
  if data.dtype.kind == "f":
    kw["quantize_level"] = 0.0
  comp = fits.CompImageHDU(data=data, header=hdr, **kw)
  tmp = path + ".tmp"
  fits.HDUList([fits.PrimaryHDU(), comp]).writeto(tmp, overwrite=True)
  back = fits.getdata(tmp, 1)
  if back.dtype != data.dtype or not np.array_equal(back, data):
    raise AssertionError(f"{path}: compressed round trip is not exact")
  os.replace(tmp, path)


def main(_):
  fl = flags.FLAGS
  os.makedirs(fl.out, exist_ok=True)
  manifest = {"purpose": "FlatAI-JAX real-data evaluation set. EVALUATION ONLY: never training data.",
              "builder": "data_pipelines/build_real_eval.py", "files": [], "left_out": []}
  for (name, kind, content, (repo, commit, licence), path, blob, hdu_index, instrument, lic_note,
       notes) in ENTRIES:
    if repo.startswith("PyPI:"):
      if not fl.ccdproc_sdist:
        manifest["left_out"].append({"name": name, "why": "--ccdproc_sdist not given"})
        print(f"skip {name}: --ccdproc_sdist not given")
        continue
      data = _read_sdist(fl.ccdproc_sdist, path)
      got_blob = None
    else:
      data, got_blob = _read_git(fl.mirror_root, repo, commit, path, blob)
    src_sha = hashlib.sha256(data).hexdigest()
    with fits.open(io.BytesIO(data)) as hdul:
      hdul.verify("silentfix")
      orig = hdul[hdu_index]
      shape = list(orig.data.shape)
      cards = [(k, orig.header[k]) for k in KEEP_CARDS if k in orig.header]
      out, steps = _process(kind, hdul, hdu_index)
    licence_text = licence + (f"; {lic_note}" if lic_note else "")
    cards += [("EVALONLY", True), ("KIND", kind), ("SRCREPO", repo), ("SRCCOMM", commit or "n/a"),
              ("SRCBLOB", got_blob or "n/a"), ("SRCSHA", src_sha)]
    hdr_cards = cards + [("HIERARCH SRCPATH", path), ("HIERARCH LICENCE", licence_text[:60])]
    fn = f"{name}.fits"
    _write(os.path.join(fl.out, fn), out, hdr_cards)
    # The gzip streams carry a time stamp, so the files differ between builds; the pixels do not.
    out_sha = hashlib.sha256(np.ascontiguousarray(out).tobytes()).hexdigest()
    size = os.path.getsize(os.path.join(fl.out, fn))
    manifest["files"].append({
        "name": fn, "kind": kind, "content": content, "instrument": instrument,
        "source": {"repo": repo, "commit": commit, "path": path, "git_blob": got_blob, "sha256": src_sha},
        "licence": licence_text, "original_shape": shape, "original_dtype": str(orig.data.dtype),
        "shape": list(out.shape), "dtype": str(out.dtype), "processing": steps, "notes": notes,
        "bytes": size, "data_sha256": out_sha})
    print(f"{fn:40s} {kind:5s} {str(out.shape):14s} {size / 1e6:6.2f} MB  {repo}")
  with open(os.path.join(fl.out, "manifest.json"), "w") as f:
    json.dump(manifest, f, indent=1)
    f.write("\n")
  _write_readme(os.path.join(fl.out, "README.md"), manifest)
  total = sum(e["bytes"] for e in manifest["files"])
  print(f"{len(manifest['files'])} files, {total / 1e6:.2f} MB")


def _write_readme(path, manifest):
  lines = [
      "# Real-data evaluation set",
      "",
      "**For evaluation only: never use these files, or anything derived from them, as training data.**",
      "",
      "Built by `python data_pipelines/build_real_eval.py --mirror_root=<snapshots> --out=evaluation_data/real "
      "--ccdproc_sdist=<ccdproc-2.5.1.tar.gz>`; its docstring says where every file comes from. `manifest.json` "
      "holds the same table with commits, git blobs, processing steps and pixel sha256 sums.",
      "",
      "The FITS files are not committed to this repository (they are third-party data read from repository "
      "snapshots and a PyPI sdist): build them with the command above.",
      "",
      "- `flat`: real master flat (truth F), float32, median of the central 10 % = 1.",
      "- `light`: calibrated/processed real frame (clean truth for synthetic `light * F + G`), float32, "
      "source units.",
      "- `raw`: uncalibrated real frame (no bias/dark/flat removed), integers as stored; for truth-free checks.",
      "",
      "| file | kind | content | shape | MB | instrument | source (repo @ commit : path) | licence | notes |",
      "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ]
  for e in manifest["files"]:
    s = e["source"]
    commit = (s["commit"] or "")[:10]
    lines.append(f"| {e['name']} | {e['kind']} | {e['content']} | {e['shape'][0]}x{e['shape'][1]} "
                 f"| {e['bytes'] / 1e6:.2f} | {e['instrument']} | {s['repo']} @ {commit} : {s['path']} "
                 f"| {e['licence']} | {e['notes']} |")
  if manifest["left_out"]:
    lines += ["", "Left out in this build: " + ", ".join(f"{x['name']} ({x['why']})" for x in manifest["left_out"])]
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
  app.run(main)
