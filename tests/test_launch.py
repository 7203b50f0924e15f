"""Launch scripts: their dry-run mode prints what they would run."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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
