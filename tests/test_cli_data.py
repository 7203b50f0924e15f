"""`pcam-data` command line: every subcommand's help, synth/stats/convert, errors."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from pcam_jax.cli.data import SUBCOMMANDS, main
from pcam_jax.data import sources
from pcam_jax.data.pcam_format import split_paths
from tests.helpers import cli_cmd


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_every_subcommand_has_help(name, capsys):
    assert main(["pcam-data", name, "--help"]) == 0
    out = capsys.readouterr().out
    assert f"usage: pcam-data {name}" in out and SUBCOMMANDS[name].summary in out
    assert f"example:\n  pcam-data {name} --" in out
    assert "\n  --" in out and "cli.py" not in out  # its own flags, no module headers
    assert "--logtostderr" not in out and "--jax_" not in out  # and nothing else


def test_top_level_help_and_unknown_subcommand(capsys):
    assert main(["pcam-data", "--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in SUBCOMMANDS)
    assert main(["pcam-data", "train"]) == 2
    assert "unknown subcommand 'train'" in capsys.readouterr().err
    assert main(["pcam-data"]) == 2


def test_missing_required_and_unknown_flags(capsys):
    assert main(["pcam-data", "synth"]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["pcam-data", "stats", "--root=/x", "--bogus=1"]) == 2
    assert "bogus" in capsys.readouterr().err


def test_synth_verify_stats_convert_from_the_command_line(tmp_path, capsys):
    data = tmp_path / "data"
    assert (
        main(
            [
                "pcam-data",
                "synth",
                f"--out={data}",
                "--n_train=40",
                "--n_valid=8",
                "--n_test=8",
                "--seed=3",
            ]
        )
        == 0
    )
    assert len(sources.make_source("pcam_hdf5", data, "train")) == 40
    assert main(["pcam-data", "verify", f"--root={data}"]) == 0
    assert main(["pcam-data", "stats", f"--root={data}", f"--out={tmp_path / 'fig'}"]) == 0
    out = capsys.readouterr().out
    assert "train         40" in out and (tmp_path / "fig" / "samples.png").is_file()
    # HDF5 -> folder is not a conversion we offer; folder -> HDF5 is:
    folder = tmp_path / "folder"
    from PIL import Image

    src = sources.make_source("pcam_hdf5", data, "valid")
    for i in range(len(src)):
        (folder / "valid" / str(src.labels[i])).mkdir(parents=True, exist_ok=True)
        Image.fromarray(src.read_image(i)).save(folder / "valid" / str(src.labels[i]) / f"{i}.png")
    out_dir = tmp_path / "converted"
    assert (
        main(["pcam-data", "convert", "--source=folder", f"--root={folder}", f"--out={out_dir}"])
        == 0
    )
    converted = sources.make_source("pcam_hdf5", out_dir, "valid")
    assert sorted(converted.labels) == sorted(src.labels)
    assert split_paths(out_dir, "valid")[0].is_file()


def test_data_errors_exit_1_with_a_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["pcam-data", "stats", f"--root={tmp_path}"])
    err = str(e.value.code)  # what the interpreter prints on stderr, exit status 1
    assert err.startswith("pcam-data stats: error:") and "pcam-data download" in err
    assert "Traceback" not in capsys.readouterr().err


def test_console_script_runs_as_a_process(tmp_path):
    proc = subprocess.run(
        cli_cmd("data", "synth", f"--out={tmp_path}", "--n_train=4", "--n_valid=2", "--n_test=2"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    x = sources.make_source("pcam_hdf5", tmp_path, "test").read_images(0, 2)
    assert x.shape == (2, 96, 96, 3) and np.ptp(x) > 50
