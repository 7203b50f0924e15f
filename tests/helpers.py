"""What the tests share, in one place (fixtures live in ``conftest.py``): the repository's paths,
tiny configs, the environment and command line of a child process, a runner for the binaries,
readers of a run's final parameters, and numeric tolerances.

Test modules import from here and from ``conftest`` fixtures, never from one another. The
synthetic slides, masks and annotations that tests and benchmarks both build live in the
package (``pcam_jax.camelyon.synthetic``), so that ``bench/`` imports nothing from ``tests/``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from pcam_jax import infer
from pcam_jax import workdir as workdir_layout
from pcam_jax.config import load_config_file

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
QUICKSTART = CONFIGS / "quickstart.py"

SMALL_SIZES = {"train": 192, "valid": 64, "test": 64}  # conftest's synthetic_root

# --- configs ---------------------------------------------------------------------------------

TINY_CNN = {"width_multiplier": 0.125, "dense_features": 16}
TINY_P4M = {
    "width_multiplier": 0.25,
    "dense_features": 16,
    "convs_per_stage": 1,
    "dropout_rate": 0.0,
    "dense_dropout_rate": 0.0,
}


def load_config(path: Path, *overrides: str):
    """Parses a config file and overrides exactly as pcam-train does."""
    return load_config_file(path, *overrides)


def tiny_config(data_root: Path, model: str = "cnn", **model_overrides):
    """A seconds-long run: a narrow model, batch 16, a few steps."""
    c = load_config(QUICKSTART)
    with c.unlocked():
        c.model = {"name": model, **model_overrides}
    c.optimizer.learning_rate = 3e-3
    c.data.root = str(data_root)
    c.data.worker_count = 0
    c.batch_size = 16
    c.eval_batch_size = 32
    c.num_train_steps = 6
    c.log_every_steps = 2
    c.eval_every_steps = 3
    c.checkpoint_every_steps = 3
    c.schedule.warmup_steps = 2
    return c


# a small CNN run written as a config file, for the subprocess tests (conftest's resume_config)
RESUME_CONFIG = """\
from pcam_jax.config import base_config

def get_config():
    c = base_config()
    c.model.name = 'cnn'
    c.model.width_multiplier = 0.125
    c.model.dense_features = 16
    c.model.dropout_rate = 0.0
    c.model.dense_dropout_rate = 0.0
    c.data.worker_count = 1
    c.augment.brightness = 0.1
    c.ema_decay = 0.9
    c.label_smoothing = 0.1
    c.batch_size = 16
    c.eval_batch_size = 64
    c.num_train_steps = 14
    c.log_every_steps = 1
    c.eval_every_steps = 7
    c.checkpoint_every_steps = 2
    return c
"""

# --- child processes -------------------------------------------------------------------------


def child_env(devices: int = 1) -> dict[str, str]:
    """The environment of a child process: `devices` CPU devices, this checkout importable, and
    no cluster variables inherited from the machine running the tests."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(REPO)
    for k in [k for k in env if k.startswith(("SLURM_", "JAX_COORDINATOR", "JAX_NUM_PROC"))]:
        del env[k]
    return env


@contextmanager
def signals_as_from_a_terminal() -> Iterator[None]:
    """Children started in the block get SIGINT and SIGTERM at their defaults, as a terminal
    starts a command. A pytest-xdist worker may come to ignore SIGINT (seen: SigIgn 0x1001006
    in a child), and an ignored signal stays ignored across exec, so a test's Ctrl-C would never
    reach its child; a handled one is reset to the default by exec. (A ``preexec_fn`` would do it
    in the child, but makes subprocess fork a multithreaded process.)"""
    import signal

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def cli_cmd(binary: str, *args: object) -> list[str]:
    """The command line of a binary by its module (``"train"`` is ``pcam_jax.cli.train``)."""
    return [sys.executable, "-m", f"pcam_jax.cli.{binary}", *map(str, args)]


def run_cli(
    binary: str,
    *args: object,
    cwd: Path | None = None,
    devices: int = 1,
    timeout: float = 600,
) -> subprocess.CompletedProcess:
    """Runs a binary in a child process (output captured as text) and returns the result."""
    return subprocess.run(
        cli_cmd(binary, *args),
        env=child_env(devices),
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_in_process(binary: str, *args: object, cwd: Path | None = None):
    """Runs a binary's console-script entry point in this process, as ``run_cli`` runs it in a
    child (same argv, its stdout, its stderr, and the status, with the one-line message that
    ``sys.exit(message)`` would print), for checks where a child proves nothing more: refusals
    of flags, configs and files. Flags are reset to their defaults before and after (absl keeps
    one flag registry per process: a flag two binaries take is a shared flag of ``common``)."""
    import contextlib
    import importlib
    import io

    from absl import flags

    module = importlib.import_module(f"pcam_jax.cli.{binary}")
    out, err, status = io.StringIO(), io.StringIO(), 0
    saved_argv, saved_cwd = sys.argv, Path.cwd()
    flags.FLAGS.unparse_flags()
    try:
        sys.argv = argv = [f"pcam_jax.cli.{binary}", *map(str, args)]
        os.chdir(cwd or REPO)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                module.run()
            except SystemExit as e:
                if isinstance(e.code, str):
                    print(e.code, file=sys.stderr)
                    status = 1
                else:
                    status = e.code or 0
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        flags.FLAGS.unparse_flags()
        flags.FLAGS.mark_as_parsed()  # as conftest leaves them: grain reads its defaults
    return subprocess.CompletedProcess(argv, status, out.getvalue(), err.getvalue())


def train_cmd(config_path: Path, workdir: Path, root: Path, *extra: str) -> list[str]:
    """pcam-train's command line for `config_path` on the data at `root`."""
    return cli_cmd(
        "train", f"--config={config_path}", f"--workdir={workdir}", f"--config.data.root={root}"
    ) + list(extra)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a jax.distributed coordinator)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- a run's parameters ----------------------------------------------------------------------


def checkpoint_steps(workdir: Path) -> list[int]:
    """The steps of a run's committed checkpoints, ascending."""
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def wait_for_checkpoint(workdir: Path, after: int, procs: list[subprocess.Popen]) -> None:
    """Returns once `workdir` holds a committed checkpoint of a step after `after`; fails if one
    of `procs` (the runs writing it) ends first or ten minutes pass."""
    deadline = time.time() + 600
    while not any(
        int(marker.parent.name) > after
        for marker in workdir.glob("checkpoints/*/commit_success.txt")
        if marker.parent.name.isdigit()
    ):
        assert all(p.poll() is None for p in procs), "a run ended before the signal"
        assert time.time() < deadline
        time.sleep(0.02)


def final_params(workdir: Path, weights: str = "raw") -> dict[str, np.ndarray]:
    """The variables of a run's last checkpoint (`weights`: "raw" or "ema"), by tree path."""
    import jax

    config = workdir_layout.read_config(workdir)
    mngr = workdir_layout.checkpoint_manager(workdir, 3)
    step = max(mngr.all_steps())
    model = infer.create_model(config)
    abstract = jax.eval_shape(
        lambda: model.init(jax.random.key(0), np.zeros((2, 96, 96, 3), np.float32))
    )
    variables, record = workdir_layout.restore_model(
        mngr, step, {"params": abstract["params"], "batch_stats": abstract["batch_stats"]}, weights
    )
    assert record["weights"] == weights
    flat = jax.tree_util.tree_flatten_with_path(variables)[0]
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}


def assert_params_equal(got: dict, want: dict) -> None:
    """Equal parameter sets up to the float error of another reduction order."""
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)


# --- data layouts ----------------------------------------------------------------------------


def random_patches(n: int, seed: int) -> np.ndarray:
    """(n, 96, 96, 3) uint8 noise patches, reproducible by `seed`."""
    return np.random.default_rng(seed).integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)


def write_kaggle_layout(root: Path, n: int) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """The Kaggle competition's layout in `root`: train/<id>.tif and train_labels.csv with `n`
    noise patches, labels alternating 0/1; returns ({id: label}, {id: image})."""
    import csv

    from PIL import Image

    (root / "train").mkdir(parents=True)
    rng = np.random.default_rng(3)
    labels, images = {}, {}
    for i in range(n):
        image_id = f"{rng.integers(1 << 60):016x}"
        labels[image_id] = int(i % 2)
        images[image_id] = random_patches(1, i)[0]
        Image.fromarray(images[image_id]).save(root / "train" / f"{image_id}.tif")
    with open(root / "train_labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "label"])
        w.writerows(labels.items())
    return labels, images


# --- numerics --------------------------------------------------------------------------------


def rel_err(a, b) -> float:
    """max |a - b| / max |b|, in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def equivariance_error(f, x, group: str, in_group: bool = True, out: str = "group") -> float:
    """max over g of rel_err(f(g x), g f(x)): `x` carries group features (`in_group`) or plain
    images; `out` says how g acts on f's output: "group", "plane" or "invariant" (not at all).
    f's output must not be constant (a constant is trivially equivariant)."""
    import jax.numpy as jnp

    from pcam_jax.equivariant import groups

    y = f(x)
    assert float(jnp.std(y)) > 0
    errs = []
    for g in range(groups.group_order(group)):
        if in_group:
            gx = groups.transform_group_features(x, group, g)
        else:
            gx = groups.transform_plane(x, group, g)
        if out == "group":
            gy = groups.transform_group_features(y, group, g)
        elif out == "plane":
            gy = groups.transform_plane(y, group, g)
        else:
            gy = y
        errs.append(rel_err(f(gx), gy))
    return max(errs)


def normal_array(shape: tuple[int, ...], seed: int = 0):
    """A float32 jax array of standard normal draws, reproducible by `seed`."""
    import jax.numpy as jnp

    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)
