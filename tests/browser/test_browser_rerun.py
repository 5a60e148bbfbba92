"""A second Run of an unchanged training graph, pressed in the real editor, trains nothing: the seed stays as set,
ComfyUI reports the training node as cached, no step event arrives and the LoRA file is untouched."""

import json
import time

from comfy_host import write_elf_folder

BUILD = """([load, prep, train]) => {
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
  const trainNode = add("AtelierTrainLoRA", [900, 60], train);
  loadNode.connect(0, prepNode, 0);
  ckpt.connect(0, trainNode, 0); ckpt.connect(1, trainNode, 1); ckpt.connect(2, trainNode, 2);
  prepNode.connect(0, trainNode, 3);
  return trainNode.id;
}"""

# Counts the training step events this page receives, through the frontend's own api module.
COUNT_STEPS = """async () => {
  const { api } = await import("/scripts/api.js");
  window.__atelierSteps = 0;
  window.__atelierDone = 0;  // the socket is ordered: a prompt's step events all come before its execution_success
  api.addEventListener("atelier.train.step", () => { window.__atelierSteps += 1; });
  api.addEventListener("execution_success", () => { window.__atelierDone += 1; });
}"""

SEED = "(id) => window.app.graph.getNodeById(id).widgets.find((w) => w.name === 'seed').value"


def run_from_editor(page, client, timeout: float = 300) -> tuple[str, dict]:
    """Presses Run (app.queuePrompt) and waits for that prompt's finished history entry: (prompt id, entry)."""
    before = set(client.request("GET", "/history") or {})
    done = page.evaluate("() => window.__atelierDone")
    page.evaluate("async () => { await window.app.queuePrompt(0); }")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = {k: v for k, v in (client.request("GET", "/history") or {}).items() if k not in before}
        for prompt_id, entry in new.items():
            if entry.get("status", {}).get("completed") or entry.get("status", {}).get("status_str") == "error":
                assert entry["status"]["status_str"] == "success", entry["status"]
                page.wait_for_function(f"() => window.__atelierDone > {done}", timeout=30_000)
                return prompt_id, entry
        time.sleep(0.3)
    raise AssertionError(f"the prompt queued from the editor did not finish within {timeout:.0f} s")


def cached_nodes(entry: dict) -> list[str]:
    """The node ids ComfyUI's execution_cached status message lists for a finished prompt."""
    return [str(n) for name, data in entry["status"]["messages"] if name == "execution_cached" for n in data["nodes"]]


def test_a_second_run_in_the_editor_trains_nothing(page, browser_server):
    write_elf_folder(browser_server.input_dir / "browser_rerun", 2, seed=5)
    load = {"folder": "input/browser_rerun", "caption_source": "sidecar", "repeats": 1}
    train = {"output_name": "browser_rerun", "rank": 4, "alpha": 4.0, "epochs": 1, "max_steps": 2, "seed": 1234}
    train_id = page.evaluate(BUILD, [load, {"width": 64, "height": 64}, train])
    page.evaluate(COUNT_STEPS)
    client = browser_server.client

    _, first = run_from_editor(page, client)
    assert str(train_id) not in cached_nodes(first)  # the first Run trains
    assert page.evaluate("() => window.__atelierSteps") >= 1, "no atelier.train.step event reached the page"
    lora = browser_server.file(json.loads(first["outputs"][str(train_id)]["text"][0])["lora"])
    before = (lora.stat().st_mtime_ns, lora.read_bytes())
    seed = page.evaluate(SEED, train_id)
    steps = page.evaluate("() => window.__atelierSteps")

    _, second = run_from_editor(page, client)
    assert page.evaluate(SEED, train_id) == seed == 1234, "the seed widget changed after a Run"
    assert str(train_id) in cached_nodes(second), second["status"]["messages"]
    assert page.evaluate("() => window.__atelierSteps") == steps, "the second Run sent training step events"
    assert (lora.stat().st_mtime_ns, lora.read_bytes()) == before, f"{lora.name} was rewritten by the second Run"
