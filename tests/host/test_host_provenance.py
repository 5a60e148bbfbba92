"""Provenance through a real ComfyUI server: what a shipped LoRA says about its checkpoint, folders and patches;
kohya's minimum keys in every file Atelier writes; LoCon's default targets; Inspect on ComfyUI's own LoRA format;
the checkpoint a grid PNG rendered on."""

import hashlib
import json
import shutil

import numpy as np
import pytest
from comfy_host import FIXTURE_CHECKPOINT_NAME, advanced_train_widgets, render
from PIL import Image
from safetensors import safe_open

KOHYA_MINIMUM_KEYS = ("ss_v2", "ss_base_model_version", "ss_network_module", "ss_network_dim", "ss_network_alpha",
                      "ss_network_args")
LOADER = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": FIXTURE_CHECKPOINT_NAME}}}


def read(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def load_dataset(folder: str, role: str, name: str) -> dict:
    return {"class_type": "AtelierLoadDataset", "inputs": dict(
        folder=folder, sub_path="", role=role, repeats=0, caption_source="sidecar", caption_extension=".txt",
        fixed_caption="", caption_encoding="utf-8", on_missing_caption="error", recursive=True, prior_loss_weight=0.8,
        subset_name=name, verify_images=True)}


def advanced(output_name: str, model, **overrides) -> dict:
    widgets = advanced_train_widgets(output_name, max_steps=3, batch_size=2, unet_lr=5e-2, weight_decay=0.0, seed=5,
                                     caption_shuffle=False, keep_tokens=0, cache_latents=True)
    widgets.update(overrides)
    return {"class_type": "AtelierTrainLoRAAdvanced", "inputs": {"model": model, "clip": ["1", 1], "vae": ["1", 2],
                                                                 "dataset": ["5", 0], **widgets}}


@pytest.fixture(scope="module")
def folders(comfy_server):
    """input/prov_train/10_elf (3 images), input/prov_train/2_hat (1) and input/prov_reg/1_person (2), 64²."""
    rng = np.random.default_rng(5)
    for folder, count in (("prov_train/10_elf", 3), ("prov_train/2_hat", 1), ("prov_reg/1_person", 2)):
        path = comfy_server.input_dir / folder
        path.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).resize((64, 64)).save(path / f"{i}.png")
            (path / f"{i}.txt").write_text(f"{folder.rsplit('_', 1)[-1]}, pose {i}", encoding="utf-8")
    return comfy_server.input_dir


def dataset_nodes() -> dict:
    return {"2": load_dataset("input/prov_train", "train", "elf"),
            "3": load_dataset("input/prov_reg", "regularization", "person"),
            "4": {"class_type": "AtelierCombineDatasets", "inputs": {"dataset_a": ["2", 0], "dataset_b": ["3", 0]}},
            "5": {"class_type": "AtelierPrepareDataset", "inputs": dict(
                dataset=["4", 0], mode="crop", width=64, height=64, pad_color="black", background="white",
                filter="lanczos", bucket_step=64, no_upscale=False, subsets="")}}


def test_a_shipped_lora_names_its_checkpoint_folders_and_patches(comfy, comfy_server, folders, rand_lora):
    comfy.run({**LOADER, **dataset_nodes(),
               "6": {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["1", 0], "lora_name": rand_lora,
                                                                     "strength_model": 0.5}},
               "7": advanced("prov_named", ["6", 0])}, timeout=600)
    _, meta = read(comfy_server.models / "loras" / "atelier" / "prov_named.safetensors")
    checkpoint = (comfy_server.models / "checkpoints" / FIXTURE_CHECKPOINT_NAME).read_bytes()
    assert meta["ss_sd_model_name"] == FIXTURE_CHECKPOINT_NAME
    assert meta["ss_new_sd_model_hash"] == hashlib.sha256(checkpoint).hexdigest()
    assert meta["ss_sd_model_hash"] == hashlib.sha256(checkpoint[0x100000:0x110000]).hexdigest()[:8]
    assert json.loads(meta["ss_dataset_dirs"]) == {"10_elf": {"n_repeats": 10, "img_count": 3},
                                                   "2_hat": {"n_repeats": 2, "img_count": 1}}
    assert json.loads(meta["ss_reg_dataset_dirs"]) == {"1_person": {"n_repeats": 1, "img_count": 2}}
    assert (meta["ss_num_train_images"], meta["ss_num_reg_images"], meta["ss_prior_loss_weight"]) == ("32", "2", "0.8")
    assert (meta["ss_resolution"], meta["ss_enable_bucket"]) == ("(64, 64)", "False")
    assert str(comfy_server.workdir) not in json.dumps(meta) and "input/" not in json.dumps(meta)
    assert (meta["ss_base_model_version"], meta["ss_v2"]) == ("sd_v1", "False")
    assert (meta["ss_epoch"], meta["ss_num_epochs"], meta["ss_steps"]) == ("1", "1", "3")
    patches = json.loads(meta["atelier_base_patches"])  # the MODEL carried the random LoRA at 0.5
    assert patches["patched_keys"] > 0
    assert patches["chain"] == [{"node": "LoraLoaderModelOnly", "loras": [rand_lora], "strengths": [0.5]}]
    assert all(k in meta for k in KOHYA_MINIMUM_KEYS)


def test_locon_with_default_targets_trains_3x3_convs_that_stock_loraloader_loads(comfy, comfy_server, folders):
    comfy.run({**LOADER, **dataset_nodes(), "7": advanced("prov_locon", ["1", 0], conv_rank=4, conv_alpha=4.0)},
              timeout=600)
    tensors, meta = read(comfy_server.models / "loras" / "atelier" / "prov_locon.safetensors")
    convs = {k: t for k, t in tensors.items() if k.endswith("lora_down.weight") and t.ndim == 4
             and tuple(t.shape[2:]) == (3, 3)}
    assert any("in_layers_2" in k for k in convs) and any("out_layers_3" in k for k in convs)
    assert all(t.shape[0] == 4 for t in convs.values())
    trained = [k for k in convs if tensors[k.replace("lora_down", "lora_up")].abs().max() > 0]
    assert trained, "the 3×3 adapters were never trained"
    assert any("emb_layers_1.lora_down" in k for k in tensors)  # the ResBlocks' linears too, as kohya's LoCon
    assert json.loads(meta["ss_network_args"])["conv_dim"] == 4
    log_before = len(comfy_server.log_text())
    base = render(comfy, comfy_server, "elf, pose 1", seed=2, prefix="prov_base")
    with_locon = render(comfy, comfy_server, "elf, pose 1", seed=2, prefix="prov_locon",
                        lora="atelier/prov_locon.safetensors")
    assert "lora key not loaded" not in comfy_server.log_text()[log_before:]
    assert np.abs(with_locon - base).max() > 0


def tool(comfy, class_type, **inputs) -> str:
    return comfy.run({"1": {"class_type": class_type, "inputs": inputs}}, timeout=600)["1"]["text"][0]


def test_kohyas_minimum_keys_are_in_merged_resized_and_extracted_files(comfy, comfy_server, folders, source_lora):
    loras = comfy_server.models / "loras" / "atelier"
    tool(comfy, "AtelierMergeLoRAs", lora_1=source_lora, strength_1=0.5, lora_2=source_lora, strength_2=0.5,
         lora_3="(none)", strength_3=1.0, lora_4="(none)", strength_4=1.0, mode="concat", rank=8,
         dynamic_method="none", dynamic_param=0.9, output_name="prov_merged")
    tool(comfy, "AtelierResizeLoRA", lora=source_lora, rank=4, dynamic_method="sv_fro", dynamic_param=0.5,
         output_name="prov_resized")
    comfy.run({**LOADER,
               "2": {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["1", 0], "lora_name": source_lora,
                                                                     "strength_model": 1.0}},
               "3": {"class_type": "AtelierExtractLoRA", "inputs": {
                   "tuned_model": ["2", 0], "base_model": ["1", 0], "rank": 4, "dynamic_method": "none",
                   "dynamic_param": 0.9, "include_convs": False, "min_diff": 0.0, "clamp_quantile": 1.0,
                   "method": "randomized", "output_name": "prov_extracted"}}}, timeout=600)
    metas = {name: read(loras / f"{name}.safetensors")[1] for name in ("prov_merged", "prov_resized",
                                                                       "prov_extracted")}
    for name, meta in metas.items():
        assert [k for k in KOHYA_MINIMUM_KEYS if k not in meta] == [], name
        assert (meta["ss_base_model_version"], meta["ss_v2"], meta["ss_network_module"]) == \
            ("sd_v1", "False", "networks.lora"), name
    assert (metas["prov_merged"]["ss_network_dim"], metas["prov_merged"]["ss_network_alpha"]) == ("8", "8.0")
    assert (metas["prov_resized"]["ss_network_dim"], metas["prov_resized"]["ss_network_alpha"]) == ("Dynamic",
                                                                                                    "Dynamic")
    assert metas["prov_extracted"]["ss_network_dim"] == "4"


def test_extract_with_convs_keeps_the_resnet_linears(comfy, comfy_server, folders):
    if not (comfy_server.models / "loras" / "atelier" / "prov_locon.safetensors").exists():
        comfy.run({**LOADER, **dataset_nodes(), "7": advanced("prov_locon", ["1", 0], conv_rank=4, conv_alpha=4.0)},
                  timeout=600)
    comfy.run({**LOADER,
               "2": {"class_type": "LoraLoaderModelOnly", "inputs": {
                   "model": ["1", 0], "lora_name": "atelier/prov_locon.safetensors", "strength_model": 1.0}},
               "3": {"class_type": "AtelierExtractLoRA", "inputs": {
                   "tuned_model": ["2", 0], "base_model": ["1", 0], "rank": 4, "dynamic_method": "none",
                   "dynamic_param": 0.9, "include_convs": True, "min_diff": 0.0, "clamp_quantile": 1.0,
                   "method": "randomized", "output_name": "prov_extracted_convs"}}}, timeout=600)
    tensors, meta = read(comfy_server.models / "loras" / "atelier" / "prov_extracted_convs.safetensors")
    assert any("emb_layers_1.lora_down" in k and t.ndim == 2 for k, t in tensors.items())
    assert any("in_layers_2.lora_down" in k and t.ndim == 4 for k, t in tensors.items())
    assert "conv_dim" in json.loads(meta["ss_network_args"])


def test_inspect_reads_a_lora_saved_by_comfyuis_own_extractor(comfy, comfy_server, source_lora):
    comfy.run({**LOADER,
               "2": {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["1", 0], "lora_name": source_lora,
                                                                     "strength_model": 1.0}},
               "3": {"class_type": "ModelMergeSubtract", "inputs": {"model1": ["2", 0], "model2": ["1", 0],
                                                                    "multiplier": 1.0}},
               "4": {"class_type": "LoraSave", "inputs": {"filename_prefix": "loras/prov_comfy", "rank": 4,
                                                          "lora_type": "standard", "bias_diff": True,
                                                          "model_diff": ["3", 0]}}}, timeout=600)
    saved = sorted((comfy_server.output_dir / "loras").glob("prov_comfy_*.safetensors"))[-1]
    shutil.copy(saved, comfy_server.models / "loras" / "prov_comfy.safetensors")
    report = json.loads(comfy.run({**LOADER, "2": {"class_type": "AtelierInspectLoRA", "inputs": {
        "lora": "prov_comfy.safetensors", "model": ["1", 0]}}})["2"]["text"][0])
    assert report["format"] == ["ComfyUI"] and report["family"] == "SD1.x"
    assert report["modules"] > 0 and report["prefixes"] == {"diffusion_model": report["modules"]}
    assert "SD-style UNet" in report["families"] and any(k.endswith(".diff_b") for k in report["other_keys"])
    assert report["would_load"]["checked"] > 0 and report["would_load"]["loads_cleanly"] is True
    log_before = len(comfy_server.log_text())
    render(comfy, comfy_server, "x style", seed=3, prefix="prov_comfy", lora="prov_comfy.safetensors")
    assert "lora key not loaded" not in comfy_server.log_text()[log_before:]  # stock LoraLoader agrees


def grid_checkpoint(comfy, comfy_server, model_nodes: dict, model) -> dict:
    from atelier.core.grid import read_png_metadata

    out = comfy.run({**LOADER, **model_nodes, "9": {"class_type": "AtelierXYGrid", "inputs": dict(
        model=model, clip=["1", 1], vae=["1", 2], positive="x style", negative="", x_kind="seed", x_values="1",
        y_kind="none", y_values="", lora="(none)", strength=1.0, baseline="none", seed=1, steps=2, cfg=4.0,
        sampler="euler", scheduler="normal", denoise=1.0, width=64, height=64, grid_name="prov", batch_size=1,
        resume=False)}}, timeout=600)
    return read_png_metadata(comfy_server.file(out["9"]["text"][0]))["extra"]["checkpoint"]


def test_grid_pngs_record_the_checkpoint_they_rendered_on(comfy, comfy_server):
    named = grid_checkpoint(comfy, comfy_server, {}, ["1", 0])
    assert named["name"] == FIXTURE_CHECKPOINT_NAME and named["file"] == FIXTURE_CHECKPOINT_NAME
    merged = grid_checkpoint(comfy, comfy_server, {"2": {"class_type": "ModelMergeSimple", "inputs": {
        "model1": ["1", 0], "model2": ["1", 0], "ratio": 0.5}}}, ["2", 0])
    assert merged["name"] == "connected MODEL" and merged["file"] is None
    assert merged["fingerprint"] == named["fingerprint"] and len(named["fingerprint"]) == 16
    assert "ModelMergeSimple" in merged["unknown_because"]
