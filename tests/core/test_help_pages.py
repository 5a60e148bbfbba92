"""Every node has a help page where ComfyUI's frontend looks for one, with the three sections an artist needs.

Frontend 1.27 (NodeHelpService.fetchCustomNodeHelp) fetches `/extensions/<pack folder>/docs/<NodeId>/<locale>.md`
and falls back to `/extensions/<pack folder>/docs/<NodeId>.md`; ComfyUI serves WEB_DIRECTORY ("./web") at
`/extensions/<pack folder>/`, so a page lives at web/docs/<NodeId>.md.
"""

import re
from pathlib import Path

from node_schemas import scan_nodes

DOCS = Path(__file__).resolve().parents[2] / "web" / "docs"
SECTIONS = ("## What it does", "## Typical values", "## Pitfalls")


def page_problems(node_id: str, text: str) -> list[str]:
    """What is wrong with one help page: a missing section, an empty one, a missing title, a wrong length."""
    problems = []
    lines = text.splitlines()
    if not lines or not lines[0].startswith("# "):
        problems.append(f"{node_id}.md: the first line should be a '# ' title")
    for heading in SECTIONS:
        if heading not in lines:
            problems.append(f"{node_id}.md: no '{heading}' section")
            continue
        body = []
        for line in lines[lines.index(heading) + 1:]:
            if line.startswith("#"):
                break
            body.append(line)
        if not any(line.strip() for line in body):
            problems.append(f"{node_id}.md: section '{heading}' is empty")
    if not 8 <= len(lines) <= 40:
        problems.append(f"{node_id}.md: {len(lines)} lines; a help page should be short (8-40 lines)")
    return problems


def test_every_node_has_a_help_page_with_three_sections():
    ids = sorted(s.node_id for s in scan_nodes())
    assert len(ids) >= 30, f"expected Atelier's ~35 node ids in nodes/, found {len(ids)}: {ids}"
    missing = [i for i in ids if not (DOCS / f"{i}.md").is_file()]
    assert not missing, f"no help page in web/docs for: {', '.join(missing)}; add web/docs/<NodeId>.md"
    problems = [p for i in ids for p in page_problems(i, (DOCS / f"{i}.md").read_text(encoding="utf-8"))]
    assert not problems, "help pages need a title and non-empty sections:\n" + "\n".join(problems)


def test_no_help_page_without_a_node():
    """A renamed node leaves no orphan page behind (the frontend would never show it)."""
    ids = {s.node_id for s in scan_nodes()}
    orphans = sorted(p.name for p in DOCS.glob("*.md") if p.stem not in ids)
    assert not orphans, f"help pages for no node in nodes/: {', '.join(orphans)}; rename or delete them"


def test_page_title_names_the_node_as_the_editor_shows_it():
    names = {s.node_id: s.display_name for s in scan_nodes()}
    wrong = []
    for node_id, name in names.items():
        title = (DOCS / f"{node_id}.md").read_text(encoding="utf-8").splitlines()[0]
        if name and title != f"# {name}":
            wrong.append(f"{node_id}.md: title {title!r}, display name {name!r}")
    assert not wrong, "titles should equal the display names:\n" + "\n".join(wrong)


def test_page_problems_catches_a_missing_and_an_empty_section():
    text = "# X\n\n## What it does\nThings.\n\n## Typical values\n\n## Other\nmore\nlines\nhere\n"
    found = page_problems("X", text)
    assert "X.md: section '## Typical values' is empty" in found
    assert "X.md: no '## Pitfalls' section" in found
    assert not any(re.search("What it does", p) for p in found)
