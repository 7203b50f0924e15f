"""One pcam-train per workdir: the lock fails a second run fast and dies with its holder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from pcam_jax import train
from pcam_jax.errors import TrainingError
from pcam_jax.workdir import lock_path, workdir_lock
from tests.helpers import REPO, run_in_process, tiny_config

HOLD = """
import sys, time
from pcam_jax.workdir import workdir_lock
with workdir_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


def _holder(workdir) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(workdir)], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_run_fails_fast_naming_the_holder(synthetic_root, tmp_path):
    workdir = tmp_path / "run"
    holder = _holder(workdir)
    try:
        with pytest.raises(
            TrainingError, match=rf"in use by another pcam-train \(pid {holder.pid} "
        ):
            train.train_and_evaluate(tiny_config(synthetic_root, "cnn"), workdir)
        assert not (workdir / "config.json").exists()  # it stopped before touching the run
        r = run_in_process(
            "train",
            "--config=configs/quickstart.py",
            f"--workdir={workdir}",
            f"--config.data.root={synthetic_root}",
        )
        assert r.returncode == 1 and f"pid {holder.pid} on host" in r.stderr
        # it stopped before writing anything: no config, events or checkpoints
        assert sorted(p.name for p in workdir.iterdir()) == [lock_path(workdir, 0).name]
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path):
    workdir = tmp_path / "run"
    holder = _holder(workdir)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert lock_path(workdir, 0).exists()  # the file stays, the lock does not
    with workdir_lock(workdir) as path:
        assert f"pid {os.getpid()} " in path.read_text()
    # and in-process: released at the end of the block, so it can be taken again
    with workdir_lock(workdir):
        pass
