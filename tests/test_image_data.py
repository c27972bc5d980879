"""User images: dataset build (every format, bad files skipped), grain pipeline state, sharding, offsets."""
import json
import os

import numpy as np
import pytest
from astropy.io import fits
from conftest import tiny_config

from flatai_jax.data import image_dataset, pipeline
from flatai_jax.data.image_dataset import srgb_to_linear


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  import tifffile
  from PIL import Image
  from xisf import XISF
  src = tmp_path_factory.mktemp("images")
  rng = np.random.default_rng(0)
  img = lambda c=1, s=1.0: (rng.random((80, 96, c)) * s).astype(np.float32)
  (src / "sub").mkdir()
  fits.PrimaryHDU(img()[:, :, 0] * 1000).writeto(src / "mono.fits")
  fits.PrimaryHDU((img()[:, :, 0] * 65535).astype(np.uint16)).writeto(src / "sub" / "u16.fit")
  fits.PrimaryHDU(np.moveaxis(img(3), -1, 0)).writeto(src / "cube.fits")
  XISF.write(str(src / "rgb.xisf"), img(3), creator_app="test")
  u8 = (img(3) * 255).astype(np.uint8)
  Image.fromarray(u8).save(src / "rgb8.png")
  Image.fromarray((img()[:, :, 0] * 65535).astype(np.uint16)).save(src / "mono16.png")
  Image.fromarray(u8).save(src / "sub" / "photo.jpg")
  tifffile.imwrite(src / "t16.tif", (img()[:, :, 0] * 65535).astype(np.uint16))
  # bad files
  (src / "corrupt.fits").write_bytes(os.urandom(3000))
  blob = (src / "rgb8.png").read_bytes()
  (src / "truncated.png").write_bytes(blob[: len(blob) // 3])
  fits.PrimaryHDU(np.full((80, 96), np.nan, np.float32)).writeto(src / "nan.fits")
  fits.PrimaryHDU(np.ones((20, 20), np.float32)).writeto(src / "small.fits")
  (src / "notes.txt").write_text("not an image")
  out = tmp_path_factory.mktemp("tfds")
  summary = image_dataset.build_dataset(src, out, min_size=32, val_percent=25)
  return src, out, summary, u8


def test_build_counts_and_reports_every_bad_file(built):
  src, out, summary, _ = built
  assert sum(summary["examples"].values()) == 8
  reasons = {s["path"]: s["reason"] for s in summary["skipped"]}
  assert set(reasons) == {"corrupt.fits", "truncated.png", "nan.fits", "small.fits", "notes.txt"}
  assert "truncated or corrupt" in reasons["corrupt.fits"]
  assert "truncated or corrupt" in reasons["truncated.png"]
  assert "all pixels are NaN" in reasons["nan.fits"]
  assert "too small" in reasons["small.fits"]
  assert reasons["notes.txt"] == "unsupported file type"
  assert json.loads((out / "build_summary.json").read_text()) == summary
  # deterministic split by path, and a rebuild reuses the data
  expected = {s: sum(image_dataset.split_of(p, 25) == s for p in
                     ["mono.fits", "sub/u16.fit", "cube.fits", "rgb.xisf", "rgb8.png",
                      "mono16.png", "sub/photo.jpg", "t16.tif"]) for s in ("train", "validation")}
  assert summary["examples"] == {k: v for k, v in expected.items()}
  assert image_dataset.build_dataset(src, out, min_size=32, val_percent=25) == summary


SPLIT_NOTE = "note: the validation split is empty ({} image(s), none in the 25 % share); " \
             "training does not need it"


@pytest.mark.parametrize("names, note", [
    (["img3.fits"], "note: all 1 image(s) fell in the 25 % validation share; they all train "
                    "and the validation split is empty"),
    (["img0.fits", "img1.fits"], SPLIT_NOTE.format(2)),
    (["img0.fits", "img1.fits", "img2.fits", "img4.fits", "img5.fits"], SPLIT_NOTE.format(5)),
])
def test_one_two_or_five_images_give_a_trainable_dataset(tmp_path, names, note):
  """Folders too small for a validation image at --val_percent=25 build, with one note."""
  (tmp_path / "in").mkdir()
  rng = np.random.default_rng(0)
  for name in names:
    fits.PrimaryHDU(rng.random((80, 96)).astype(np.float32)).writeto(tmp_path / "in" / name)
  hashed = [image_dataset.split_of(n, 25) for n in names]  # the premise of each case
  assert hashed == (["validation"] if len(names) == 1 else ["train"] * len(names))
  summary = image_dataset.build_dataset(tmp_path / "in", tmp_path / "data", 32, 25)
  assert summary["examples"] == {"train": len(names), "validation": 0}
  assert summary["notes"] == [note] and summary["skipped"] == []
  source = image_dataset.load_split(tmp_path / "data", "train")
  assert len(source) == len(names)
  crop = next(iter(pipeline.crop_stream(source, _config(), 0, 1)))
  assert crop["clean"].shape == (16, 16, 1) and tuple(crop["sensor_hw"]) == (80, 96)
  with pytest.raises(image_dataset.DatasetError, match="has no 'validation' split"):
    image_dataset.load_split(tmp_path / "data", "validation")


def test_a_folder_without_usable_images_is_one_clear_error(tmp_path):
  (tmp_path / "in").mkdir()
  fits.PrimaryHDU(np.ones((20, 20), np.float32)).writeto(tmp_path / "in" / "small.fits")
  with pytest.raises(image_dataset.DatasetError) as e:
    image_dataset.build_dataset(tmp_path / "in", tmp_path / "data", 32, 25)
  assert str(e.value) == (f"{tmp_path / 'in'}: no usable images among 1 file(s); small.fits: "
                          "too small (20×20); need at least 32 px per side")
  assert not (tmp_path / "data").exists()


def test_stored_images_follow_the_conversion_rule(built):
  _, out, summary, u8 = built
  records = {}
  for split, n in summary["examples"].items():
    source = image_dataset.load_split(out, split)
    for i in range(n):
      r = source[i]
      records[r["path"].decode() if isinstance(r["path"], bytes) else r["path"]] = r
  png = records["rgb8.png"]
  lin = srgb_to_linear(u8 / 255.0)
  np.testing.assert_allclose(png["image"], lin / lin.max(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(png["scale"], lin.max(), rtol=1e-6)
  for r in records.values():
    assert r["image"].max() == pytest.approx(1.0) and r["image"].min() >= 0.0
    assert tuple(r["shape"]) == r["image"].shape
  assert records["cube.fits"]["image"].shape == (80, 96, 3)
  np.testing.assert_allclose(srgb_to_linear(np.array([0.0, 0.04045, 0.5, 1.0])),
                             [0.0, 0.04045 / 12.92, 0.21404114, 1.0], rtol=1e-6)


def _coded_source(n=12, h=40, w=48):
  """Records whose pixels encode (record id, y, x): value = id * 1e4 + y * w + x."""
  yy, xx = np.mgrid[0:h, 0:w]
  return [{"image": (i * 1e4 + yy * w + xx)[:, :, None].astype(np.float32)} for i in range(n)]


def _config(**kw):
  return tiny_config("flat", **{"data.source": "images", "data.crop_size": 16,
                                "train.batch_size": 4, **kw})


def test_crops_carry_their_offsets():
  c = _config()
  p = pipeline.Pipeline(c, source=_coded_source())
  for step in range(3):
    b = p.next_batch(step)
    for crop, (y, x), (h, w) in zip(b["clean"], b["offset"], b["sensor_hw"]):
      assert (h, w) == (40, 48)
      v = crop[..., 0] % 1e4
      np.testing.assert_array_equal(v, (y + np.arange(16))[:, None] * 48 + x + np.arange(16))


def test_restored_state_yields_exactly_the_next_batches():
  c = _config()
  a = pipeline.Pipeline(c, source=_coded_source())
  for step in range(3):
    a.next_batch(step)
  state = json.loads(json.dumps(a.get_state()))  # survives JSON, as in a checkpoint
  expected = [a.next_batch(s) for s in (3, 4)]
  b = pipeline.Pipeline(c, source=_coded_source())
  b.set_state(state)
  for s, e in zip((3, 4), expected):
    got = b.next_batch(s)
    for k in e:
      np.testing.assert_array_equal(got[k], e[k])


def test_two_processes_get_disjoint_examples():
  c = _config(**{"train.batch_size": 4})
  ids = []
  for pi in range(2):
    p = pipeline.Pipeline(c, process_index=pi, process_count=2, source=_coded_source(12))
    seen = set()
    for step in range(3):  # 3 steps × 2 local examples = 6 = half of one epoch
      b = p.next_batch(step)
      seen |= {int(v // 1e4) for v in b["clean"][:, 0, 0, 0]}
      np.testing.assert_array_equal(b["index"], np.arange(step * 4 + pi * 2, step * 4 + pi * 2 + 2))
    ids.append(seen)
  assert len(ids[0]) == len(ids[1]) == 6 and not ids[0] & ids[1]


def test_mixing_takes_the_configured_share_of_procedural_slots():
  real = pipeline.is_real_slot(np.arange(10_000), 0.3)
  assert abs(real.mean() - 0.7) < 0.01


def test_training_on_images_runs_and_learns(built, tmp_path):
  from flatai_jax import train
  _, out, _, _ = built
  c = tiny_config("flat", **{"data.source": "images", "data.tfds_dir": str(out),
                             "data.procedural_fraction": 0.5, "train.steps": 4,
                             "train.log_every": 1, "train.sample_every": 0,
                             "train.checkpoint_every": 2})
  result = train.train_and_evaluate(c, tmp_path / "run")
  assert result["step"] == 4 and np.isfinite(result["train"]["loss"])
  assert sorted(os.listdir(tmp_path / "run" / "data_state")) == ["2.0.json", "4.0.json"]
  c.train.steps = 5
  result = train.train_and_evaluate(c, tmp_path / "run")  # resumes with the pipeline state
  assert result["step"] == 5


def test_eval_set_is_bit_identical_when_rebuilt_and_scores_like_the_generated_one(tmp_path):
  from flatai_jax.evaluation import crops as evaluate
  from flatai_jax.train_step import split_model
  c = tiny_config("combined")
  a = evaluate.make_eval_set(c)
  digest = evaluate.save_eval_set(a, tmp_path / "eval.npz")
  b = evaluate.make_eval_set(c)
  assert evaluate.eval_set_checksum(b) == digest
  assert set(a) >= {"observed", "noise", "coords", "clean", "F", "G", "psf"}
  graphdef, params = split_model(c)
  generated = evaluate.evaluate_params(graphdef, params, c)
  c.eval.set_path = str(tmp_path / "eval.npz")
  stored = evaluate.evaluate_params(graphdef, params, c)
  for k in generated:
    np.testing.assert_allclose(stored[k], generated[k], rtol=1e-6)
  data = dict(np.load(tmp_path / "eval.npz"))
  data["clean"][0, 0, 0, 0] += 1.0
  np.savez(tmp_path / "eval.npz", **data)
  with pytest.raises(ValueError, match="checksum does not match"):
    evaluate.load_eval_set(tmp_path / "eval.npz")
