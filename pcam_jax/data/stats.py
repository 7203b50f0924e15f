"""The study's data exploration, computed from the PCam files.

Patches per split and class, each split's share of the whole, slides (WSIs)
per split and how many are tumour or normal slides. A slide is a tumour slide
when its CAMELYON16 name says so (``..._tumor_NNN``), a normal slide when it
says ``..._normal_NNN``; test-set slides (``camelyon16_test_NNN``) are counted
as tumour slides when any of their patches has ``tumor_patch``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pcam_jax.data.pcam_format import HOW_TO_GET_DATA, SPLITS, split_paths
from pcam_jax.data.sources import PcamHdf5Source
from pcam_jax.errors import DataError
from pcam_jax.runtime.files import write_json
from pcam_jax.runtime.plotting import pyplot, save_figure


def slide_kind(wsi: str, has_tumour_patch: bool) -> str:
    """'tumour' or 'normal' for one slide, from its name or, failing that, its patches."""
    name = wsi.lower()
    if "tumor" in name or "tumour" in name:
        return "tumour"
    if "normal" in name:
        return "normal"
    return "tumour" if has_tumour_patch else "normal"


def compute_stats(root: str | Path) -> dict[str, Any]:
    """Per-split counts for every split present under `root` (PCam HDF5 layout)."""
    splits = [s for s in SPLITS if split_paths(root, s)[1].is_file()]
    if not splits:
        raise DataError(f"{root}: no PCam label files (*_y.h5) found; {HOW_TO_GET_DATA}")
    per_split: dict[str, dict[str, Any]] = {}
    for split in splits:
        src = PcamHdf5Source(root, split)
        n_tumour = int(src.labels.sum())
        entry: dict[str, Any] = {"n": len(src), "tumour": n_tumour, "normal": len(src) - n_tumour}
        meta = src.meta()
        if meta is not None:
            kinds: dict[str, str] = {}
            for wsi in np.unique(meta["wsi"]):
                has_tumour = bool(meta["tumor_patch"][meta["wsi"] == wsi].any())
                kinds[str(wsi)] = slide_kind(str(wsi), has_tumour)
            entry["wsis"] = len(kinds)
            entry["tumour_wsis"] = sum(k == "tumour" for k in kinds.values())
            entry["normal_wsis"] = sum(k == "normal" for k in kinds.values())
        per_split[split] = entry
    total = sum(e["n"] for e in per_split.values())
    for entry in per_split.values():
        entry["share"] = entry["n"] / total if total else 0.0
    return {"root": str(root), "total": total, "splits": per_split}


def format_table(stats: dict[str, Any]) -> str:
    """A printable table of `compute_stats` output."""
    header = f"{'split':<6} {'patches':>9} {'share':>7} {'tumour':>8} {'normal':>8} {'%tumour':>8}"
    header += f" {'WSIs':>5} {'tumour':>7} {'normal':>7}"
    lines = [f"PCam statistics of {stats['root']}", header, "-" * len(header)]
    for split, e in stats["splits"].items():
        pct = 100.0 * e["tumour"] / e["n"] if e["n"] else 0.0
        wsi = (
            f" {e['wsis']:>5} {e['tumour_wsis']:>7} {e['normal_wsis']:>7}"
            if "wsis" in e
            else f" {'-':>5} {'-':>7} {'-':>7}"
        )
        lines.append(
            f"{split:<6} {e['n']:>9,} {100 * e['share']:>6.1f}% {e['tumour']:>8,} "
            f"{e['normal']:>8,} {pct:>7.1f}%{wsi}"
        )
    lines.append(f"{'total':<6} {stats['total']:>9,}")
    return "\n".join(lines)


def write_figures(
    root: str | Path, stats: dict[str, Any], out_dir: str | Path, *, samples: int = 8, seed: int = 0
) -> list[Path]:
    """Writes split bar charts, a sample grid and stats.json into `out_dir`."""
    plt = pyplot()

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    splits = list(stats["splits"])
    entries = [stats["splits"][s] for s in splits]
    written: list[Path] = []

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    xs = np.arange(len(splits))
    axes[0].bar(xs - 0.2, [e["normal"] for e in entries], 0.4, label="normal", color="#d98cb3")
    axes[0].bar(xs + 0.2, [e["tumour"] for e in entries], 0.4, label="tumour", color="#5b3a8c")
    axes[0].set(xticks=xs, xticklabels=splits, title="patches per split and class")
    axes[0].legend()
    axes[1].pie([e["n"] for e in entries], labels=splits, autopct="%1.1f%%")
    axes[1].set(title="share of patches")
    if all("wsis" in e for e in entries):
        axes[2].bar(xs - 0.2, [e["normal_wsis"] for e in entries], 0.4, label="normal WSIs")
        axes[2].bar(xs + 0.2, [e["tumour_wsis"] for e in entries], 0.4, label="tumour WSIs")
        axes[2].set(xticks=xs, xticklabels=splits, title="slides (WSIs) per split")
        axes[2].legend()
    else:
        axes[2].axis("off")
        axes[2].text(0.5, 0.5, "no meta CSV: no slide counts", ha="center")
    fig.tight_layout()
    save_figure(fig, out / "splits.png", dpi=110)
    written.append(out / "splits.png")

    src = PcamHdf5Source(root, splits[0])
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(2, samples, figsize=(1.6 * samples, 3.6), squeeze=False)
    for row, (label, name) in enumerate([(1, "tumour"), (0, "normal")]):
        pool = np.flatnonzero(src.labels == label)
        picks = rng.choice(pool, size=min(samples, pool.size), replace=False)
        for col in range(samples):
            ax = axes[row, col]
            ax.axis("off")
            if col < picks.size:
                ax.imshow(src.read_image(int(picks[col])))
                ax.set_title(f"{name} #{picks[col]}", fontsize=7)
    fig.suptitle(f"random {splits[0]} patches (top: tumour, bottom: normal)")
    fig.tight_layout()
    save_figure(fig, out / "samples.png", dpi=110)
    written.append(out / "samples.png")
    src.close()

    write_json(out / "stats.json", stats)
    written.append(out / "stats.json")
    return written
