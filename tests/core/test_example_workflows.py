"""The example workflows without ComfyUI: every Atelier node they use exists in nodes/, each has its thumbnail and
a Note, and the folder's README table names it."""

import json
from pathlib import Path

import pytest
from node_schemas import scan_nodes

FOLDER = Path(__file__).resolve().parents[2] / "example_workflows"
EXAMPLES = sorted(FOLDER.glob("*.json"))


def test_there_are_examples():
    assert EXAMPLES, "example_workflows/ holds no .json workflow"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_is_complete(path):
    ids = {s.node_id for s in scan_nodes()}
    nodes = json.loads(path.read_text(encoding="utf-8"))["nodes"]
    gone = sorted({n["type"] for n in nodes if n["type"].startswith("Atelier") and n["type"] not in ids})
    assert not gone, f"example_workflows/{path.name} uses {gone}, which no node in nodes/ defines any more"
    assert any(n["type"] in ("Note", "MarkdownNote") for n in nodes), f"{path.name} has no Note node"
    thumb = path.with_suffix(".jpg")  # frontend 1.27 asks for <name>.jpg for custom nodes' templates
    assert thumb.exists() and thumb.read_bytes()[:3] == b"\xff\xd8\xff", f"{thumb.name} is missing or not a JPEG"
    assert thumb.stat().st_size < 100_000, f"{thumb.name} is {thumb.stat().st_size} bytes; keep it < 100 KB"
    assert f"`{path.name}`" in (FOLDER / "README.md").read_text(encoding="utf-8"), \
        f"example_workflows/README.md has no table row for `{path.name}`"
