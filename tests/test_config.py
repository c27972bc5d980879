"""Config variants, derived fields, overrides, validation and saved configs."""
import ast
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import jax
import pytest
from flax import nnx

from configs.default import SIZES, TASKS, get_config
from flatai_jax import checkpointing
from flatai_jax.config_args import parse_arg
from flatai_jax.config_validate import ConfigError, validate
from flatai_jax.models import build_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("size", SIZES)
def test_every_variant_resolves_and_validates_on_8_devices(task, size):
  c = get_config(f"{task},{size}")
  assert c.task == task and c.size == size
  assert c.degrade.apply_flat == (task in ("flat", "combined"))
  assert c.degrade.apply_psf == (task in ("psf", "combined"))
  validate(c, device_count=8)


def test_sizes_keep_their_numbers_and_tiles_follow_the_crop():
  got = {s: (get_config(f"flat,{s}").data.crop_size, get_config(f"flat,{s}").predict.tile,
             get_config(f"flat,{s}").predict.overlap) for s in SIZES}
  assert got == {"tiny": (32, 32, 8), "quickstart": (64, 64, 16), "base": (128, 128, 32),
                 "large": (256, 256, 64)}
  c = get_config("flat,tiny")
  c.data.crop_size = 48  # the tile follows the crop, the overlap the tile
  assert (c.predict.tile, c.predict.overlap) == (48, 12)
  c.predict.tile = 16  # a tile set on its own leaves the crop alone
  assert (c.data.crop_size, c.predict.tile, c.predict.overlap) == (48, 16, 4)
  c.predict.overlap = 0
  assert (c.predict.tile, c.predict.overlap) == (16, 0)


def test_tiny_is_quickstart_shrunk_for_tests():
  """The numbers the tests' two former copies of a tiny config had."""
  c, q = get_config("combined,tiny"), get_config("combined,quickstart")
  assert (c.model.base_width, c.model.width_multipliers, c.model.groups) == (8, (1, 2, 4), 4)
  assert (c.data.crop_size, c.data.sensor_hw, c.sky.max_stars, c.sky.psf_size) == (
      32, (96, 128), 16, 9)
  assert (c.train.batch_size, c.train.steps, c.train.log_every, c.train.sample_every,
          c.train.checkpoint_every) == (8, 4, 2, 4, 2)
  assert (c.eval.num_examples, c.eval.batch_size, c.eval.num_frames) == (8, 8, 2)
  assert (c.optim.learning_rate, c.loss.lpips, c.degrade.psf.grid) == (
      q.optim.learning_rate, 0.0, (2, 2))


def test_quickstart_is_small_and_base_is_the_pytorch_original_size():
  def count(cfg):
    m = nnx.eval_shape(lambda: build_model(cfg, nnx.Rngs(0)))
    return sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))
  assert count(get_config("flat,quickstart")) < 2e6
  assert 34e6 < count(get_config("flat,base")) < 44e6


def test_arguments_are_typed_and_strict():
  a = parse_arg("psf,seed=7,fast=false", {"task": ("flat", "psf")}, task="flat", seed=0, fast=True)
  assert (a.task, a.seed, a.fast) == ("psf", 7, False)
  with pytest.raises(ValueError, match="unknown config variant 'blurry'"):
    parse_arg("blurry", {"task": ("flat",)}, task="flat")
  with pytest.raises(ValueError, match="unknown config argument 'lr'"):
    parse_arg("lr=3", {"task": ("flat",)}, task="flat")
  with pytest.raises(ValueError, match="expected true or false"):
    parse_arg("fast=maybe", {}, fast=True)
  assert get_config("combined,quickstart,channels=3").data.channels == 3


def test_command_line_overrides_apply():
  """``--config.x.y=v`` flags reach the config the CLI uses (absl + config_flags)."""
  code = (
      "import sys\n"
      "from absl import app, flags\n"
      "from ml_collections import config_flags\n"
      "config_flags.DEFINE_config_file('config', None, lock_config=True)\n"
      "def main(_):\n"
      "  c = flags.FLAGS.config\n"
      "  print(c.task, c.train.steps, c.optim.learning_rate, c.data.crop_size)\n"
      "app.run(main)\n")
  out = subprocess.run([sys.executable, "-c", code, "--config=configs/default.py:psf,quickstart",
                        "--config.train.steps=200", "--config.optim.learning_rate=0.01"],
                       capture_output=True, text=True, check=True)
  assert out.stdout.split() == ["psf", "200", "0.01", "64"]


# --- Validation: one line naming the field ------------------------------------
BAD = {  # kind: (override, expected message)
    "choice": ("model.norm=bach", "config.model.norm='bach': must be one of group, layer, none"),
    "crop": ("data.crop_size=30", "config.data.crop_size=30: must be a positive multiple of 4 "
             "(2^(depth-1), depth = len(model.width_multipliers) = 3)"),
    "tile": ("predict.tile=18", "config.predict.tile=18: must be a positive multiple of 4 "
             "(2^(depth-1), depth = len(model.width_multipliers) = 3)"),
    "overlap": ("predict.overlap=20",
                "config.predict.overlap=20: must be in 0..16 (at most half of predict.tile=32)"),
    "distribution": ("degrade.flat.dust_depth=('loguniform',0.0,0.1)",
                     "config.degrade.flat.dust_depth=('loguniform', 0.0, 0.1): loguniform needs "
                     "0 < low <= high, got ('loguniform', 0.0, 0.1)"),
    "mesh": ("mesh.data=3", "config.mesh.data=3, config.mesh.fsdp=1: data × fsdp must equal the "
             "8 devices (one of them may be -1)"),
    "batch": ("train.batch_size=12",
              "config.train.batch_size=12: must be a positive multiple of the 8 devices"),
    "grad_accum": ("optim.grad_accum=3",
                   "config.optim.grad_accum=3: must be >= 1 and divide train.batch_size=8"),
}


def _overridden(override):
  """``flat,tiny`` with one ``field=value`` override, typed as the command line types it."""
  key, value = override.split("=", 1)
  try:
    value = ast.literal_eval(value)
  except (ValueError, SyntaxError):
    pass  # a bare word is a string
  c = get_config("flat,tiny")
  *parents, leaf = key.split(".")
  node = c
  for p in parents:
    node = node[p]
  node[leaf] = value
  return c


@pytest.mark.parametrize("kind", sorted(BAD))
def test_validate_names_the_field(kind):
  override, message = BAD[kind]
  with pytest.raises(ConfigError) as e:
    validate(_overridden(override), device_count=8)
  assert str(e.value) == message


def test_device_checks_need_the_device_count():
  validate(_overridden("mesh.data=3"))  # no device count: only what the config decides
  validate(_overridden("mesh.data=2"), device_count=2)
  for data, fsdp, ok in ((-1, 2, True), (4, 2, True), (-1, 3, False), (-1, -1, False),
                         (0, -1, False), (2, 2, False)):
    c = _overridden(f"mesh.data={data}")
    c.mesh.fsdp = fsdp
    if ok:
      validate(c, device_count=8)
    else:
      with pytest.raises(ConfigError, match=r"^config\.mesh\.data="):
        validate(c, device_count=8)
  with pytest.raises(ConfigError, match=r"^config\.eval\.batch_size=4: "):
    validate(_overridden("eval.batch_size=4"), device_count=8)
  with pytest.raises(ConfigError, match=r"^config\.augment\.intensity_scale=\(1\.4, 0\.7\): "):
    validate(_overridden("augment.intensity_scale=(1.4,0.7)"))


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_override_stops_flatai_train_with_one_line(kind, tmp_path):
  """Exit 2, one error line naming the field, nothing written; config-only kinds before JAX
  is imported, device kinds before anything is built."""
  override, message = BAD[kind]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  start = time.monotonic()
  out = subprocess.run([sys.executable, "-m", "flatai_jax.main", "train",
                        "--config=configs/default.py:flat,tiny", f"--config.{override}",
                        f"--workdir={tmp_path / 'run'}"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
  seconds = time.monotonic() - start
  assert out.returncode == 2, out.stderr
  errors = [line for line in out.stderr.splitlines() if "error" in line.lower()]
  assert errors == [f"flatai train: error: {message}"], out.stderr
  assert "Traceback" not in out.stderr and not (tmp_path / "run").exists()
  assert seconds < (30 if kind in ("mesh", "batch", "grad_accum") else 10), seconds


# --- Saved configs: defaults filled in one place ------------------------------
def test_a_saved_config_missing_new_knobs_gets_their_defaults(tmp_path):
  saved = json.loads(get_config("psf,quickstart").to_json_best_effort())
  del saved["eval"]["num_frames"], saved["predict"]["match_tiles"], saved["optim"]["ema_decay"]
  saved["train"]["steps"] = 77
  saved["retired_knob"] = 1  # a knob the defaults no longer have is kept as saved
  model = tmp_path / "model"
  (model / "params").mkdir(parents=True)
  (model / "model.json").write_text(json.dumps({"format": checkpointing.INFERENCE_FORMAT,
                                                "step": 5}))
  (model / "config.json").write_text(json.dumps(saved))
  c = checkpointing.load_config(model)
  assert (c.task, c.size, c.train.steps, c.retired_knob) == ("psf", "quickstart", 77, 1)
  assert (c.eval.num_frames, c.predict.match_tiles, c.optim.ema_decay) == (2, True, 0.0)
  assert c.data.sensor_hw == (384, 576) and c.degrade.psf.grid == (2, 2)  # tuples, as written
  saved["model"]["norm"] = "bach"
  (model / "config.json").write_text(json.dumps(saved))
  with pytest.raises(ConfigError, match=r"^config\.model\.norm='bach'"):
    checkpointing.load_config(model)


# --- No default or stream number outside its one place ------------------------
def _sources():
  return {p: p.read_text() for p in (ROOT / "flatai_jax").rglob("*.py")}


def test_code_reads_config_fields_directly():
  """``config.x.get(key, default)`` would repeat (and can contradict) the config's default."""
  pattern = re.compile(r"\b(config|cfg|loss_weights|perceptual)(\.\w+)*\.get\(")
  hits = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p, text in _sources().items()
          for m in pattern.finditer(text)]
  assert hits == []


def test_prng_stream_numbers_live_in_the_rng_table():
  pattern = re.compile(r"fold_in\([^()]*(\([^()]*\)[^()]*)*,\s*\d+\s*\)")
  hits = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p, text in _sources().items()
          for m in pattern.finditer(text) if p.name != "rng.py"]
  assert hits == []
