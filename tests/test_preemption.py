"""Preemption: SIGTERM/SIGINT save a checkpoint at the next step, exit 75, and a restart ends
bitwise equal to an uninterrupted run; SIGKILL leaves no worker or shared memory behind; two
processes stop at the same step."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from pcam_jax.runtime.preemption import EXIT_PREEMPTED
from tests.helpers import (
    checkpoint_steps,
    child_env,
    final_params,
    load_config,
    signals_as_from_a_terminal,
    train_cmd,
    wait_for_checkpoint,
)

LONG = ["--config.num_train_steps=40"]


def _start_past_a_new_checkpoint(cmd: list[str], workdir: Path) -> subprocess.Popen:
    """pcam-train started (or resumed) with `cmd`, returned once it has committed a checkpoint
    of its own (every 2 steps in resume_config)."""
    steps = checkpoint_steps(workdir) if (workdir / "checkpoints").is_dir() else []
    with signals_as_from_a_terminal():
        proc = subprocess.Popen(
            cmd, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    wait_for_checkpoint(workdir, max(steps, default=0), [proc])
    return proc


@pytest.fixture(scope="module")
def straight(synthetic_root, resume_config, tmp_path_factory):
    """The run never interrupted, trained in this process (one device, as the children have):
    without grain workers and with one checkpoint, which change no batch and no number
    (test_pipeline.py::test_global_batches_do_not_depend_on_processes_or_workers)."""
    from pcam_jax import train

    workdir = tmp_path_factory.mktemp("straight") / "run"
    config = load_config(
        resume_config,
        f"--config.data.root={synthetic_root}",
        *LONG,
        "--config.data.worker_count=0",
        "--config.checkpoint_every_steps=40",
    )
    train.train_and_evaluate(config, workdir)
    return workdir


# Two processes stopped by a signal to one of them, resumed on two or one: test_distributed.py::
# test_two_processes_stopped_by_one_signal_resume_on_two_or_one_as_one_process_with_two_devices


def _descendants(pid: int) -> list[int]:
    """The pids of every living descendant of `pid` (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat_file.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _shm_segments() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob("psm_*")}


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_a_run_stopped_three_ways_in_turn_resumes_bitwise(
    synthetic_root, resume_config, straight, tmp_path
):
    """One run, stopped and restarted three times: by SIGTERM (it saves at the next step and
    exits 75), by SIGINT followed by SIGTERMs all through that save (it saves once, the
    checkpoint stays restorable, and exits 75), and by SIGKILL, which must take the grain
    workers and their shared memory with it. It ends bitwise equal to a run never interrupted,
    raw weights and EMA."""
    workdir = tmp_path / "run"
    cmd = train_cmd(resume_config, workdir, synthetic_root, *LONG)
    proc = _start_past_a_new_checkpoint(cmd, workdir)
    time.sleep(random.Random(0).uniform(0.0, 0.3))  # a step after that checkpoint
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=600)[1].decode()
    assert proc.returncode == EXIT_PREEMPTED, err[-2000:]
    stopped = max(checkpoint_steps(workdir))
    assert 0 < stopped < 40  # interrupted, its step saved
    assert f"SIGTERM: saved a checkpoint at step {stopped} and stopped" in err

    proc = _start_past_a_new_checkpoint(cmd, workdir)
    proc.send_signal(signal.SIGINT)
    while proc.poll() is None:  # keep signalling while it saves
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.005)
    err = proc.stderr.read().decode()
    assert proc.returncode == EXIT_PREEMPTED, err[-2000:]
    assert stopped < max(checkpoint_steps(workdir)) < 40
    stopped = max(checkpoint_steps(workdir))
    assert f"SIGINT: saved a checkpoint at step {stopped} and stopped" in err
    assert "SIGTERM received again" in err

    # SIGKILL: what a scheduler sends after its grace period and what the OOM killer sends;
    # resume_config runs a grain worker: nothing of the run may stay alive or in /dev/shm
    before = _shm_segments()
    proc = _start_past_a_new_checkpoint(cmd, workdir)
    children = _descendants(proc.pid)
    assert len(children) >= 2, children  # the worker and multiprocessing's tracker
    run_segments = _shm_segments() - before
    proc.kill()
    proc.wait(timeout=60)
    deadline = time.time() + 10
    while any(_alive(c) for c in children) and time.time() < deadline:
        time.sleep(0.1)
    assert not [c for c in children if _alive(c)], "children outlived the killed run"
    assert run_segments, "the run made no shared-memory segments to check"
    left = run_segments & _shm_segments()
    assert max(checkpoint_steps(workdir)) < 40

    subprocess.run(cmd, env=child_env(), check=True, capture_output=True, timeout=600)
    assert not left & _shm_segments(), f"{len(left)} psm_* segments of the dead run remain"
    for weights in ("raw", "ema"):
        a, b = final_params(straight, weights), final_params(workdir, weights)
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{weights} {k}")
    raw, ema = final_params(straight, "raw"), final_params(straight, "ema")
    assert any(not np.array_equal(raw[k], ema[k]) for k in raw)  # the EMA is not the raw weights
