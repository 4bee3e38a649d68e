"""The README's map of the documents: every document in docs/ is in it, and every link lands on a real heading."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(((?:docs/)?[\w.-]+\.md)(?:#([\w-]+))?\)")


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start:end if end != -1 else None]


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {github_anchor(m.group(1)) for m in re.finditer(r"^#+ (.+)$", path.read_text(), re.MULTILINE)}


def test_github_anchor_matches_githubs_rule() -> None:
    assert github_anchor("Reading rated usage (the one query)") == "reading-rated-usage-the-one-query"
    assert github_anchor("2. Setting up the CMTS") == "2-setting-up-the-cmts"
    assert github_anchor("`flowmed trace`") == "flowmed-trace"


def test_the_document_map_lists_every_document() -> None:
    section = _section((ROOT / "README.md").read_text(), "## Which document for which job")
    linked = {m.group(1) for m in LINK.finditer(section)}
    documents = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    assert documents - linked == set(), "add these documents to the README's 'Which document for which job' table"


def test_every_readme_link_to_a_document_lands_on_a_heading() -> None:
    broken = []
    for m in LINK.finditer((ROOT / "README.md").read_text()):
        target, anchor = ROOT / m.group(1), m.group(2)
        if not target.exists():
            broken.append(m.group(0))
        elif anchor and anchor not in _anchors(target):
            broken.append(m.group(0))
    assert broken == []
