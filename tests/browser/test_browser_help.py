"""An Atelier node's help page, opened the way an artist opens it: select the node, press the selection toolbox's
info button, read the node-help panel of the node library."""

from pathlib import Path

PAGE = Path(__file__).resolve().parents[2] / "web" / "docs" / "AtelierDedupeDataset.md"

ADD_AND_SELECT = """(type) => {
  const app = window.app;
  app.graph.clear();
  const node = window.LiteGraph.createNode(type);
  node.pos = [200, 200];
  app.graph.add(node);
  app.canvas.centerOnNode(node);  // the toolbox sits above the node: keep it clear of the top menu bar
  app.canvas.selectNode(node);
  app.canvas.setDirty(true, true);
  return node.id;
}"""


def test_the_help_panel_shows_the_nodes_page(page):
    page.evaluate(ADD_AND_SELECT, "AtelierDedupeDataset")
    info = page.locator("[data-testid='info-button']")
    info.wait_for(state="visible", timeout=30_000)
    # the frontend asks for docs/<NodeId>/<locale>.md first and falls back to docs/<NodeId>.md: the page must be served
    with page.expect_response(lambda r: r.url.endswith("/docs/AtelierDedupeDataset.md"), timeout=30_000) as got:
        info.click()
    response = got.value
    assert response.status == 200, f"the frontend fetched {response.url} and got {response.status}"
    assert "/extensions/" in response.url, f"expected the custom-node help path, got {response.url}"
    panel = page.locator(".node-help-content")
    panel.wait_for(state="visible", timeout=30_000)
    page.wait_for_function("() => document.querySelector('.node-help-content')?.innerText.includes('Pitfalls')",
                           timeout=30_000)
    shown = panel.inner_text()
    # rendered Markdown, not the node's one-line description (the panel's fallback when no page is found)
    for heading in ("What it does", "Typical values", "Pitfalls"):
        assert heading in shown, f"the help panel lacks '{heading}'; it shows: {shown[:300]!r}"
    assert "perceptual hash" in shown and "perceptual hash" in PAGE.read_text(encoding="utf-8")
    assert "## " not in shown, "the page should be rendered as Markdown, not shown as raw text"
