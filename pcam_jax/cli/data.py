"""`pcam-data`: get, check, describe, convert and synthesise PatchCamelyon data.

    pcam-data <subcommand> [--flag=value ...]
    pcam-data <subcommand> --help

Subcommands: download, verify, stats, convert, synth. Flags are absl flags, as
in `pcam-train`; each subcommand has its own flag set.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from absl import flags, logging

from pcam_jax.cli import common
from pcam_jax.cli.common import define_on
from pcam_jax.data.pcam_format import SPLITS, ZENODO_BASE_URL


@dataclass(frozen=True)
class Subcommand:
    """One `pcam-data` subcommand: its help line, flag definitions and body."""

    summary: str
    define: Callable[[flags.FlagValues], None]
    main: Callable[[flags.FlagValues], int]
    example: str = ""


def _define_download(fv: flags.FlagValues) -> None:
    define_on(fv, "out", "Directory to write the PCam files into.", required=True)
    flags.DEFINE_string(
        "base_url",
        ZENODO_BASE_URL,
        "Base URL of the nine PCam files (Zenodo record 2546921 or a mirror holding the "
        "same file names).",
        flag_values=fv,
    )
    flags.DEFINE_list(
        "files", [], "Download only these published file names (default: all nine).", flag_values=fv
    )
    define_on(
        fv,
        "checksums",
        "md5sum-style file ('<md5>  <name>' per line) to verify against instead of the "
        "PCam README's table (for mirrors that re-packed the files).",
    )
    flags.DEFINE_integer(
        "retries",
        5,
        "Attempts per file; each resumes the partial file.",
        lower_bound=1,
        flag_values=fv,
    )
    flags.DEFINE_float(
        "timeout", 60.0, "Socket timeout in seconds.", lower_bound=0.1, flag_values=fv
    )
    flags.DEFINE_bool("keep_gz", False, "Keep the .h5.gz files after gunzip.", flag_values=fv)
    define_on(fv, "progress")


def _main_download(fv: flags.FlagValues) -> int:
    from pcam_jax.data import download

    checksums = download.read_checksums(fv.checksums) if fv.checksums else None
    download.download_pcam(
        fv.out,
        base_url=fv.base_url,
        names=fv.files or None,
        checksums=checksums,
        retries=fv.retries,
        timeout=fv.timeout,
        keep_gz=fv.keep_gz,
        progress=fv.progress,
    )
    return 0


def _define_verify(fv: flags.FlagValues) -> None:
    define_on(fv, "root", "Directory holding the PCam HDF5 files.", required=True)
    flags.DEFINE_list("splits", list(SPLITS), "Splits to check.", flag_values=fv)
    define_on(
        fv,
        "checksums",
        "Optional md5sum-style file; every file it names that is present is checked.",
    )


def _main_verify(fv: flags.FlagValues) -> int:
    from pcam_jax.data import verify

    checksums = None
    if fv.checksums:
        from pcam_jax.data.download import read_checksums

        checksums = read_checksums(fv.checksums)
    report = verify.verify_root(fv.root, splits=fv.splits, checksums=checksums)
    print(report.format())
    if not report.ok and any((Path(fv.root) / s).is_dir() for s in SPLITS):
        print(
            f"note: verify checks the PCam HDF5 layout; {fv.root} has split folders, the folder "
            f"layout: use it as --config.data.source=folder, or make HDF5 with `pcam-data "
            f"convert --source=folder --root={fv.root} --out=DIR`"
        )
    return 0 if report.ok else 1


def _define_stats(fv: flags.FlagValues) -> None:
    define_on(fv, "root", "Directory holding the PCam HDF5 files.", required=True)
    define_on(fv, "out", "Directory for the PNG figures and stats.json.")
    flags.DEFINE_integer(
        "samples",
        8,
        "Tumour and normal samples per row of the grid.",
        lower_bound=1,
        flag_values=fv,
    )
    define_on(fv, "seed", "Seed for picking the sample patches.")


def _main_stats(fv: flags.FlagValues) -> int:
    from pcam_jax.data import stats

    result = stats.compute_stats(fv.root)
    print(stats.format_table(result))
    if fv.out:
        written = stats.write_figures(fv.root, result, fv.out, samples=fv.samples, seed=fv.seed)
        for path in written:
            print(f"wrote {path}")
    return 0


def _define_convert(fv: flags.FlagValues) -> None:
    flags.DEFINE_enum("source", None, ["folder", "kaggle"], "Layout of --root.", flag_values=fv)
    define_on(fv, "root", "Directory in the folder or Kaggle layout.")
    define_on(fv, "out", "Directory for the PCam HDF5 files.")
    flags.DEFINE_list(
        "splits", [], "Splits to convert (default: every split present).", flag_values=fv
    )
    flags.DEFINE_bool("gzip", False, "gzip-compress the HDF5 chunks.", flag_values=fv)
    flags.DEFINE_float(
        "kaggle_valid_fraction",
        0.1,
        "Kaggle layout: share of train ids held out.",
        lower_bound=0.0,
        upper_bound=0.99,
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "kaggle_split_seed", 0, "Kaggle layout: seed of the hold-out.", flag_values=fv
    )
    for name in ("source", "root", "out"):
        flags.mark_flag_as_required(name, flag_values=fv)


def _main_convert(fv: flags.FlagValues) -> int:
    from pcam_jax.data import convert, sources

    for split in fv.splits or sources.available_splits(fv.source, fv.root):
        src = sources.make_source(
            fv.source,
            fv.root,
            split,
            kaggle_valid_fraction=fv.kaggle_valid_fraction,
            kaggle_split_seed=fv.kaggle_split_seed,
        )
        paths = convert.write_pcam_split(src, fv.out, split, gzip=fv.gzip)
        print(f"{split}: {len(src)} patches -> {', '.join(str(p) for p in paths)}")
    return 0


def _define_synth(fv: flags.FlagValues) -> None:
    from pcam_jax.data import synth

    define_on(fv, "out", "Directory for the synthetic PCam files.", required=True)
    for split in SPLITS:
        flags.DEFINE_integer(
            f"n_{split}",
            synth.DEFAULT_SIZES[split],
            f"Patches in the {split} split (at least 2: both classes).",
            lower_bound=2,
            flag_values=fv,
        )
    define_on(fv, "seed", "Seed; the same seed writes the same files.")


def _main_synth(fv: flags.FlagValues) -> int:
    from pcam_jax.data import synth

    sizes = {split: getattr(fv, f"n_{split}") for split in SPLITS}
    paths = synth.write_synthetic_pcam(fv.out, sizes=sizes, seed=fv.seed)
    for path in paths:
        print(f"wrote {path}")
    return 0


SUBCOMMANDS: dict[str, Subcommand] = {
    "download": Subcommand(
        "Download the nine PCam files, resumably, gunzip and check md5.",
        _define_download,
        _main_download,
        "pcam-data download --out=data/pcam",
    ),
    "verify": Subcommand(
        "Check presence, md5, shapes, dtypes, labels and lengths; exit 0 only if all is well.",
        _define_verify,
        _main_verify,
        "pcam-data verify --root=data/pcam",
    ),
    "stats": Subcommand(
        "Patches per split and class, WSIs per split, figures.",
        _define_stats,
        _main_stats,
        "pcam-data stats --root=data/pcam --out=runs/pcam-stats",
    ),
    "convert": Subcommand(
        "Folder or Kaggle layout -> PCam HDF5, in constant memory.",
        _define_convert,
        _main_convert,
        "pcam-data convert --source=folder --root=../shared/data/pcam-subset --out=data/subset",
    ),
    "synth": Subcommand(
        "Write a synthetic dataset in the exact PCam HDF5 format.",
        _define_synth,
        _main_synth,
        "pcam-data synth --out=data/synthetic",
    ),
}


def usage() -> str:
    """The top-level help text."""
    lines = [__doc__.strip(), "", "subcommands:"]
    lines += [f"  {name:<9} {sub.summary}" for name, sub in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Runs `pcam-data` on argv (argv[0] is the program name); returns the exit code, or exits
    with status 1 and one error line (``common.reporting_errors``, as every binary does)."""
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(usage())
        return 0 if len(argv) >= 2 else 2
    name = argv[1]
    if name not in SUBCOMMANDS:
        print(f"pcam-data: unknown subcommand {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    sub = SUBCOMMANDS[name]
    fv = flags.FlagValues()
    sub.define(fv)
    prog = f"pcam-data {name}"
    if any(a in ("-h", "--help", "-help", "--helpfull") for a in argv[2:]):
        own = [
            line
            for line in fv.get_help(include_special_flags=False).splitlines()
            if line.startswith(" ")
        ]
        example = f"\n\nexample:\n  {sub.example}" if sub.example else ""
        print(f"usage: {prog} [--flag=value ...]\n\n{sub.summary}{example}\n\nflags:")
        print("\n".join(own))
        return 0
    try:
        fv([prog, *argv[2:]])
        fv.validate_all_flags()
    except flags.Error as e:
        print(f"{prog}: error: {e}; see `{prog} --help`", file=sys.stderr)
        return 2
    return common.reporting_errors(prog, partial(sub.main, fv))


def run() -> None:
    """Console-script entry point."""
    logging.set_verbosity(logging.WARNING)
    sys.exit(main(sys.argv))


if __name__ == "__main__":
    run()
