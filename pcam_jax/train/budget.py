"""The wall-clock budget (``config.train_minutes``): how many steps a run takes, and its clock.

A run with ``train_minutes > 0`` sizes its schedule to the machine it runs on:

1. **Probe** (a fresh run): on a throwaway copy of the initial state and a separate iterator,
   time the first (compiling) step, PROBE_STEPS steps and one validation; plan the steps that
   fill BUDGET_FILL of what is left (``plan_steps_for_budget``), provisional until step
   ``hold_steps``, up to which the learning rate is held at its peak after the warm-up, so the
   schedule before the hold does not depend on the length chosen.
2. **Re-plan** at ``hold_steps``: the run's own rate from step REPLAN_FROM on, validations and
   checkpoints excluded, fixes the length to fill REPLAN_FILL of what is left
   (``replan_steps_for_budget``).
3. **Late check** at LATE_CHECK_AT of the way from the re-plan to the end: if the rate since
   the re-plan (pauses included) no longer fits, the schedule is shortened, never lengthened
   (``late_check_steps``).

The plan and each decision are stored in WORKDIR/train_plan.json (``pcam_jax.workdir``); a
resumed run keeps them. Every process uses process 0's figures. ``Chrono`` (after big_vision's)
is the loop's one clock: elapsed time since the start, pauses (validation, checkpoints) and the
training time of each log window; ``TrainBudget`` is the planner as one object the loop asks
after every step. Imports: workdir, infer.predict, train.setup/step, errors.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from pcam_jax.errors import TrainingError
from pcam_jax.infer.predict import make_eval_loader, pad_to_local_devices, predict
from pcam_jax.runtime.distributed import to_global
from pcam_jax.train.optim import length_free_before_hold
from pcam_jax.train.setup import global_batch
from pcam_jax.train.step import TrainState, eval_variables
from pcam_jax.workdir import read_train_plan, write_train_plan

PROBE_STEPS = 25  # timed training steps of the speed probe (after one compiling step)
CHECKPOINT_SECONDS = 2.0  # allowance per checkpoint save in the budget
# Share of the time left after the probe that the provisional plan fills (a 25-step probe's rate
# differs from a whole run's by some percent either way; BENCHMARKS.md).
BUDGET_FILL = 0.88
# The re-plan: at step REPLAN_STEPS (at most a quarter of the provisional plan) the run measures
# its own rate from step REPLAN_FROM on and fixes its length to fill REPLAN_FILL of what is left.
REPLAN_STEPS = 500
REPLAN_FROM = 25
REPLAN_FILL = 0.97
# The late check, LATE_CHECK_AT of the way from the re-plan to the planned end.
LATE_CHECK_AT = 0.75


# --- the clock -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Mark:
    """A reading of the Chrono: the time and the pauses accumulated by then."""

    time: float
    paused: float


@dataclasses.dataclass
class Pause:
    """One pause of the Chrono; ``seconds`` is set when it ends."""

    seconds: float = 0.0


class Chrono:
    """The training loop's one clock (big_vision's Chrono): it owns every timer.

    ``start`` is when the run began (the budget counts from it); ``pause()`` brackets
    validation and checkpoints, which are not training time; ``mark()`` reads the clock;
    ``training_seconds_since(mark)`` excludes the pauses since, ``seconds_since(mark)`` does
    not; ``window_seconds()`` is the training time since the last call (the log window).
    """

    def __init__(self, start: float | None = None) -> None:
        self.start = time.perf_counter() if start is None else start
        self.paused = 0.0
        self._window = Mark(self.start, 0.0)

    def mark(self) -> Mark:
        return Mark(time.perf_counter(), self.paused)

    def elapsed(self, now: Mark | None = None) -> float:
        """Seconds since the start (at `now`, or now)."""
        return (now or self.mark()).time - self.start

    def seconds_since(self, mark: Mark, now: Mark | None = None) -> float:
        return (now or self.mark()).time - mark.time

    def training_seconds_since(self, mark: Mark, now: Mark | None = None) -> float:
        now = now or self.mark()
        return now.time - mark.time - (now.paused - mark.paused)

    @contextmanager
    def pause(self) -> Iterator[Pause]:
        """Times the block as a pause (validation, checkpoint); yields its Pause."""
        pause = Pause()
        t = time.perf_counter()
        try:
            yield pause
        finally:
            pause.seconds = time.perf_counter() - t
            self.paused += pause.seconds

    def start_window(self) -> None:
        """Starts a log window now."""
        self._window = self.mark()

    def window_seconds(self) -> float:
        """Training seconds of the log window so far; starts the next window."""
        now = self.mark()
        seconds = self.training_seconds_since(self._window, now)
        self._window = now
        return seconds


# --- the arithmetic --------------------------------------------------------------------------


def steps_for_budget(
    seconds: float,
    step_seconds: float,
    eval_seconds: float,
    eval_every: int,
    checkpoint_seconds: float,
    checkpoint_every: int,
) -> int:
    """The most steps S whose training, ceil(S / eval_every) validations and
    ceil(S / checkpoint_every) checkpoints fit in `seconds` (at least 1)."""
    per_step = step_seconds + eval_seconds / eval_every + checkpoint_seconds / checkpoint_every
    steps = max(1, int(seconds / per_step))
    while steps > 1 and (
        steps * step_seconds
        + math.ceil(steps / eval_every) * eval_seconds
        + math.ceil(steps / checkpoint_every) * checkpoint_seconds
        > seconds
    ):
        steps -= 1
    return steps


def capped(config: ml_collections.ConfigDict, steps: int) -> int:
    """`steps`, at most config.max_train_steps when that is set (> 0)."""
    cap = config.get("max_train_steps", 0)
    return min(steps, cap) if cap > 0 else steps


def _steps_within(
    config: ml_collections.ConfigDict, seconds: float, step_seconds: float, eval_seconds: float
) -> int:
    """``steps_for_budget`` with the config's validation and checkpoint cadence."""
    return steps_for_budget(
        seconds,
        step_seconds,
        eval_seconds,
        config.eval_every_steps,
        CHECKPOINT_SECONDS,
        config.checkpoint_every_steps,
    )


def measure_speed(
    config: ml_collections.ConfigDict,
    step_fn: Any,
    state: TrainState,
    loader: grain.DataLoader,
    mesh: jax.sharding.Mesh,
    key: jax.Array,
    predict_fn: Any,
    eval_src: Any,
) -> tuple[float, float, float]:
    """(compile seconds of the train step, seconds per step over PROBE_STEPS steps, seconds of
    one validation pass), measured on a throwaway copy of `state` and a separate iterator of
    `loader` (the run's own batches and parameters are untouched). The validation's predict
    function is compiled outside its timing, and the run reuses it."""
    probe_state = jax.tree_util.tree_map(jnp.copy, state)
    it = iter(loader)

    def one_step(s: TrainState) -> TrainState:
        s, m = step_fn(s, global_batch(mesh, next(it)), key)
        jax.block_until_ready(m)
        return s

    t = time.perf_counter()
    probe_state = one_step(probe_state)
    compile_seconds = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(PROBE_STEPS):
        probe_state = one_step(probe_state)
    step_seconds = (time.perf_counter() - t) / PROBE_STEPS
    it = None  # stops the probe iterator's worker processes
    eval_loader = make_eval_loader(config, eval_src)
    first = next(iter(eval_loader))["image"]
    jax.block_until_ready(
        predict_fn(eval_variables(probe_state), to_global(mesh, pad_to_local_devices(first)))
    )
    t = time.perf_counter()
    predict(predict_fn, eval_variables(probe_state), eval_loader, mesh)
    eval_seconds = time.perf_counter() - t
    return compile_seconds, step_seconds, eval_seconds


def plan_steps_for_budget(
    config: ml_collections.ConfigDict, t_start: float, **probe: Any
) -> dict[str, Any]:
    """Chooses num_train_steps so that the whole run ends within config.train_minutes.

    Measures the machine (``measure_speed(config, **probe)``). The budget counts from
    `t_start`, the start of train_and_evaluate; what is left after the probe, less a second
    compile and a margin (BUDGET_FILL), is split between steps, validations every
    eval_every_steps and checkpoints. Every process uses process 0's figures.
    """
    compile_seconds, step_seconds, eval_seconds = measure_speed(config, **probe)
    elapsed = time.perf_counter() - t_start
    figures = np.asarray([compile_seconds, step_seconds, eval_seconds, elapsed], np.float64)
    if jax.process_count() > 1:
        figures = np.asarray(multihost_utils.broadcast_one_to_all(figures))
    compile_seconds, step_seconds, eval_seconds, elapsed = (float(v) for v in figures)
    left = (config.train_minutes * 60.0 - elapsed - compile_seconds) * BUDGET_FILL
    if left < step_seconds + eval_seconds:
        raise TrainingError(
            f"config.train_minutes={config.train_minutes}: the set-up and speed probe took "
            f"{elapsed:.0f} s; not enough left for one step and one validation. Raise "
            "train_minutes."
        )
    steps = capped(config, _steps_within(config, left, step_seconds, eval_seconds))
    hold = min(REPLAN_STEPS, steps // 4)
    replan = length_free_before_hold(config.schedule) and hold > REPLAN_FROM
    plan = {
        "train_minutes": config.train_minutes,
        "num_train_steps": steps,
        # the step at which the run fixes its length (see REPLAN_STEPS); 0: never, the plan is
        # final (a schedule that needs its length from the start, or a run too short to measure)
        "hold_steps": hold if replan else 0,
        "replanned": False,
        "step_seconds": step_seconds,
        "compile_seconds": compile_seconds,
        "eval_seconds": eval_seconds,
        "setup_seconds": elapsed,
        "devices": jax.device_count(),
        "device_kind": jax.devices()[0].device_kind,
    }
    logging.info(
        "train_minutes=%s: %.3f s/step, %.1f s per validation, compile %.1f s -> %d steps "
        "(provisional until step %d)",
        config.train_minutes,
        step_seconds,
        eval_seconds,
        compile_seconds,
        steps,
        plan["hold_steps"],
    )
    return plan


def _steps_left(
    config: ml_collections.ConfigDict,
    plan: dict[str, Any],
    step_seconds: float,
    eval_seconds: float,
    elapsed: float,
) -> tuple[int, float, float, float]:
    """(steps that fill REPLAN_FILL of what is left of the budget after `elapsed` seconds and
    one more compile, and the step_seconds, eval_seconds and elapsed used), from process 0's
    figures on every process."""
    figures = np.asarray([step_seconds, eval_seconds, elapsed], np.float64)
    if jax.process_count() > 1:
        figures = np.asarray(multihost_utils.broadcast_one_to_all(figures))
    step_seconds, eval_seconds, elapsed = (float(v) for v in figures)
    left = (config.train_minutes * 60.0 - elapsed - plan["compile_seconds"]) * REPLAN_FILL
    more = _steps_within(config, left, step_seconds, eval_seconds)
    return (more if left > step_seconds + eval_seconds else 0), step_seconds, eval_seconds, elapsed


def replan_steps_for_budget(
    config: ml_collections.ConfigDict,
    plan: dict[str, Any],
    step: int,
    step_seconds: float,
    eval_seconds: float,
    elapsed: float,
) -> dict[str, Any]:
    """The final plan of a timed run at step ``plan["hold_steps"]``: from its measured rate
    (`step_seconds`, `eval_seconds`) and the `elapsed` seconds since it started, the most steps
    whose training, validations, checkpoints and one more compile fill REPLAN_FILL of what is
    left of config.train_minutes (at least `step`). Every process uses process 0's figures."""
    more, step_seconds, eval_seconds, elapsed = _steps_left(
        config, plan, step_seconds, eval_seconds, elapsed
    )
    final = {
        **plan,
        "num_train_steps": max(step, capped(config, step + more)),
        "replanned": True,
        "provisional_num_train_steps": plan["num_train_steps"],
        "measured_step_seconds": step_seconds,
        "measured_eval_seconds": eval_seconds,
        "elapsed_at_replan": elapsed,
    }
    logging.info(
        "train_minutes=%s: measured %.3f s/step and %.1f s per validation over steps %d-%d; "
        "%.0f s elapsed -> %d steps (provisional plan: %d)",
        config.train_minutes,
        step_seconds,
        eval_seconds,
        REPLAN_FROM,
        step,
        elapsed,
        final["num_train_steps"],
        plan["num_train_steps"],
    )
    return final


def late_check_steps(
    config: ml_collections.ConfigDict,
    plan: dict[str, Any],
    step: int,
    step_seconds: float,
    elapsed: float,
) -> dict[str, Any]:
    """The plan after the late check at ``step`` (see LATE_CHECK_AT): num_train_steps cut to
    the most steps that fill REPLAN_FILL of what is left of config.train_minutes at the
    measured `step_seconds` (validations and checkpoints counted in), if that is fewer than
    planned; otherwise unchanged. Records the check under "late_check". Every process uses
    process 0's figures. `step_seconds` already includes the validations and checkpoints."""
    more, step_seconds, _, elapsed = _steps_left(config, plan, step_seconds, 0.0, elapsed)
    planned = plan["num_train_steps"]
    steps = min(planned, step + more)
    logging.info(
        "train_minutes=%s: late check at step %d: %.3f s/step since the re-plan, %.0f s "
        "elapsed -> %d steps (%s)",
        config.train_minutes,
        step,
        step_seconds,
        elapsed,
        steps,
        "shortened" if steps < planned else "as planned",
    )
    return {
        **plan,
        "num_train_steps": steps,
        "late_check": {
            "step": step,
            "step_seconds": step_seconds,
            "elapsed": elapsed,
            "planned_num_train_steps": planned,
        },
    }


# --- the planner -----------------------------------------------------------------------------


class TrainBudget:
    """The train_minutes planner of one run: its plan, and when to measure and decide.

    Without a budget (``train_minutes == 0``) it holds no plan and the run takes
    ``config.num_train_steps``. The loop calls ``probe`` once when ``needs_probe``, ``arm``
    with the step it starts from, ``validated`` after each validation and ``after_step`` after
    every step (True: num_train_steps changed, rebuild the schedule).
    """

    def __init__(self, config: ml_collections.ConfigDict, workdir: Path, chrono: Chrono) -> None:
        self.config, self.workdir, self.chrono = config, workdir, chrono
        self.plan: dict[str, Any] | None = None
        if config.train_minutes > 0:
            plan = read_train_plan(workdir)
            # a plan left by a start for another budget that failed before its first
            # checkpoint is planned again
            if plan is not None and plan.get("train_minutes") == config.train_minutes:
                self.plan = plan
        self.eval_seconds = 0.0  # the last validation's
        self._replan_at = self._late_at = self._replan_step = 0
        self._measure = Mark(0.0, 0.0)

    @property
    def needs_probe(self) -> bool:
        return self.config.train_minutes > 0 and self.plan is None

    @property
    def num_train_steps(self) -> int:
        return self.plan["num_train_steps"] if self.plan else self.config.num_train_steps

    @property
    def hold_steps(self) -> int:
        """Steps the learning rate is held at its peak after the warm-up (0: no hold)."""
        return self.plan.get("hold_steps", 0) if self.plan else 0

    def probe(self, **kwargs: Any) -> None:
        """Measures this machine and writes the provisional plan (``plan_steps_for_budget``'s
        arguments after ``config`` and ``t_start``)."""
        self._set_plan(plan_steps_for_budget(self.config, self.chrono.start, **kwargs))

    def arm(self, start: int) -> None:
        """Prepares the measurements of a run that starts (or resumes) at step `start`.

        A run resumed before the re-plan step cannot know how long its first start ran, so it
        keeps the provisional plan.
        """
        plan = self.plan
        if plan is not None:
            self.eval_seconds = plan.get("eval_seconds", 0.0)
        if plan is None or plan.get("replanned", True) or not plan.get("hold_steps", 0):
            return
        if start < REPLAN_FROM:
            self._replan_at = plan["hold_steps"]
        elif start < plan["hold_steps"]:
            self._set_plan({**plan, "replanned": "skipped: resumed before the re-plan step"})

    def validated(self, seconds: float) -> None:
        """Records the duration of the last validation (the re-plan budgets for more)."""
        self.eval_seconds = seconds

    def after_step(self, step: int, state: TrainState) -> bool:
        """Measures or decides at this step if it is one of the budget's; True when the
        number of steps changed. Blocks on `state` at those steps only."""
        if step == REPLAN_FROM and self._replan_at:
            jax.block_until_ready(state)
            self._measure = self.chrono.mark()
        if step not in (self._replan_at, self._late_at):
            return False
        jax.block_until_ready(state)
        now = self.chrono.mark()
        before = self.num_train_steps
        assert self.plan is not None
        if step == self._replan_at:
            measured = self.chrono.training_seconds_since(self._measure, now)
            plan = replan_steps_for_budget(
                self.config,
                self.plan,
                step,
                measured / (step - REPLAN_FROM),
                self.eval_seconds,
                self.chrono.elapsed(now),
            )
            late_at = step + round(LATE_CHECK_AT * (plan["num_train_steps"] - step))
            self._late_at = late_at if step < late_at < plan["num_train_steps"] else 0
            self._measure, self._replan_step = now, step
        else:  # the late check: the rate since the re-plan, pauses included
            measured = self.chrono.seconds_since(self._measure, now)
            plan = late_check_steps(
                self.config,
                self.plan,
                step,
                measured / (step - self._replan_step),
                self.chrono.elapsed(now),
            )
        self._set_plan(plan)
        return self.num_train_steps != before

    def _set_plan(self, plan: dict[str, Any]) -> None:
        self.plan = plan
        write_train_plan(self.workdir, plan)
