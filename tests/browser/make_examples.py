"""Builds every workflow of example_specs.py in the real ComfyUI editor (headless Chromium) and saves what the editor
serialises (app.graph.serialize()) into example_workflows/<name>.json, with a JPEG thumbnail <name>.jpg drawn from
a screenshot of the graph (the template browser asks for <name>.jpg).

Run from the repository root:  OMP_NUM_THREADS=1 python tests/browser/make_examples.py [name ...]
"""

import base64
import io
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from comfy_host import ROOT, ComfyServer, find_checkout, find_python, fixture_checkpoint  # noqa: E402
from conftest import CHROMIUM  # noqa: E402
from example_specs import WORKFLOWS  # noqa: E402

OUT = ROOT / "example_workflows"
THUMB_WIDTH = 480  # the template card shows about 300 px; 480 keeps it sharp and under 100 KB

BUILD = """([spec]) => {
  const app = window.app, LG = window.LiteGraph;
  app.graph.clear();
  const made = {};
  for (const n of spec.nodes) {
    const node = LG.createNode(n.type);
    if (!node) throw new Error(`no node type ${n.type}`);
    node.title = n.title;
    app.graph.add(node);
    for (const [name, value] of Object.entries(n.widgets)) {
      const w = node.widgets?.find((w) => w.name === name);
      if (!w) throw new Error(`${n.type} has no widget ${name}`);
      w.value = value;
    }
    made[n.key] = node;
  }
  // columns as wide as their widest node, rows stacked by real heights, so nothing overlaps
  const cols = Math.max(...spec.nodes.map((n) => n.pos[0])) + 1;
  const widths = [...Array(cols)].map((_, c) => Math.max(0, ...spec.nodes.filter((n) => n.pos[0] === c)
    .map((n) => made[n.key].size[0])));
  for (let c = 0, x = 0; c < cols; x += widths[c] + 80, c++) {
    let y = 0;
    for (const n of spec.nodes.filter((n) => n.pos[0] === c).sort((a, b) => a.pos[1] - b.pos[1])) {
      made[n.key].pos = [x, y];
      y += made[n.key].size[1] + 80;
    }
  }
  for (const n of spec.nodes) {
    for (const [input, [src, out]] of Object.entries(n.links)) {
      const slot = made[n.key].findInputSlot(input);
      if (slot < 0) throw new Error(`${n.type} has no input ${input}`);
      made[src].connect(out, made[n.key], slot);
    }
  }
  const note = LG.createNode("Note");
  note.title = "Read me";
  note.pos = [0, -420];
  note.size = [760, 400];
  app.graph.add(note);
  note.widgets[0].value = spec.note;
  return true;
}"""

FIT = """() => {
  const app = window.app, nodes = app.graph._nodes;
  const xs = nodes.flatMap((n) => [n.pos[0], n.pos[0] + n.size[0]]);
  const ys = nodes.flatMap((n) => [n.pos[1] - 30, n.pos[1] + n.size[1]]);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const el = app.canvas.canvas, pad = 20;
  const scale = Math.min((el.width - 2 * pad) / (x1 - x0), (el.height - 2 * pad) / (y1 - y0));
  app.canvas.ds.scale = scale;
  app.canvas.ds.offset = [pad / scale - x0, pad / scale - y0];
  app.canvas.setDirty(true, true);
  app.canvas.draw(true, true);
  return [x0, x1, y0, y1, scale];
}"""


def thumbnail(png: bytes) -> bytes:
    """A JPEG of the screenshot, THUMB_WIDTH wide, small enough for the template browser."""
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    img = img.resize((THUMB_WIDTH, round(img.height * THUMB_WIDTH / img.width)), Image.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=80, optimize=True)
    return buf.getvalue()


def build(page, name: str) -> None:
    spec = WORKFLOWS[name]
    page.evaluate(BUILD, [spec])
    page.wait_for_timeout(300)
    page.evaluate(FIT)
    page.wait_for_timeout(300)
    url = page.evaluate("() => window.app.canvas.canvas.toDataURL('image/png')")  # the graph alone, no overlays
    shot = base64.b64decode(url.split(",", 1)[1])
    data = page.evaluate("() => JSON.parse(JSON.stringify(window.app.graph.serialize()))")  # as the editor saves
    (OUT / f"{name}.json").write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    (OUT / f"{name}.jpg").write_bytes(thumbnail(shot))
    print(f"wrote example_workflows/{name}.json and .jpg")


def main(names: list[str]) -> None:
    from playwright.sync_api import sync_playwright

    checkout, why = find_checkout()
    if checkout is None:
        sys.exit(f"no ComfyUI checkout: {why}")
    python = find_python(checkout)
    server = ComfyServer(checkout, python, Path(tempfile.mkdtemp(prefix="atelier_examples_")))
    server.prepare(fixture_checkpoint(checkout, python))
    client = server.start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                        args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
            page = browser.new_page(viewport={"width": 2400, "height": 1350})
            page.goto(client.base_url, wait_until="domcontentloaded")
            page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph", timeout=120_000)
            page.wait_for_timeout(1000)
            page.keyboard.press("Escape")  # the first-run template browser would cover the canvas
            for name in names or list(WORKFLOWS):
                build(page, name)
            browser.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
