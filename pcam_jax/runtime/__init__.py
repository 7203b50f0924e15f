"""What every layer above runs on: processes, compiler options, signals, files, logs, figures.

Owns: joining a multi-process run and the device mesh (``distributed``), XLA compiler options
(``xla_options``), SIGTERM/SIGINT handling and exit status 75 for pcam-train (``preemption``)
and for the other binaries (``stopping``), child processes that die with their parent
(``children``), all-or-nothing file and folder writes (``files``: the one atomic writer), the
one lock between processes (``locks``), library log filtering (``logs``) and
the headless matplotlib set-up (``plotting``). It imports only ``pcam_jax.errors`` and
third-party libraries: nothing here knows about models, data or training.
"""
