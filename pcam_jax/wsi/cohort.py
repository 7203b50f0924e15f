"""pcam-slide on a cohort: many slides into one folder, in resumable runs of one or many
processes.

Slides (``resolve_slides``): each argument is a slide file, a folder (the slide files in it, sorted,
not recursive, not hidden, not folders; SLIDE_SUFFIXES), a glob pattern (``'data/*.tif'``), or a
list: a .txt file with one path per line or a .csv file with a ``slide`` (or ``path``) column,
relative paths taken from the list's folder; a .csv list may give a slide's level-0 resolution in an
``mpp`` column (for slides that do not record it; --mpp, when given, overrides every slide's). A
slide is named by the path given (a symbolic link by its own name, not its target's: the evaluation
reads the name). The same file named twice (also through links) is run once, under its first name;
named twice with two different mpp values, or two different slides with the same file stem, is
refused before any work (their sub-folders would collide), and so is a slide whose stem cannot name
its sub-folder and its rows (``check_slide_name``: a comma or a line break, which CAMELYON16's CSV
files cannot hold; a leading dot, hidden and temporary names being the run's own; the name of one of
DIR's files; more than NAME_BYTES bytes).

DIR (``--out``) holds:

    cohort.json        the settings and model of the run; a rerun with other ones is refused
    slides.csv         slide, status (done | failed), score_max, score_topk, tumour_area_mm2,
                       cells, detections, seconds, error: one row per settled slide of the run,
                       in the order given, then the slides earlier runs finished in DIR; rebuilt
                       from the folders (atomically) after every slide
    slide_scores.csv   the done slides' scores in the CAMELYON16 format (image_name,probability
                       = score_max; no header)
    STEM/              each slide's pcam-slide outputs (a slide folder: ``wsi.layout``)
    .cohort/           the locks and failure records of the processes (``wsi.cohort_folder``)

Resume rule: STEM/ appears only when complete (it is renamed into place), so a STEM/ with
summary.json is done, and a rerun keeps it, once it has checked that the slide is still the
file, and has the resolution, it was computed from (``wsi.provenance``: path, size and mtime,
else size and a sampled fingerprint; a changed slide is refused before any work, naming the
folder to remove). A slide killed midway left only a temporary folder, which the rerun removes
before redoing that slide. The tables are rebuilt from the folders, so a resumed run's files
equal an uninterrupted run's. Failed slides (unreadable, no resolution, no tissue, a damaged
tile: any PcamError or OSError) are recorded with their error and retried on a rerun; the run
goes on.

Many processes: any number of pcam-slide processes may run the same cohort into one DIR at
once (a SLURM array, ``launch/slide_array.sbatch``); each claims a slide before computing it,
so none is computed twice, and each ends with complete tables (``wsi.cohort_folder``).

Overlap: while slide k is predicted, the next slide is claimed, opened and its thumbnail and
tissue map computed on a second thread (``prepare_slide``), so the model does not wait for them.

The folder's names are ``wsi.layout``'s. Imports: wsi.run, wsi.slide, wsi.layout,
wsi.cohort_folder, wsi.provenance, infer.predict, runtime, errors.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import json
import os
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pcam_jax.errors import PcamError, SlideError
from pcam_jax.infer.predict import LoadedModel
from pcam_jax.runtime.files import check_new_dir, writable_folder, write_json
from pcam_jax.runtime.locks import held
from pcam_jax.runtime.stopping import raise_if_stopped, stops_deferred
from pcam_jax.wsi.cohort_folder import (
    BOOKKEEPING,
    bookkeeping,
    claimed_slides,
    clear_failure,
    join_session,
    rebuild_tables,
    record_failure,
    setup_lock,
)
from pcam_jax.wsi.layout import (
    COHORT_JSON,
    SLIDE_SCORES_CSV,
    SLIDES_CSV,
    finished_summary,
    slide_folder,
)
from pcam_jax.wsi.provenance import changes
from pcam_jax.wsi.run import PreparedSlide, SlideSettings, predict_and_write
from pcam_jax.wsi.slide import check_mpp

SLIDE_SUFFIXES = (
    ".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide"
)  # fmt: skip
LIST_SUFFIXES = (".txt", ".csv")
# the longest slide stem, in UTF-8 bytes: its folder's temporary name adds about 40 to it, and
# file systems take 255
NAME_BYTES = 200
# settings that do not change any output: a rerun may change them
NEUTRAL_SETTINGS = frozenset({"batch_size"})


def is_cohort(specs: Sequence[str]) -> bool:
    """Whether pcam-slide's arguments name a cohort (several slides, a folder, a glob or a
    list) rather than one slide file, whose outputs go straight into DIR."""
    if len(specs) != 1:
        return True
    spec = specs[0]
    return Path(spec).is_dir() or glob.has_magic(spec) or Path(spec).suffix.lower() in LIST_SUFFIXES


def _read_list(path: Path) -> list[tuple[Path, float | None]]:
    """(slide path, its mpp column or None) of a .txt or .csv list (paths relative to the
    list's folder)."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise SlideError(f"{path}: cannot read the slide list ({e})") from None
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        header = reader.fieldnames or []
        columns = [c for c in ("slide", "path") if c in header]
        if not columns:
            raise SlideError(
                f"{path}: expected a header line naming a 'slide' (or 'path') column, and "
                f"optionally 'mpp'; the first line is {','.join(header)!r}"
            )
        # a row shorter than the header has None in its missing columns
        entries = [
            ((r.get(columns[0]) or "").strip(), _list_mpp(path, n, r))
            for n, r in enumerate(reader, 2)
        ]
    else:
        entries = [(line.strip(), None) for line in text.splitlines()]
    entries = [(n, mpp) for n, mpp in entries if n and not n.startswith("#")]
    if not entries:
        raise SlideError(f"{path}: the slide list is empty")
    return [(p if p.is_absolute() else path.parent / p, mpp) for p, mpp in
            ((Path(n), mpp) for n, mpp in entries)]  # fmt: skip


def _list_mpp(path: Path, line: int, row: dict[str, str]) -> float | None:
    """The `mpp` column of a slide list's row: None when absent or empty."""
    value = (row.get("mpp") or "").strip()
    if not value:
        return None
    try:
        return check_mpp(float(value), f"{path}:{line}: mpp")
    except ValueError:
        raise SlideError(
            f"{path}:{line}: mpp {value!r} is not a number (microns per pixel)"
        ) from None


def resolve_slides(specs: Sequence[str]) -> dict[Path, float | None]:
    """The slide files that pcam-slide's arguments name, in the order given, each with the
    resolution a list gives it (else None; see the module docstring); SlideError naming the
    argument that names none."""
    found: list[tuple[Path, float | None]] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            files = [  # not folders, not hidden files (macOS's ._NAME copies among them)
                (p, None)
                for p in sorted(path.iterdir())
                if p.suffix.lower() in SLIDE_SUFFIXES
                and not p.name.startswith(".")
                and not p.is_dir()
            ]
            if not files:
                raise SlideError(f"{spec}: no slide files ({', '.join(SLIDE_SUFFIXES)}) in it")
        elif glob.has_magic(spec):
            files = [(Path(p), None) for p in sorted(glob.glob(spec)) if Path(p).is_file()]
            if not files:
                raise SlideError(f"{spec}: the pattern matches no file")
        elif path.suffix.lower() in LIST_SUFFIXES and path.is_file():
            files = _read_list(path)
        else:
            files = [(path, None)]  # a missing file fails as that slide, in slides.csv
        found += files
    unique: dict[Path, float | None] = {}
    named: dict[str, Path] = {}  # the file behind each name -> the first name given for it
    for p, mpp in found:
        given = Path(os.path.abspath(p))  # a link keeps its own name
        target = os.path.realpath(given)  # never raises, not even on a link loop
        first = named.setdefault(target, given)
        if first in unique and mpp is not None and unique[first] not in (None, mpp):
            raise SlideError(
                f"{first}{'' if first == given else f' (also named {given})'}: listed with mpp "
                f"{unique[first]} and {mpp}; give each slide one resolution"
            )
        unique[first] = mpp if mpp is not None else unique.get(first)
    stems: dict[str, Path] = {}
    for p in unique:
        check_slide_name(p)
        if p.stem in stems:
            raise SlideError(
                f"{stems[p.stem]} and {p}: two slides named {p.stem!r}; their output folders "
                "would collide: rename one or run them into different --out folders"
            )
        stems[p.stem] = p
    return unique


def check_slide_name(path: Path) -> None:
    """SlideError, with the fix, when `path`'s stem cannot name a cohort's sub-folder and rows
    (see the module docstring)."""
    stem = path.stem
    problem = ""
    if any(c in stem for c in ",\n\r"):
        problem = "has a comma or a line break, which CAMELYON16's CSV files cannot hold"
    elif stem.startswith("."):
        problem = "starts with a dot (hidden and temporary names are the run's own)"
    elif stem in (COHORT_JSON, SLIDES_CSV, SLIDE_SCORES_CSV):
        problem = f"is the name of the cohort's own {stem}"
    elif len(stem.encode()) > NAME_BYTES:
        problem = f"is {len(stem.encode())} bytes long (at most {NAME_BYTES})"
    if problem:
        raise SlideError(
            f"{str(path)!r}: the slide's name {problem}; link it under another name (ln -s) "
            "and give the link"
        )


def check_cohort_dir(out: str | Path, record: dict[str, Any] | None = None) -> Path:
    """DIR for a cohort run: new, empty, or a cohort folder made with the same settings and
    model (`record`, cohort.json's content; None: any); SlideError otherwise."""
    out = Path(out)
    stored = out / COHORT_JSON
    if out.is_dir() and stored.is_file() and not writable_folder(out):
        raise SlideError(f"--out={out}: a cohort folder this user cannot write; choose another")
    if out.is_dir() and stored.is_file() and record is None:
        return out
    if out.is_dir() and stored.is_file():
        try:
            old = json.loads(stored.read_text())
        except (OSError, ValueError) as e:
            raise SlideError(f"{stored}: unreadable ({e}); use a new --out") from None
        changed = [
            k
            for k in sorted(set(old.get("settings", {})) | set(record["settings"]))
            if k not in NEUTRAL_SETTINGS
            and old.get("settings", {}).get(k) != record["settings"].get(k)
        ]
        if old.get("model") != record["model"]:
            changed.append("model")
        if changed:
            raise SlideError(
                f"--out={out}: a cohort made with other settings ({', '.join(changed)}: "
                f"{', '.join(str(old.get('settings', {}).get(k, old.get(k))) for k in changed)});"
                " rerun with the same ones to resume, or choose a new --out"
            )
        return out
    if out.is_dir() and any(p.name != BOOKKEEPING for p in out.iterdir()):
        raise SlideError(
            f"--out={out}: exists and is neither empty nor a pcam-slide cohort folder (no "
            f"{COHORT_JSON}); choose a new one"
        )
    if out.is_dir() and any(out.iterdir()):  # a cohort another process is setting up
        if not writable_folder(out):
            raise SlideError(f"--out={out}: a cohort folder this user cannot write; choose another")
        return out
    return check_new_dir(out, SlideError)


def given_mpp(
    slides: dict[Path, float | None], settings: SlideSettings
) -> dict[Path, float | None]:
    """The level-0 resolution each slide is given (--mpp, else its list's column; None: the
    slide's own)."""
    return {p: settings.mpp if settings.mpp is not None else mpp for p, mpp in slides.items()}


def check_kept_slides(out: str | Path, given: dict[Path, float | None]) -> None:
    """SlideError, before any work, when a slide already finished in DIR `out` was computed
    from another file or with another resolution than it is given now (``wsi.provenance``)."""
    changed = []
    for path, mpp in given.items():
        summary = finished_summary(slide_folder(Path(out), path))
        if summary is not None and (why := changes(summary, path, mpp)):
            changed.append((path, why))
    if changed:
        path, why = changed[0]
        more = f" ({len(changed) - 1} more slides changed too)" if len(changed) > 1 else ""
        folder = slide_folder(Path(out), path)
        raise SlideError(
            f"{path}: {'; '.join(why)}, since {folder} was computed{more}; remove that folder to "
            "compute the slide again, or choose a new --out"
        )


def _open_cohort_folder(out: Path, record: dict[str, Any]) -> tuple[str, int]:
    """Creates DIR and its bookkeeping folder if need be and writes cohort.json, checking
    DIR again under the setup lock (another process may have made it meanwhile); returns
    ``join_session``'s (session, file descriptor)."""
    out.mkdir(exist_ok=True)
    for sub in ("claims", "failed"):
        (bookkeeping(out) / sub).mkdir(parents=True, exist_ok=True)
    with held(setup_lock(out)):
        check_cohort_dir(out, record)
        write_json(out / COHORT_JSON, record)
        return join_session(out)


def run_cohort(
    slides: dict[Path, float | None],
    out: str | Path,
    model: LoadedModel,
    settings: SlideSettings,
    *,
    progress: bool = False,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> list[dict[str, Any]]:
    """Runs pcam-slide on every slide (path -> its resolution from a list, or None) into DIR
    `out`, beside any other processes running the same cohort there (see the module
    docstring); returns slides.csv's rows. Failed slides are recorded, not raised."""

    settings.check()
    record = {"settings": dataclasses.asdict(settings), "model": model.info.get("source", {})}
    out = check_cohort_dir(out, record)
    given = given_mpp(slides, settings)
    check_kept_slides(out, given)
    session, member = _open_cohort_folder(out, record)
    try:
        return _run_claimed(out, list(slides), session, given, model, settings, progress, log)
    finally:
        os.close(member)  # this process leaves the session


def _run_claimed(
    out: Path,
    listed: list[Path],
    session: str,
    given: dict[Path, float | None],
    model: LoadedModel,
    settings: SlideSettings,
    progress: bool,
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    """``run_cohort``'s work once DIR is set up and this process in `session`."""
    from tqdm import tqdm

    todo = []
    for path in listed:
        if finished_summary(slide_folder(out, path)) is not None:
            log(f"{path.stem}: done earlier, kept ({slide_folder(out, path)})")
        else:
            todo.append(path)
    rebuild_tables(out, listed)

    stop = threading.Event()
    claims = claimed_slides(out, todo, session, stop, log)

    def claim_and_prepare() -> tuple[Path, int, PreparedSlide | None, Exception | None] | None:
        claimed = next(claims, None)
        if claimed is None:
            return None
        path, fd = claimed
        try:
            own = dataclasses.replace(settings, mpp=given[path])
            return path, fd, own.prepare(path, model), None
        except (PcamError, OSError) as e:
            return path, fd, None, e
        except BaseException:
            os.close(fd)
            raise

    bar = tqdm(total=len(todo), unit="slide", disable=not progress, file=sys.stderr)
    # each submit under stops_deferred: a Ctrl-C inside one would leave a started preparation
    # the pool never joins, claiming and opening a slide that nobody releases
    with ThreadPoolExecutor(max_workers=1) as pool, bar:
        upcoming: Future | None = None
        try:
            with stops_deferred():
                upcoming = pool.submit(claim_and_prepare)
            while upcoming is not None and (current := upcoming.result()) is not None:
                path, fd, prepared, error = current
                upcoming = None  # `current` is released below, whatever happens
                try:
                    with stops_deferred():
                        upcoming = pool.submit(claim_and_prepare)  # the next slide, meanwhile
                    _compute(out, path, prepared, error, model, settings, session, bar, log)
                    rebuild_tables(out, listed)
                finally:
                    if prepared is not None:
                        prepared.close()  # done already unless stopped before its prediction
                    os.close(fd)  # the claim ends once the slide is settled
                bar.update(1)
                raise_if_stopped()  # a Ctrl-C whose first raise was dropped (runtime.stopping)
        finally:
            stop.set()  # a wait for another process's slide ends now
            if upcoming is not None:
                _release(upcoming)
    return rebuild_tables(out, listed)


def _compute(
    out: Path,
    path: Path,
    prepared: PreparedSlide | None,
    error: Exception | None,
    model: LoadedModel,
    settings: SlideSettings,
    session: str,
    bar: Any,
    log: Callable[[str], None],
) -> None:
    """Predicts and writes a claimed slide (prepared, or failed with `error`), recording its
    failure, if any."""
    if prepared is not None:
        try:
            summary = predict_and_write(prepared, slide_folder(out, path), model, settings)
        except PcamError as e:
            error = e
        except OSError as e:  # a full disk names no file: say where it was reading and writing
            where = "" if e.filename else f" ({path} -> {slide_folder(out, path)})"
            error = OSError(f"{e.strerror or e}{where}")
    if error is not None:
        record_failure(out, path, error, session)
        log(f"{path.stem}: FAILED: {error}")
        return
    clear_failure(out, path)
    bar.set_postfix_str(f"{summary['cells_per_second']:.0f} cells/s")
    log(
        f"{path.stem}: {summary['tissue_cells']} cells, "
        f"{summary['cells_per_second']:.0f} cells/s, score {summary['score_max']:.3f}"
    )


def _release(upcoming: Future) -> None:
    """Closes the slide and ends the claim that a prefetch left when the run stopped."""
    try:
        item = upcoming.result()
    except BaseException:
        return
    if item is not None:
        _, fd, prepared, _ = item
        if prepared is not None:
            prepared.close()
        os.close(fd)
