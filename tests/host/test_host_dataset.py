"""Dataset nodes through a real ComfyUI server: load, dedupe, buckets, preview, stats, save, path refusals."""

import json
import os
import re

import numpy as np
import pytest
from comfy_host import combo_refusal, load_dataset_node, prepare_dataset_node
from PIL import Image


@pytest.fixture(scope="module")
def korra_folder(comfy_server):
    """input/korra_host/10_korra: 6 captioned images of mixed aspect, one mirrored duplicate, one truncated file."""
    folder = comfy_server.input_dir / "korra_host" / "10_korra"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    sizes = [(96, 64), (64, 96), (80, 80), (128, 64), (64, 64)]
    for i, (w, h) in enumerate(sizes):
        base = Image.fromarray((rng.random((6, 6, 3)) * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
        base.save(folder / f"img_{i}.png")
        (folder / f"img_{i}.txt").write_text(f"korra, pose {i}", encoding="utf-8")
    Image.open(folder / "img_2.png").transpose(Image.FLIP_LEFT_RIGHT).save(folder / "img_2_mirror.png")
    (folder / "img_2_mirror.txt").write_text("korra, pose 2, mirrored", encoding="utf-8")
    good = (folder / "img_0.png").read_bytes()
    (folder / "broken.png").write_bytes(good[: len(good) // 3])
    (folder / "broken.txt").write_text("broken", encoding="utf-8")
    return folder


def load_node(folder="input/korra_host", **overrides):
    return load_dataset_node(folder, **{"repeats": 0, "subset_name": "korra", "verify_images": True, **overrides})


def with_stats(load: dict) -> dict:
    """A prompt that loads and then shows statistics (an output node, so ComfyUI runs the graph)."""
    return {"1": load, "2": {"class_type": "AtelierDatasetStats", "inputs": {
        "dataset": ["1", 0], "batch_size": 1, "epochs": 1, "grad_accum": 1, "kimg": 0.0}}}


def test_dataset_workflow_loads_dedupes_buckets_previews_and_counts(comfy, comfy_server, korra_folder):
    prompt = {
        "1": load_node(),
        "2": prepare_dataset_node(["1", 0], mode="buckets", width=128, height=128, bucket_step=32),
        "3": {"class_type": "AtelierDedupeDataset", "inputs": {
            "dataset": ["2", 0], "threshold": 8, "keep": "largest", "flip_aware": True, "border_aware": True,
            "report_name": "host_dedupe"}},
        "4": {"class_type": "AtelierDatasetStats", "inputs": {
            "dataset": ["3", 0], "batch_size": 2, "epochs": 3, "grad_accum": 1, "kimg": 0.0}},
        "5": {"class_type": "AtelierPreviewDataset", "inputs": {
            "dataset": ["3", 0], "count": 8, "columns": 3, "cell": 96, "seed": 0}},
        "6": {"class_type": "AtelierVersion", "inputs": {"images": ["5", 0]}},
        "7": {"class_type": "AtelierVersion", "inputs": {"images": ["4", 1]}},
        "8": {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}},
        "9": {"class_type": "AtelierSaveDataset", "inputs": {"dataset": ["3", 0], "name": "korra_prepared",
                                                              "image_format": "png"}},
    }
    out = comfy.run(prompt, timeout=300)
    load_report = out["1"]["text"][0]
    assert "6 images × 10 repeats" in load_report and "broken.png" in load_report  # truncated file skipped, listed
    dedupe_text = out["3"]["text"][0]
    assert "img_2_mirror.png" in dedupe_text and "1 dropped" in dedupe_text.replace("dropped: 1", "1 dropped")
    report_path = re.search(r"report: (.+\.json)", dedupe_text).group(1)
    report = json.loads(comfy_server.file(report_path).read_text(encoding="utf-8"))
    assert [os.path.basename(d["key"]) for d in report["dropped"]] == ["img_2_mirror.png"]
    assert (korra_folder / "img_2_mirror.png").exists()  # never deletes sources
    stats = out["4"]["text"][0]
    assert "samples per epoch: 50\n" in stats, stats  # 5 images × 10 repeats
    assert "steps per epoch: 25 at batch size 2" in stats and "total steps: 75 for 3 epochs" in stats, stats
    # aspect buckets of at most 128² in steps of 32: landscape, portrait and square sources land apart
    assert re.search(r"160x96\s+2\b", stats) and re.search(r"96x160\s+1\b", stats), stats
    assert re.search(r"128x128\s+2\b", stats), stats
    assert re.search(r"images: 1 × \d+×\d+, 3 channels", out["6"]["text"][0])
    assert out["8"]["images"], "stock PreviewImage received no sheet"
    saved = comfy_server.output_dir / "atelier" / "datasets" / "korra_prepared"
    pngs = sorted(p.name for p in saved.rglob("*.png"))
    assert len(pngs) == 5 and (saved / "atelier_dataset.json").exists()
    sizes = sorted(Image.open(p).size for p in saved.rglob("*.png"))
    assert sizes == [(96, 160), (128, 128), (128, 128), (160, 96), (160, 96)], sizes


def test_saved_dataset_reloads_from_saved_root(comfy, korra_folder):
    test_dataset_ready = comfy.object_info()["AtelierLoadDataset"]["input"]["required"]["folder"]
    options = test_dataset_ready[0] if isinstance(test_dataset_ready[0], list) else test_dataset_ready[1]["options"]
    assert "input/korra_host" in options and "saved" in options
    out = comfy.run(with_stats(load_node(folder="saved", sub_path="korra_prepared", subset_name="again")))
    assert "5 images × 10 repeats" in out["1"]["text"][0]


@pytest.mark.parametrize("sub_path", ["../../etc", "/etc", "\\\\server\\share", "C:\\Windows"])
def test_paths_outside_roots_are_refused_with_roots_listed(comfy, korra_folder, sub_path):
    entry = comfy.wait(comfy.queue(with_stats(load_node(sub_path=sub_path))))
    assert entry["status"]["status_str"] == "error"
    err = [m for m in entry["status"]["messages"] if m[0] == "execution_error"][0][1]
    assert err["exception_type"].endswith("PathRefused")
    assert re.search(r"'\.\.'|absolute|UNC|drive", err["exception_message"])


@pytest.mark.parametrize("folder", ["/etc", "../..", "home"])
def test_folder_outside_the_dropdown_is_refused_at_execution(comfy, folder):
    """Refused either at queue time (upstream checks V3 combo values: HTTP 400 value_not_in_list) or by the node's
    own check (0.3.64 does not check them), which must then name the problem clearly."""
    where, kind, text = combo_refusal(comfy, with_stats(load_node(folder=folder)), "1", "folder")
    if where == "queue":
        assert kind == "value_not_in_list" and repr(folder) in text
    else:
        assert kind.endswith("PathRefused")
        assert re.search(r"absolute|'\.\.'|does not start with an allowed root", text)


def test_symlink_escape_refused(comfy, comfy_server, tmp_path, korra_folder):
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.new("RGB", (8, 8)).save(outside / "x.png")
    link = comfy_server.input_dir / "korra_host" / "escape"
    if not link.exists():
        os.symlink(outside, link)
    entry = comfy.wait(comfy.queue(with_stats(load_node(sub_path="escape"))))
    err = [m for m in entry["status"]["messages"] if m[0] == "execution_error"][0][1]
    assert "outside its root" in err["exception_message"]


def test_guide_recipe_subsets_mirror_downscale_and_bridges(comfy, comfy_server, korra_folder):
    reg = comfy_server.input_dir / "korra_reg"
    reg.mkdir(exist_ok=True)
    for i in range(3):
        Image.new("RGB", (64, 64), (40 * i, 90, 200)).save(reg / f"woman_{i}.png")
    prompt = {
        "1": load_node(verify_images=True),  # korra: 6 images × 10 (broken.png skipped)
        "2": load_node(folder="input/korra_reg", role="regularization", caption_source="fixed",
                       fixed_caption="woman", subset_name="reg", prior_loss_weight=0.5),
        "3": {"class_type": "AtelierCombineDatasets", "inputs": {"dataset_a": ["1", 0], "dataset_b": ["2", 0]}},
        "4": {"class_type": "AtelierMirrorDataset", "inputs": {"dataset": ["3", 0], "mode": "copies",
                                                                "subsets": "", "exclude_subsets": "reg"}},
        "5": {"class_type": "AtelierAddDownscaledCopy", "inputs": {"dataset": ["4", 0], "size": 96, "repeats": 2,
                                                                    "subsets": "korra"}},
        "6": {"class_type": "AtelierDatasetStats", "inputs": {"dataset": ["5", 0], "batch_size": 4, "epochs": 2,
                                                              "grad_accum": 1, "kimg": 0.0}},
        # IMAGE bridge: stock EmptyImage batch → dataset → prepared IMAGE batch → described
        "7": {"class_type": "EmptyImage", "inputs": {"width": 48, "height": 32, "batch_size": 3, "color": 0xFF0000}},
        "8": {"class_type": "AtelierImagesToDataset", "inputs": {"images": ["7", 0], "captions": "red frame",
                                                                 "subset_name": "graph", "role": "train",
                                                                 "repeats": 1}},
        "9": {"class_type": "AtelierDatasetToImages", "inputs": {"dataset": ["8", 0], "max_images": 8}},
        "10": {"class_type": "AtelierVersion", "inputs": {"images": ["9", 0]}},
    }
    out = comfy.run(prompt, timeout=300)
    stats = out["6"]["text"][0]
    # korra 6 images × 10 × 2 (mirrored) = 120; 96px copy 6 × 2 × 2 = 24; train = 144; reg capped to train = 144
    assert re.search(r"samples per epoch: 288\b", stats), stats
    assert re.search(r"steps per epoch: 72\b", stats) and re.search(r"total steps: 144\b", stats), stats
    assert re.search(r"korra_96px\s+train", stats) and re.search(r"reg\s+regularization\s+3\b", stats), stats
    # graph images keep their size (no preparation by default); red frames: channel values span 0 (G, B) to 1 (R)
    assert re.search(r"images: 3 × 48×32, 3 channels, values 0\.000\.\.1\.000", out["10"]["text"][0])
