"""Hostile client: every path-, name- and file-taking input of every Atelier node, sent raw through POST /prompt.

Nothing here is polite: values are what a script on the network can send (ComfyUI 0.3.64 does not check V3
dropdown values), not what the frontend offers. Canary files outside the roots, symlinks into them at every level
(dataset folder, image, caption sidecar, backup folder, training state, model file) and victim files of other runs
are laid out first; every case must end in a clear error (or a skip-and-report) and, at the end, no canary is read,
changed, copied or deleted, no file appears outside the roots, and no answer names a server path.
"""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from comfy_host import FIXTURE_CHECKPOINT_NAME, ComfyError, load_dataset_node, prepare_dataset_node
from PIL import Image
from safetensors.torch import save_file

SECRET = "canary-secret-7f3a"
# Builtin exception types that mean "crashed on the input" rather than "refused it with a message".
RAW_CRASHES = ("IndexError", "KeyError", "TypeError", "AttributeError", "UnboundLocalError", "NameError",
               "ZeroDivisionError", "FileNotFoundError", "IsADirectoryError", "NotADirectoryError", "PermissionError",
               "OSError", "UnicodeDecodeError", "UnicodeEncodeError", "RecursionError", "JSONDecodeError")
SAFE_INT = {"steps": 1, "max_steps": 1, "epochs": 1, "width": 64, "height": 64, "rank": 4, "batch_size": 1,
            "count": 2, "seeds_per_cell": 1, "size": 64, "max_images": 2}
# Inputs that name a file, folder or output: every one is attacked below (a new one must be added here).
NAME_INPUTS = {"output_name", "grid_name", "report_name", "name", "set_name", "subset_name", "checkpoint_name"}
FILE_COMBOS = {"lora", "lora_a", "lora_b", "lora_1", "lora_2", "lora_3", "lora_4", "checkpoint_b", "continue_from",
               "resume_state", "model"}
PATH_LIKE = ("name", "path", "folder", "file", "lora", "checkpoint", "state", "model", "extension", "encoding",
             "continue")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def hostile(comfy, comfy_server):
    """The layout: canaries outside every root, symlinks leading to them, victim files of another run."""
    work = comfy_server.workdir
    outside = work / "outside"
    (outside / "state").mkdir(parents=True, exist_ok=True)
    (outside / "backups").mkdir(exist_ok=True)
    (outside / "secret.txt").write_text(SECRET)
    Image.new("RGB", (64, 64), (9, 9, 9)).save(outside / "secret.png")
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(1, 4), "lora_unet_x.lora_up.weight": torch.zeros(4, 1)},
              str(outside / "secret.safetensors"), metadata={"secret": SECRET})
    (outside / "state" / "state.json").write_text(json.dumps({"secret": SECRET}))

    ok = comfy_server.input_dir / "sec_ok"  # a harmless dataset the generic prompts start from
    ok.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    for i in range(2):
        Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(ok / f"{i}.png")
        (ok / f"{i}.txt").write_text(f"ok tag, pose {i}")

    links = comfy_server.input_dir / "sec_links"  # symlinks at the image, sidecar and backup-folder level
    links.mkdir(exist_ok=True)
    Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(links / "a.png")
    Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(links / "b.png")
    (links / "b.txt").write_text("b tag")
    for link, target in ((links / "a.txt", outside / "secret.txt"), (links / "c.png", outside / "secret.png"),
                         (links / ".atelier_caption_backup", outside / "backups"),
                         (comfy_server.input_dir / "sec_folder_link", outside),
                         (comfy_server.models / "loras" / "leak.safetensors", outside / "secret.safetensors"),
                         (comfy_server.models / "checkpoints" / "leak.safetensors", outside / "secret.safetensors")):
        if not os.path.lexists(link):
            link.symlink_to(target, target_is_directory=target.is_dir())
    states = comfy_server.output_dir / "atelier" / "train_state"
    states.mkdir(parents=True, exist_ok=True)
    if not os.path.lexists(states / "leak"):
        (states / "leak").symlink_to(outside / "state", target_is_directory=True)
    victims = comfy_server.models / "loras" / "atelier"
    victims.mkdir(parents=True, exist_ok=True)
    for i in (1, 2):
        (victims / f"victimrun-00000{i}.safetensors").write_bytes(b"victim")

    watched = sorted(p for p in outside.rglob("*") if p.is_file()) + sorted(victims.glob("victimrun-*"))
    before = {p: sha(p) for p in watched}
    roots = {"input", "output", "models", "temp", "user", "custom_nodes", "datasets", "outside"}
    outside_roots = {p for p in work.iterdir() if p.name not in roots}
    info = comfy.object_info()
    yield {"outside": outside, "before": before, "outside_roots": outside_roots, "info": info, "work": work}
    # The whole module's verdict: nothing read, changed, copied or deleted outside the roots.
    assert {p: sha(p) for p in before if p.exists()} == before, "a canary or victim file changed"
    assert all(p.exists() for p in before), "a canary or victim file was deleted"
    assert sorted(p.name for p in outside.rglob("*")) == sorted(["state", "backups", "secret.txt", "secret.png",
                                                                 "secret.safetensors", "state.json"])
    assert {p for p in work.iterdir() if p.name not in roots} == outside_roots, "a file appeared outside the roots"
    leaked = [p for p in work.rglob("*") if p.is_file() and not p.is_symlink() and outside not in p.parents
              and p.suffix in (".txt", ".json", ".safetensors", ".csv") and SECRET.encode() in p.read_bytes()]
    assert not leaked, f"the canary's content was copied into {leaked}"


def widget_defaults(spec: dict) -> dict:
    """A raw, minimal value for every required widget of a node, from /object_info."""
    values = {}
    for name, entry in spec["input"].get("required", {}).items():
        kind, opts = entry[0], (entry[1] if len(entry) > 1 else {}) or {}
        if isinstance(kind, list) or kind == "COMBO":
            options = kind if isinstance(kind, list) else opts.get("options", [])
            values[name] = opts.get("default", options[0] if options else "")
        elif kind in ("INT", "FLOAT"):
            value = SAFE_INT.get(name, opts.get("default", 0))
            if "min" in opts:
                value = max(value, opts["min"])
            values[name] = value
        elif kind in ("STRING", "BOOLEAN"):
            values[name] = opts.get("default", "" if kind == "STRING" else False)
    return values


def node_prompt(info: dict, class_type: str, **overrides) -> dict:
    """A whole prompt around one node: its links fed by stock loaders and a harmless dataset, its output consumed."""
    spec = info[class_type]
    prompt = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": FIXTURE_CHECKPOINT_NAME}},
        "load": load_dataset_node("input/sec_ok", on_missing_caption="empty"),
        "prep": prepare_dataset_node(["load", 0]),
        "imgs": {"class_type": "AtelierDatasetToImages", "inputs": {"dataset": ["prep", 0], "max_images": 2}},
    }
    link_for = {"MODEL": ["ckpt", 0], "CLIP": ["ckpt", 1], "VAE": ["ckpt", 2], "ATELIER_DATASET": ["prep", 0],
                "IMAGE": ["imgs", 0]}
    inputs = widget_defaults(spec)
    for name, entry in spec["input"].get("required", {}).items():
        if isinstance(entry[0], str) and entry[0] in link_for:
            inputs[name] = link_for[entry[0]]
    inputs.update(overrides)
    prompt["node"] = {"class_type": class_type, "inputs": inputs}
    if not spec["output_node"]:
        prompt["sink"] = {"class_type": "PreviewAny", "inputs": {"source": ["node", 0]}}
    return prompt


def refused(comfy, prompt: dict, work: Path) -> str:
    """Queues a raw prompt and returns the error text; fails if it ran, crashed raw, or named a server path."""
    try:
        entry = comfy.wait(comfy.queue(prompt), timeout=300)
    except ComfyError as e:  # refused at validation, before anything ran
        text = json.dumps(e.body)
        assert str(work) not in text, f"validation error names a server path: {text[:500]}"
        return text
    status = entry["status"]
    assert status["status_str"] == "error", f"accepted: {json.dumps(entry.get('outputs'))[:800]}"
    errors = [m[1] for m in status["messages"] if m[0] == "execution_error"]
    assert errors, status
    err = errors[0]
    text = err["exception_message"]
    assert err["exception_type"].rsplit(".", 1)[-1] not in RAW_CRASHES, f"raw crash: {err['exception_type']}: {text}"
    assert len(text.strip()) > 20, f"unclear error: {text!r}"
    assert str(work) not in text and SECRET not in text, f"error leaks a server path or the canary: {text[:500]}"
    return text


def attack_cases(info: dict, work: Path) -> list:
    """(node, input, value) for every path-, name- and file-taking input of every Atelier node."""
    outside = str(work / "outside")
    names = ["../escape", "/etc/passwd", "..\\..\\escape", "\\\\server\\share\\x", "sub/dir", "victimrun*", "[v]1",
             "x" * 5000, "bad\x1bname", "bidi\u202etxt.exe", "nul\x00name", ".."]
    files = ["../outside/secret.safetensors", f"{outside}/secret.safetensors", "leak.safetensors", "*",
             "x" * 5000, "nul\x00.safetensors", "atelier/../../../outside/secret.safetensors"]
    cases = []
    for class_type, spec in sorted(info.items()):
        if not class_type.startswith("Atelier"):
            continue
        widgets = {**spec["input"].get("required", {}), **spec["input"].get("optional", {})}
        for name, entry in widgets.items():
            is_combo = isinstance(entry[0], list) or entry[0] == "COMBO"
            if name in NAME_INPUTS and entry[0] == "STRING":
                values = names
            elif name in FILE_COMBOS and is_combo:
                values = {"resume_state": ["leak", "../leak", f"{outside}/state", "*", "x" * 5000],
                          "model": ["../outside", f"{outside}", "leak", "*", "x" * 5000]}.get(name, files)
            else:
                continue
            cases += [(class_type, name, v) for v in values]
    for node in ("AtelierLoadDataset", "AtelierLoadClips"):  # Load Clips takes its folder the same way
        cases += [(node, "folder", v) for v in
                  ["../outside", outside, "input/../outside", "input/sec_folder_link", "input/sec_folder_link/state",
                   "home", "C:\\Windows", "nul\x00"]]
        cases += [(node, "sub_path", v) for v in
                  ["../outside", outside, "sec_folder_link", "sec_folder_link/state", "..\\..\\x", "C:\\x",
                   "//srv/share", "x\x00y"]]
    for side in ("before", "after"):  # Load Image Pairs takes two folders the way Load Dataset takes one
        cases += [("AtelierLoadImagePairs", f"{side}_folder", v) for v in
                  ["../outside", outside, "input/../outside", "input/sec_folder_link", "home", "nul\x00"]]
        cases += [("AtelierLoadImagePairs", f"{side}_sub_path", v) for v in
                  ["../outside", outside, "sec_folder_link", "..\\..\\x", "//srv/share", "x\x00y"]]
    for node in ("AtelierLoadDataset", "AtelierLoadClips", "AtelierWriteCaptions"):
        cases += [(node, "caption_extension", v) for v in ["", ".", "../x", ".txt/../../x", f"{outside}/x.txt",
                                                           ".txt\x00", "*"]]
    cases += [("AtelierLoadDataset", "caption_encoding", v) for v in ["punycode", "rot13", "../x", "x" * 5000]]
    for kind in ("lora", "checkpoint"):
        cases += [("AtelierXYGrid", f"x_values:{kind}", v) for v in
                  ["../outside/secret.safetensors", "leak.safetensors", f"{outside}/secret.safetensors"]]
    return cases


def test_every_path_like_input_is_attacked(hostile):
    """The attack list covers every input whose name says it takes a path, a name or a file."""
    attacked = {(c, n.split(":")[0]) for c, n, _ in attack_cases(hostile["info"], hostile["work"])}
    missed = []
    for class_type, spec in hostile["info"].items():
        if not class_type.startswith("Atelier"):
            continue
        for section in ("required", "optional"):
            for name, entry in spec["input"].get(section, {}).items():
                takes_text = isinstance(entry[0], list) or entry[0] in ("STRING", "COMBO")
                if takes_text and any(w in name for w in PATH_LIKE) and (class_type, name) not in attacked:
                    missed.append(f"{class_type}.{name}")
    # only_filenames is a wildcard over the dataset's own file names (a filter), never opened or deleted
    assert [m for m in missed if not m.endswith(".only_filenames")] == []


def test_hostile_values_are_refused_with_a_clear_error(comfy, hostile):
    info, work = hostile["info"], hostile["work"]
    failures = []
    for class_type, name, value in attack_cases(info, work):
        if ":" in name:  # an XY Grid axis of file names
            axis, kind = name.split(":")
            prompt = node_prompt(info, class_type, x_kind=kind, x_values=value)
        else:
            prompt = node_prompt(info, class_type, **{name: value})
        try:
            refused(comfy, prompt, work)
        except AssertionError as e:
            failures.append(f"{class_type}.{name}={value[:40]!r}: {str(e).splitlines()[0][:400]}")
    if failures:
        pytest.fail(f"{len(failures)} hostile values not refused cleanly:\n" + "\n".join(failures), pytrace=False)


def test_sidecar_and_image_links_out_of_the_root_are_skipped_and_never_read(comfy, hostile):
    info = hostile["info"]
    prompt = node_prompt(info, "AtelierTagFrequency")
    prompt["load"]["inputs"]["folder"] = "input/sec_links"
    out = comfy.run(prompt)
    text = json.dumps(out)
    assert SECRET not in text and "b tag" in text  # b's own caption is read, a's linked one is not
    load = node_prompt(info, "AtelierTagFrequency")
    load["load"]["inputs"]["folder"] = "input/sec_links"
    load["sink2"] = {"class_type": "PreviewAny", "inputs": {"source": ["load", 1]}}
    report = json.dumps(comfy.run(load))
    assert "a.png" in report and "c.png" in report and "outside the allowed roots" in report
    assert str(hostile["work"]) not in report


def test_write_captions_with_a_linked_backup_folder_writes_nothing_outside(comfy, hostile):
    info = hostile["info"]
    prompt = node_prompt(info, "AtelierWriteCaptions", dry_run=False, backup=True, destination="beside_images",
                         set_name="x", caption_extension=".txt", preview=5)
    prompt["load"]["inputs"]["folder"] = "input/sec_links"
    prompt["edit"] = {"class_type": "AtelierAddTags", "inputs": {
        "dataset": ["prep", 0], "tags": "added", "position": "end", "only_filenames": "", "only_with_tags": "",
        "only_without_tags": "", "subsets": ""}}
    prompt["node"]["inputs"]["dataset"] = ["edit", 0]
    refused(comfy, prompt, hostile["work"])
    assert not list((hostile["outside"] / "backups").iterdir())
    assert (hostile["work"] / "input" / "sec_links" / "b.txt").read_text() == "b tag"  # all or nothing


def test_glob_output_name_with_keep_last_deletes_no_other_run(comfy, hostile):
    info = hostile["info"]
    for name in ("*", "victimrun*", "victimrun-00000[12]"):
        refused(comfy, node_prompt(info, "AtelierTrainLoRAAdvanced", output_name=name, keep_last=1,
                                   save_every_epochs=1), hostile["work"])
    victims = hostile["work"] / "models" / "loras" / "atelier"
    assert sorted(p.name for p in victims.glob("victimrun-*")) == ["victimrun-000001.safetensors",
                                                                   "victimrun-000002.safetensors"]


def test_shipped_files_follow_the_umask_and_name_no_server_path(comfy_server, source_lora):
    """A trained LoRA and its state get the umask's permissions (not a temp file's 0600), and the LoRA's metadata
    names its dataset folder by its name, never by the server's path."""
    from safetensors import safe_open

    mask = os.umask(0o022)
    os.umask(mask)  # the server inherited this process's umask
    lora = comfy_server.models / "loras" / source_lora
    state = comfy_server.output_dir / "atelier" / "train_state" / Path(source_lora).stem
    assert oct(os.stat(lora).st_mode & 0o777) == oct(0o666 & ~mask)
    assert oct(os.stat(state).st_mode & 0o777) == oct(0o777 & ~mask)
    assert oct(os.stat(state / "state.json").st_mode & 0o777) == oct(0o666 & ~mask)
    with safe_open(str(lora), "pt") as f:
        meta = f.metadata()
    assert str(comfy_server.workdir) not in json.dumps(meta)
    assert json.loads(meta["ss_dataset_dirs"]) == {"5_x": {"n_repeats": 5, "img_count": 2}}  # folder names only
