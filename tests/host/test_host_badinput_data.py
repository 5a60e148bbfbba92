"""Bad inputs to the dataset, captioning and training nodes, sent raw through POST /prompt as any client can.

Each case asserts a clear error (history status "error" with a message naming the problem, or HTTP 400 from
ComfyUI's own validation) or a skip-and-report in the node's text. BAD_INPUTS lists them for benchmarks/RESULTS.md.
"""

import json
import time

import numpy as np
import pytest
from PIL import Image

from comfy_host import (FIXTURE_CHECKPOINT_NAME, ComfyError, advanced_train_widgets, load_dataset_node,
                        prepare_dataset_node)
from tiny_tagger import tagger_widgets

BAD_INPUTS = [
    ("load-ext-empty", "Load Dataset caption_extension ''"),
    ("load-ext-dot", "Load Dataset caption_extension '.'"),
    ("load-ext-parent", "Load Dataset caption_extension '../x'"),
    ("load-ext-nested", "Load Dataset caption_extension '.txt/../../x'"),
    ("load-encoding-punycode", "Load Dataset caption_encoding 'punycode'"),
    ("load-encoding-rot13", "Load Dataset caption_encoding 'rot13'"),
    ("load-role", "Load Dataset role 'bogus'"),
    ("load-caption-source", "Load Dataset caption_source 'bogus'"),
    ("load-on-missing", "Load Dataset on_missing_caption 'bogus'"),
    ("load-subset-name-long", "Load Dataset subset_name of 5,000 characters"),
    ("load-repeats-negative", "Load Dataset repeats -1 (schema range)"),
    ("prepare-mode", "Prepare Dataset mode 'bogus'"),
    ("prepare-filter", "Prepare Dataset filter 'bogus'"),
    ("mirror-mode", "Mirror Dataset mode 'bogus'"),
    ("dedupe-keep", "Dedupe Dataset keep 'bogus'"),
    ("dedupe-report-name-long", "Dedupe Dataset report_name of 5,000 characters"),
    ("images-role", "Images to Dataset role 'bogus'"),
    ("images-subset-name-long", "Images to Dataset subset_name of 5,000 characters"),
    ("save-format", "Save Dataset image_format 'gif'"),
    ("save-name-long", "Save Dataset name of 5,000 characters"),
    ("remove-match", "Remove Tags match 'bogus'"),
    ("add-position", "Add Tags position 'bogus'"),
    ("write-destination", "Write Captions destination 'bogus' (used to write beside the images)"),
    ("write-ext-nested", "Write Captions caption_extension '.txt/../../x' (used to write one file for all)"),
    ("write-ext-empty", "Write Captions caption_extension ''"),
    ("write-set-name-long", "Write Captions set_name of 5,000 characters"),
    ("tag-caption-mode", "WD14 Tag Dataset caption_mode 'bogus'"),
    ("tag-sort", "WD14 Tag Images sort 'bogus'"),
    ("tag-device", "WD14 Tag Images device 'cuda:7'"),
    ("train-config-list", "Train LoRA Advanced config_json '[1,2]'"),
    ("train-config-not-json", "Train LoRA Advanced config_json '{epochs: 1'"),
    ("train-config-unknown-key", "Train LoRA Advanced config_json with an unknown key"),
    ("train-config-wrong-type", "Train LoRA Advanced config_json epochs 'ten'"),
    ("train-config-nan", "Train LoRA Advanced config_json unet_lr NaN"),
    ("train-optimizer", "Train LoRA Advanced optimizer 'bogus'"),
    ("train-precision", "Train LoRA Advanced precision 'fp8'"),
    ("train-sampler", "Train LoRA Advanced sample_sampler 'bogus' (used only after training)"),
    ("train-output-name-long", "Train LoRA output_name of 5,000 characters"),
    ("train-keep-tokens-range", "Train LoRA Advanced keep_tokens 5000 (schema range)"),
    ("caption-control-chars", "captions with ESC, BEL, U+202E, U+200B: cleaned and reported"),
    ("caption-too-many-tags", "a 2,500-tag caption: skipped and reported"),
    ("caption-too-large-file", "a 100 kB caption file: skipped from its size and reported"),
    ("animated-gif", "an animated GIF: frame 1 used and reported"),
    ("animated-webp", "an animated WebP: frame 1 used and reported"),
    ("extreme-strip", "a 6500×10 strip: warned at load, skipped with a reason in crop mode"),
    ("tag-broken-image", "WD14 Tag Dataset on a truncated image: skipped and reported, others tagged"),
    ("truncate-long-caption", "Truncate Captions with the real CLIP on a 1,999-tag caption: seconds, not minutes"),
    ("train-long-caption", "training one step on a 1,999-tag caption: seconds, not minutes"),
]
LONG = "n" * 5000
def cases(rows):
    """Parametrize rows with their BAD_INPUTS id as the test id."""
    known = {case for case, _ in BAD_INPUTS}
    assert all(row[0] in known for row in rows), [row[0] for row in rows if row[0] not in known]
    return [pytest.param(*row, id=row[0]) for row in rows]


FILTERS = {"only_filenames": "", "only_with_tags": "", "only_without_tags": "", "subsets": ""}


@pytest.fixture(scope="module")
def bad_folder(comfy_server):
    """input/bad_data: a clean image, a dirty caption, oversized captions, animations and a strip."""
    folder = comfy_server.input_dir / "bad_data"
    folder.mkdir(exist_ok=True)
    Image.new("RGB", (64, 64), (0, 0, 255)).save(folder / "clean.png")
    (folder / "clean.txt").write_text("clean, caption", encoding="utf-8")
    Image.new("RGB", (64, 64), (255, 0, 0)).save(folder / "dirty.png")
    (folder / "dirty.txt").write_text("bell\x07, esc\x1b[0m, rtl\u202eexe.txt, zero\u200bwidth", encoding="utf-8")
    Image.new("RGB", (64, 64)).save(folder / "many.png")
    (folder / "many.txt").write_text(", ".join(f"t{i}" for i in range(2500)), encoding="utf-8")
    Image.new("RGB", (64, 64)).save(folder / "huge.png")
    (folder / "huge.txt").write_bytes(b"x" * 100_000)
    frames = [Image.new("RGB", (48, 48), c) for c in ((0, 255, 0), (255, 0, 255), (0, 0, 0))]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:], duration=80)
    frames[0].save(folder / "anim.webp", save_all=True, append_images=frames[1:], duration=80, lossless=True)
    Image.new("RGB", (6500, 10), (9, 9, 9)).save(folder / "strip.png")
    for name in ("anim", "strip"):
        (folder / f"{name}.txt").write_text(name, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def small_folder(comfy_server):
    """input/bad_small: two captioned images, for edits and writes."""
    folder = comfy_server.input_dir / "bad_small"
    folder.mkdir(exist_ok=True)
    for i in range(2):
        Image.new("RGB", (64, 64), (60 * i, 90, 200)).save(folder / f"x{i}.png")
        (folder / f"x{i}.txt").write_text(f"x style, pose {i}", encoding="utf-8")
    return folder


def load_node(folder="input/bad_small", **overrides):
    return load_dataset_node(folder, **{"subset_name": "bad", **overrides})


def stats(source) -> dict:
    return {"class_type": "AtelierDatasetStats", "inputs": {"dataset": source, "batch_size": 1, "epochs": 1,
                                                            "grad_accum": 1, "kimg": 0.0}}


def failure(comfy, prompt) -> str:
    """Runs a prompt that must fail at execution; returns the exception message."""
    entry = comfy.wait(comfy.queue(prompt), timeout=300)
    assert entry["status"]["status_str"] == "error", entry["status"]
    errors = [m for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert errors, entry["status"]["messages"]
    return errors[0][1]["exception_message"]


def refused_at_validation(comfy, prompt) -> str:
    with pytest.raises(ComfyError) as info:
        comfy.queue(prompt)
    assert info.value.status == 400
    return json.dumps(info.value.body)


def assert_no_server_path(comfy_server, message):
    assert str(comfy_server.input_dir.parent) not in message, message
    assert len(message) < 1000, f"message echoes the input: {len(message)} characters"


# ---------------------------------------------------------------- Load Dataset

@pytest.mark.parametrize("case, overrides, expected", cases([
    ("load-ext-empty", {"caption_extension": ""}, "caption_extension '' is not allowed; use one of .txt, .caption"),
    ("load-ext-dot", {"caption_extension": "."}, "caption_extension '.' is not allowed; use one of"),
    ("load-ext-parent", {"caption_extension": "../x"}, "caption_extension '../x' is not allowed"),
    ("load-ext-nested", {"caption_extension": ".txt/../../x"}, "caption_extension '.txt/../../x' is not allowed"),
    ("load-encoding-punycode", {"caption_encoding": "punycode"},
     "caption_encoding 'punycode' is not an allowed text encoding; use one of utf-8"),
    ("load-encoding-rot13", {"caption_encoding": "rot13"}, "caption_encoding 'rot13' is not an allowed"),
    ("load-role", {"role": "bogus"}, "Unknown role 'bogus'; expected one of train, regularization"),
    ("load-caption-source", {"caption_source": "bogus"},
     "Unknown caption_source 'bogus'; expected one of sidecar, filename, folder, fixed"),
    ("load-on-missing", {"on_missing_caption": "bogus"},
     "Unknown on_missing_caption 'bogus'; expected one of error, skip, empty"),
    ("load-subset-name-long", {"subset_name": LONG}, "subset_name: it is 5,000 characters (5,000 bytes) long"),
]))
def test_load_dataset_refuses(comfy, comfy_server, small_folder, case, overrides, expected):
    message = failure(comfy, {"1": load_node(**overrides), "2": stats(["1", 0])})
    assert expected in message, message
    assert_no_server_path(comfy_server, message)


def test_load_dataset_numbers_have_ranges(comfy, small_folder):  # load-repeats-negative
    body = refused_at_validation(comfy, {"1": load_node(repeats=-1), "2": stats(["1", 0])})
    assert "repeats" in body and "smaller than min" in body


# ---------------------------------------------------------------- other dataset nodes

def graph_images() -> dict:
    return {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": 0}}


@pytest.mark.parametrize("case, node, expected", cases([
    ("prepare-mode", prepare_dataset_node(["1", 0], mode="bogus"),
     "Unknown mode 'bogus'; expected one of crop, letterbox, buckets, none"),
    ("prepare-filter", prepare_dataset_node(["1", 0], filter="bogus"),
     "Unknown filter 'bogus'; expected one of lanczos, area, bicubic, bilinear, nearest"),
    ("mirror-mode", {"class_type": "AtelierMirrorDataset", "inputs": {
        "dataset": ["1", 0], "mode": "bogus", "subsets": "", "exclude_subsets": ""}},
     "Unknown mode 'bogus'; expected one of none, random, copies"),
    ("dedupe-keep", {"class_type": "AtelierDedupeDataset", "inputs": {
        "dataset": ["1", 0], "threshold": 6, "keep": "bogus", "flip_aware": True, "border_aware": True,
        "report_name": "bad"}}, "Unknown keep 'bogus'; expected one of"),
    ("dedupe-report-name-long", {"class_type": "AtelierDedupeDataset", "inputs": {
        "dataset": ["1", 0], "threshold": 6, "keep": "largest", "flip_aware": True, "border_aware": True,
        "report_name": LONG}}, "report_name: it is 5,000 characters (5,000 bytes) long"),
    ("images-role", {"class_type": "AtelierImagesToDataset", "inputs": {
        "images": ["9", 0], "captions": "a", "subset_name": "g", "role": "bogus", "repeats": 1}},
     "Unknown role 'bogus'; expected one of train, regularization"),
    ("images-subset-name-long", {"class_type": "AtelierImagesToDataset", "inputs": {
        "images": ["9", 0], "captions": "a", "subset_name": LONG, "role": "train", "repeats": 1}},
     "subset_name: it is 5,000 characters (5,000 bytes) long"),
    ("remove-match", {"class_type": "AtelierRemoveTags", "inputs": {
        "dataset": ["1", 0], "tags": "pose 1", "match": "bogus", **FILTERS}},
     "Unknown match 'bogus'; expected one of exact, wildcard, regex"),
    ("add-position", {"class_type": "AtelierAddTags", "inputs": {
        "dataset": ["1", 0], "tags": "new", "position": "bogus", **FILTERS}},
     "Unknown position 'bogus'; expected one of start, end"),
]))
def test_dataset_and_caption_nodes_refuse(comfy, comfy_server, small_folder, case, node, expected):
    out_node = {"class_type": "AtelierDatasetStats", "inputs": {
        "dataset": ["2", 0], "batch_size": 1, "epochs": 1, "grad_accum": 1, "kimg": 0.0}}
    message = failure(comfy, {"1": load_node(), "9": graph_images(), "2": node, "3": out_node})
    assert expected in message, message
    assert_no_server_path(comfy_server, message)


@pytest.mark.parametrize("case, widgets, expected", cases([
    ("save-format", {"name": "bad_save", "image_format": "gif"}, "Unknown image_format 'gif'; expected one of png"),
    ("save-name-long", {"name": LONG, "image_format": "png"}, "name: it is 5,000 characters (5,000 bytes) long"),
]))
def test_save_dataset_refuses(comfy, comfy_server, small_folder, case, widgets, expected):
    message = failure(comfy, {"1": load_node(), "2": {"class_type": "AtelierSaveDataset", "inputs": {
        "dataset": ["1", 0], **widgets}}})
    assert expected in message, message
    assert_no_server_path(comfy_server, message)
    assert not (comfy_server.output_dir / "atelier" / "datasets" / "bad_save").exists()


# ---------------------------------------------------------------- Write Captions

@pytest.mark.parametrize("case, widgets, expected", cases([
    ("write-destination", {"destination": "bogus"},
     "Unknown destination 'bogus'; expected one of beside_images, output_folder"),
    ("write-ext-nested", {"caption_extension": ".txt/../../x"}, "caption_extension '.txt/../../x' is not allowed"),
    ("write-ext-empty", {"caption_extension": ""}, "caption_extension '' is not allowed"),
    ("write-set-name-long", {"destination": "output_folder", "set_name": LONG},
     "set_name: it is 5,000 characters (5,000 bytes) long"),
]))
def test_write_captions_refuses_and_writes_nothing(comfy, comfy_server, small_folder, case, widgets, expected):
    before = {p.name: p.read_bytes() for p in small_folder.iterdir()}
    edited = {"class_type": "AtelierAddTags", "inputs": {"dataset": ["1", 0], "tags": "changed", "position": "end",
                                                         **FILTERS}}
    write = {"class_type": "AtelierWriteCaptions", "inputs": {
        "dataset": ["2", 0], "dry_run": False, "backup": True, "destination": "beside_images", "set_name": "bad",
        "caption_extension": ".txt", "preview": 5, **widgets}}
    message = failure(comfy, {"1": load_node(), "2": edited, "3": write})
    assert expected in message, message
    assert_no_server_path(comfy_server, message)
    assert {p.name: p.read_bytes() for p in small_folder.iterdir()} == before  # nothing written or backed up
    assert not list(comfy_server.input_dir.glob("x")) and not list(comfy_server.input_dir.parent.glob("x"))


# ---------------------------------------------------------------- taggers

@pytest.mark.parametrize("case, node_type, overrides, expected", cases([
    ("tag-caption-mode", "AtelierTagDataset", {"caption_mode": "bogus"},
     "Unknown caption_mode 'bogus'; expected one of replace, append, prepend, only_missing"),
    ("tag-sort", "AtelierTagImages", {"sort": "bogus"}, "Unknown sort 'bogus'; expected one of confidence"),
    ("tag-device", "AtelierTagImages", {"device": "cuda:7"}, "Unknown device 'cuda:7'; expected one of auto, cpu"),
]))
def test_taggers_refuse(comfy, small_folder, tagger_model, case, node_type, overrides, expected):
    widgets = tagger_widgets(tagger_model, **{k: v for k, v in overrides.items() if k != "caption_mode"})
    if node_type == "AtelierTagDataset":
        node = {"class_type": node_type, "inputs": {"dataset": ["1", 0], "caption_mode": overrides["caption_mode"],
                                                    **widgets}}
        prompt = {"1": load_node(), "2": node, "3": stats(["2", 0])}
    else:
        prompt = {"9": graph_images(), "2": {"class_type": node_type, "inputs": {"images": ["9", 0], **widgets}}}
    message = failure(comfy, prompt)
    assert expected in message, message


def test_tag_dataset_skips_and_reports_a_broken_image(comfy, comfy_server, tagger_model):  # tag-broken-image
    folder = comfy_server.input_dir / "bad_tag"
    folder.mkdir(exist_ok=True)
    Image.new("RGB", (40, 40), (0, 0, 255)).save(folder / "good.png")
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(folder / "bad.png")
    prompt = {"1": load_node("input/bad_tag", caption_source="fixed", fixed_caption="old"),
              "2": {"class_type": "AtelierTagDataset", "inputs": {"dataset": ["1", 0], "caption_mode": "replace",
                                                                  **tagger_widgets(tagger_model)}},
              "3": {"class_type": "AtelierTagFrequency", "inputs": {"dataset": ["2", 0], "top": 10}}}
    data = (folder / "bad.png").read_bytes()
    (folder / "bad.png").write_bytes(data[: len(data) // 2])  # verify_images is off: the tagger meets it first
    out = comfy.run(prompt, timeout=300)
    assert "tagged 1 image(s)" in out["2"]["text"][0]
    assert "skipped bad.png: truncated or corrupt image data" in out["2"]["text"][0]
    assert "blue" in out["3"]["text"][0] and "old" not in out["3"]["text"][0]


# ---------------------------------------------------------------- skip-and-report of bad data

def test_bad_captions_and_images_are_cleaned_skipped_or_noted(comfy, comfy_server, bad_folder):
    out = comfy.run({"1": load_node("input/bad_data", subset_name="bad_data"), "2": stats(["1", 0]),
                     "3": {"class_type": "AtelierTagFrequency", "inputs": {"dataset": ["1", 0], "top": 40}}})
    report, table = out["1"]["text"][0], out["3"]["text"][0]
    # caption-control-chars
    assert "1 caption(s) cleaned of control or invisible characters" in report and "dirty.txt" in report
    assert "U+0007 BEL" in report and "U+202E" in report and "U+200B" in report
    assert "rtlexe.txt" in table and "zerowidth" in table and "\x1b" not in table and "\u202e" not in table
    # caption-too-many-tags, caption-too-large-file
    assert "many.txt: caption has 2,500 tags, over the limit of 2,000" in report
    assert "huge.txt is 100,000 bytes" in report
    # animated-gif, animated-webp
    assert "anim.gif (GIF, frame 1 of 3 used)" in report and "anim.webp (WEBP, frame 1 of 3 used)" in report
    # extreme-strip
    assert "warning: strip.png: extreme aspect ratio 6500×10 (650:1)" in report
    assert "'bad_data' (train): 5 images × 1 repeats" in report  # clean, dirty, two animations, the strip
    assert_no_server_path(comfy_server, report.split("skipped")[0])

    prepared = comfy.run({"1": load_node("input/bad_data", subset_name="bad_data"),
                          "2": prepare_dataset_node(["1", 0]),
                          "3": {"class_type": "AtelierDatasetToImages", "inputs": {"dataset": ["2", 0],
                                                                                   "max_images": 16}},
                          "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 2]}}})
    notes = prepared["4"]["text"][0]
    assert "strip.png: crop to 64×64 would keep only 0.15% of this 6500×10 image" in notes, notes
    assert "letterbox" in notes


# ---------------------------------------------------------------- bounded caption work

def long_caption_folder(comfy_server, name):
    folder = comfy_server.input_dir / name
    folder.mkdir(exist_ok=True)
    Image.new("RGB", (64, 64), (10, 120, 30)).save(folder / "a.png")
    (folder / "a.txt").write_text("trigger, " + ", ".join(f"tag{i}" for i in range(1998)), encoding="utf-8")
    return folder


def test_truncate_a_long_caption_with_the_real_tokenizer_is_quick(comfy, comfy_server):  # truncate-long-caption
    long_caption_folder(comfy_server, "bad_long_trunc")
    start = time.monotonic()
    out = comfy.run({
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": FIXTURE_CHECKPOINT_NAME}},
        "2": load_node("input/bad_long_trunc"),
        "3": {"class_type": "AtelierTruncateCaptions", "inputs": {"dataset": ["2", 0], "max_tokens": 75,
                                                                  "keep_first": 1, "clip": ["1", 1], **FILTERS}},
        "4": {"class_type": "AtelierTagFrequency", "inputs": {"dataset": ["3", 0], "top": 5}}}, timeout=300)
    assert time.monotonic() - start < 15  # ~1 s; re-tokenizing once per dropped tag took 37 s here
    kept = out["4"]["text"][0].splitlines()
    assert 10 <= len(kept) <= 40 and any(line.endswith("trigger") for line in kept), kept


def test_training_on_a_long_caption_is_quick(comfy, comfy_server):  # train-long-caption
    long_caption_folder(comfy_server, "bad_long_train")
    start = time.monotonic()
    out = comfy.run(train_prompt("bad_long_caption", dataset=load_node("input/bad_long_train")), timeout=600)
    assert time.monotonic() - start < 30  # ~2 s; encoding all ~60 CLIP windows of the caption took 61 s here
    assert json.loads(out["4"]["text"][0])["steps"] == 1


# ---------------------------------------------------------------- training

def train_prompt(output_name, dataset=None, **overrides):
    widgets = advanced_train_widgets(output_name, **overrides)
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": FIXTURE_CHECKPOINT_NAME}},
        "2": dataset or load_node(caption_source="fixed", fixed_caption="x style"),
        "3": prepare_dataset_node(["2", 0]),
        "4": {"class_type": "AtelierTrainLoRAAdvanced", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "dataset": ["3", 0], **widgets}},
    }


@pytest.mark.parametrize("case, overrides, expected", cases([
    ("train-config-list", {"config_json": "[1,2]"}, "must be a JSON object such as"),
    ("train-config-not-json", {"config_json": "{epochs: 1"}, "config_json is not valid JSON (Expecting property name"),
    # learning_rate alone would read as a kohya config (imported); a misspelt key of ours is refused
    ("train-config-unknown-key", {"config_json": '{"epochs": 1, "learn_rate": 0.1}'},
     "Unknown training setting(s) learn_rate; known:"),
    ("train-config-wrong-type", {"config_json": '{"epochs": "ten"}'},
     "Training setting 'epochs' must be an integer, got text (\"ten\")"),
    ("train-config-nan", {"config_json": '{"unet_lr": NaN}'}, "Training setting 'unet_lr' must be a finite number"),
    ("train-optimizer", {"optimizer": "bogus"}, "Unknown optimizer 'bogus'; expected one of adamw, adafactor"),
    ("train-precision", {"precision": "fp8"}, "Unknown precision 'fp8'; expected one of fp32, bf16, fp16"),
    ("train-sampler", {"sample_sampler": "bogus"}, "Unknown sample_sampler 'bogus'; expected one of euler"),
    ("train-output-name-long", {"output_name": LONG}, "output_name: it is 5,000 characters (5,000 bytes) long"),
]))
def test_training_refuses_before_any_work(comfy, comfy_server, small_folder, case, overrides, expected):
    start = time.monotonic()
    message = failure(comfy, train_prompt(**{"output_name": "bad_train", **overrides}))
    assert expected in message, message
    assert_no_server_path(comfy_server, message)
    assert time.monotonic() - start < 60
    assert not list((comfy_server.models / "loras" / "atelier").glob("bad_train*"))


def test_training_numbers_have_ranges(comfy, small_folder):  # train-keep-tokens-range
    body = refused_at_validation(comfy, train_prompt("bad_range", keep_tokens=5000))
    assert "keep_tokens" in body and "bigger than max" in body
