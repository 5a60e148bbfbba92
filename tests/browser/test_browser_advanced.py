"""Train LoRA Advanced in the real editor: it fits a 1080p screen, a folded section opens for editing, and every
setting still reaches the prompt under its own name."""

import json
import urllib.request

ADVANCED = "AtelierTrainLoRAAdvanced"

CREATE_EDIT_AND_PROMPT = """async (type) => {
  const app = window.app;
  app.graph.clear();
  const node = window.LiteGraph.createNode(type);
  node.pos = [80, 60];
  app.graph.add(node);
  const folded = node.widgets.find((w) => w.name === "min_snr_gamma");
  const height = node.size[1];
  const hiddenBefore = Boolean(folded?.hidden);
  const toggle = node.widgets.find((w) => w.name === "atelier_section_objective");
  if (!toggle) throw new Error(`${type} has no objective section toggle; widgets: ${node.widgets.map((w) => w.name)}`);
  toggle.value = true;
  toggle.callback(true);  // what a click on the toggle does
  const hiddenAfter = Boolean(folded.hidden);
  const openHeight = node.size[1];
  folded.value = 5;
  const saved = node.serialize();
  const { output } = await app.graphToPrompt();
  return { id: node.id, height, hiddenBefore, hiddenAfter, openHeight, inputs: output[String(node.id)].inputs,
           saved: saved.widgets_values };
}"""


def schema_widgets(browser_server) -> list[str]:
    """The Advanced node's widget names as the server declares them (every input that is not a connection)."""
    with urllib.request.urlopen(f"{browser_server.client.base_url}/object_info/{ADVANCED}", timeout=30) as r:
        info = json.load(r)[ADVANCED]["input"]
    links = {"MODEL", "CLIP", "VAE", "ATELIER_DATASET"}
    names = []
    for group in ("required", "optional"):
        for name, spec in info.get(group, {}).items():
            kind = spec[0]
            if isinstance(kind, list) or kind not in links:
                names.append(name)
    return names


def test_advanced_node_fits_1080p_and_sends_every_setting(page, browser_server):
    names = schema_widgets(browser_server)
    assert "min_snr_gamma" in names and len(names) > 50, names
    got = page.evaluate(CREATE_EDIT_AND_PROMPT, ADVANCED)
    assert got["height"] <= 1000, f"Train LoRA Advanced is {got['height']:.0f} px tall by default; expected <= 1000"
    assert got["hiddenBefore"] and not got["hiddenAfter"], got
    assert got["openHeight"] > got["height"]  # the opened section's widgets take room
    inputs = got["inputs"]
    missing = [n for n in names if n not in inputs]
    assert not missing, f"the prompt lacks {missing}"
    assert inputs["min_snr_gamma"] == 5
    assert not [k for k in inputs if k.startswith("atelier_section_")], inputs.keys()
    # the saved workflow keeps the schema's widget order (toggles left out), so workflows saved before still load
    values = dict(zip(names, got["saved"]))
    assert len(got["saved"]) == len(names), got["saved"]
    assert values.get("min_snr_gamma") == 5, got["saved"]


ROUND_TRIP = """async (type) => {
  const app = window.app;
  app.graph.clear();
  const node = window.LiteGraph.createNode(type);
  app.graph.add(node);
  const set = { min_snr_gamma: 5, sample_steps: 33, rank: 12, sample_prompts: "an elf\\na knight" };
  for (const [name, value] of Object.entries(set)) node.widgets.find((w) => w.name === name).value = value;
  node.widgets.find((w) => w.name === "atelier_section_saving").callback(true);
  const workflow = JSON.parse(JSON.stringify(app.graph.serialize()));
  app.graph.clear();
  await app.loadGraphData(workflow);
  const loaded = app.graph.nodes.find((n) => n.type === type);
  const value = (name) => loaded.widgets.find((w) => w.name === name).value;
  const values = Object.fromEntries(Object.keys(set).map((name) => [name, value(name)]));
  const visible = (name) => !loaded.widgets.find((w) => w.name === name).hidden;
  return { values, set, savingOpen: visible("sample_steps"), objectiveOpen: visible("min_snr_gamma"),
           height: loaded.size[1] };
}"""


def test_a_saved_workflow_reloads_with_its_values_and_open_sections(page):
    got = page.evaluate(ROUND_TRIP, ADVANCED)
    assert got["values"] == got["set"], got
    assert got["savingOpen"] and not got["objectiveOpen"], got
    assert got["height"] <= 1080, got["height"]
