"""Every launcher's command is executed: a few training steps of the tiny config on CPU.

The cluster tools are replaced by the shims in ``tests/launch_shims`` (first on
``PATH``): ``gcloud`` copies and runs on a fake TPU worker home, ``xpk`` runs the
workload's command, ``sbatch``/``srun`` run the job here, and the worker's
``python3 -m venv`` / ``pip install -e`` make an environment whose ``flatai`` runs
the copied code. So a command that would fail on a pod (an empty quoted argument,
a flag split at a space) fails here. Each launcher runs without and with extra
flags; the flags change only host-side behaviour, so the runs share one JAX
compilation cache and compile twice (gpu.sh adds an XLA flag, which is part of
the cache key).
"""
import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIMS = ROOT / "tests" / "launch_shims"
CONFIG = "configs/default.py:flat,tiny"  # 4 steps, metrics every 2, checkpoints every 2
FLAGS = ["--config.train.log_every=1", "--config.train.checkpoint_every=4",
         "--config.data.sensor_hw=(96, 128)"]  # a space: must reach flatai as one word


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _launcher(name: str, tmp: Path) -> list[str]:
  """The documented way to start launcher ``name`` (cluster knobs set, repo paths local)."""
  return {
      "local": ["bash", "launch/local.sh"],
      "gpu": ["bash", "launch/gpu.sh"],
      # one process: the coordinator path and the same compiled programs as the rest (two
      # processes: test_training.py::test_two_processes_agree_with_one)
      "multiprocess": ["bash", "launch/multiprocess.sh", "NPROC=1", "DEVICES=1",
                       f"PORT={_free_port()}"],
      "slurm": ["sbatch", "--nodes=1", "launch/slurm.sbatch"],
      "tpu_vm": ["bash", "launch/tpu_vm.sh", "TPU=t1", "ZONE=z1", "PROJECT=p1",
                 f"REPO={tmp / 'repo'}"],
      "xpk": ["bash", "launch/xpk.sh", "CLUSTER=c1", "IMAGE=gcr.io/p1/flatai:t1"],
  }[name]


# what each launcher must have asked its cluster tool for (the shims log every call)
TOOL_CALLS = {
    "local": [], "gpu": [], "multiprocess": [],
    "slurm": [["sbatch", "--nodes=1"], ["srun", "--kill-on-bad-exit=1", "flatai", "train"]],
    "tpu_vm": [["gcloud", "scp", "--recurse", "--worker=all", "--project=p1"],
               ["gcloud", "ssh", "t1", "--worker=all", "python3 -m venv"],
               ["gcloud", "ssh", "t1", "--worker=all", ".venv/bin/flatai train"]],
    "xpk": [["xpk", "--cluster=c1", "--docker-image=gcr.io/p1/flatai:t1", "flatai train"]],
}


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory):
  return tmp_path_factory.mktemp("jax_cache")


def _environment(tmp: Path, jax_cache: Path) -> dict:
  (tmp / "home").mkdir()
  (tmp / "repo").mkdir()  # what tpu_vm.sh copies to the workers: the code and configs
  for name in ("configs", "flatai_jax", "pyproject.toml"):
    (tmp / "repo" / name).symlink_to(ROOT / name)
  return dict(
      os.environ, PATH=f"{SHIMS}:{Path(sys.executable).parent}:{os.environ['PATH']}",
      PYTHONPATH=str(ROOT), SHIM_PYTHON=sys.executable, SHIM_LOG=str(tmp / "tools.log"),
      SHIM_REMOTE_HOME=str(tmp / "home"), SHIM_IMAGE_WORKDIR=str(ROOT), JAX_PLATFORMS="cpu",
      XLA_FLAGS="--xla_force_host_platform_device_count=1",
      JAX_COMPILATION_CACHE_DIR=str(jax_cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def _metric_steps(workdir: Path) -> list[int]:
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [r["step"] for r in rows if r["split"] == "train"]


@pytest.mark.slow  # 12 short trainings, two compilations: ~3.5 min on 2 idle CPU cores
@pytest.mark.parametrize("flags", [[], FLAGS], ids=["no_flags", "flags"])
@pytest.mark.parametrize("name", sorted(TOOL_CALLS))
def test_launcher_trains_the_tiny_config(name, flags, tmp_path, jax_cache):
  env = _environment(tmp_path, jax_cache)
  work = tmp_path / "run"
  out = subprocess.run([*_launcher(name, tmp_path), f"CONFIG={CONFIG}", f"WORKDIR={work}", *flags],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  assert _metric_steps(work) == ([1, 2, 3, 4] if flags else [2, 4])
  checkpoints = sorted(int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit())
  assert checkpoints == ([4] if flags else [2, 4])
  saved = json.loads((work / "config.json").read_text())
  assert (saved["size"], saved["train"]["steps"], saved["data"]["sensor_hw"]) == (
      "tiny", 4, [96, 128])
  log = (tmp_path / "tools.log").read_text().splitlines() if TOOL_CALLS[name] else []
  assert len(log) == len(TOOL_CALLS[name]), log
  for line, words in zip(log, TOOL_CALLS[name]):
    assert all(w in line for w in words), (line, words)


@pytest.mark.parametrize("flags", [[], FLAGS], ids=["no_flags", "flags"])
@pytest.mark.parametrize("name", sorted(TOOL_CALLS))
def test_dry_run_prints_the_train_command_and_runs_nothing(name, flags, tmp_path, jax_cache):
  """The fast check of the same commands: ``flatai train`` gets exactly CONFIG, WORKDIR and
  the flags, each one word (no empty '' argument), and --dry-run calls no tool."""
  env = _environment(tmp_path, jax_cache)
  work = tmp_path / "run"
  launcher = ["bash", "launch/slurm.sbatch"] if name == "slurm" else _launcher(name, tmp_path)
  launcher += ["NPROC=3"] if name == "multiprocess" else []  # one command per process
  out = subprocess.run([*launcher, "--dry-run", f"CONFIG={CONFIG}",
                        f"WORKDIR={work}", *flags], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=60, check=True)
  assert not (tmp_path / "tools.log").exists() and not work.exists()
  lines = [shlex.split(line) for line in out.stdout.splitlines()]
  if name in ("tpu_vm", "xpk"):  # the train command is the remote shell's --command
    remote = [w for w in lines[-1] if w.startswith("--command=")][0][len("--command="):]
    lines = [shlex.split(remote.replace("cd ~/flatai-jax && ", ""))]
  if name == "multiprocess":
    assert [[w for w in words if w.startswith("--process_id=")] for words in lines] == [
        [f"--process_id={i}"] for i in range(3)]
  for words in lines if name == "multiprocess" else lines[-1:]:
    i = next(i for i, w in enumerate(words) if w.endswith("flatai"))
    train = [w for w in words[i + 2:] if not w.startswith(("--coordinator_address=",
                                                            "--num_processes=", "--process_id="))]
    assert words[i + 1] == "train" and train == [f"--config={CONFIG}", f"--workdir={work}", *flags]
