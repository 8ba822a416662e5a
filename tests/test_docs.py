"""The README and docs/ link to files that exist and to headings that exist."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import ROOT

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def prose(path: Path) -> list[str]:
    """The lines of a Markdown file outside fenced code blocks."""
    lines, fenced = [], False
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in prose(path):
        if match := re.match(r"#{1,6} (.+)", line):
            base = slug(match.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(files: list[Path]) -> list[str]:
    broken = []
    for path in files:
        for line in prose(path):
            for target in LINK.findall(re.sub(r"`[^`]*`", "", line)):
                if re.match(r"[a-z]+:", target):
                    continue  # https:, mailto:
                name, _, anchor = target.partition("#")
                dest = (path.parent / name).resolve() if name else path
                if not dest.exists():
                    broken.append(f"{path.name}: {target}: no such file")
                elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                    broken.append(f"{path.name}: {target}: no such heading")
    return broken


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_link_in_the_readme_and_docs_resolves() -> None:
    assert broken_links(documents()) == []


def test_a_broken_link_or_anchor_is_reported(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## Which `ctl` answers\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n[fine](other.md#which-ctl-answers) [self](#page) [web](https://example.com)\n"
        "[gone](missing.md) [bad anchor](other.md#nope) [bad here](#nowhere)\n"
        "```sh\n# not a heading\n[not a link](nowhere.md)\n```\n"
    )
    assert broken_links([page]) == [
        "page.md: missing.md: no such file",
        "page.md: other.md#nope: no such heading",
        "page.md: #nowhere: no such heading",
    ]


def test_every_page_is_reachable_from_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"(docs/{page.name})" in readme, page.name


def test_every_refusal_in_the_hostile_corpus_is_listed_in_the_hardening_doc() -> None:
    """docs/hardening.md names every `error.message` the hostile corpus expects (a header number
    written as N), so the list of what proxylog refuses cannot fall behind the corpus."""
    documented = set(re.findall(r"`([^`]+)`", (ROOT / "docs" / "hardening.md").read_text()))
    missing = set()
    for case in sorted((ROOT / "tests" / "data" / "hostile").glob("*.txt")):
        expect = re.search(r"^# expect: \d+ request_invalid (.+)$", case.read_text(), re.M)
        if expect is not None:
            message = re.sub(r"header \d+", "header N", expect.group(1))
            if message not in documented:
                missing.add(f"{case.name}: {message}")
    assert sorted(missing) == []
