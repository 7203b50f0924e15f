"""What a slide folder was computed from (pcam_jax.wsi.provenance): the identity rule."""

from __future__ import annotations

import os
import shutil

import numpy as np

from pcam_jax.wsi.provenance import CHUNK, changes, slide_identity


def test_a_slide_is_the_one_computed_when_its_file_or_its_sampled_bytes_are(tmp_path):
    slide = tmp_path / "t1.tif"
    data = bytearray(np.random.default_rng(0).integers(0, 256, 3 << 20, np.uint8).tobytes())
    slide.write_bytes(data)
    summary = {"input": slide_identity(slide), "mpp_given": None}
    assert summary["input"]["size"] == 3 << 20 and summary["input"]["path"] == str(slide)
    assert changes(summary, slide, None) == []
    link = tmp_path / "t1_link.tif"
    link.symlink_to(slide)
    assert changes(summary, link, None) == []  # the same file through a link
    copy = tmp_path / "elsewhere" / "t1.tif"
    copy.parent.mkdir()
    shutil.copy(slide, copy)  # another path, another mtime, the same bytes
    assert changes(summary, copy, None) == []
    assert changes(summary, slide, 0.5) == ["mpp 0.5, computed with the slide's own"]
    with_mpp = {**summary, "mpp_given": 0.25}
    assert changes(with_mpp, slide, None) == ["mpp the slide's own, computed with 0.25"]

    data[7] ^= 1  # one bit in the first sampled piece, same size
    copy.write_bytes(data)
    assert changes(summary, copy, None) == [
        f"other content than the file it was computed from ({slide})"
    ]
    slide.write_bytes(data)
    os.utime(slide, ns=(1, 1))
    assert changes(summary, slide, None) == [
        "other content than the file it was computed from (the file was replaced or modified)"
    ]
    slide.write_bytes(data[:-1])
    assert changes(summary, slide, None) == [f"{(3 << 20) - 1} bytes, computed from {3 << 20}"]
    slide.unlink()
    assert changes(summary, slide, None) == ["the slide cannot be read (No such file or directory)"]
    assert changes({"slide": "t1.tif"}, copy, None) == [
        "its folder does not record the slide it was computed from"
    ]


def test_the_fingerprint_samples_the_file_and_says_so(tmp_path):
    """The documented limit: an edit between the sampled pieces that keeps the size goes unseen
    once the modification time changed (the rule reads 1 MiB, not the whole slide)."""
    slide = tmp_path / "s.tif"
    data = bytearray(3 << 20)
    slide.write_bytes(data)
    summary = {"input": slide_identity(slide), "mpp_given": None}
    data[CHUNK + 5] = 1  # after the first piece, before the second
    slide.write_bytes(data)
    os.utime(slide, ns=(2, 2))
    assert changes(summary, slide, None) == []
    data[CHUNK - 1] = 1  # inside the first piece: seen
    slide.write_bytes(data)
    assert changes(summary, slide, None) != []
