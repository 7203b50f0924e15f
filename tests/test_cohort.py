"""pcam-slide on a cohort (pcam_jax.wsi.cohort) and its lesion detections
(pcam_jax.wsi.detections), on a synthetic CAMELYON16-like cohort made of REAL PCam patches:
tumour and normal slides, one broken file and one slide without a resolution
(pcam_jax.camelyon.synthetic.write_cohort)."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pcam_jax.camelyon.synthetic import write_cohort
from pcam_jax.errors import SlideError
from pcam_jax.runtime.locks import lock_holder, try_lock
from pcam_jax.wsi.cohort import check_cohort_dir, is_cohort, resolve_slides
from pcam_jax.wsi.detections import (
    detections_level0,
    non_maximum_suppression,
    read_detections_csv,
    write_detections_csv,
)
from pcam_jax.wsi.slide import open_slide
from tests.helpers import cli_cmd, run_cli, run_in_process, signals_as_from_a_terminal

OUTPUTS = ("tiles.csv", "probabilities.npy", "tumour.geojson", "detections.csv", "summary.json")
TIMING = ("seconds", "cells_per_second")


def pcam_slide(*args: str | Path) -> subprocess.CompletedProcess:
    return run_cli("slide", *args, "--noprogress")


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def without_timing(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """The rows without their seconds, by slide."""
    return sorted(({k: v for k, v in r.items() if k != "seconds"} for r in rows), key=str)


def temporaries(out: Path) -> list[Path]:
    """The temporary files and folders left in cohort folder `out`, its bookkeeping folder
    .cohort included."""
    left = [p for p in out.iterdir() if p.name.startswith(".") and p.name != ".cohort"]
    return left + [p for p in (out / ".cohort").rglob(".*")]


def _slide_file_times(out: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in out.glob("*/*") if p.parent.name != ".cohort"}


def slide_files(folder: Path) -> dict[str, object]:
    """Each output of a slide folder: bytes, or summary.json without its timings."""
    out: dict[str, object] = {}
    for name in OUTPUTS:
        if name == "summary.json":
            summary = json.loads((folder / name).read_text())
            out[name] = {k: v for k, v in summary.items() if k not in TIMING}
        else:
            out[name] = (folder / name).read_bytes()
    return out


@pytest.fixture(scope="module")
def cohort(subset_root, tmp_path_factory):
    return write_cohort(subset_root, tmp_path_factory.mktemp("cohort") / "slides")


@pytest.fixture(scope="module")
def first_run(cohort, tmp_path_factory):
    """One uninterrupted cohort run over the whole folder."""
    out = tmp_path_factory.mktemp("runs") / "out"
    r = pcam_slide(cohort["tumour"][0].parent, f"--out={out}")
    return out, r


def test_cohort_records_failures_and_a_rerun_keeps_finished_slides(cohort, first_run):
    out, r = first_run
    assert r.returncode == 1, r.stderr  # two slides failed
    assert "6 of 8 slides done, 2 failed" in r.stdout
    rows = {Path(row["slide"]).stem: row for row in read_rows(out / "slides.csv")}
    assert set(rows) == {p.stem for kind in ("tumour", "normal", "broken", "no_mpp")
                         for p in cohort[kind]}  # fmt: skip
    assert rows["broken_001"]["status"] == "failed"
    assert "broken_001.tif: not a slide OpenSlide can read" in rows["broken_001"]["error"]
    assert rows["nompp_001"]["status"] == "failed" and "--mpp" in rows["nompp_001"]["error"]
    done = [s for s, row in rows.items() if row["status"] == "done"]
    assert len(done) == 6 and not (out / "broken_001").exists()
    for stem in done:
        assert {p.name for p in (out / stem).iterdir()} == {*OUTPUTS, "heatmap.png"}
        assert int(rows[stem]["cells"]) > 300 and float(rows[stem]["seconds"]) > 0
    scores = (out / "slide_scores.csv").read_text().splitlines()
    assert sorted(line.split(",")[0] for line in scores) == sorted(done)
    # the rerun keeps every finished slide (same files, untouched) and retries the failed two
    before = {p: p.stat().st_mtime_ns for stem in done for p in (out / stem).iterdir()}
    table = (out / "slides.csv").read_text()
    again = pcam_slide(cohort["tumour"][0].parent, f"--out={out}")
    assert again.returncode == 1
    for stem in done:
        assert f"{stem}: done earlier, kept" in again.stderr
    assert again.stderr.count("FAILED") == 2 and "cells/s" not in again.stderr
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert (out / "slides.csv").read_text() == table
    # a CSV list gives the slide without a resolution its own; the others stay kept
    listing = cohort["tumour"][0].parent / "list.csv"
    listing.write_text("slide,mpp\nnompp_001.tif,0.972\n" + "".join(
        f"{p.name},\n" for p in cohort["tumour"] + cohort["normal"]))  # fmt: skip
    third = pcam_slide(listing, f"--out={out}")
    assert third.returncode == 0, third.stderr
    assert third.stderr.count("done earlier, kept") == 6
    assert json.loads((out / "nompp_001" / "summary.json").read_text())["level0_mpp"] == 0.972
    # a later run over one slide keeps the slides finished earlier in the cohort's tables
    (listing.parent / "one.txt").write_text("tumour_001.tif\n")
    fourth = pcam_slide(listing.parent / "one.txt", f"--out={out}")
    assert fourth.returncode == 0, fourth.stderr
    assert len(read_rows(out / "slides.csv")) == 7
    assert len((out / "slide_scores.csv").read_text().splitlines()) == 7


def _session_members(out: Path) -> int:
    """How many processes hold cohort folder `out`'s session lock now (from /proc/locks)."""
    try:
        inode = (out / ".cohort" / "session.lock").stat().st_ino
    except OSError:
        return 0
    return sum(f":{inode} " in line for line in Path("/proc/locks").read_text().splitlines())


def _held_claim(out: Path, stems: list[str]) -> tuple[int, str] | None:
    """(pid, stem) of a claim on one of the slides `stems` that a process holds in cohort
    folder `out` now."""
    for lock in sorted((out / ".cohort" / "claims").glob("*.lock")):
        if lock.name.removesuffix(".lock") not in stems:
            continue
        fd = try_lock(lock)
        if fd is not None:  # free: nobody computes that slide now
            os.close(fd)
        elif holder := re.match(r"pid (\d+)", lock_holder(lock)):
            return int(holder[1]), lock.name.removesuffix(".lock")
    return None


def test_three_processes_share_a_cohort_and_finish_the_slide_of_one_killed(
    cohort, first_run, tmp_path
):
    """Three pcam-slide processes on one cohort folder; one is SIGKILLed while it computes a
    slide. The other two finish every slide (that one included), none is computed twice, and
    the folder holds what one uninterrupted process wrote (timings aside), with no temporary
    left. (A killed single run resumed by a rerun: the rerun keeps what the killed one
    finished, test_cohort_records_failures_and_a_rerun_keeps_finished_slides.)"""
    reference, _ = first_run
    out = tmp_path / "shared"
    cmd = cli_cmd("slide", cohort["tumour"][0].parent, f"--out={out}", "--noprogress")
    logs = [tmp_path / f"process{i}.log" for i in range(3)]
    done = [s.stem for s in cohort["tumour"] + cohort["normal"]]  # the others fail
    procs = []
    try:
        for log in logs:
            with open(log, "w") as f:
                procs.append(subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 300
        while _session_members(out) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)  # all three in one session: else a late one starts a new one
        while (held := _held_claim(out, done)) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert held is not None, "no process claimed a slide"
        pid, stem = held
        victim = next(p for p in procs if p.pid == pid)
        victim.kill()
        victim.wait()
        for p in procs:
            assert p.wait(timeout=600) in (1, -signal.SIGKILL)  # 1: two slides fail
    finally:
        for p in procs:
            p.kill()
    text = [log.read_text() for log in logs]
    computed = re.findall(r"^(\S+): \d+ cells, ", "\n".join(text), re.M)
    assert sorted(computed) == sorted(done), text  # each slide once
    assert "\n".join(text).count(": FAILED: ") == 2, text  # each failing slide tried once
    assert (out / stem / "summary.json").is_file()
    # the tables one process writes (the reference's own may have changed since: another test
    # reruns that folder), in the folder's order, the two failed slides included
    rows = {Path(r["slide"]).stem: r for r in read_rows(out / "slides.csv")}
    assert list(rows) == sorted(p.stem for p in cohort["tumour"][0].parent.glob("*.tif"))
    ref_rows = {Path(r["slide"]).stem: r for r in read_rows(reference / "slides.csv")}
    assert without_timing([rows[s] for s in done]) == without_timing([ref_rows[s] for s in done])
    assert [rows[s]["status"] for s in ("broken_001", "nompp_001")] == ["failed", "failed"]
    scores = (out / "slide_scores.csv").read_text().splitlines()
    assert scores == [f"{s},{rows[s]['score_max']}" for s in rows if s in done]
    for s in done:
        assert slide_files(out / s) == slide_files(reference / s), s
    assert not temporaries(out)


def test_ctrl_c_and_sigterm_stop_a_cohort_in_one_line_and_leave_nothing_unfinished(
    cohort, tmp_path
):
    """SIGINT (Ctrl-C) after the first slide, then SIGTERM after the next one of the resumed
    run: each ends with status 128 + the signal and one line, no traceback, no temporary
    folder, the finished slides kept (the second run keeps the first's)."""
    out = tmp_path / "stopped"
    slides = sorted(cohort["tumour"] + cohort["normal"])
    for k, sig in enumerate((signal.SIGINT, signal.SIGTERM)):
        cmd = cli_cmd("slide", *slides, f"--out={out}", "--noprogress")
        with signals_as_from_a_terminal():
            proc = subprocess.Popen(
                cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
            )
        summary = out / slides[k].stem / "summary.json"
        deadline = time.monotonic() + 300
        while not summary.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        masks = [ln for ln in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                 if ln.startswith(("SigBlk", "SigIgn", "SigCgt"))]  # fmt: skip
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 128 + sig, (masks, err[-3000:])
        assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(
            f"pcam-slide: stopped by {signal.Signals(sig).name}"
        ), err
        assert not temporaries(out)
        finished = [s for s in slides if (out / s.stem / "summary.json").is_file()]
        assert k + 1 <= len(finished) < len(slides), "the run ended before it was stopped"
        folders = [p for p in out.iterdir() if p.is_dir() and p.name != ".cohort"]
        assert all((p / "summary.json").is_file() for p in folders)  # only finished slides


def test_a_rerun_refuses_a_slide_that_is_not_the_one_its_folder_was_computed_from(
    cohort, first_run, tmp_path
):
    """Another slide under a finished slide's name (another folder), or a finished slide given
    another resolution by a list, is refused before any work in one line that names the folder
    to remove; the same bytes at another path (moved, copied) are the same slide, kept."""
    reference, _ = first_run
    out = Path(shutil.copytree(reference, tmp_path / "out"))
    folders = _slide_file_times(out)
    tables = {n: (out / n).read_bytes() for n in ("slides.csv", "slide_scores.csv")}
    original = cohort["tumour"][0]
    other = tmp_path / "other" / original.name
    other.parent.mkdir()
    shutil.copy(cohort["normal"][0], other)  # another slide, the same name
    listing = tmp_path / "list.csv"
    listing.write_text(f"slide,mpp\n{original},0.5\n{cohort['normal'][0]},\n")
    for spec, reason in (
        (other.parent, f"bytes, computed from {original.stat().st_size}"),
        (listing, "mpp 0.5, computed with the slide's own"),
    ):
        r = run_in_process("slide", spec, f"--out={out}", "--noprogress")
        line = r.stderr.strip().splitlines()[-1]
        assert r.returncode == 1 and line.startswith("pcam-slide: "), r.stderr
        assert reason in line and f"since {out / original.stem} was computed" in line, line
        assert "remove that folder to compute the slide again" in line
        assert _slide_file_times(out) == folders
        assert {n: (out / n).read_bytes() for n in tables} == tables
    moved = tmp_path / "moved" / original.name
    moved.parent.mkdir()
    shutil.copy(original, moved)
    r = run_in_process("slide", moved.parent, f"--out={out}", "--noprogress")
    assert r.returncode == 0 and f"{original.stem}: done earlier, kept" in r.stderr, r.stderr
    assert _slide_file_times(out) == folders


def test_a_full_disk_is_a_failed_row_that_names_the_slide_and_its_folder(
    cohort, tmp_path, monkeypatch
):
    from pcam_jax.wsi import cohort as cohort_module

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cohort_module, "predict_and_write", no_space)
    slide = cohort["normal"][0]
    out = tmp_path / "out"
    (tmp_path / "one.txt").write_text(f"{slide}\n")
    r = run_in_process("slide", tmp_path / "one.txt", f"--out={out}", "--noprogress")
    assert r.returncode == 1, r.stderr
    rows = {Path(row["slide"]).stem: row for row in read_rows(out / "slides.csv")}
    assert rows[slide.stem]["error"] == (f"No space left on device ({slide} -> {out / slide.stem})")


def test_links_keep_their_names_a_link_loop_fails_as_its_slide_and_lists_are_read_safely(
    cohort, tmp_path
):
    """A slide linked as t1.tif (to a store's file named otherwise) is named t1, as the
    evaluation reads names; a link to itself, or to nothing, fails as that slide, in one row
    under the link's name; the same file
    listed under two names with two resolutions, a header-only list and a header without a
    slide column are refused before any work; a list row shorter than its header reads."""
    store = cohort["normal"][0]
    links = tmp_path / "links"
    links.mkdir()
    (links / "t1.tif").symlink_to(store)
    (links / "loop.tif").symlink_to(links / "loop.tif")
    (links / "gone.tif").symlink_to(tmp_path / "store_a81f.tif")  # dangling
    out = tmp_path / "out"
    r = pcam_slide(links, f"--out={out}", "--model=bundled:p4resnet")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    status = {Path(row["slide"]).name: row["status"] for row in read_rows(out / "slides.csv")}
    assert status == {"gone.tif": "failed", "loop.tif": "failed", "t1.tif": "done"}
    assert (out / "t1" / "summary.json").is_file() and not (out / store.stem).exists()
    assert json.loads((out / "t1" / "summary.json").read_text())["slide"].endswith("t1.tif")
    listed = tmp_path / "list.csv"
    for text, needle in (
        (f"slide,mpp\n{store},0.972\n{links / 't1.tif'},0.5\n", "listed with mpp 0.972 and 0.5"),
        ("slide,mpp\n", "the slide list is empty"),
        (f"name,mpp\n{store},0.972\n", "expected a header line naming a 'slide'"),
    ):
        listed.write_text(text)
        r = pcam_slide(listed, f"--out={tmp_path / 'never'}")
        assert r.returncode == 1 and needle in r.stderr.strip().splitlines()[-1], r.stderr
        assert not (tmp_path / "never").exists()
    listed.write_text(f"slide,mpp,note\n{store}\n")  # a row shorter than its header
    assert resolve_slides([str(listed)]) == {store: None}


def test_names_a_cohort_cannot_hold_are_refused_before_any_work(tmp_path):
    """A comma or a line break (CAMELYON16's CSVs cannot hold them), a leading dot (the run's
    own temporary names), a name of the cohort's own files, a name too long for its temporary
    folder; a folder's hidden files and sub-folders are not slides."""
    store = tmp_path / "store"
    store.mkdir()
    (store / "fine.tif").write_bytes(b"")
    cases = (
        ("a,b.tif", "has a comma or a line break"),
        ("a\nb.tif", "has a comma or a line break"),
        (".x.pcam-host-99.ab.tmp.tif", "starts with a dot"),
        ("slides.csv.tif", "is the name of the cohort's own slides.csv"),
        ("x" * 201 + ".tif", "is 201 bytes long (at most 200)"),
    )
    for name, needle in cases:
        (store / name).write_bytes(b"")
        with pytest.raises(SlideError, match=re.escape(needle)):
            resolve_slides([str(store / "fine.tif"), str(store / name)])
    hidden = tmp_path / "folder"
    hidden.mkdir()
    for name in ("a.tif", "._a.tif", ".b.tif"):
        (hidden / name).write_bytes(b"")
    (hidden / "results.tiff").mkdir()  # e.g. an earlier --out inside the input folder
    assert [p.name for p in resolve_slides([str(hidden)])] == ["a.tif"]
    with pytest.raises(SlideError, match="a folder, not a slide file"):
        open_slide(hidden / "results.tiff")
    r = pcam_slide(store / "fine.tif", store / "a,b.tif", f"--out={tmp_path / 'never'}")
    assert r.returncode == 1 and "has a comma" in r.stderr.strip().splitlines()[-1], r.stderr
    assert not (tmp_path / "never").exists()


def test_a_cohort_folder_refuses_other_settings_and_foreign_folders(cohort, first_run, tmp_path):
    out, _ = first_run
    slides = cohort["tumour"][0].parent
    r = pcam_slide(slides, f"--out={slides}")  # the input folder as the output: refused
    assert r.returncode != 0 and "neither empty nor a pcam-slide cohort" in r.stderr
    assert not (slides / "cohort.json").exists()
    record = json.loads((out / "cohort.json").read_text())
    assert check_cohort_dir(out, record) == out
    changed = {**record, "settings": {**record["settings"], "stride": 16}}
    with pytest.raises(SlideError, match="other settings.*stride"):
        check_cohort_dir(out, changed)
    neutral = {**record, "settings": {**record["settings"], "batch_size": 7}}
    assert check_cohort_dir(out, neutral) == out
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(SlideError, match="neither empty nor a pcam-slide cohort"):
        check_cohort_dir(tmp_path / "busy")
    r = pcam_slide(tmp_path / "a.tif", tmp_path / "b.tif", f"--out={tmp_path / 'busy'}")
    assert r.returncode != 0 and "neither empty nor a pcam-slide cohort" in r.stderr
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_resolve_slides(tmp_path):
    for name in ("b.svs", "a.tif", "notes.txt", "c.ndpi"):
        (tmp_path / name).write_bytes(b"x")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "d.tif").write_bytes(b"x")
    assert list(resolve_slides([str(tmp_path)])) == [
        tmp_path / n for n in ("a.tif", "b.svs", "c.ndpi")
    ]
    assert list(resolve_slides([str(tmp_path / "*.tif"), str(sub / "d.tif")])) == [
        tmp_path / "a.tif", sub / "d.tif"]  # fmt: skip
    (sub / "list.txt").write_text("# a comment\nd.tif\n\n../a.tif\nd.tif\n")
    assert list(resolve_slides([str(sub / "list.txt")])) == [sub / "d.tif", tmp_path / "a.tif"]
    (sub / "list.csv").write_text("slide,mpp\nd.tif,0.25\n../a.tif,\n")
    assert resolve_slides([str(sub / "list.csv")]) == {
        sub / "d.tif": 0.25,
        tmp_path / "a.tif": None,
    }
    (sub / "bad.csv").write_text("slide,mpp\nd.tif,fast\n")
    with pytest.raises(SlideError, match=r"bad.csv:2: mpp 'fast' is not a number"):
        resolve_slides([str(sub / "bad.csv")])
    (sub / "cols.csv").write_text("name\nd.tif\n")
    with pytest.raises(
        SlideError, match=r"expected a header line naming a 'slide' \(or 'path'\) column"
    ):
        resolve_slides([str(sub / "cols.csv")])
    (sub / "a.tif").write_bytes(b"x")
    with pytest.raises(SlideError, match="two slides named 'a'"):
        resolve_slides([str(tmp_path / "a.tif"), str(sub / "a.tif")])
    with pytest.raises(SlideError, match="matches no file"):
        resolve_slides([str(tmp_path / "*.mrxs")])
    assert not is_cohort([str(tmp_path / "a.tif")])
    assert is_cohort([str(tmp_path)]) and is_cohort(["x/*.svs"]) and is_cohort(["l.txt"])
    assert is_cohort([str(tmp_path / "a.tif"), str(tmp_path / "b.svs")])


def test_non_maximum_suppression_by_hand():
    p = np.full((10, 12), np.nan, np.float32)
    p[1:9, 1:11] = 0.1
    p[2, 2], p[2, 4] = 0.9, 0.8  # 2 cells apart: the second is suppressed at radius 2.5 cells
    p[7, 9] = 0.7  # far away: kept
    p[8, 1] = 0.45  # below the floor
    maxima = non_maximum_suppression(p, cell_um=10.0, floor=0.5, radius_um=25.0)
    np.testing.assert_allclose(maxima, [[0.9, 2, 2], [0.7, 7, 9]], rtol=1e-6)
    # radius 15 um (1.5 cells): both peaks survive; a lower floor takes more cells
    assert len(non_maximum_suppression(p, cell_um=10.0, floor=0.5, radius_um=15.0)) == 3
    low = non_maximum_suppression(p, cell_um=10.0, floor=0.4, radius_um=15.0)
    assert [tuple(m[1:]) for m in low] == [(2, 2), (2, 4), (7, 9), (8, 1)]
    # ties go to the first cell in row-major order; NaN is never a maximum
    tie = np.full((3, 3), np.nan)
    tie[0, 2] = tie[2, 0] = 0.6
    assert [tuple(m[1:]) for m in non_maximum_suppression(tie, 1.0, radius_um=5.0)] == [(0, 2)]
    assert non_maximum_suppression(np.full((4, 4), np.nan), 1.0).shape == (0, 3)
    # level-0 centres of 32.5-pixel cells
    assert detections_level0(maxima, 32.5) == [
        (pytest.approx(0.9), 81, 81),
        (pytest.approx(0.7), 309, 244),
    ]
    with pytest.raises(SlideError, match="nms_floor"):
        non_maximum_suppression(p, 1.0, floor=1.5)


def test_detections_csv_round_trip(tmp_path):
    rows = [(0.875, 10, 20), (0.5, 300, 4000)]
    write_detections_csv(tmp_path / "d.csv", rows)
    assert (tmp_path / "d.csv").read_text() == "0.875,10,20\n0.5,300,4000\n"  # no header
    np.testing.assert_array_equal(read_detections_csv(tmp_path / "d.csv"), rows)
    (tmp_path / "h.csv").write_text("probability,x,y\n0.5,1,2\n")
    np.testing.assert_array_equal(read_detections_csv(tmp_path / "h.csv"), [(0.5, 1, 2)])
    (tmp_path / "bad.csv").write_text("0.5,1,2\n0.7;3;4\n")
    with pytest.raises(SlideError, match=r"bad.csv:2: expected 'probability,X,Y'"):
        read_detections_csv(tmp_path / "bad.csv")


def readme_commands(section: str) -> list[str]:
    """The command lines of the first code block under README heading `section`."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = text.split(f"## {section}\n", 1)[1].split("```\n", 2)[1]
    return [line for line in block.splitlines() if line.strip()]


@pytest.mark.slow
def test_readme_camelyon16_commands_on_a_synthetic_cohort(subset_root, tmp_path):
    """The README's "Evaluate on CAMELYON16" commands, as written, on a synthetic cohort laid out
    like CAMELYON16's test set; the bundled model's slide AUC and FROC are well above chance."""
    testing = tmp_path / "CAMELYON16" / "testing"
    cohort = write_cohort(
        subset_root,
        testing / "images",
        tumour=4,
        normal=4,
        annotations=testing / "lesion_annotations",
    )
    rows = [f"{p.stem},Tumor" for p in cohort["tumour"] + cohort["no_mpp"]]
    rows += [f"{p.stem},Normal" for p in cohort["normal"]]
    (testing / "reference.csv").write_text("\n".join(rows) + "\n")
    commands = readme_commands("Evaluate on CAMELYON16")
    assert [c.split()[0] for c in commands] == ["pcam-slide", "pcam-camelyon-eval"]
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    slide = subprocess.run(
        commands[0], shell=True, cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert slide.returncode == 1 and "8 of 10 slides done, 2 failed" in slide.stdout, slide.stderr
    # the synthetic slides are at 0.972 um/px: evaluated at CAMELYON16's 0.243 (the default,
    # as the challenge's script) their lesions would be a quarter of their size, and ITCs
    ev = subprocess.run(
        f"{commands[1]} --resolution=slide",
        shell=True,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert ev.returncode == 0, ev.stderr
    assert "broken_001" in ev.stderr and "nompp_001" in ev.stderr  # skipped, with a warning
    auc = json.loads((tmp_path / "c16_eval" / "slide_auc.json").read_text())
    froc = json.loads((tmp_path / "c16_eval" / "froc.json").read_text())
    print(f"bundled model on the synthetic cohort: {ev.stdout.strip()}")
    assert (froc["n_tumour"], froc["n_normal"], froc["lesions"]) == (4, 4, 4)
    assert auc["auc"] >= 0.9 and froc["froc"] >= 0.75  # chance: AUC 0.5, FROC near 0
    assert {p.name for p in (tmp_path / "c16_eval").iterdir()} == {
        "slide_auc.json", "roc.png", "froc.json", "froc.png", "froc_curve.csv"}  # fmt: skip
