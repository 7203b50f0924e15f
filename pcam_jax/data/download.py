"""Resumable, checksummed download of the nine published PCam files.

`download_pcam` fetches each file from ``f"{base_url}/{name}"`` and, per file:

1. streams the bytes into ``<name>.part``. An interrupted transfer is retried
   (``retries`` attempts in all) with ``Range: bytes=<size>-``, and so is a
   later run: the ``.part`` file is resumed, never re-downloaded. A server that
   ignores the range (answers 200) restarts the file; 416 means it is complete.
2. checks the md5 of the downloaded bytes against ``checksums or PCAM_MD5``. On
   a mismatch the ``.part`` file is deleted and a DataError says what to do.
3. renames ``.part`` -> ``<name>`` (atomic, same directory).
4. for ``.h5.gz`` files, gunzips, streaming, into ``<name without .gz>.tmp`` and
   renames that to the ``.h5`` name only when complete; the ``.gz`` is then
   deleted unless ``keep_gz``.

So a file under its final name is always complete and verified, and a rerun
does not download it again. An existing final ``.h5`` is skipped whether or not
its ``.gz`` is still there (its md5 cannot be re-checked once the ``.gz`` is
gone: use ``pcam-data verify`` for the content). An existing meta ``.csv``, or an
``.h5.gz`` without its ``.h5``, is re-hashed (cheap next to a download) and, if
it matches, kept (and the ``.h5.gz`` gunzipped); if not, DataError asks to
delete it. Nothing is sent over the network for files already present.

Only the standard library (urllib) and tqdm are used.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import re
import sys
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterable
from pathlib import Path

from tqdm import tqdm

from pcam_jax.data.pcam_format import PCAM_MD5, ZENODO_BASE_URL
from pcam_jax.errors import DataError
from pcam_jax.runtime.files import atomic_path

CHUNK_BYTES = 1 << 20
RETRY_BACKOFF_S = 1.0
"""Seconds before the first retry; doubled per further retry, at most MAX_BACKOFF_S."""
MAX_BACKOFF_S = 30.0
USER_AGENT = "pcam_jax-download/0.1 (+https://github.com/basveeling/pcam)"

_MD5_LINE = re.compile(r"^([0-9a-fA-F]{32}) [ *]?(\S.*)$")
_CONTENT_RANGE = re.compile(r"^bytes\s+(\d+)-(\d+)/(\d+|\*)$")
_CONTENT_RANGE_UNSATISFIED = re.compile(r"^bytes\s+\*/(\d+)$")


class _TransientError(Exception):
    """A failed attempt worth retrying (network trouble, short body, 5xx)."""


def read_checksums(path: str | Path) -> dict[str, str]:
    """Parses an md5sum-style file: ``<md5>  <name>`` per line; ``#`` comments and blank
    lines are ignored; names are reduced to their base name (``*`` binary-mode markers
    are allowed). Returns {name: lowercase md5}. Raises DataError naming the file
    and line on bad content, and when the file cannot be read."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"checksums file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read checksums file {path}: {e}") from None
    sums: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _MD5_LINE.match(line)
        if match is None:
            raise DataError(
                f"{path}:{lineno}: expected '<32 hex digit md5>  <file name>', got {raw!r}"
            )
        md5, name = match.group(1).lower(), Path(match.group(2).strip()).name
        if name in sums and sums[name] != md5:
            raise DataError(f"{path}:{lineno}: {name} is listed twice with different md5s")
        sums[name] = md5
    if not sums:
        raise DataError(f"checksums file {path} lists no files")
    return sums


def download_pcam(
    out_dir: str | Path,
    *,
    base_url: str = ZENODO_BASE_URL,
    names: Iterable[str] | None = None,
    checksums: dict[str, str] | None = None,
    retries: int = 5,
    timeout: float = 60.0,
    keep_gz: bool = False,
    progress: bool = True,
) -> list[Path]:
    """Downloads, checks and gunzips the PCam files (all nine, or `names`) into `out_dir`.

    Returns the final path of each file, in the order of `names` (PCAM_MD5's order by
    default): the ``.h5`` for an ``.h5.gz``, the file itself otherwise. See the module
    docstring for the resume, checksum and atomic-rename rules. Raises DataError on an
    unknown name, a checksum mismatch, an HTTP error or a network failure that outlasts
    `retries` attempts.
    """
    wanted = list(PCAM_MD5) if names is None else list(dict.fromkeys(names))
    unknown = [n for n in wanted if n not in PCAM_MD5]
    if unknown:
        raise DataError(
            f"unknown PCam file name(s) {', '.join(unknown)}; valid names: {', '.join(PCAM_MD5)}"
        )
    if not wanted:
        raise DataError(f"no files to download; valid names: {', '.join(PCAM_MD5)}")
    expected = {k: v.lower() for k, v in (checksums or PCAM_MD5).items()}
    missing = [n for n in wanted if n not in expected]
    if missing:
        raise DataError(
            f"the checksums given list no md5 for {', '.join(missing)}; "
            "add a line '<md5>  <name>' for each to the --checksums file"
        )
    if retries < 1:
        raise DataError(f"retries must be >= 1, got {retries}")

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create output directory {out}: {e}") from None

    url_base = base_url.rstrip("/")
    finals = []
    for name in wanted:
        finals.append(
            _fetch_one(
                out,
                name,
                url=f"{url_base}/{name}",
                md5=expected[name],
                retries=retries,
                timeout=timeout,
                keep_gz=keep_gz,
                progress=progress,
            )
        )
    return finals


def _fetch_one(
    out: Path,
    name: str,
    *,
    url: str,
    md5: str,
    retries: int,
    timeout: float,
    keep_gz: bool,
    progress: bool,
) -> Path:
    """Makes `out/final_name(name)` exist, complete and verified; returns its path."""
    gz = name.endswith(".gz")
    final = out / (name[: -len(".gz")] if gz else name)
    published = out / name
    if gz and final.exists():
        if published.exists() and not keep_gz:
            published.unlink()  # left over from a run stopped after the gunzip
        return final
    if published.exists():
        actual = _md5_file(published)
        if actual != md5:
            raise DataError(
                f"existing {published} has md5 {actual}, expected {md5}; "
                "delete it and rerun to download it again"
            )
    else:
        part = out / f"{name}.part"
        _transfer(url, part, retries=retries, timeout=timeout, progress=progress)
        actual = _md5_file(part)
        if actual != md5:
            part.unlink(missing_ok=True)
            raise DataError(
                f"checksum mismatch for {name} from {url}: expected md5 {md5}, got {actual}. "
                "The download was deleted; rerun to fetch it again. If the server is a mirror "
                "that re-packed the files, pass their md5s with --checksums=FILE."
            )
        os.replace(part, published)
    if gz:
        _gunzip(published, final, progress=progress)
        if not keep_gz:
            published.unlink()
    return final


def _transfer(url: str, part: Path, *, retries: int, timeout: float, progress: bool) -> None:
    """Downloads `url` into `part`, resuming whatever `part` already holds."""
    last_error: BaseException | None = None
    for attempt in range(1, retries + 1):
        if attempt > 1:
            time.sleep(min(RETRY_BACKOFF_S * 2 ** (attempt - 2), MAX_BACKOFF_S))
        try:
            _attempt(url, part, timeout=timeout, progress=progress)
            return
        except _TransientError as e:
            last_error = e
    have = part.stat().st_size if part.exists() else 0
    raise DataError(
        f"could not download {url} after {retries} attempt(s): {last_error}. "
        f"{have} bytes are kept in {part}; rerun the same command to resume."
    )


def _attempt(url: str, part: Path, *, timeout: float, progress: bool) -> None:
    """One HTTP request: appends to `part` from its current size. Returns when `part`
    holds the whole file; raises _TransientError on a retryable failure and DataError
    on a permanent one."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        with e:
            if e.code == 416 and offset:
                _check_unsatisfied_range(part, offset, e.headers.get("Content-Range", ""))
                return
            if e.code == 429 or e.code >= 500:
                raise _TransientError(f"HTTP {e.code} {e.reason}") from None
            raise DataError(
                f"HTTP {e.code} {e.reason} for {url}; check --base_url (it must hold the "
                "published PCam file names) and --files"
            ) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise _TransientError(_describe(e)) from None

    with response:
        if response.status == 206:
            start, total = _parse_content_range(response.headers.get("Content-Range", ""))
            if start != offset:
                part.unlink(missing_ok=True)  # cannot trust the alignment: start over
                raise _TransientError(
                    f"server resumed at byte {start} instead of {offset}; restarting the file"
                )
            mode = "ab"
        else:  # 200: the whole file (a server without range support, or no Range sent)
            offset = 0
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            mode = "wb"
        received = offset
        with (
            open(part, mode) as f,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=part.name.removesuffix(".part"),
                file=sys.stderr,
                disable=not progress,
                leave=False,
            ) as bar,
        ):
            while True:
                try:
                    chunk = response.read(CHUNK_BYTES)
                except (OSError, http.client.HTTPException) as e:
                    raise _TransientError(f"{_describe(e)} after {received} bytes") from None
                if not chunk:
                    break
                f.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and received < total:
        raise _TransientError(f"connection closed after {received} of {total} bytes")
    if total is not None and received > total:
        part.unlink(missing_ok=True)
        raise _TransientError(f"received {received} bytes, more than the {total} announced")


def _check_unsatisfied_range(part: Path, offset: int, content_range: str) -> None:
    """416 to ``Range: bytes=<offset>-``: complete if the server's size is `offset` (or
    unknown: the md5 check decides); otherwise the partial file is bad and is dropped."""
    match = _CONTENT_RANGE_UNSATISFIED.match(content_range.strip())
    if match and int(match.group(1)) != offset:
        part.unlink(missing_ok=True)
        raise _TransientError(
            f"partial file holds {offset} bytes but the file has {match.group(1)}; restarting"
        )


def _parse_content_range(value: str) -> tuple[int, int | None]:
    """(start, total) of a ``Content-Range: bytes start-end/total`` header."""
    match = _CONTENT_RANGE.match(value.strip())
    if match is None:
        raise _TransientError(f"206 response with unusable Content-Range {value!r}")
    total = match.group(3)
    return int(match.group(1)), None if total == "*" else int(total)


def _describe(e: BaseException) -> str:
    if isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError):
        e = e.reason if isinstance(e.reason, BaseException) else e
    if isinstance(e, TimeoutError):
        return "timed out"
    return f"{type(e).__name__}: {e}"


def _md5_file(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()


def _gunzip(src: Path, dst: Path, *, progress: bool) -> None:
    """Streams gunzip(src) into a temporary file beside `dst`, renamed to `dst` once complete."""
    try:
        with (
            atomic_path(dst) as tmp,
            open(src, "rb") as raw,
            gzip.GzipFile(fileobj=raw, mode="rb") as gz,
            open(tmp, "wb") as f,
            tqdm(
                total=src.stat().st_size,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=f"gunzip {src.name}",
                file=sys.stderr,
                disable=not progress,
                leave=False,
            ) as bar,
        ):
            while chunk := gz.read(CHUNK_BYTES):
                f.write(chunk)
                bar.update(raw.tell() - bar.n)
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(
            f"{src} is not a valid gzip file ({e}) although its md5 matched; check the "
            "--checksums used, delete it and rerun to download it again"
        ) from None
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DataError(f"cannot gunzip {src} into {dst}: {e}; check free disk space") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
