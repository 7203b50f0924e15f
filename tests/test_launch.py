"""Launch scripts: their dry-run mode prints what they would run."""

from __future__ import annotations

import subprocess

from tests.helpers import REPO


def test_train_local_dry_run_prints_train_and_eval():
    proc = subprocess.run(
        [
            "bash",
            str(REPO / "launch" / "train_local.sh"),
            "--dry-run",
            "configs/quickstart.py",
            "runs/q",
            "--config.data.root=data/x",
            "--config.seed=3",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "SPLIT": "valid"},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "+ pcam-train --config=configs/quickstart.py --workdir=runs/q "
        "--config.data.root=data/x --config.seed=3",
        "+ pcam-eval --workdir=runs/q --split=valid --config.data.root=data/x",
    ]


def test_train_local_usage():
    proc = subprocess.run(
        ["bash", str(REPO / "launch" / "train_local.sh"), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2 and "usage:" in proc.stderr


def _dry_run(script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(REPO / "launch" / script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", **env},  # no srun or gcloud here: a dry run needs neither
    )


def test_slurm_dry_run_one_process_per_node_owns_every_gpu():
    proc = _dry_run(
        "slurm.sbatch",
        "--dry-run",
        "configs/p4mdensenet.py",
        "/shared/runs/p4m",
        "--config.data.root=/shared/pcam",
        SLURM_JOB_NUM_NODES="4",
        GPUS_PER_NODE="4",
        SPLIT="valid",
    )
    assert proc.returncode == 0, proc.stderr
    srun = "+ srun --nodes=4 --ntasks-per-node=1 --kill-on-bad-exit=1"
    assert proc.stdout.splitlines() == [
        "# 4 nodes x 1 processes, 4 GPUs per node, JAX_LOCAL_DEVICE_IDS=0,1,2,3",
        f"{srun} .venv/bin/pcam-train --distributed=on --config=configs/p4mdensenet.py "
        "--workdir=/shared/runs/p4m --config.data.root=/shared/pcam",
        f"{srun} .venv/bin/pcam-eval --distributed=on --workdir=/shared/runs/p4m --split=valid "
        "--config.data.root=/shared/pcam",
        "# preemption: --signal=TERM@120 --requeue -> pcam-train saves and exits 75 -> "
        "scontrol requeue $SLURM_JOB_ID",
    ]


def test_slurm_dry_run_one_process_per_gpu_and_bad_knob():
    proc = _dry_run("slurm.sbatch", "--dry-run", "c.py", "w", PROCESS_PER="gpu", VENV="/v")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "# 2 nodes x 8 processes, 8 GPUs per node"  # no JAX_LOCAL_DEVICE_IDS
    assert lines[1] == (
        "+ srun --nodes=2 --ntasks-per-node=8 --kill-on-bad-exit=1 "
        "/v/bin/pcam-train --distributed=on --config=c.py --workdir=w"
    )
    bad = _dry_run("slurm.sbatch", "--dry-run", "c.py", "w", PROCESS_PER="socket")
    assert bad.returncode == 2 and "PROCESS_PER=socket must be node or gpu" in bad.stderr
    assert _dry_run("slurm.sbatch", "--dry-run").returncode == 2


def test_tpu_vm_dry_run_runs_on_every_worker():
    proc = _dry_run(
        "tpu_vm.sh",
        "--dry-run",
        "my-tpu",
        "configs/p4mdensenet.py",
        "/mnt/runs/a b",  # quoted for the remote shell
        "--config.data.root=/mnt/pcam",
        "--config.seed=3",
        ZONE="us-central2-b",
    )
    assert proc.returncode == 0, proc.stderr
    ssh = "+ gcloud compute tpus tpu-vm ssh my-tpu --worker=all --zone=us-central2-b"
    assert proc.stdout.splitlines() == [
        f"{ssh} --command='cd ~/pcam_jax && .venv/bin/pcam-train --distributed=on "
        "--config=configs/p4mdensenet.py --workdir=/mnt/runs/a\\ b "
        "--config.data.root=/mnt/pcam --config.seed=3'",
        f"{ssh} --command='cd ~/pcam_jax && .venv/bin/pcam-eval --distributed=on "
        "--workdir=/mnt/runs/a\\ b --split=test --config.data.root=/mnt/pcam'",
    ]
    usage = _dry_run("tpu_vm.sh", "--dry-run", "my-tpu")
    assert usage.returncode == 2 and "usage:" in usage.stderr


def test_slide_array_dry_run_runs_one_cohort_command_per_task():
    proc = _dry_run(
        "slide_array.sbatch",
        "--dry-run",
        "images/*.tif",
        "/shared/c16 out",
        "--model=bundled:p4resnet",
        SLURM_ARRAY_TASK_ID="3",
        SLURM_ARRAY_JOB_ID="77",
        VENV="/v",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "# task 3 of array job 77: every task runs this command and claims its slides",
        # quoted as a shell reads it: the glob reaches pcam-slide, which expands it
        "+ /v/bin/pcam-slide images/\\*.tif --out=/shared/c16\\ out --noprogress "
        "--model=bundled:p4resnet",
    ]
    usage = _dry_run("slide_array.sbatch", "--dry-run", "images")
    assert usage.returncode == 2 and "usage:" in usage.stderr
