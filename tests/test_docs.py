"""The documentation's links hold: every relative link in the Markdown pages points to a file of
the repository, and every ``#anchor`` to a heading of its page (GitHub's slugs)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import REPO

PAGES = sorted(
    p
    for p in REPO.rglob("*.md")
    if not any(
        part.startswith(".") or part in ("node_modules",) for part in p.relative_to(REPO).parts
    )
)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to '-'."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # no headings in code
    return {slug(m) for m in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


def links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


def broken_links(page: Path) -> list[str]:
    """The relative links of `page` whose file does not exist or whose anchor is no heading."""
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(target)
    return broken


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_relative_links_and_anchors_resolve(page):
    assert broken_links(page) == []


def test_the_link_check_sees_a_broken_link_and_a_missing_anchor(tmp_path):
    page = tmp_path / "a.md"
    page.write_text("# A title: `x.py`\n\n[ok](#a-title-xpy) [bad](b.md) [x](#nope) [w](a.md)\n")
    assert broken_links(page) == ["b.md", "#nope"]
