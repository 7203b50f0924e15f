"""Tests of `pcam-data download` against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import csv
import gzip
import hashlib
import http.server
import io
import re
import socket
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest

from pcam_jax.cli.data import main
from pcam_jax.data import download
from pcam_jax.data.download import download_pcam, read_checksums
from pcam_jax.data.pcam_format import META_COLUMNS, PCAM_MD5, SPLITS
from pcam_jax.errors import DataError

N = 8
TRAIN_X = "camelyonpatch_level_2_split_train_x.h5.gz"
TEST_META = "camelyonpatch_level_2_split_test_meta.csv"


def h5_bytes(key: str, data: np.ndarray) -> bytes:
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.create_dataset(key, data=data)
    return buf.getvalue()


def make_published() -> tuple[dict[str, bytes], dict[str, np.ndarray]]:
    """The nine published files (tiny, PCam format) and the arrays inside the .h5 ones."""
    rng = np.random.default_rng(0)
    files: dict[str, bytes] = {}
    arrays: dict[str, np.ndarray] = {}
    for split in SPLITS:
        stem = f"camelyonpatch_level_2_split_{split}"
        x = rng.integers(0, 256, (N, 96, 96, 3), dtype=np.uint8)
        y = rng.integers(0, 2, (N, 1, 1, 1), dtype=np.uint8)
        for key, data in (("x", x), ("y", y)):
            arrays[f"{stem}_{key}.h5"] = data
            files[f"{stem}_{key}.h5.gz"] = gzip.compress(h5_bytes(key, data), mtime=0)
        meta = io.StringIO()
        w = csv.writer(meta)
        w.writerow(["", *META_COLUMNS])
        for i in range(N):
            w.writerow([i, i * 96, i * 32, int(y[i].item()), int(y[i].item()), f"{split}_{i}"])
        files[f"{stem}_meta.csv"] = meta.getvalue().encode()
    assert set(files) == set(PCAM_MD5)
    return files, arrays


PUBLISHED, ARRAYS = make_published()
MD5 = {name: hashlib.md5(data).hexdigest() for name, data in PUBLISHED.items()}


class Server:
    """Serves `files` under /files/, with Range support and injectable faults."""

    def __init__(self, files: dict[str, bytes]):
        self.files = dict(files)
        self.requests: list[tuple[str, str | None]] = []  # (name, Range header)
        self.cut_after: dict[str, list[int]] = {}  # name -> bytes to send, one per request
        self.ignore_range = False
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.removeprefix("/files/")
                rng = self.headers.get("Range")
                outer.requests.append((name, rng))
                data = outer.files.get(name)
                if data is None or not self.path.startswith("/files/"):
                    self.send_error(404, "Not Found")
                    return
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", rng or "")
                if match and not outer.ignore_range:
                    start = int(match.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                cuts = outer.cut_after.get(name)
                if cuts:
                    body = body[: cuts.pop(0)]  # then the connection is closed
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/files"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def names_requested(self) -> list[str]:
        return [name for name, _ in self.requests]


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch):
    monkeypatch.setattr(download, "RETRY_BACKOFF_S", 0.0)
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def server():
    s = Server(PUBLISHED)
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def final_name(name: str) -> str:
    return name.removesuffix(".gz")


def assert_complete(out: Path, names=PCAM_MD5, keep_gz: bool = False) -> None:
    """`out` holds exactly the final files of `names`, with the right content."""
    expected = {final_name(n) for n in names}
    if keep_gz:
        expected |= {n for n in names if n.endswith(".gz")}
    assert {p.name for p in out.iterdir()} == expected
    for name in names:
        path = out / final_name(name)
        if name.endswith(".h5.gz"):
            key = "x" if name.endswith("_x.h5.gz") else "y"
            with h5py.File(path, "r") as f:
                np.testing.assert_array_equal(f[key][()], ARRAYS[path.name])
            assert path.read_bytes() == gzip.decompress(PUBLISHED[name])
        else:
            assert path.read_bytes() == PUBLISHED[name]


def test_full_download_with_checksums_dict(server, tmp_path):
    out = tmp_path / "pcam"
    paths = download_pcam(out, base_url=server.base_url + "/", checksums=MD5, progress=False)
    assert paths == [out / final_name(n) for n in PCAM_MD5]
    assert_complete(out)
    assert sorted(server.names_requested()) == sorted(PCAM_MD5)
    assert all(rng is None for _, rng in server.requests)


def test_full_download_with_checksums_file_and_progress(server, tmp_path, capsys):
    sums = tmp_path / "mirror.md5"
    lines = ["# md5s of the mirror", ""] + [f"{md5}  {name}" for name, md5 in MD5.items()]
    sums.write_text("\n".join(lines) + "\n")
    out = tmp_path / "pcam"
    download_pcam(out, base_url=server.base_url, checksums=read_checksums(sums), progress=True)
    assert_complete(out)
    assert TRAIN_X.removesuffix(".h5.gz") in capsys.readouterr().err  # tqdm's bar


def test_subset_and_keep_gz(server, tmp_path):
    out = tmp_path / "pcam"
    names = [TRAIN_X, TEST_META]
    paths = download_pcam(
        out, base_url=server.base_url, names=names, checksums=MD5, keep_gz=True, progress=False
    )
    assert paths == [out / final_name(TRAIN_X), out / TEST_META]
    assert_complete(out, names, keep_gz=True)
    assert (out / TRAIN_X).read_bytes() == PUBLISHED[TRAIN_X]
    assert sorted(server.names_requested()) == sorted(names)


def test_interrupted_transfer_resumes_with_range(server, tmp_path):
    k = len(PUBLISHED[TRAIN_X]) // 3
    server.cut_after[TRAIN_X] = [k]
    out = tmp_path / "pcam"
    download_pcam(
        out, base_url=server.base_url, names=[TRAIN_X], checksums=MD5, keep_gz=True, progress=False
    )
    assert server.requests == [(TRAIN_X, None), (TRAIN_X, f"bytes={k}-")]
    assert (out / TRAIN_X).read_bytes() == PUBLISHED[TRAIN_X]
    assert_complete(out, [TRAIN_X], keep_gz=True)


def test_retries_exhausted_keeps_part_and_a_rerun_resumes(server, tmp_path):
    size = len(PUBLISHED[TRAIN_X])
    server.cut_after[TRAIN_X] = [100, 200]
    out = tmp_path / "pcam"
    url = f"{server.base_url}/{TRAIN_X}"
    with pytest.raises(DataError) as e:
        download_pcam(
            out, base_url=server.base_url, names=[TRAIN_X], checksums=MD5, retries=2, progress=False
        )
    msg = str(e.value)
    assert url in msg and "after 2 attempt(s)" in msg and "rerun" in msg
    assert f"300 of {size} bytes" in msg
    assert {p.name for p in out.iterdir()} == {TRAIN_X + ".part"}
    assert (out / (TRAIN_X + ".part")).read_bytes() == PUBLISHED[TRAIN_X][:300]

    server.requests.clear()
    download_pcam(out, base_url=server.base_url, names=[TRAIN_X], checksums=MD5, progress=False)
    assert server.requests == [(TRAIN_X, "bytes=300-")]
    assert_complete(out, [TRAIN_X])


def test_part_from_earlier_run_is_resumed(server, tmp_path):
    out = tmp_path / "pcam"
    out.mkdir()
    (out / (TEST_META + ".part")).write_bytes(PUBLISHED[TEST_META][:50])
    download_pcam(out, base_url=server.base_url, names=[TEST_META], checksums=MD5, progress=False)
    assert server.requests == [(TEST_META, "bytes=50-")]
    assert_complete(out, [TEST_META])


def test_server_ignoring_range_restarts_the_file(server, tmp_path):
    server.ignore_range = True
    out = tmp_path / "pcam"
    out.mkdir()
    (out / (TEST_META + ".part")).write_bytes(b"garbage that must not be kept")
    download_pcam(out, base_url=server.base_url, names=[TEST_META], checksums=MD5, progress=False)
    assert server.requests == [(TEST_META, "bytes=29-")]
    assert_complete(out, [TEST_META])


def test_complete_part_gets_416_and_is_finished(server, tmp_path):
    out = tmp_path / "pcam"
    out.mkdir()
    (out / (TRAIN_X + ".part")).write_bytes(PUBLISHED[TRAIN_X])
    download_pcam(out, base_url=server.base_url, names=[TRAIN_X], checksums=MD5, progress=False)
    assert server.requests == [(TRAIN_X, f"bytes={len(PUBLISHED[TRAIN_X])}-")]
    assert_complete(out, [TRAIN_X])


def test_checksum_mismatch_leaves_nothing(server, tmp_path):
    out = tmp_path / "pcam"
    with pytest.raises(DataError) as e:
        download_pcam(out, base_url=server.base_url, names=[TRAIN_X], progress=False)
    msg = str(e.value)
    assert TRAIN_X in msg
    assert PCAM_MD5[TRAIN_X] in msg and MD5[TRAIN_X] in msg
    assert "--checksums" in msg and "rerun" in msg
    assert list(out.iterdir()) == []


def test_rerun_skips_complete_files(server, tmp_path):
    out = tmp_path / "pcam"
    first = download_pcam(out, base_url=server.base_url, checksums=MD5, progress=False)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    server.requests.clear()
    again = download_pcam(out, base_url=server.base_url, checksums=MD5, progress=False)
    assert again == first
    assert server.requests == []
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes
    assert_complete(out)


def test_existing_gz_is_rehashed_and_gunzipped_without_download(server, tmp_path):
    out = tmp_path / "pcam"
    out.mkdir()
    (out / TRAIN_X).write_bytes(PUBLISHED[TRAIN_X])
    download_pcam(out, base_url=server.base_url, names=[TRAIN_X], checksums=MD5, progress=False)
    assert server.requests == []
    assert_complete(out, [TRAIN_X])


def test_existing_bad_file_is_reported(server, tmp_path):
    out = tmp_path / "pcam"
    out.mkdir()
    (out / TEST_META).write_bytes(b"not the meta file")
    with pytest.raises(DataError, match=f"existing .*{TEST_META}.*delete it and rerun"):
        download_pcam(
            out, base_url=server.base_url, names=[TEST_META], checksums=MD5, progress=False
        )
    assert server.requests == []


def test_not_gzip_despite_matching_md5_leaves_no_h5(server, tmp_path):
    server.files[TRAIN_X] = b"this is not gzip data"
    sums = {TRAIN_X: hashlib.md5(server.files[TRAIN_X]).hexdigest()}
    out = tmp_path / "pcam"
    with pytest.raises(DataError, match="not a valid gzip file"):
        download_pcam(
            out, base_url=server.base_url, names=[TRAIN_X], checksums=sums, progress=False
        )
    assert {p.name for p in out.iterdir()} == {TRAIN_X}  # verified download, no .h5 / .tmp


def test_404_is_a_clear_error(server, tmp_path):
    del server.files[TEST_META]
    out = tmp_path / "pcam"
    with pytest.raises(DataError) as e:
        download_pcam(
            out, base_url=server.base_url, names=[TEST_META], checksums=MD5, progress=False
        )
    msg = str(e.value)
    assert "HTTP 404" in msg and f"{server.base_url}/{TEST_META}" in msg and "--base_url" in msg
    assert server.requests == [(TEST_META, None)]  # a 404 is not retried
    assert list(out.iterdir()) == []


def test_connection_refused_after_retries(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}/files"
    with pytest.raises(DataError) as e:
        download_pcam(tmp_path, base_url=base, names=[TEST_META], retries=2, progress=False)
    msg = str(e.value)
    assert f"{base}/{TEST_META}" in msg and "after 2 attempt(s)" in msg and "resume" in msg


def test_unknown_name_lists_valid_names(tmp_path):
    with pytest.raises(DataError) as e:
        download_pcam(tmp_path / "out", names=["train_x.h5"], progress=False)
    msg = str(e.value)
    assert "train_x.h5" in msg and all(name in msg for name in PCAM_MD5)
    assert not (tmp_path / "out").exists()


def test_checksums_missing_a_name(tmp_path):
    with pytest.raises(DataError, match=f"no md5 for {TEST_META}"):
        download_pcam(tmp_path, names=[TEST_META], checksums={TRAIN_X: MD5[TRAIN_X]})


def test_read_checksums(tmp_path):
    path = tmp_path / "sums.md5"
    md5 = "0123456789abcdef0123456789ABCDEF"
    path.write_text(f"# comment\n\n{md5}  a.h5.gz\n{md5.lower()} *dir/b.csv\n")
    assert read_checksums(path) == {"a.h5.gz": md5.lower(), "b.csv": md5.lower()}


def test_read_checksums_bad_line_names_file_and_line(tmp_path):
    path = tmp_path / "sums.md5"
    path.write_text("# ok\n0123456789abcdef0123456789abcdef  a.h5.gz\nnot-an-md5  b.csv\n")
    with pytest.raises(DataError, match=re.escape(f"{path}:3:")):
        read_checksums(path)


def test_read_checksums_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_checksums(tmp_path / "nope.md5")


def write_sums(path: Path) -> Path:
    path.write_text("".join(f"{md5}  {name}\n" for name, md5 in MD5.items()))
    return path


def test_cli_download(server, tmp_path, capsys):
    out = tmp_path / "pcam"
    sums = write_sums(tmp_path / "sums.md5")
    argv = [
        "pcam-data",
        "download",
        f"--out={out}",
        f"--base_url={server.base_url}",
        f"--checksums={sums}",
        "--noprogress",
    ]
    assert main(argv) == 0
    assert_complete(out)
    assert capsys.readouterr().err == ""


def test_cli_download_mismatch_exits_1(server, tmp_path, capsys):
    out = tmp_path / "pcam"
    argv = [
        "pcam-data",
        "download",
        f"--out={out}",
        f"--base_url={server.base_url}",
        f"--files={TEST_META}",
        "--noprogress",
    ]
    with pytest.raises(SystemExit) as e:  # status 1, the one line as every binary prints it
        main(argv)
    err = str(e.value.code)
    assert err.startswith("pcam-data download: error: checksum mismatch") and TEST_META in err
    assert PCAM_MD5[TEST_META] in err and MD5[TEST_META] in err
    assert list(out.iterdir()) == []


def test_cli_download_help(capsys):
    assert main(["pcam-data", "download", "--help"]) == 0
    assert "--base_url" in capsys.readouterr().out
