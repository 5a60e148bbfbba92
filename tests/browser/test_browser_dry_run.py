"""A caption edit's dry run is readable on the Write Captions node in the editor, and writes nothing."""

from .test_browser_editor import QUEUE_AND_WAIT, panel_text


def test_a_dry_run_caption_diff_is_shown_on_the_node(page, browser_server):
    folder = browser_server.input_dir / "browser_dry"
    folder.mkdir(exist_ok=True)
    from PIL import Image

    for i in range(2):
        Image.new("RGB", (64, 64), (40 * i, 90, 160)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"1girl, elf, pose {i}")
    before = {p.name: p.read_bytes() for p in folder.glob("*.txt")}
    load = {"folder": "input/browser_dry", "caption_source": "sidecar"}
    ids = page.evaluate(QUEUE_AND_WAIT, [["AtelierLoadDataset", "AtelierReplaceTags", "AtelierWriteCaptions"],
                                         [load, {"replace_map": "1girl => woman"}, {"dry_run": True}]])
    text = panel_text(page, ids[2], "DRY RUN")
    assert "2 of 2 captions change" in text and "0.txt: -1girl; +woman" in text
    panels = page.locator("textarea[data-atelier-report='1']")
    shown = [panels.nth(i) for i in range(panels.count()) if "DRY RUN" in panels.nth(i).input_value()]
    assert len(shown) == 1 and shown[0].is_visible()
    assert {p.name: p.read_bytes() for p in folder.glob("*.txt")} == before  # a dry run writes nothing
