"""Multi-process runs on jax.distributed: two CPU processes on 127.0.0.1 (gloo collectives)."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pcam_jax.runtime import distributed
from tests.helpers import assert_params_equal, child_env, final_params, free_port

# a few steps of the tiny CNN (conftest's resume_config), checkpoints at 3 and 6, no grain
# workers unless a test adds them; dropout on, so that equal parameters also show that each
# device drew the same dropout mask for the same rows
SHORT = [
    "--config.data.worker_count=0",
    "--config.num_train_steps=6",
    "--config.eval_every_steps=3",
    "--config.checkpoint_every_steps=3",
    "--config.log_every_steps=3",
    "--config.model.dense_dropout_rate=0.3",
]


def _launch(module: str, args: list[str], processes: int, logdir: Path, name: str) -> list[str]:
    """Runs `processes` copies of `module` (one CPU device each) joined through a
    coordinator on 127.0.0.1; returns each process's output. Fails if any fails."""
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
        logs.append(log)
    deadline = time.time() + 600
    while any(p.poll() is None for p in procs):
        failed = [p for p in procs if p.returncode not in (None, 0)]
        if failed or time.time() > deadline:  # a lone survivor would wait for its peer
            for p in procs:
                p.kill()
            break
        time.sleep(0.2)
    out = [log.read_text() for log in logs]
    for i, p in enumerate(procs):
        p.wait()
        assert p.returncode == 0, f"{name} process {i} exited {p.returncode}:\n{out[i][-3000:]}"
    return out


def _stopped_at_step_3(run: Path, copy: Path) -> Path:
    """A copy of `run` as if it had stopped after its step-3 checkpoint."""
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "checkpoints" / "6")
    return copy


def _train_args(config: Path, workdir: Path, root: Path) -> list[str]:
    return [f"--config={config}", f"--workdir={workdir}", f"--config.data.root={root}", *SHORT]


@pytest.mark.slow
def test_two_processes_equal_one_process_with_two_devices_and_resume_on_one_or_two(
    synthetic_root, resume_config, tmp_path
):
    t0 = time.time()
    two, one = tmp_path / "two", tmp_path / "one"
    # two processes x 1 device, one grain worker each; against 1 process x 2 devices, none
    _launch(
        "pcam_jax.cli.train",
        [*_train_args(resume_config, two, synthetic_root), "--config.data.worker_count=1"],
        2,
        tmp_path,
        "train2",
    )
    out = _launch(
        "pcam_jax.cli.train", _train_args(resume_config, one, synthetic_root), 1, tmp_path, "train1"
    )
    assert "4 devices" not in out[0]
    data_files = sorted(p.name for p in (two / "checkpoints" / "6" / "data").iterdir())
    assert "process_0-of-2.json" in data_files and "process_1-of-2.json" in data_files
    a = final_params(one)
    assert_params_equal(final_params(two), a)
    assert max(float(np.abs(v).max()) for v in a.values()) > 0

    # one process (2 devices, no workers) resumes from the two processes' step-3 checkpoint
    resumed = _stopped_at_step_3(two, tmp_path / "resumed")
    out = _launch(
        "pcam_jax.cli.train",
        _train_args(resume_config, resumed, synthetic_root),
        1,
        tmp_path,
        "resume",
    )
    assert "resumed from checkpoint 3" in out[0]
    assert "'processes': 2" in out[0]  # it knew the checkpoint came from two processes
    assert_params_equal(final_params(resumed), a)

    # two processes resuming from their own checkpoint (each its grain worker's state) end
    # where one process does: test_preemption.py::
    # test_sigterm_to_one_of_two_processes_stops_both_at_the_same_step

    # the control: a naive resume that takes process 0's own grain state (where
    # process 0 stopped, one record short of the global position) ends elsewhere
    naive = _stopped_at_step_3(two, tmp_path / "naive")
    ckpt = naive / "checkpoints" / "3"
    state = json.loads((ckpt / "data" / "process_0-of-2.json").read_text())
    state["sampler"] = re.match(r"GlobalBatchSampler\((.*), batch=", state["sampler"]).group(1)
    state["worker_count"] = 0
    (ckpt / "data" / "process_0-of-1.json").write_text(json.dumps(state))
    record = json.loads((ckpt / "record" / "metadata").read_text())
    record["layout"] = {"processes": 1, "workers": 0}  # so that the grain state is used as is
    (ckpt / "record" / "metadata").write_text(json.dumps(record))
    out = _launch(
        "pcam_jax.cli.train",
        _train_args(resume_config, naive, synthetic_root),
        1,
        tmp_path,
        "naive",
    )
    assert "resumed from checkpoint 3" in out[0] and "'processes': 2" not in out[0]
    d = final_params(naive)
    assert any(not np.allclose(d[k], a[k], rtol=1e-5, atol=1e-6) for k in a)

    # two-process evaluation gathers every prediction; only process 0 reports and writes
    out = _launch(
        "pcam_jax.cli.eval",
        [
            f"--workdir={two}",
            "--checkpoint=last",
            "--split=valid",
            "--bootstrap=0",
            f"--config.data.root={synthetic_root}",
        ],
        2,
        tmp_path,
        "eval",
    )
    assert "pcam-eval: valid n=64" in out[0] and "pcam-eval:" not in out[1]
    with open(two / "eval" / "valid_predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["index"]) for r in rows] == list(range(64))  # every patch once, in order
    got = json.loads((two / "eval" / "valid.json").read_text())
    # the one-process run validated the same parameters on the same split at step 6
    reference = json.loads((one / "checkpoints" / "6" / "record" / "metadata").read_text())
    assert got["n"] == reference["val"]["n"] == 64
    assert abs(got["auc"] - reference["val"]["auc"]) < 1e-6
    assert abs(got["nll"] - reference["val"]["nll"]) < 1e-5
    print(
        f"two-process train, one-process reference, resume, control, eval: {time.time() - t0:.0f} s"
    )


# --- flags and launch detection (no processes started) --------------------------------------


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
