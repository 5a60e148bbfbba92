"""Smoke tests of the pack inside a real ComfyUI server, over its HTTP API."""

import re

import pytest
from comfy_host import FIXTURE_CHECKPOINT_NAME, ComfyError
from node_schemas import scan_nodes


def txt2img_prompt(seed: int = 1, steps: int = 2, size: int = 64) -> dict:
    """A stock text-to-image graph on the fixture checkpoint, ending in Atelier's version node."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": FIXTURE_CHECKPOINT_NAME}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a starsectorportrait of a person"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "blur, vignette"}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
            "seed": seed, "steps": steps, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "AtelierVersion", "inputs": {"images": ["6", 0]}},
    }


def traceback_blocks(log: str) -> list[str]:
    """Each Python traceback in a log: from 'Traceback' through the first unindented line (the exception)."""
    blocks, current = [], None
    for line in log.splitlines():
        if line.startswith("Traceback (most recent call last)"):
            current = [line]
        elif current is not None:
            current.append(line)
            if line and not line[0].isspace():
                blocks.append("\n".join(current))
                current = None
    return blocks


def test_pack_loads_without_import_errors(comfy_server):
    log = comfy_server.log_text().split("Starting server")[0]  # start-up only; later tests provoke errors on purpose
    assert "Error while calling comfy_entrypoint" not in log, log[-4000:]
    assert "IMPORT FAILED" not in "\n".join(l for l in log.splitlines() if "atelier" in l.lower()), log[-4000:]
    ours = [b for b in traceback_blocks(log) if "custom_nodes/atelier" in b]
    assert ours == [], ours
    assert re.search(r"seconds: .*custom_nodes/atelier", log), \
        "pack not in ComfyUI's custom-node import list:\n" + log[-3000:]


def test_object_info_lists_every_node_with_tooltips(comfy):
    info = comfy.object_info()
    expected = scan_nodes()
    assert expected, "no node schemas found in nodes/"
    for schema in expected:
        assert schema.node_id in info, f"{schema.node_id} ({schema.file}) missing from /object_info"
        entry = info[schema.node_id]
        assert entry["display_name"] == schema.display_name
        assert entry["category"].startswith("atelier/")
        for section in ("required", "optional"):
            for name, spec in entry["input"].get(section, {}).items():
                options = spec[1] if len(spec) > 1 else {}
                assert options.get("tooltip"), f"{schema.node_id}.{name} has no tooltip in /object_info"
    ours = sorted(k for k in info if k.startswith("Atelier"))
    assert ours == sorted(s.node_id for s in expected)


def test_seeds_stay_fixed_between_runs(comfy):
    """No Atelier seed gets the frontend's "control after generate: randomize" (which it adds to any INT named seed
    unless the schema says otherwise), so a second Run of an unchanged graph is served from ComfyUI's cache instead
    of training or rendering again."""
    seeds = {}
    for node_id, entry in comfy.object_info().items():
        if node_id.startswith("Atelier"):
            for section in ("required", "optional"):
                for name, spec in entry["input"].get(section, {}).items():
                    if name.endswith("seed"):
                        seeds[f"{node_id}.{name}"] = (spec[1] or {}).get("control_after_generate")
    assert len(seeds) >= 8 and all(value is False for value in seeds.values()), seeds


def test_txt2img_workflow_runs_into_atelier_node(comfy):
    outputs = comfy.run(txt2img_prompt(), timeout=300)
    text = outputs["7"]["text"][0]
    assert text.startswith("Atelier ")
    assert "images: 1 × 64×64, 3 channels" in text


def test_malformed_prompts_get_validation_errors_not_a_crash(comfy):
    with pytest.raises(ComfyError) as unknown:
        comfy.queue({"1": {"class_type": "AtelierNoSuchNode", "inputs": {}}})
    assert unknown.value.status == 400
    assert unknown.value.body["error"]["type"] == "invalid_prompt"

    bad = txt2img_prompt()
    bad["5"]["inputs"]["steps"] = "many"
    bad["7"]["inputs"]["images"] = ["99", 0]  # a link to a node that does not exist
    with pytest.raises(ComfyError) as invalid:
        comfy.queue(bad)
    assert invalid.value.status == 400
    assert invalid.value.body["node_errors"] or invalid.value.body["error"]

    # the server is still up and still runs a valid graph
    comfy.request("GET", "/system_stats")
    assert "images: 1 × 64×64" in comfy.run(txt2img_prompt(seed=2))["7"]["text"][0]
