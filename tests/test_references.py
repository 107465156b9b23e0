"""Every reference this repository makes resolves: the sections of PAPER.md and RESULTS.md that code,
tests and docs cite, the README sections they name, the files the Markdown links to, and the tests
the README names. A renamed heading, file or test fails here."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*ROOT.glob("*.py"), *ROOT.glob("tests/*.py"), *ROOT.glob("*.md"), *ROOT.glob("*.sh"),
                  *ROOT.glob("assets/*.md")])


def numbered_sections(name):
    return {int(n) for n in re.findall(r"^## (\d+)\.", (ROOT / name).read_text(), re.M)}


def cited(pattern):
    """(file, line number, match) for every match of pattern in the sources."""
    for path in SOURCES:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for match in re.finditer(pattern, line):
                yield path.name, number, match


@pytest.mark.parametrize("document", ["PAPER.md", "RESULTS.md"])
def test_cited_sections_exist(document):
    sections = numbered_sections(document)
    stem = re.escape(document[:-3])
    found = list(cited(rf"{stem}(?:\.md)?\)?\s*(?:§|section )\s*(\d+)((?:\s*(?:,|and)\s*§\s*\d+)*)"))
    assert found
    for name, number, match in found:
        for n in [match.group(1), *re.findall(r"\d+", match.group(2))]:
            assert int(n) in sections, f"{name}:{number} cites {document} §{n}; it has §{sorted(sections)}"


def test_results_cites_its_own_sections():
    text = (ROOT / "RESULTS.md").read_text()
    sections = numbered_sections("RESULTS.md")
    for n in re.findall(r"\bsections? (\d+)(?!\.\d)", text) + re.findall(r"\bsections \d+ (?:and|to) (\d+)", text):
        assert int(n) in sections, f"RESULTS.md cites its section {n}"


def test_named_readme_sections_exist():
    headings = set(re.findall(r"^#+ (.+?)\s*$", (ROOT / "README.md").read_text(), re.M))
    found = list(cited(r"README(?:\.md)?,? \"([^\"]+)\""))
    assert found
    for name, number, match in found:
        assert match.group(1) in headings, f"{name}:{number} names README section {match.group(1)!r}"


def test_markdown_links_and_named_files_exist():
    for doc in ("README.md", "RESULTS.md", "PAPER.md"):
        text = (ROOT / doc).read_text()
        for target in re.findall(r"\]\(([^)#]+)\)", text):
            if not target.startswith("http"):
                assert (ROOT / target).exists(), f"{doc} links to {target}"
        for target in re.findall(r"`((?:tests|assets)/[\w./]+)`", text):
            assert (ROOT / target).exists(), f"{doc} names {target}"


def test_tests_named_in_the_readme_exist():
    names = set(re.findall(r"^def (test_\w+)", "\n".join(p.read_text() for p in ROOT.glob("tests/*.py")), re.M))
    cited_tests = re.findall(r"`(test_\w+)`", (ROOT / "README.md").read_text())
    assert cited_tests
    for test in cited_tests:
        assert test in names, f"README.md names {test}, which no test file defines"
