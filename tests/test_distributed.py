"""Multi-process runs on jax.distributed: two CPU processes on 127.0.0.1 (gloo collectives)."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pcam_jax.runtime import distributed
from pcam_jax.runtime.preemption import EXIT_PREEMPTED
from tests.helpers import (
    assert_params_equal,
    checkpoint_steps,
    child_env,
    final_params,
    free_port,
    wait_for_checkpoint,
)

# the tiny CNN (conftest's resume_config) for 30 steps, checkpoints every 5, validation at 15
# and 30, no grain workers unless a run adds them; dropout on, so that equal parameters also show
# that each device drew the same dropout mask for the same rows
RUN = [
    "--config.data.worker_count=0",
    "--config.num_train_steps=30",
    "--config.eval_every_steps=15",
    "--config.checkpoint_every_steps=5",
    "--config.log_every_steps=5",
    "--config.model.dense_dropout_rate=0.3",
]
TRAIN = "pcam_jax.cli.train"


_CHILDREN: list[subprocess.Popen] = []  # every process `_start` started in this test


@pytest.fixture(autouse=True)
def _no_child_outlives_its_test():
    """A failed test leaves no run of its own behind (several may be running at once)."""
    yield
    for proc in _CHILDREN:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _CHILDREN.clear()


def _start(module: str, args: list[str], processes: int, logdir: Path, name: str):
    """Starts `processes` copies of `module` (one CPU device each) joined through a coordinator
    on 127.0.0.1, or one process with two devices; returns (processes, their log files)."""
    port = free_port()
    procs, logs = [], []
    for i in range(processes):
        log = logdir / f"{name}.{i}.log"
        extra = (
            [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}"]
            + [f"--process_id={i}"]
            if processes > 1
            else []
        )
        with open(log, "w") as f:
            cmd = [sys.executable, "-m", module, *args, *extra]
            env = child_env(1 if processes > 1 else 2)
            procs.append(subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT))
            _CHILDREN.append(procs[-1])
        logs.append(log)
    return procs, logs


def _finish(procs: list[subprocess.Popen], logs: list[Path], name: str, code: int = 0) -> list[str]:
    """Waits for every process; returns their outputs. Fails unless each exits with `code`
    (a failed one takes the others down: a lone survivor would wait for its peer)."""
    deadline = time.time() + 600
    while any(p.poll() is None for p in procs):
        failed = [p for p in procs if p.returncode not in (None, code)]
        if failed or time.time() > deadline:
            for p in procs:
                p.kill()
            break
        time.sleep(0.2)
    out = [log.read_text() for log in logs]
    for i, p in enumerate(procs):
        p.wait()
        assert p.returncode == code, f"{name} process {i} exited {p.returncode}:\n{out[i][-3000:]}"
    return out


def _launch(module: str, args: list[str], processes: int, logdir: Path, name: str) -> list[str]:
    """Runs `module` as `_start` does and returns each process's output; fails if any fails."""
    return _finish(*_start(module, args, processes, logdir, name), name)


def _train_args(config: Path, workdir: Path, root: Path) -> list[str]:
    return [f"--config={config}", f"--workdir={workdir}", f"--config.data.root={root}", *RUN]


@pytest.mark.slow
def test_two_processes_stopped_by_one_signal_resume_on_two_or_one_as_one_process_with_two_devices(
    synthetic_root, resume_config, tmp_path
):
    """Two processes (one device and one grain worker each) against one process with two
    devices (no workers): SIGTERM to process 1 alone stops both at the same agreed step, each
    saving its worker's state; resumed on two processes, or on one, the run ends bitwise where
    the one-process run ends; a naive resume from process 0's own grain state (the control)
    does not; a two-process pcam-eval gathers every prediction once."""
    t0 = time.time()
    two, one = tmp_path / "two", tmp_path / "one"
    one_args = [
        *_train_args(resume_config, one, synthetic_root),
        "--config.checkpoint_every_steps=30",
    ]
    # Runs that share nothing run at the same time: the children of this test spend most of
    # their lives waiting (for a peer, the coordinator, the disk), and their waits overlap.
    # (How often the reference run saves changes no number.)
    one_run = _start(TRAIN, one_args, 1, tmp_path, "one")

    two_args = [*_train_args(resume_config, two, synthetic_root), "--config.data.worker_count=1"]
    procs, logs = _start(TRAIN, two_args, 2, tmp_path, "two")
    wait_for_checkpoint(two, 4, procs)
    procs[1].send_signal(signal.SIGTERM)  # only process 1 is told
    out = _finish(procs, logs, "two (stopped)", EXIT_PREEMPTED)
    stopped = max(checkpoint_steps(two))
    assert stopped in (10, 20)  # the agreed step (a multiple of 10), saved by both
    data = sorted(p.name for p in (two / "checkpoints" / str(stopped) / "data").iterdir())
    assert "process_0-of-2.json" in data and "process_1-of-2.json" in data
    for text in out:
        assert f"saved a checkpoint at step {stopped} and stopped" in text
    resumed, naive = (shutil.copytree(two, tmp_path / name) for name in ("resumed", "naive"))

    # the control: a naive resume that takes process 0's own grain state (where process 0
    # stopped, one record short of the global position) ends elsewhere
    ckpt = naive / "checkpoints" / str(stopped)
    state = json.loads((ckpt / "data" / "process_0-of-2.json").read_text())
    state["sampler"] = re.match(r"GlobalBatchSampler\((.*), batch=", state["sampler"]).group(1)
    state["worker_count"] = 0
    (ckpt / "data" / "process_0-of-1.json").write_text(json.dumps(state))
    record = json.loads((ckpt / "record" / "metadata").read_text())
    record["layout"] = {"processes": 1, "workers": 0}  # so that the grain state is used as is
    (ckpt / "record" / "metadata").write_text(json.dumps(record))

    runs = {
        # on two processes, to the end
        "two (resumed)": _start(TRAIN, two_args, 2, tmp_path, "two (resumed)"),
        # one process (2 devices, no workers) resumes from the two processes' checkpoint
        "one (resumed)": _start(
            TRAIN, _train_args(resume_config, resumed, synthetic_root), 1, tmp_path, "resumed"
        ),
        "naive": _start(
            TRAIN, _train_args(resume_config, naive, synthetic_root), 1, tmp_path, "naive"
        ),
    }
    _finish(*one_run, "one")
    a = final_params(one)
    assert max(float(np.abs(v).max()) for v in a.values()) > 0
    out = {name: _finish(*started, name) for name, started in runs.items()}
    assert_params_equal(final_params(two), a)

    assert f"resumed from checkpoint {stopped}" in out["one (resumed)"][0]
    assert "'processes': 2" in out["one (resumed)"][0]  # it knew the checkpoint came from two
    assert_params_equal(final_params(resumed), a)

    naive_log = out["naive"][0]
    assert f"resumed from checkpoint {stopped}" in naive_log and "'processes': 2" not in naive_log
    d = final_params(naive)
    assert any(not np.allclose(d[k], a[k], rtol=1e-5, atol=1e-6) for k in a)

    # two-process evaluation gathers every prediction; only process 0 reports and writes
    eval_args = [f"--workdir={two}", "--checkpoint=last", "--split=valid", "--bootstrap=0"]
    out = _launch(
        "pcam_jax.cli.eval",
        [*eval_args, f"--config.data.root={synthetic_root}"],
        2,
        tmp_path,
        "eval",
    )
    assert "pcam-eval: valid n=64" in out[0] and "pcam-eval:" not in out[1]
    with open(two / "eval" / "valid_predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["index"]) for r in rows] == list(range(64))  # every patch once, in order
    got = json.loads((two / "eval" / "valid.json").read_text())
    # the one-process run validated the same parameters on the same split at step 30
    reference = json.loads((one / "checkpoints" / "30" / "record" / "metadata").read_text())
    assert got["n"] == reference["val"]["n"] == 64
    assert abs(got["auc"] - reference["val"]["auc"]) < 1e-6
    assert abs(got["nll"] - reference["val"]["nll"]) < 1e-5
    print(f"one-process run, two-process stop and resumes, control, eval: {time.time() - t0:.0f} s")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_processes": 2}, "must be given together"),
        ({"num_processes": 2, "process_id": 2}, r"--process_id=2 must be in 0\.\.1"),
        ({"num_processes": 2, "process_id": 0}, "needs --coordinator_address"),
        ({"mode": "off", "coordinator_address": "h:1"}, "contradicts"),
        ({"mode": "sometimes"}, "expected auto, on or off"),
    ],
)
def test_contradictory_flags_are_refused(kwargs, message, monkeypatch):
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
    with pytest.raises(distributed.DistributedError, match=message):
        distributed.initialize(**kwargs)


def test_single_process_launch_does_not_join(monkeypatch):
    for k in [k for k in os.environ if k.startswith("SLURM_")] + ["JAX_COORDINATOR_ADDRESS"]:
        monkeypatch.delenv(k, raising=False)
    assert distributed.initialize("auto") is False
    assert distributed.initialize("auto", num_processes=1, process_id=0) is False


@pytest.mark.parametrize(
    ("env", "coordinator", "expected"),
    [
        ({}, None, False),
        ({}, "10.0.0.1:1234", True),
        ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, None, True),
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, None, False),  # sbatch script, not srun
        ({"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "1"}, None, False),
        ({"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "4"}, None, True),
    ],
)
def test_launch_detection(env, coordinator, expected):
    assert distributed.launched_as_multiprocess(coordinator, env) is expected
