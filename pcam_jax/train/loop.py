"""The training loop: ``train_and_evaluate(config, workdir)``.

Set-up (``train.setup``; first a teacher's targets when distilling, ``train.distill``), then
one loop over jit-compiled data-parallel steps (``train.step``): metrics logged every
``log_every_steps`` through CLU metric writers (TensorBoard event files and the console),
validation every ``eval_every_steps``
(``train.evaluator``, the EMA weights when kept), a checkpoint every ``checkpoint_every_steps``
(``train.checkpointing``; the run resumes from the latest one in WORKDIR), and, for a
``train_minutes`` run, the budget's measurements and decisions (``train.budget``), all timed by
one ``Chrono``. One run per workdir (``workdir.workdir_lock``); SIGTERM/SIGINT save a checkpoint
and raise Preempted (``runtime.preemption``, exit status 75 in pcam-train); a loss or parameters
that are no longer finite stop the run without saving. Imports: everything below it; only
pcam-train, the quickstart and tests import this package.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers, periodic_actions
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from pcam_jax.config import flatten_config
from pcam_jax.data import pipeline, sources
from pcam_jax.errors import Preempted, TrainingError
from pcam_jax.infer.model import create_model, make_preprocess
from pcam_jax.infer.predict import make_predict_fn
from pcam_jax.runtime.distributed import is_primary, make_mesh
from pcam_jax.runtime.preemption import preemption_watcher
from pcam_jax.train import distill
from pcam_jax.train.budget import Chrono, TrainBudget
from pcam_jax.train.checkpointing import restore_for_training, save_checkpoint
from pcam_jax.train.evaluator import Evaluator
from pcam_jax.train.optim import make_schedule
from pcam_jax.train.setup import (
    check_recipe,
    create_state,
    global_batch,
    make_train_loader,
    norm_stats,
    replicate,
    resolve_augment_where,
    with_schedule,
)
from pcam_jax.train.step import TrainMetrics, compile_train_step
from pcam_jax.workdir import check_config, checkpoint_manager, store_config, workdir_lock


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Trains `config` in `workdir` (resuming from its latest checkpoint) and evaluates it.

    Holds the workdir's lock throughout. Returns the last validation metrics.
    """
    start = Chrono()  # a train_minutes budget counts from here ...
    check_recipe(config)  # before the lock creates the workdir
    config = resolve_augment_where(config)  # config.json records where augmentation ran
    with workdir_lock(workdir):
        check_config(config, Path(workdir))
        targets = distill.training_targets(config, Path(workdir))
        # ... or, when a teacher ran, from its end: the budget is the student's training alone
        chrono = start if targets is None else Chrono()
        run = _Run.set_up(config, Path(workdir), chrono, targets)
        return _loop(run)


@dataclasses.dataclass
class _Run:
    """Everything a run needs once it is set up (``set_up``), and the rebuilds its budget asks
    for when the number of steps changes."""

    config: ml_collections.ConfigDict
    workdir: Path
    chrono: Chrono
    writer: metric_writers.MetricWriter
    mesh: jax.sharding.Mesh
    eval_src: sources.PatchSource
    norm: pipeline.NormStats
    train_iter: Any
    model: Any
    preprocess: Any
    budget: TrainBudget
    state: Any
    key: jax.Array
    layout: dict[str, int]
    mngr: Any
    last_good: int | None
    step_fn: Any = None
    predict_fn: Any = None

    @classmethod
    def set_up(
        cls,
        config: ml_collections.ConfigDict,
        workdir: Path,
        chrono: Chrono,
        targets: np.ndarray | None = None,
    ) -> _Run:
        writer = metric_writers.create_default_writer(
            workdir, just_logging=not is_primary(), asynchronous=False
        )
        mesh = make_mesh()
        train_src = sources.from_config(config, config.data.train_split)
        eval_src = sources.from_config(config, config.data.eval_split)
        norm = norm_stats(config, train_src)
        loader = make_train_loader(config, train_src, targets)
        train_iter = iter(loader)
        model = create_model(config)
        budget = TrainBudget(config, workdir, chrono)
        schedule = _schedule(config, budget)  # until the probe, if any, re-plans
        state = create_state(config, model, schedule)
        n_params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(state.params))
        store_config(config, workdir)  # data, model and optimizer were set up without error
        seed_key = partial(jax.random.key, config.seed)
        layout = {"processes": jax.process_count(), "workers": config.data.worker_count}
        mngr = checkpoint_manager(workdir, config.keep_checkpoints)
        run = cls(
            config=config,
            workdir=workdir,
            chrono=chrono,
            writer=writer,
            mesh=mesh,
            eval_src=eval_src,
            norm=norm,
            train_iter=train_iter,
            model=model,
            preprocess=make_preprocess(config, norm),
            budget=budget,
            state=replicate(state, mesh),
            key=jax.jit(seed_key, out_shardings=NamedSharding(mesh, P()))(),
            layout=layout,
            mngr=mngr,
            last_good=mngr.latest_step(),
        )
        if run.last_good is not None:
            run.state = restore_for_training(
                mngr,
                run.last_good,
                run.state,
                train_iter,
                loader,
                layout,
                norm,
                str(config.data.root),
            )
            logging.info("resumed from checkpoint %d in %s", run.last_good, mngr.directory)
        run.step_fn = compile_train_step(config, run.preprocess, schedule, mesh)
        run.predict_fn = make_predict_fn(model, run.preprocess, mesh)
        if budget.needs_probe:  # a fresh timed run: measure this machine, size the schedule
            budget.probe(
                step_fn=run.step_fn,
                state=run.state,
                loader=loader,
                mesh=mesh,
                key=run.key,
                predict_fn=run.predict_fn,
                eval_src=eval_src,
            )
            run.rebuild()
        if int(jax.device_get(run.state.step)) == 0 and is_primary():
            writer.write_hparams(flatten_config(config))
            logging.info(
                "model %s: %d parameters; train %d / %s %d patches; %d devices",
                config.model.name,
                n_params,
                len(train_src),
                config.data.eval_split,
                len(eval_src),
                jax.device_count(),
            )
        return run

    def rebuild(self) -> None:
        """The state's optimizer and the compiled step for the budget's current length."""
        schedule = _schedule(self.config, self.budget)
        self.state = with_schedule(self.config, self.model, self.state, schedule)
        self.step_fn = compile_train_step(self.config, self.preprocess, schedule, self.mesh)

    def progress(self) -> periodic_actions.ReportProgress:
        return periodic_actions.ReportProgress(
            num_train_steps=self.budget.num_train_steps,
            writer=self.writer,
            every_steps=self.config.log_every_steps,
        )


def _schedule(config: ml_collections.ConfigDict, budget: TrainBudget) -> optax.Schedule:
    """The learning-rate schedule for the budget's number of steps (and its hold)."""
    lr = config.optimizer.learning_rate
    return make_schedule(config.schedule, budget.num_train_steps, lr, budget.hold_steps)


def _loop(run: _Run) -> dict[str, Any]:
    """Trains `run` to the end of its budget; returns the last validation metrics."""
    config, budget, chrono, writer = run.config, run.budget, run.chrono, run.writer
    budget.arm(int(jax.device_get(run.state.step)))
    hooks: list[Any] = [run.progress()]
    if config.profile_steps > 0 and is_primary():
        hooks.append(
            periodic_actions.Profile(
                logdir=str(run.workdir), num_profile_steps=config.profile_steps
            )
        )
    evaluator = Evaluator(config, run.eval_src, run.predict_fn, run.mesh)
    pending = _Pending()
    val: dict[str, Any] = {}
    chrono.start_window()
    with preemption_watcher() as watcher:
        step = int(jax.device_get(run.state.step))
        while step < budget.num_train_steps:
            step += 1
            batch = global_batch(run.mesh, next(run.train_iter))
            with jax.profiler.StepTraceAnnotation("train", step_num=step):
                run.state, step_metrics = run.step_fn(run.state, batch, run.key)
            pending.add(step, step_metrics)
            if budget.after_step(step, run.state):
                run.rebuild()
                hooks[0] = run.progress()
            for hook in hooks:
                hook(step)
            is_last = step == budget.num_train_steps
            if step % config.log_every_steps == 0 or is_last:
                fetched = pending.fetch()
                _check_finite(fetched, run.last_good)
                _write_train_metrics(writer, step, fetched, chrono.window_seconds(), config)
            evaluated = step % config.eval_every_steps == 0 or is_last
            if evaluated:
                jax.block_until_ready(run.state)  # the queued steps count as training
                with chrono.pause() as pause:
                    val = evaluator.run(run.state)
                budget.validated(pause.seconds)
                scalars = {f"val_{k}": val[k] for k in ("auc", "accuracy", "nll")}
                writer.write_scalars(step, {**scalars, "val_seconds": pause.seconds})
            preempted = watcher.stop(step)
            if step % config.checkpoint_every_steps == 0 or is_last or preempted:
                _save(run, step, pending, val if evaluated else None)
            if preempted and not is_last:
                writer.flush()
                run.mngr.close()
                raise Preempted(step, watcher.signal_name or "signal")
    writer.flush()
    run.mngr.close()
    return val


def _save(run: _Run, step: int, pending: _Pending, val: dict[str, Any] | None) -> None:
    """Checkpoint `step` (after checking the steps since the last log are finite), timed as a
    pause of the clock."""
    jax.block_until_ready(run.state)
    with run.chrono.pause():
        _check_finite(pending.fetch(), run.last_good)
        record = _checkpoint_record(
            run.config, step, run.norm, run.layout, run.budget.num_train_steps, val
        )
        auc = val["auc"] if val else None
        save_checkpoint(run.mngr, step, run.state, run.train_iter, record, auc)
    run.last_good = step


@dataclasses.dataclass
class _Pending:
    """Per-step metrics still on the device, fetched at log and checkpoint steps."""

    steps: list[int] = dataclasses.field(default_factory=list)
    values: list[dict[str, jax.Array]] = dataclasses.field(default_factory=list)

    def add(self, step: int, values: dict[str, jax.Array]) -> None:
        self.steps.append(step)
        self.values.append(values)

    def fetch(self) -> list[tuple[int, dict[str, float]]]:
        got = jax.device_get(self.values)
        out = list(zip(self.steps, got, strict=True))
        self.steps, self.values = [], []
        return out


def _check_finite(fetched: list[tuple[int, dict[str, Any]]], last_good: int | None) -> None:
    """Raises at the first step whose loss or updated parameters are not finite."""
    for step, values in fetched:
        loss = float(values["loss"])
        if not (math.isfinite(loss) and bool(values["params_finite"])):
            where = (
                f"the last good checkpoint (step {last_good}) is untouched"
                if last_good is not None
                else "no checkpoint was written"
            )
            raise TrainingError(
                f"training diverged at step {step}: loss {loss}, parameters "
                f"{'finite' if values['params_finite'] else 'not finite'} after the update; "
                f"stopped without saving, {where}. Lower optimizer.learning_rate or set "
                "optimizer.grad_clip_norm."
            )


def _write_train_metrics(
    writer: metric_writers.MetricWriter,
    step: int,
    fetched: list[tuple[int, dict[str, Any]]],
    seconds: float,
    config: ml_collections.ConfigDict,
) -> None:
    """Mean training loss and accuracy of the log window, the learning rate, and images/s over
    its `seconds` of training (validation and checkpoints are timed on their own)."""
    if not fetched:
        return
    train_metrics: Any = None
    for _, values in fetched:
        update = TrainMetrics.single_from_model_output(
            loss=np.asarray(values["loss"]), accuracy=np.asarray(values["accuracy"])
        )
        train_metrics = update if train_metrics is None else train_metrics.merge(update)
    scalars = {f"train_{k}": v for k, v in train_metrics.compute().items()}
    scalars["learning_rate"] = float(fetched[-1][1]["learning_rate"])
    scalars["images_per_second"] = len(fetched) * config.batch_size / seconds
    writer.write_scalars(step, scalars)


def _checkpoint_record(
    config: ml_collections.ConfigDict,
    step: int,
    norm: pipeline.NormStats,
    layout: dict[str, int],
    num_train_steps: int,
    val: dict[str, Any] | None,
) -> dict[str, Any]:
    """The JSON record saved with checkpoint `step` (``val``: the validation at this step)."""
    return {
        "step": step,
        "norm": norm.to_json(),
        "seed": config.seed,
        "model": config.model.to_dict(),
        "layout": layout,
        "ema_decay": config.ema_decay,
        "num_train_steps": num_train_steps,
        "val": {k: val[k] for k in ("auc", "accuracy", "nll", "n")} if val else None,
    }
