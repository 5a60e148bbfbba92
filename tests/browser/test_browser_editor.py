"""What an artist sees in the real editor: reports on the nodes, seeds that stay as set."""

import numpy as np
from PIL import Image

QUEUE_AND_WAIT = """async ([types, widgets]) => {
  const app = window.app;
  app.graph.clear();
  const nodes = types.map((type, i) => {
    const node = window.LiteGraph.createNode(type);
    node.pos = [80 + 420 * i, 120];
    app.graph.add(node);
    for (const [name, value] of Object.entries(widgets[i] || {})) {
      const w = node.widgets.find((w) => w.name === name);
      if (!w) throw new Error(`${type} has no widget ${name}`);
      w.value = value;
    }
    return node;
  });
  for (let i = 1; i < nodes.length; i++) nodes[i - 1].connect(0, nodes[i], 0);
  await app.queuePrompt(0);
  return nodes.map((n) => n.id);
}"""

PANEL_TEXT = """(id) => {
  const node = window.app.graph.getNodeById(id);
  const panel = node?.widgets?.find((w) => w.name === "atelier_report");
  return panel ? String(panel.value) : null;
}"""


def panel_text(page, node_id, contains, timeout=120_000):
    page.wait_for_function(f"(id) => ({PANEL_TEXT})(id)?.includes({contains!r})", arg=node_id, timeout=timeout)
    return page.evaluate(PANEL_TEXT, node_id)


def test_a_nodes_report_is_shown_on_the_node(page, browser_server, tour_shot):
    folder = browser_server.input_dir / "browser_ds"
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"elf, pose {i}")
    load = {"folder": "input/browser_ds", "caption_source": "sidecar", "repeats": 5}
    ids = page.evaluate(QUEUE_AND_WAIT, [["AtelierLoadDataset", "AtelierDatasetStats"], [load, {}]])
    text = panel_text(page, ids[1], "samples")
    assert "15" in text  # 3 images × 5 repeats, as the statistics say it
    panel = page.locator("textarea[data-atelier-report='1']").first
    assert panel.is_visible() and "samples" in panel.input_value()
    box = panel.bounding_box()
    # nothing covers it: the element at the panel's centre is the panel itself
    top = page.evaluate("([x, y]) => document.elementFromPoint(x, y)?.dataset?.atelierReport",
                        [box["x"] + box["width"] / 2, box["y"] + box["height"] / 2])
    assert top == "1"
    tour_shot("report_on_node")
    # the panel is never sent back: a second Run keeps the same inputs, so ComfyUI's cache still applies
    sent = page.evaluate("async (id) => (await window.app.graphToPrompt()).output[String(id)].inputs", ids[1])
    assert "atelier_report" not in sent
    saved = page.evaluate("(id) => window.app.graph.getNodeById(id).serialize().widgets_values || []", ids[1])
    assert not any(isinstance(v, str) and "samples" in v for v in saved)


def test_seeds_have_no_randomize_control_in_the_editor(page):
    names = page.evaluate("""() => ["AtelierTrainLoRA", "AtelierTrainLoRAAdvanced", "AtelierXYGrid"].map((type) => {
      const node = window.LiteGraph.createNode(type);
      return node.widgets.map((w) => w.name);
    })""")
    for widgets in names:
        assert "seed" in widgets and "control_after_generate" not in widgets, widgets
