"""Sharded, exactly resumable training on 8 fake CPU devices (and 2 processes)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import tiny_config

from flatai_jax import checkpointing, sharding, train
from flatai_jax.evaluation import frames as evaluate
from flatai_jax.train_step import abstract_train_state, make_optimizer

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/default.py:flat,tiny"
TINY_FLAGS = ["--config.train.log_every=1", "--config.train.sample_every=0"]


def _env(devices=8):
  return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
              JAX_PLATFORMS="cpu")


def _train_cmd(workdir, steps, every=1):
  return [sys.executable, "-m", "flatai_jax.main", "train", f"--config={CONFIG}",
          *TINY_FLAGS, f"--config.train.steps={steps}", f"--config.train.checkpoint_every={every}",
          f"--workdir={workdir}"]


def _losses(workdir):
  rows = [json.loads(l) for l in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}


def _saved(workdir, step):
  """(params as numpy, data position) of a checkpoint, restored on one device."""
  config = checkpointing.load_config(workdir, step)
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  _, abstract = abstract_train_state(config, make_optimizer(config))
  target = checkpointing.abstract_with_shardings(
      abstract, sharding.state_shardings(abstract, mesh, config.mesh.rules))
  with checkpointing.create_manager(workdir, read_only=True, async_save=False) as m:
    state, data = checkpointing.restore(m, target, step)
  return jax.tree.leaves(jax.device_get(state.params)), data


@pytest.mark.slow
def test_sigterm_then_resume_is_bitwise_identical_to_a_straight_run(tmp_path):
  total = 8
  straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
  subprocess.run(_train_cmd(straight, total), cwd=ROOT, env=_env(), check=True,
                 capture_output=True, timeout=600)
  proc = subprocess.Popen(_train_cmd(interrupted, total), cwd=ROOT, env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 300
  while time.time() < deadline:  # wait until a few steps have run, then preempt
    if (interrupted / "metrics.jsonl").exists() and len(_losses(interrupted)) >= 2:
      break
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, out
  stopped = max(_losses(interrupted))
  assert stopped < total, "the signal arrived too late to test anything"
  assert checkpointing.latest_step(interrupted) == stopped
  resumed = subprocess.run(_train_cmd(interrupted, total), cwd=ROOT, env=_env(), check=True,
                           capture_output=True, text=True, timeout=600)
  assert f"resumed from step {stopped}" in resumed.stdout
  a, data_a = _saved(straight, total)
  b, data_b = _saved(interrupted, total)
  assert data_a == data_b == {"source": "procedural", "next_step": total, "next_example": total * 8}
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  la, lb = _losses(straight), _losses(interrupted)
  assert [la[s] for s in range(1, total + 1)] == [lb[s] for s in range(1, total + 1)]


def test_eight_devices_match_one_and_checkpoints_move_between_meshes(tmp_path):
  c = tiny_config("flat", **{"train.steps": 3, "train.log_every": 1, "train.sample_every": 0,
                             "train.checkpoint_every": 3})
  train.train_and_evaluate(c, tmp_path / "d8")
  train.train_and_evaluate(c, tmp_path / "d1", devices=jax.devices()[:1])
  l8, l1 = _losses(tmp_path / "d8"), _losses(tmp_path / "d1")
  np.testing.assert_allclose([l8[s] for s in (1, 2, 3)], [l1[s] for s in (1, 2, 3)], rtol=1e-5)
  # the 8-device checkpoint restores onto 4 devices and onto 1, with the same values, and continues
  saved8, _ = _saved(tmp_path / "d8", 3)
  for n in (4, 1):
    work = tmp_path / f"to{n}"
    shutil.copytree(tmp_path / "d8", work)
    mesh = sharding.make_mesh(c.mesh, jax.devices()[:n])
    _, _, params, step = evaluate.restore_params(work, 3, mesh)
    assert step == 3
    for x, y in zip(jax.tree.leaves(jax.device_get(params)), saved8):
      np.testing.assert_array_equal(x, y)
    c4 = tiny_config("flat", **{"train.steps": 4, "train.log_every": 1, "train.sample_every": 0,
                                "train.checkpoint_every": 4})
    result = train.train_and_evaluate(c4, work, devices=jax.devices()[:n])
    assert result["step"] == 4 and np.isfinite(result["train"]["loss"])
    assert checkpointing.latest_step(work) == 4


def test_init_params_starts_a_run_from_another_runs_parameters(tmp_path):
  """``train.init_params`` (a fine-tune): a new run starts from another run's parameters — at
  learning rate 0 its first step keeps them bit for bit — with its own step count; the
  parameters of another model are refused in one line naming their source."""
  one = jax.devices()[:1]
  flags = {"train.log_every": 1, "train.sample_every": 0}
  src = tmp_path / "src"
  train.train_and_evaluate(
      tiny_config("flat", **flags, **{"train.steps": 1, "train.checkpoint_every": 1}), src, one)
  tuned = tmp_path / "tuned"
  train.train_and_evaluate(tiny_config("flat", **flags, **{
      "train.steps": 1, "train.checkpoint_every": 1, "train.init_params": str(src),
      "optim.learning_rate": 0.0}), tuned, one)
  assert checkpointing.latest_step(tuned) == 1
  for x, y in zip(_saved(src, 1)[0], _saved(tuned, 1)[0]):
    np.testing.assert_array_equal(x, y)
  wider = tiny_config("flat", **flags, **{"train.steps": 1, "train.init_params": str(src)})
  wider.model.base_width *= 2
  with pytest.raises(ValueError, match=f"^{src}: train.init_params does not hold"):
    train.train_and_evaluate(wider, tmp_path / "wider", one)


@pytest.mark.slow
def test_kill_during_save_resumes_from_last_complete_checkpoint(tmp_path):
  work = tmp_path / "run"
  proc = subprocess.Popen(_train_cmd(work, 200), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while time.time() < deadline:
    done = [p for p in (work / "checkpoints").glob("*") if p.name.isdigit()] \
        if (work / "checkpoints").exists() else []
    if len(done) >= 3:
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)  # saves every step: the kill lands in or near a save
  proc.wait(timeout=60)
  complete = checkpointing.latest_step(work)
  assert complete is not None and complete >= 2
  # and a step folder left half-written (as a crash mid-write leaves it) is never picked up
  shutil.copytree(work / "checkpoints" / str(complete),
                  work / "checkpoints" / f"{complete + 50}.orbax-checkpoint-tmp-1234")
  assert checkpointing.latest_step(work) == complete
  out = subprocess.run(_train_cmd(work, complete + 2), cwd=ROOT, env=_env(), capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"resumed from step {complete}" in out.stdout
  assert checkpointing.latest_step(work) == complete + 2


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_agree_with_one(tmp_path):
  """launch/multiprocess.sh: 2 processes × 2 CPU devices vs 1 process × 4 devices."""
  env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
  flags = [*TINY_FLAGS, "--config.train.steps=3", "--config.train.checkpoint_every=3"]
  out = subprocess.run(["bash", "launch/multiprocess.sh", "NPROC=2", "DEVICES=2",
                        f"PORT={20000 + os.getpid() % 20000}", f"CONFIG={CONFIG}",
                        f"WORKDIR={tmp_path / 'mp'}", *flags],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  single = subprocess.run([*_train_cmd(tmp_path / "sp", 3, 3)], cwd=ROOT, env=_env(4),
                          capture_output=True, text=True, timeout=600)
  assert single.returncode == 0, single.stderr[-3000:]
  mp, sp = _losses(tmp_path / "mp"), _losses(tmp_path / "sp")
  np.testing.assert_allclose([mp[s] for s in (1, 2, 3)], [sp[s] for s in (1, 2, 3)], rtol=1e-5)
  log1 = (tmp_path / "mp.process1.log").read_text()
  assert "Traceback" not in log1
