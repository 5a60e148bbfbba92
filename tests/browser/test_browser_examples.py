"""Every example workflow, opened in the real editor: listed in the template browser under the pack's name with its
thumbnail, and run tiny (the frontend's own graphToPrompt, the TINY overrides of example_tiny.py) to the files its
Note promises."""

import glob
import json

import pytest
from comfy_host import PACK_NAME, ROOT
from .example_tiny import PROMISES, TINY, make_tiny_inputs

EXAMPLES = sorted((ROOT / "example_workflows").glob("*.json"))
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}  # never sent to the server

LOAD_TINY_AND_CONVERT = """async ([data, tiny]) => {
  const app = window.app;
  await app.loadGraphData(data);
  for (const [key, widgets] of Object.entries(tiny)) {
    const nodes = app.graph._nodes.filter((n) => n.title === key || n.type === key);
    if (!nodes.length) throw new Error(`the workflow has no node titled or typed '${key}'`);
    for (const node of nodes) {
      for (const [name, value] of Object.entries(widgets)) {
        const w = node.widgets?.find((w) => w.name === name);
        if (!w) throw new Error(`node '${key}' has no widget '${name}'`);
        w.value = value;
      }
    }
  }
  return (await app.graphToPrompt()).output;
}"""


def promised_name(pattern: str) -> str:
    """The part of a promised file's glob a Note must name: 'grids/x_*.png' gives 'x_', 'captions/s/**/*.txt' 's'."""
    parts = pattern.split("/")
    last = parts[-1] if not parts[-1].startswith("*") else next(p for p in reversed(parts) if "*" not in p)
    return last.split("*")[0]


@pytest.fixture(scope="module")
def tiny_inputs(browser_server):
    make_tiny_inputs(browser_server)
    return browser_server


def test_there_are_example_workflows_with_thumbnails():
    assert EXAMPLES, "example_workflows/ holds no .json workflow"
    for path in EXAMPLES:
        thumb = path.with_suffix(".jpg")  # the template browser asks for <name>.jpg (frontend 1.27)
        assert thumb.exists(), f"example_workflows/{path.name} has no thumbnail {thumb.name}; run make_examples.py"
        assert thumb.stat().st_size < 100_000, f"{thumb.name} is {thumb.stat().st_size} bytes; keep it < 100 KB"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_tiny_to_what_its_note_promises(page, tiny_inputs, path):
    server = tiny_inputs
    assert path.stem in TINY, (f"example_workflows/{path.name} has no entry in tests/browser/example_tiny.py TINY; "
                               "add one that swaps in the fixture checkpoint, tiny folders and tiny steps")
    data = json.loads(path.read_text(encoding="utf-8"))
    notes = [n for n in data["nodes"] if n["type"] in ("Note", "MarkdownNote")]
    assert notes and "download" in notes[0]["widgets_values"][0].lower(), f"{path.name} needs a Note saying what "\
        "to download and what to change"
    prompt = page.evaluate(LOAD_TINY_AND_CONVERT, [data, TINY[path.stem]])
    server.client.run(prompt, timeout=1500)
    promised = [pattern for node in prompt.values() if node["class_type"] in PROMISES
                for pattern in PROMISES[node["class_type"]](node["inputs"])]
    assert promised, f"{path.name} writes nothing that example_tiny.PROMISES knows about"
    unnamed = [p for p in promised if promised_name(p) not in notes[0]["widgets_values"][0]]
    assert not unnamed, f"the Note of {path.name} does not say it writes {unnamed}"
    missing = [p for p in promised if not glob.glob(str(server.workdir / p), recursive=True)]
    assert not missing, f"{path.name} ran but did not write {missing}"


OPEN_TEMPLATES = """async () => {
  await window.app.extensionManager.command.execute("Comfy.BrowseTemplates");
}"""

CARD_IMAGES = """(stems) => stems.map((stem) => {
  const label = [...document.querySelectorAll(".p-dialog *")].find((e) => e.childElementCount === 0
    && e.textContent.trim() === stem);
  let card = label;
  while (card && !card.querySelector("img")) card = card.parentElement;
  const img = card?.querySelector("img");
  return img ? img.complete && img.naturalWidth : -1;
})"""


def test_examples_are_in_the_template_browser_under_the_pack_name(page, browser_server):
    stems = [p.stem for p in EXAMPLES]
    listed = browser_server.client.request("GET", "/workflow_templates")
    assert sorted(listed.get(PACK_NAME, [])) == sorted(stems), listed
    page.evaluate(OPEN_TEMPLATES)
    page.locator(".p-dialog").get_by_text(PACK_NAME, exact=True).first.click()
    for stem in stems:
        page.locator(".p-dialog").get_by_text(stem, exact=True).first.wait_for(timeout=30_000)
    page.wait_for_function(f"(stems) => ({CARD_IMAGES})(stems).every((w) => w > 0)", arg=stems, timeout=30_000)
    widths = page.evaluate(CARD_IMAGES, stems)
    assert all(w == 480 for w in widths), dict(zip(stems, widths))  # the thumbnails themselves, not a placeholder
    page.locator(".p-dialog").get_by_text(stems[0], exact=True).first.click()  # opening one loads its graph
    page.locator(".p-dialog-mask").first.wait_for(state="detached", timeout=30_000)
    types = page.evaluate("() => window.app.graph._nodes.map((n) => n.type)")
    saved = [n["type"] for n in json.loads(EXAMPLES[0].read_text(encoding="utf-8"))["nodes"]]
    assert sorted(types) == sorted(saved)
