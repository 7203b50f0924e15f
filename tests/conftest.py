"""Shared fixtures: a small synthetic PCam, the real 23,000-patch subset, the subprocess tests'
config file and float32 matmuls at full precision. Plain helpers live in ``tests/helpers.py``."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import jax
import pytest
from absl import flags

from pcam_jax.data import subset, synth
from tests.helpers import RESUME_CONFIG, SMALL_SIZES, TINY_CNN, tiny_config


def pytest_configure(config: pytest.Config) -> None:
    # grain reads absl flags; outside an absl app they keep their defaults.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    use_a_session_compilation_cache()


_SESSION_CACHE_ENV = "PCAM_JAX_TEST_XLA_CACHE"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Longest modules first, as far as collection can tell: by the number of tests marked slow,
    then by the number of tests (a stable sort: each module stays whole and in its order). The
    README's command runs the suite on two pytest-xdist workers, one module per turn, in this
    order (``--dist loadscope --no-loadscope-reorder``; module fixtures are built once), so the
    last modules to start are short ones and both workers finish together."""
    slow = Counter(item.module.__name__ for item in items if item.get_closest_marker("slow"))
    tests = Counter(item.module.__name__ for item in items)
    items.sort(key=lambda item: (-slow[item.module.__name__], -tests[item.module.__name__]))


def use_a_session_compilation_cache() -> None:
    """One persistent XLA compilation cache for this test session, empty at its start and
    removed at its end: the test process, its pytest-xdist workers and every child they start
    (``helpers.child_env`` copies the environment) load a program another one compiled instead
    of compiling it again.
    Most of the suite trains the same few tiny models, many times, in dozens of processes; a
    cached executable is the one the compiler produces, so results do not change."""
    from jax._src import compilation_cache

    if os.environ.get(_SESSION_CACHE_ENV):  # a pytest-xdist worker: its controller made it
        cache = Path(os.environ[_SESSION_CACHE_ENV])
    else:
        cache = Path(tempfile.mkdtemp(prefix="pcam_jax_test_xla_cache."))
        atexit.register(shutil.rmtree, cache, ignore_errors=True)
        os.environ[_SESSION_CACHE_ENV] = str(cache)
    settings = {
        "jax_compilation_cache_dir": str(cache),
        "jax_persistent_cache_min_compile_time_secs": 0.0,
        "jax_persistent_cache_min_entry_size_bytes": 0,
    }
    compilation_cache.reset_cache()
    for name, value in settings.items():
        jax.config.update(name, value)
        os.environ[name.upper()] = str(value)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic PCam (192/64/64 patches), written once per session. Do not modify."""
    root = tmp_path_factory.mktemp("synthetic_pcam")
    synth.write_synthetic_pcam(root, sizes=SMALL_SIZES, seed=0)
    return root


@pytest.fixture
def synthetic_copy(synthetic_root: Path, tmp_path: Path) -> Path:
    """A private, modifiable copy of the small synthetic PCam (without the statistics cache
    that training runs leave in `synthetic_root`)."""
    import shutil

    dst = tmp_path / "pcam"
    shutil.copytree(synthetic_root, dst, ignore=shutil.ignore_patterns(".pcam_jax_cache"))
    return dst


@pytest.fixture(scope="session")
def subset_root() -> Path:
    """The real PCam subset (JPEG folders); tests using it skip when it is absent."""
    root = subset.subset_root()
    if not subset.subset_present(root):
        pytest.skip(
            f"real PCam subset not found at {root} (set {subset.SUBSET_ENV} to its path); "
            "it lives outside the repository in ../shared/data/pcam-subset"
        )
    return root


@pytest.fixture(scope="session")
def resume_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """helpers.RESUME_CONFIG (a small CNN run) written as a config file, for subprocess tests."""
    path = tmp_path_factory.mktemp("cfg") / "resume.py"
    path.write_text(RESUME_CONFIG)
    return path


@pytest.fixture
def highest_precision():
    """float32 matmuls and convolutions at full precision (a module opts in with
    ``pytestmark = pytest.mark.usefixtures("highest_precision")``)."""
    with jax.default_matmul_precision("highest"):
        yield


@pytest.fixture(scope="session")
def tiny_cnn_run(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """(workdir, validation metrics) of a finished tiny CNN run on `synthetic_root`
    (``helpers.tiny_config`` with TINY_CNN: 6 steps, checkpoints and validations at 3 and 6),
    trained once per session. Do not modify: copy the workdir (``shutil.copytree``)."""
    from pcam_jax import train

    workdir = tmp_path_factory.mktemp("tiny_cnn") / "run"
    val = train.train_and_evaluate(tiny_config(synthetic_root, **TINY_CNN), workdir)
    return workdir, val
