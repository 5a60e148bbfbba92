"""Captioning through a real ComfyUI server: WD14 tagging, the guide's six edits as nodes, writing with backup."""

import re

import pytest
from PIL import Image

pytest.importorskip("onnx", reason="onnx is in the test extra: pip install -e '.[test]'")
from tiny_tagger import tagger_widgets  # noqa: E402

from comfy_host import FIXTURE_CHECKPOINT_NAME  # noqa: E402

FILTERS = {"only_filenames": "", "only_with_tags": "", "only_without_tags": "", "subsets": ""}


def edit(class_type, source, **widgets):
    return {"class_type": class_type, "inputs": {"dataset": [source, 0], **FILTERS, **widgets}}


def test_tag_folder_apply_guide_edits_write_with_backup_and_reload(comfy, comfy_server, tagger_model):
    folder = comfy_server.input_dir / "elf_caption"
    folder.mkdir()
    Image.new("RGB", (40, 40), (0, 0, 255)).save(folder / "portrait_01.png")
    Image.new("RGB", (40, 40), (255, 0, 0)).save(folder / "from_behind_02.png")
    Image.new("RGBA", (40, 40), (0, 0, 0, 0)).save(folder / "portrait_03.png")  # a render with alpha
    (folder / "portrait_01.txt").write_text("old caption", encoding="utf-8")
    load = {"class_type": "AtelierLoadDataset", "inputs": dict(
        folder="input/elf_caption", sub_path="", role="train", repeats=10, caption_source="sidecar",
        caption_extension=".txt", fixed_caption="", caption_encoding="utf-8", on_missing_caption="empty",
        recursive=True, prior_loss_weight=1.0, subset_name="elf", verify_images=True)}
    prompt = {
        "1": load,
        "2": {"class_type": "AtelierTagDataset", "inputs": {"dataset": ["1", 0], "caption_mode": "replace",
                                                            **tagger_widgets(tagger_model)}},
        "3": edit("AtelierRemoveTags", "2", tags="long hair", match="exact"),  # 1: features to memorise
        "4": edit("AtelierRemoveTags", "3", tags="hatsune*", match="wildcard"),  # 2: unrelated tags
        "5": edit("AtelierAddTags", "4", tags="portrait", position="end",  # 3: composition tag where it applies
                  **{**FILTERS, "only_filenames": "portrait_*"}),
        "6": edit("AtelierAddTags", "5", tags="realistic", position="end"),  # 4: absorb the 3D look
        "7": edit("AtelierAddTags", "6", tags="nose, lips", position="end",  # 5: where they apply
                  **{**FILTERS, "only_without_tags": "red"}),
        "8": edit("AtelierSetTriggerWords", "7", trigger_words="blonde elf"),  # 6: trigger word first
        "9": {"class_type": "AtelierTagFrequency", "inputs": {"dataset": ["8", 0], "top": 20}},
        "10": {"class_type": "AtelierWriteCaptions", "inputs": {
            "dataset": ["8", 0], "dry_run": False, "backup": True, "destination": "beside_images",
            "set_name": "captions", "caption_extension": ".txt", "preview": 10}},
    }
    out = comfy.run(prompt, timeout=300)
    written = {p.stem: p.read_text(encoding="utf-8") for p in folder.glob("*.txt")}
    assert written["portrait_01"] == "blonde elf, blue, ^_^, smile \\(happy\\), portrait, realistic, nose, lips"
    assert written["from_behind_02"] == "blonde elf, red, ^_^, smile \\(happy\\), realistic"
    assert written["portrait_03"].startswith("blonde elf, white background, ")  # alpha went onto white
    backups = list((folder / ".atelier_caption_backup").rglob("portrait_01.txt"))
    assert len(backups) == 1 and backups[0].read_text() == "old caption"
    assert "3 of 3 captions change" in out["10"]["text"][0]
    assert re.search(r"\b3\s+blonde elf", out["9"]["text"][0]) and "long hair" not in out["9"]["text"][0]

    reload = {"1": load, "2": {"class_type": "AtelierTagFrequency", "inputs": {"dataset": ["1", 0], "top": 20}}}
    table = comfy.run(reload)["2"]["text"][0]
    assert re.search(r"\b3\s+realistic", table) and re.search(r"\b2\s+portrait", table)


def test_tag_images_and_truncate_with_real_clip_tokenizer(comfy, comfy_server, tagger_model):
    folder = comfy_server.input_dir / "trunc"
    folder.mkdir()
    Image.new("RGB", (16, 16)).save(folder / "a.png")
    (folder / "a.txt").write_text("trigger, " + ", ".join(f"tag{i}" for i in range(60)), encoding="utf-8")
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 2, "color": 0x0000FF}},
        "2": {"class_type": "AtelierTagImages", "inputs": {"images": ["1", 0], **tagger_widgets(tagger_model)}},
        "3": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": FIXTURE_CHECKPOINT_NAME}},
        "4": {"class_type": "AtelierLoadDataset", "inputs": dict(
            folder="input/trunc", sub_path="", role="train", repeats=1, caption_source="sidecar",
            caption_extension=".txt", fixed_caption="", caption_encoding="utf-8", on_missing_caption="error",
            recursive=True, prior_loss_weight=1.0, subset_name="t", verify_images=False)},
        "5": {"class_type": "AtelierTruncateCaptions", "inputs": {"dataset": ["4", 0], "max_tokens": 20,
                                                                  "keep_first": 1, "clip": ["3", 1], **FILTERS}},
        "6": {"class_type": "AtelierTagFrequency", "inputs": {"dataset": ["5", 0], "top": 5}},
    }
    out = comfy.run(prompt, timeout=300)
    lines = out["2"]["text"][0].splitlines()
    assert lines == ["hatsune miku, blue, long hair, ^_^, smile \\(happy\\)"] * 2
    # CLIP-L tokenizes 'tagN' as 'tag' + digits and ',' separately: 'trigger, tag0, tag1, ...' fits ~6 tags in 20
    kept = [line.split()[-1] for line in out["6"]["text"][0].splitlines()]
    assert "trigger" in kept and 3 <= len(kept) <= 10, kept


def test_attach_captions_from_another_captioner(comfy, comfy_server, tagger_model):
    folder = comfy_server.input_dir / "attach"
    folder.mkdir()
    for name, color in (("a_blue", (0, 0, 255)), ("b_red", (255, 0, 0))):
        Image.new("RGB", (24, 24), color).save(folder / f"{name}.png")
    prompt = {
        "1": {"class_type": "AtelierLoadDataset", "inputs": dict(
            folder="input/attach", sub_path="", role="train", repeats=1, caption_source="fixed",
            caption_extension=".txt", fixed_caption="placeholder", caption_encoding="utf-8",
            on_missing_caption="error", recursive=True, prior_loss_weight=1.0, subset_name="att",
            verify_images=False)},
        "2": {"class_type": "AtelierDatasetToImages", "inputs": {"dataset": ["1", 0], "max_images": 8}},
        # any captioner's STRING output would do; here the tagger's, one caption per line
        "3": {"class_type": "AtelierTagImages", "inputs": {"images": ["2", 0], **tagger_widgets(
            tagger_model, include_characters=False, exclude_tags="long hair, ^_^, smile (happy)")}},
        "4": {"class_type": "AtelierAttachCaptions", "inputs": {"dataset": ["1", 0], "captions": ["3", 0]}},
        "5": {"class_type": "AtelierTagFrequency", "inputs": {"dataset": ["4", 0], "top": 10}},
    }
    table = comfy.run(prompt)["5"]["text"][0]
    assert re.search(r"\b1\s+blue\b", table) and re.search(r"\b1\s+red\b", table) and "placeholder" not in table


def test_clean_and_replace_tags_rewrite_the_sidecars(comfy, comfy_server):
    """Clean Tags (weights, case, repeats, sort after the trigger) then Replace Tags (rename, remove, expand) on
    one file only, written beside the images."""
    folder = comfy_server.input_dir / "clean_replace"
    folder.mkdir()
    for name, caption in (("a_elf", "Korra, (smile:1.2), 1girl, Blue Eyes, smile, blurry, hat"),
                          ("b_elf", "korra, 1girl, [blurry], Zebra, apple, ((hat))")):
        Image.new("RGB", (16, 16)).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(caption, encoding="utf-8")
    prompt = {
        "1": {"class_type": "AtelierLoadDataset", "inputs": dict(
            folder="input/clean_replace", sub_path="", role="train", repeats=1, caption_source="sidecar",
            caption_extension=".txt", fixed_caption="", caption_encoding="utf-8", on_missing_caption="error",
            recursive=True, prior_loss_weight=1.0, subset_name="cr", verify_images=False)},
        "2": edit("AtelierCleanTags", "1", strip_weights=True, lowercase=True, dedupe=True, sort=True, keep_first=1),
        "3": edit("AtelierReplaceTags", "2", **{**FILTERS, "only_filenames": "a_*"},
                  replace_map="# renames\n1girl => woman\nblurry =>\nhat => red hat, headwear"),
        "4": {"class_type": "AtelierWriteCaptions", "inputs": {
            "dataset": ["3", 0], "dry_run": False, "backup": False, "destination": "beside_images",
            "set_name": "captions", "caption_extension": ".txt", "preview": 10}},
    }
    out = comfy.run(prompt, timeout=300)
    assert out["2"]["text"][0].startswith("2 of 2 captions change")
    assert out["3"]["text"][0].startswith("1 of 2 captions change") and "a_elf.png: -1girl" in out["3"]["text"][0]
    written = {p.stem: p.read_text(encoding="utf-8") for p in folder.glob("*.txt")}
    # a: weights stripped, lowercased, the second 'smile' dropped, sorted after 'korra'; then renamed and expanded
    assert written["a_elf"] == "korra, woman, blue eyes, red hat, headwear, smile"
    # b: cleaned the same way, but outside only_filenames: Replace Tags left it alone
    assert written["b_elf"] == "korra, 1girl, apple, blurry, hat, zebra"
