"""A cohort folder shared by processes: who computes which slide, what failed, and the tables,
rebuilt from the slide folders.

Any number of pcam-slide processes (on one host, or on hosts sharing the filesystem: the array
job of ``launch/slide_array.sbatch``) may run the same cohort into one DIR. They coordinate
through DIR/.cohort/ (hidden: a slide's name never starts with a dot), with the locks of
``runtime.locks``, which end with their process, even on SIGKILL:

    setup.lock         held while a process checks and writes cohort.json and joins the session
    session.lock       shared by every process running on DIR (``runtime.locks.join_or_start``)
    session.json       the current session: the processes that overlapped in time
    tables.lock        held while a process rebuilds slides.csv and slide_scores.csv
    claims/STEM.lock   held by the process computing slide STEM (its claim)
    failed/STEM.json   the error of STEM's last failed attempt, and its session

A session begins when a process finds no other running on DIR and ends when the last one
exits: processes started together (an array job), or one joining while others run, share it;
a run of the same command after they all ended is a new session.

The claim rule (``claimed_slides``): a process computes a slide only while it holds the slide's
lock, and only if, once it holds it, the slide is not settled (its folder finished, or a failure
recorded in this session). Each process passes once over its slides in order, taking those it
can claim at once, then waits in turn for the ones others held: a slide its holder settled is
taken as it is, one whose holder died is computed. So no slide is computed twice in a session,
and a process ends only once every slide of its list is settled: the last tables written are
complete. A failure recorded in an earlier session is retried.

The tables (``rebuild_tables``) are read from the folders, never remembered: a row per slide of
the run in the order given (done: from its summary.json; failed: from its failure record; not
yet settled: no row), then a row per slide that earlier runs over other slides finished in DIR.
Imports: wsi.layout, wsi.detections, runtime.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pcam_jax.runtime.files import write_csv, write_json
from pcam_jax.runtime.locks import held, join_or_start, lock_holder, try_lock
from pcam_jax.wsi.detections import write_slide_scores_csv
from pcam_jax.wsi.layout import SLIDE_SCORES_CSV, SLIDES_CSV, finished_summary, slide_folder

BOOKKEEPING = ".cohort"
COLUMNS = (
    "slide", "status", "score_max", "score_topk", "tumour_area_mm2", "cells", "detections",
    "seconds", "error",
)  # fmt: skip
POLL_SECONDS = 0.5  # how often a process waiting for another's slide looks again


def bookkeeping(out: Path) -> Path:
    """DIR/.cohort, the folder of the processes' locks and failure records."""
    return out / BOOKKEEPING


def _lock(out: Path, path: Path) -> Path:
    return bookkeeping(out) / "claims" / f"{path.stem}.lock"


def _failure_file(out: Path, path: Path) -> Path:
    return bookkeeping(out) / "failed" / f"{path.stem}.json"


def join_session(out: Path) -> tuple[str, int]:
    """(the session this process belongs to, the file descriptor of its share of the session
    lock: close it when the process is done with DIR). Call it holding ``setup_lock``."""
    fd, first = join_or_start(bookkeeping(out) / "session.lock")
    try:
        if first:
            session = f"{socket.gethostname()}-{os.getpid()}-{time.time():.6f}"
            write_json(bookkeeping(out) / "session.json", {"session": session})
        else:
            session = json.loads((bookkeeping(out) / "session.json").read_text())["session"]
    except BaseException:
        os.close(fd)
        raise
    return session, fd


def record_failure(out: Path, path: Path, error: BaseException, session: str) -> None:
    """Records that slide `path` failed with `error` in `session` (its row in the tables)."""
    record = {"slide": str(path), "error": str(error), "session": session, "time": time.time()}
    write_json(_failure_file(out, path), record)


def clear_failure(out: Path, path: Path) -> None:
    """Forgets an earlier failure of slide `path` (it is done now)."""
    _failure_file(out, path).unlink(missing_ok=True)


def recorded_failure(out: Path, path: Path) -> dict[str, Any] | None:
    """The failure record of slide `path`, or None."""
    try:
        return json.loads(_failure_file(out, path).read_text())
    except (OSError, ValueError):
        return None


def settled(out: Path, path: Path, session: str) -> bool:
    """Whether slide `path` needs no computing in `session`: its folder is finished, or it
    failed in this session (in this process or another)."""
    if finished_summary(slide_folder(out, path)) is not None:
        return True
    failure = recorded_failure(out, path)
    return failure is not None and failure.get("session") == session


def claimed_slides(
    out: Path,
    todo: list[Path],
    session: str,
    stop: threading.Event,
    log: Callable[[str], None],
) -> Iterator[tuple[Path, int]]:
    """The slides of `todo` this process is to compute, each with the file descriptor that
    holds its claim (close it once the slide is settled); see the module docstring. Waiting for
    another process's slide ends when `stop` is set."""
    waiting = []
    for path in todo:
        fd = try_lock(_lock(out, path))
        if fd is None:
            waiting.append(path)
        elif settled(out, path, session):
            os.close(fd)
        else:
            yield path, fd
    for path in waiting:
        fd = try_lock(_lock(out, path))
        if fd is None:
            holder = lock_holder(_lock(out, path))
            log(f"{path.stem}: being computed by another process ({holder}); waiting for it")
        while fd is None and not stop.wait(POLL_SECONDS):
            fd = try_lock(_lock(out, path))
        if fd is None:
            return
        if settled(out, path, session):
            os.close(fd)
        else:
            yield path, fd


def slide_row(path: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """slides.csv's row of a finished slide, from its summary.json."""
    k = summary["top_k"]
    return {
        "slide": str(path),
        "status": "done",
        "score_max": summary["score_max"],
        "score_topk": summary[f"score_top{k}_mean"],
        "tumour_area_mm2": summary["tumour_area_mm2"],
        "cells": summary["tissue_cells"],
        "detections": summary["detections"],
        "seconds": round(summary["seconds"], 3),
        "error": "",
    }


def _failed_row(path: Path, error: str) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(COLUMNS, "")
    return {**row, "slide": str(path), "status": "failed", "error": error}


def table_rows(out: Path, slides: list[Path]) -> list[dict[str, Any]]:
    """slides.csv's rows, read from DIR `out` (see the module docstring)."""
    rows = []
    for path in slides:
        summary = finished_summary(slide_folder(out, path))
        failure = recorded_failure(out, path) if summary is None else None
        if summary is not None:
            rows.append(slide_row(path, summary))
        elif failure is not None:
            rows.append(_failed_row(path, str(failure.get("error", ""))))
    stems = {p.stem for p in slides}
    for sub in sorted(p for p in out.iterdir() if p.is_dir() and p.name not in stems):
        summary = finished_summary(sub)
        if summary is not None and Path(summary.get("slide", "")).stem == sub.name:
            rows.append(slide_row(Path(summary["slide"]), summary))
    return rows


def rebuild_tables(out: Path, slides: list[Path]) -> list[dict[str, Any]]:
    """Rewrites slides.csv and slide_scores.csv from the folders, holding the tables' lock (a
    process that rebuilds after another has seen at least what the other saw); returns the
    rows."""
    with held(bookkeeping(out) / "tables.lock"):
        rows = table_rows(out, slides)
        write_csv(out / SLIDES_CSV, COLUMNS, ([r[k] for k in COLUMNS] for r in rows))
        scores = [(Path(r["slide"]).stem, r["score_max"]) for r in rows if r["status"] == "done"]
        write_slide_scores_csv(out / SLIDE_SCORES_CSV, scores)
    return rows


def setup_lock(out: Path) -> Path:
    """The lock a process holds while it checks and writes cohort.json."""
    return bookkeeping(out) / "setup.lock"
