"""The live training view in the real editor: the loss chart is drawn and changes while a short run trains, sample
thumbnails arrive, and after a page reload the same history is drawn again (served by our route)."""

import time

import numpy as np
from PIL import Image

CANVAS_INK = """() => {
  const canvas = document.querySelector("[data-atelier-live='1'] canvas");
  if (!canvas) return -1;
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let ink = 0;
  for (let i = 3; i < data.length; i += 4) if (data[i] > 0) ink++;
  return ink;
}"""


def test_chart_draws_during_training_and_survives_a_reload(page, browser_server, tour_shot):
    folder = browser_server.input_dir / "browser_live"
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(2)
    for i in range(4):
        Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).resize((64, 64)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"elf, pose {i}")
    load = {"folder": "input/browser_live", "caption_source": "sidecar", "repeats": 1}
    prep = {"width": 64, "height": 64}
    train = {"output_name": "browser_live", "max_steps": 24, "batch_size": 1, "rank": 4, "alpha": 4.0,
             "sample_prompts": "elf", "sample_every_steps": 8, "sample_steps": 2, "sample_width": 64,
             "sample_height": 64, "save_every_epochs": 0}
    page.evaluate(f"""() => {{
      // every redraw of the live view, as it happens (each websocket event is its own task, so none is missed)
      const ink = {CANVAS_INK};
      window.__atelierSeen = [];
      new MutationObserver(() => {{
        const stats = document.querySelector("[data-atelier-live='1'] .atelier-live-stats");
        if (stats) window.__atelierSeen.push([stats.textContent, ink()]);
      }}).observe(document.body, {{subtree: true, childList: true, characterData: true}});
    }}""")
    page.evaluate("""([load, prep, train]) => {
      const app = window.app, LG = window.LiteGraph;
      app.graph.clear();
      const add = (type, pos, widgets) => {
        const node = LG.createNode(type);
        node.pos = pos;
        app.graph.add(node);
        for (const [name, value] of Object.entries(widgets)) {
          const w = node.widgets.find((w) => w.name === name);
          if (!w) throw new Error(`${type} has no widget ${name}`);
          w.value = value;
        }
        return node;
      };
      const loadNode = add("AtelierLoadDataset", [80, 120], load);
      const prepNode = add("AtelierPrepareDataset", [480, 120], prep);
      const ckpt = add("CheckpointLoaderSimple", [80, 600], {ckpt_name: "atelier_tiny_sd15.safetensors"});
      const trainNode = add("AtelierTrainLoRAAdvanced", [900, 60], train);
      loadNode.connect(0, prepNode, 0);
      ckpt.connect(0, trainNode, 0); ckpt.connect(1, trainNode, 1); ckpt.connect(2, trainNode, 2);
      prepNode.connect(0, trainNode, 3);
      app.queuePrompt(0);
    }""", [load, prep, train])
    page.wait_for_function("() => document.querySelector(\"[data-atelier-live='1'] .atelier-live-stats\")"
                           "?.textContent.includes('step 24/24')", timeout=300_000)
    seen = page.evaluate("() => window.__atelierSeen")
    # the chart was redrawn as the run went on: many different stats lines, and the drawing itself changed
    assert len({text for text, _ in seen}) >= 3, seen[:5]
    assert len({ink for _, ink in seen}) >= 2, seen[:5]
    page.wait_for_function("() => document.querySelectorAll('.atelier-live-sample').length >= 2", timeout=120_000)
    tour_shot("live_training")

    page.reload(wait_until="domcontentloaded")
    page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph", timeout=120_000)
    page.wait_for_function(f"() => ({CANVAS_INK})() > 50", timeout=60_000)  # redrawn from the server's history
    assert "step 24/24" in page.locator("[data-atelier-live='1'] .atelier-live-stats").first.inner_text()
    deadline = time.monotonic() + 120  # the last preview and the final save follow the last step's event
    while True:
        runs = browser_server.client.request("GET", "/atelier/train/runs")
        if (runs and runs[0]["finished"]) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert runs and runs[0]["step"] == 24 and runs[0]["finished"]
    csv = browser_server.client.base_url + f"/atelier/train/runs/{runs[0]['run']}.csv"
    import urllib.request

    rows = urllib.request.urlopen(csv).read().decode().strip().splitlines()
    assert rows[0].startswith("step,total,epoch,loss") and len(rows) == 25
