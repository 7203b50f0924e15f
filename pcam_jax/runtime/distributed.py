"""Multi-process runs on JAX's distributed runtime (`jax.distributed`).

`pcam-train` and `pcam-eval` run one process per host (or per GPU); each
process owns its local devices, and the mesh spans every device of every
process. This module holds the flags both binaries share and the call that
joins the processes, which must come before JAX touches a device:

    --distributed=auto   join when the launch says so: --coordinator_address
                         (or JAX_COORDINATOR_ADDRESS), or a SLURM step with
                         more than one task (srun); else run alone
    --distributed=on     always join; jax.distributed.initialize() fills in
                         what is not given from the cluster (SLURM, Cloud TPU
                         VMs, Open MPI, Kubernetes)
    --distributed=off    never join

On CPU the processes exchange tensors through gloo (JAX's default CPU
collectives), which is what the tests use on 127.0.0.1.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax
import numpy as np
from absl import flags, logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from pcam_jax.errors import DistributedError

_MODE = flags.DEFINE_enum(
    "distributed",
    "auto",
    ["auto", "on", "off"],
    "Join a multi-process run through jax.distributed (see pcam_jax/distributed.py).",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address",
    None,
    "host:port of process 0's coordinator (default: JAX_COORDINATOR_ADDRESS or the cluster's).",
)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Number of processes (default: from the cluster)."
)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's index, 0..num_processes-1 (default: from the cluster)."
)


def launched_as_multiprocess(
    coordinator_address: str | None, environ: Mapping[str, str] | None = None
) -> bool:
    """Whether a launch asks for several processes: a coordinator address or a SLURM step."""
    env = os.environ if environ is None else environ
    if coordinator_address or env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    in_srun = "SLURM_STEP_ID" in env or "SLURM_STEPID" in env
    return in_srun and int(env.get("SLURM_NTASKS", env.get("SLURM_NPROCS", "1"))) > 1


def initialize(
    mode: str = "auto",
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Joins the multi-process run when `mode` says so; returns whether it did.

    Call before any JAX computation. With every argument given no cluster
    detection runs (the 127.0.0.1 tests); otherwise `jax.distributed` reads
    the rest from the environment.
    """
    if mode not in ("auto", "on", "off"):
        raise DistributedError(f"--distributed={mode!r}: expected auto, on or off")
    given = [v is not None for v in (num_processes, process_id)]
    if any(given) and not all(given):
        raise DistributedError("--num_processes and --process_id must be given together")
    if num_processes is not None and process_id is not None:
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise DistributedError(
                f"--process_id={process_id} must be in 0..{num_processes - 1} "
                f"(--num_processes={num_processes})"
            )
        if num_processes > 1 and not (
            coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
        ):
            raise DistributedError(
                "--num_processes > 1 needs --coordinator_address=HOST:PORT (process 0's host)"
            )
    if mode == "off" or (mode == "auto" and not launched_as_multiprocess(coordinator_address)):
        if coordinator_address or (num_processes or 1) > 1:
            raise DistributedError(
                "--distributed=off contradicts --coordinator_address/--num_processes"
            )
        return False
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
    )
    logging.info(
        "joined a %d-process run as process %d: %d local / %d global devices",
        jax.process_count(),
        jax.process_index(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


def initialize_from_flags() -> bool:
    """`initialize` with the --distributed, --coordinator_address, ... flags."""
    return initialize(_MODE.value, _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)


def is_primary() -> bool:
    """Whether this process writes files and summaries (process 0)."""
    return jax.process_index() == 0


# --- the device mesh ----------------------------------------------------------------------

#: The mesh axis the batch is split over (data parallelism).
AXIS = "data"


def make_mesh() -> jax.sharding.Mesh:
    """A 1-D mesh over every device of every process, axis 'data'."""
    return jax.make_mesh((jax.device_count(),), (AXIS,))


def to_global(mesh: jax.sharding.Mesh, local: np.ndarray) -> jax.Array:
    """This process's part of a batch -> a global array split over the data axis."""
    return jax.make_array_from_process_local_data(NamedSharding(mesh, P(AXIS)), local)
